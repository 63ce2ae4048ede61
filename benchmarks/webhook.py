"""Time from `vaegen promote` to the start of the refresh it triggers through MLflow's webhook (target < 5 s).

    python benchmarks/webhook.py [--runs 5] [--out benchmarks/results/webhook.json]

Set-up (not timed): a real `mlflow server` on SQLite in a temp folder (loopback webhooks allowed), one quick
start model registered `--runs` times (copies: equal held-out loss, so every promotion's gates pass), a
`vaegen webhook serve` watching vae-decoder@champion, the webhook registered with `vaegen webhook register`.
Each run promotes the next version and timestamps the receiver's lines as they arrive:
  promote_to_start_s      from starting `vaegen promote` to the receiver's "started `vaegen refresh`" line
  after_promote_exit_s    from `vaegen promote`'s exit to that line (MLflow delivers asynchronously)
The refresh itself (a local Ray, 1,000 rows) is awaited between runs but not timed here.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VAEGEN = str(Path(sys.executable).with_name("vaegen"))
TARGET_S = 5.0
SECRET = "benchmark-secret-0123456789abcdef"
WAIT_S = 300  # a refresh on a loaded 2-core box


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class Lines:
    """A child's merged output, each line stamped (monotonic) as it arrives."""

    def __init__(self, process: subprocess.Popen):
        self.lines: list[tuple[float, str]] = []
        threading.Thread(target=self._read, args=(process.stdout,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait(self, fragment: str, count: int, timeout_s: float = WAIT_S) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [at for at, text in self.lines if fragment in text]
            if len(found) >= count:
                return found[count - 1]
            time.sleep(0.01)
        raise SystemExit(
            f"no {count}th {fragment!r} after {timeout_s} s:\n" + "\n".join(t for _, t in self.lines[-20:])
        )


def start(command: list[str], env: dict[str, str], cwd: Path) -> tuple[subprocess.Popen, Lines]:
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    return process, Lines(process)


def run_checked(command: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def wait_healthy(url: str, lines: Lines, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit("mlflow server not healthy:\n" + "\n".join(text for _, text in lines.lines[-20:]))


def register_versions(env: dict[str, str], cwd: Path, count: int) -> None:
    code = (
        "import mlflow\nfrom jobs.train import TrainJobConfig, run\nfrom vae_core.config import TrainConfig\n"
        "run(TrainJobConfig(train=TrainConfig(epochs=1), report=False))\n"
        f"for _ in range({count - 1}):\n"
        "    mlflow.MlflowClient().copy_model_version('models:/vae-decoder/1', 'vae-decoder')\n"
    )
    run_checked([sys.executable, "-c", code], env, cwd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "webhook.json"))
    args = parser.parse_args()
    ray_cluster = load("ray_cluster", REPO / "tests" / "ray_cluster.py")
    root = Path(tempfile.mkdtemp(prefix="vaegen-webhook-"))
    ray_env = ray_cluster.make_ray_env()  # the refreshes' local Rays: private temp dir, stopped by tag
    base = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "RAY_", "VAEGEN_"))}
    port, receiver_port = ray_cluster.free_port(), ray_cluster.free_port()
    server_env = {**base, "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true", "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https"}
    env = {
        **base,
        **ray_env.variables(),
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
        "VAEGEN_WEBHOOK_SECRET": SECRET,
    }
    processes: list[subprocess.Popen] = []
    started = time.monotonic()
    try:
        server, server_lines = start(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{root}/mlflow.db",
                "--artifacts-destination",
                str(root / "artifacts"),
            ],
            server_env,
            root,
        )
        processes.append(server)
        wait_healthy(f"http://127.0.0.1:{port}/health", server_lines)
        register_versions(env, root, args.runs)
        refresh = f"--model vae-decoder@champion --n 1000 --num-workers 1 --out {root / 'datasets'}"
        receiver, lines = start(
            [VAEGEN, "webhook", "serve", "--port", str(receiver_port), "--refresh", refresh], env, root
        )
        processes.append(receiver)
        lines.wait("webhook: listening on", 1, 120)
        run_checked([VAEGEN, "webhook", "register", "--url", f"http://127.0.0.1:{receiver_port}/"], env, root)
        runs = []
        for index in range(args.runs):
            before = time.monotonic()
            run_checked(
                [VAEGEN, "promote", f"vae-decoder/{index + 1}", "--reason", "benchmark", "--no-quality-gate"], env, root
            )
            after = time.monotonic()
            at = lines.wait("started `vaegen refresh", index + 1)
            lines.wait("refresh exited", index + 1)
            runs.append(
                {
                    "promote_s": round(after - before, 3),
                    "promote_to_start_s": round(at - before, 3),
                    "after_promote_exit_s": round(at - after, 3),
                }
            )
            print(f"run {index + 1}/{args.runs}: {runs[-1]}", file=sys.stderr, flush=True)
    finally:
        for process in reversed(processes):
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        ray_cluster.stop_tagged(ray_env.tag)
        shutil.rmtree(ray_env.root, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    median = statistics.median(run["promote_to_start_s"] for run in runs)
    results = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_average": os.getloadavg()},
        "target_s": TARGET_S,
        "promote_to_start_s_median": median,
        "met": median < TARGET_S,
        "after_promote_exit_s_median": statistics.median(run["after_promote_exit_s"] for run in runs),
        "runs": runs,
        "benchmark_seconds": round(time.monotonic() - started, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"promote -> refresh start: median {median:.2f} s (target < {TARGET_S} s, met={results['met']}); "
        f"wrote {args.out}"
    )


if __name__ == "__main__":
    main()
