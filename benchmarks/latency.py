"""Latency of whole commands, run as a user runs them: `vaegen ...` in a fresh process, median of 5.

    python benchmarks/latency.py [--runs 5] [--out benchmarks/results/latency.json] [--no-cluster]

--no-cluster skips the scenarios on a `ray start` cluster (generate_joined, generate_1m, inspect_1m).

Set-up (not timed): one SQLite store with 20 versions of the quick start's digits model
(`vae-decoder`, the newest is `champion`) and one 28x28 decoder (`bench-decoder`, as in
benchmarks/generate.py), and a `ray start --head` cluster with 2 CPUs on 127.0.0.1 (private
temp dir and ports, stopped by PID; tests/ray_cluster.py).
Scenarios and the budgets of issue 11:
  models          `vaegen models` on the 20-version store                        <= 1.5 s
  usage_error     `vaegen generate --n -5` (no --out)                            <= 0.5 s
  model_typo      `vaegen generate --model vae-decodr@champion --n 1000 --out local`: the
                  unknown model reported (exit 2) before any Ray starts (issue 22)   <= 1 s
  generate_local  `vaegen generate --n 1000`, starting its own local Ray         <= 8 s
  generate_joined the same with RAY_ADDRESS naming the running cluster           <= 4 s
                  (both: the process exits within 1 s of its last line)
  generate_1m     `vaegen generate --n 1000000` of the 28x28 decoder, float32, default format,
                  on the running cluster: whole command <= 1.3 x the job's own time (manifest)
  inspect_1m      `vaegen inspect` (checksums) of that 1,000,000-row dataset, files in the
                  page cache (a first, untimed run reads them in)                <= 2 s
Every line a command prints is timestamped as it arrives, so each run also says when its last line
came and how long the process took to exit after it; for `generate`, the stderr lines mark the
stages (model resolved, workers placed, rows written).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VAEGEN = str(Path(sys.executable).with_name("vaegen"))
VERSIONS = 20
BUDGETS_S = {
    "models": 1.5,
    "usage_error": 0.5,
    "model_typo": 1.0,
    "generate_local": 8.0,
    "generate_joined": 4.0,
    "inspect_1m": 2.0,
}
EXIT_LAG_BUDGET_S = 1.0
RATIO_BUDGET = 1.3  # generate_1m: whole command / in-job time
STAGES = {"resolved": "model ", "placed": " shards of ", "written": "generated "}  # stderr line prefixes/fragments


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> dict:
    """Run a command; time its exit, its last line, and the stage lines of its stderr."""
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[tuple[float, str, str]] = []

    def read(stream, name: str) -> None:
        for line in stream:
            lines.append((time.monotonic() - started, name, line.rstrip("\n")))

    readers = [
        threading.Thread(target=read, args=(process.stdout, "stdout")),
        threading.Thread(target=read, args=(process.stderr, "stderr")),
    ]
    for reader in readers:
        reader.start()
    code = process.wait()
    whole_s = time.monotonic() - started
    for reader in readers:
        reader.join()
    last_line_s = max((at for at, _, _ in lines), default=whole_s)
    stages = {
        name: next((at for at, stream, text in lines if stream == "stderr" and fragment in text), None)
        for name, fragment in STAGES.items()
    }
    return {
        "returncode": code,
        "whole_s": round(whole_s, 3),
        "last_line_s": round(last_line_s, 3),
        "exit_after_last_line_s": round(whole_s - last_line_s, 3),
        "stages_s": stages,
        "stdout": [text for _, stream, text in lines if stream == "stdout"],
        "stderr_tail": [text for _, stream, text in lines if stream == "stderr"][-3:],
    }


def summary(runs: list[dict], key: str = "whole_s") -> dict:
    values = [run[key] for run in runs]
    return {"median": round(statistics.median(values), 3), "min": min(values), "max": max(values), "runs": values}


def setup_store(store: Path, env: dict[str, str]) -> None:
    code = (
        f"import sys; sys.path.insert(0, {str(REPO / 'benchmarks')!r}); import mlflow; import generate as bench\n"
        "from jobs.train import TrainJobConfig, run\nfrom vae_core.config import TrainConfig\n"
        f"for seed in range({VERSIONS}):\n"
        "    result = run(TrainJobConfig(train=TrainConfig(epochs=1, seed=seed), report=False))\n"
        "from registry import promotion  # generate refuses an alias set outside vaegen promote\n"
        "promotion.promote(f'vae-decoder/{result.pinned.version}', promotion.PromotionConfig(reason='bench', "
        "by='bench', quality=None, force=True))\n"
        f"bench.setup_model(__import__('pathlib').Path({str(store)!r}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=store, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"set-up failed:\n{done.stderr[-3000:]}")


def scenario_report(name: str, runs: list[dict]) -> dict:
    """One scenario's summary: median, min and max of its timings, stage medians, and the budgets it met."""
    entry = {"whole_s": summary(runs), "exit_after_last_line_s": summary(runs, "exit_after_last_line_s")}
    if name.startswith("generate"):
        entry["stages_s_median"] = {
            stage: round(statistics.median([run["stages_s"][stage] for run in runs]), 3)
            for stage in STAGES
            if all(run["stages_s"][stage] is not None for run in runs)
        }
    if name in BUDGETS_S:
        entry["budget_s"] = BUDGETS_S[name]
        entry["met"] = entry["whole_s"]["median"] <= BUDGETS_S[name]
    if name == "generate_1m":
        entry["job_s"] = summary(runs, "job_s")
        entry["ratio"] = summary(runs, "ratio")
        entry["met"] = entry["ratio"]["median"] <= RATIO_BUDGET
    if name.startswith("generate") and name != "generate_1m":
        entry["exit_met"] = entry["exit_after_last_line_s"]["median"] <= EXIT_LAG_BUDGET_S
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "latency.json"))
    parser.add_argument("--no-cluster", action="store_true", help="skip generate_joined, generate_1m and inspect_1m")
    args = parser.parse_args()
    ray_cluster = load("ray_cluster", REPO / "tests" / "ray_cluster.py")

    root = Path(tempfile.mkdtemp(prefix="vaegen-latency-"))
    store = root / "store"
    store.mkdir()
    base = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "RAY_", "VAEGEN_"))}
    base["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}/mlflow.db"
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "budgets_s": BUDGETS_S,
        "exit_after_last_line_budget_s": EXIT_LAG_BUDGET_S,
        "ratio_budget": RATIO_BUDGET,
        "runs": args.runs,
    }
    started = time.monotonic()
    local_env = ray_cluster.make_ray_env()  # the commands' own local Rays: private temp dir, stopped by tag
    cluster = ray_cluster.RayCluster(ray_cluster.make_ray_env(), head_cpus=2, worker_node_cpus=())
    try:
        setup_store(store, base)
        own = {**base, **local_env.variables()}
        own.pop("RAY_AUTH_MODE")  # Ray's default, as a user has it
        scenarios: dict[str, list[dict]] = {}

        def repeat(name: str, make_command, env: dict[str, str]) -> list[dict]:
            runs = []
            for index in range(args.runs):
                run = timed(make_command(index), store, env)
                if run["returncode"] != 0:
                    raise SystemExit(f"{name} failed: {run['stderr_tail']}")
                runs.append(run)
                print(f"{name} {index + 1}/{args.runs}: {run['whole_s']:.2f} s", file=sys.stderr, flush=True)
            scenarios[name] = runs
            return runs

        repeat("models", lambda _: [VAEGEN, "models"], own)
        usage = [timed([VAEGEN, "generate", "--n", "-5"], store, own) for _ in range(args.runs)]
        assert all(run["returncode"] == 2 for run in usage), usage[0]
        scenarios["usage_error"] = usage
        typo_command = [VAEGEN, "generate", "--model", "vae-decodr@champion", "--n", "1000", "--out", "local"]
        typo = [timed(typo_command, store, own) for _ in range(args.runs)]
        assert all(run["returncode"] == 2 and "vae-decodr" in " ".join(run["stderr_tail"]) for run in typo), typo[0]
        scenarios["model_typo"] = typo
        repeat(
            "generate_local",
            lambda i: [VAEGEN, "generate", "--n", "1000", "--seed", str(100 + i), "--out", "local"],
            own,
        )
        if not args.no_cluster:
            cluster.start()
            joined = {**base, **cluster.env.variables(), "RAY_ADDRESS": cluster.gcs_address}
            repeat(
                "generate_joined",
                lambda i: [VAEGEN, "generate", "--n", "1000", "--seed", str(200 + i), "--out", "joined"],
                joined,
            )
            big = []
            for index in range(args.runs):
                out = store / "big"
                shutil.rmtree(out, ignore_errors=True)  # 2.4 GB a run: keep one at a time
                run = timed(
                    [
                        VAEGEN,
                        "generate",
                        "--model",
                        "bench-decoder/1",
                        "--n",
                        "1000000",
                        "--seed",
                        str(300 + index),
                        "--out",
                        str(out),
                    ],
                    store,
                    joined,
                )
                if run["returncode"] != 0:
                    raise SystemExit(f"generate_1m failed: {run['stderr_tail']}")
                dataset = out / run["stdout"][0].split(": ", 1)[1]
                run["job_s"] = json.loads((dataset / "_manifest.json").read_text())["timings"]["seconds"]
                run["ratio"] = round(run["whole_s"] / run["job_s"], 3)
                big.append(run)
                print(
                    f"generate_1m {index + 1}/{args.runs}: {run['whole_s']:.2f} s, job {run['job_s']:.2f} s",
                    file=sys.stderr,
                )
            scenarios["generate_1m"] = big
            timed([VAEGEN, "inspect", str(dataset)], store, own)  # reads the 2.4 GB into the page cache
            repeat("inspect_1m", lambda _: [VAEGEN, "inspect", str(dataset)], own)
        results["scenarios"] = {name: scenario_report(name, runs) for name, runs in scenarios.items()}
        results["raw"] = {
            name: [{key: value for key, value in run.items() if key not in ("stdout",)} for run in runs]
            for name, runs in scenarios.items()
        }
    finally:
        cluster.stop()
        ray_cluster.stop_tagged(local_env.tag)
        shutil.rmtree(cluster.env.root, ignore_errors=True)
        shutil.rmtree(local_env.root, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    results["benchmark_seconds"] = round(time.monotonic() - started, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    for name, entry in results["scenarios"].items():
        extra = f", ratio {entry['ratio']['median']}" if "ratio" in entry else ""
        print(
            f"{name:<16} median {entry['whole_s']['median']:6.2f} s{extra}  "
            f"exit lag {entry['exit_after_last_line_s']['median']:.2f} s  met={entry.get('met')}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
