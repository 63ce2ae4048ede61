"""The GPU check: CUDA tests and the figures of a GPU node in one run, one JSON report.

    python benchmarks/gpu_check.py --out DIR [--n 10000000] [--archs mlp,conv] [--scratch DIR]

`benchmarks/gpu_check.sh` installs, then runs this. For the default MLP (2 -> 128 -> 28x28) and the conv recipe
(z 16, channels 32 and 64, 8-layer prior flow), untrained and seeded (the weights do not change the cost), at n rows:
  decode_cuda      decoding alone on the GPU (z drawn beforehand, host-device copies included), at the job's
                   block of 4,096 rows for n rows, a grid of larger blocks on a sample, the same with TF32
                   (what the job's exact float32 costs); peak GPU memory
  encode_cpu       Parquet encoding alone on one core (CPU time for 32 blocks, scaled), the job's bytes
  generate_cuda    `vaegen generate --device cuda` as a user runs it: whole-command and in-job rows/s, GPU
                   utilisation and memory (nvidia-smi), CPU utilisation (/proc/stat), peak memory of the
                   command's process tree; then `vaegen inspect --deep` of the dataset it made
  generate_cpu     the same with --device cpu on the same node
and runs tests/test_cuda.py (marker `cuda`), recording each test's outcome or skip reason. A part that cannot run
here is {"status": "skipped", "reason": ...} (no CUDA; no Ray or MLflow), one that breaks {"status": "failed", ...};
exit code 1 when anything failed. Datasets are deleted once measured (10M float32 28x28 rows: about 24 GB).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REPORT = "gpu_check.json"
JUNIT = "cuda_tests.xml"
ARCHS = ("mlp", "conv")
SAMPLE_SHAPE = (28, 28)  # MNIST-shaped, as the production recipe's data
DECODE_GRID = (4_096, 16_384, 65_536)  # block rows tried on the GPU; 4,096 is the job's default grid
GRID_ROWS = 1 << 20  # rows per grid entry (or n, if smaller)
DISTINCT_BLOCKS = 8  # decode_cuda cycles through this many pre-drawn latent blocks
ENCODE_BLOCKS = 32  # blocks of 4,096 rows encoded to time the encode side, as benchmarks/generate.py does
POLL_S = 0.5  # utilisation and memory sampling period
SEED = 0


def load_generate_benchmark():
    """benchmarks/generate.py (not a package): its encode measurement and peak-RSS reader are reused here."""
    spec = importlib.util.spec_from_file_location("benchmark_generate", REPO / "benchmarks" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def missing(*modules: str) -> str | None:
    """Why a part cannot run here: the first of `modules` that does not import, or CUDA missing; None if it can."""
    for name in modules:
        if name == "cuda":
            import torch

            if not torch.cuda.is_available():
                return (
                    f"CUDA absent: torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no GPU "
                    f"(torch.cuda.is_available() is False)"
                )
        elif not installed(name):
            return f"{name} is not installed here (bash deploy/install.sh installs it)"
    return None


def installed(name: str) -> bool:
    """A package, not a namespace one (a folder of that name in the working directory, such as /tmp/ray)."""
    spec = importlib.util.find_spec(name)
    return spec is not None and spec.origin not in (None, "namespace")


def skipped(reason: str) -> dict:
    return {"status": "skipped", "reason": reason}


def environment(scratch: Path) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    smi = shutil.which("nvidia-smi")
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": cuda,
        "gpus": [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())] if cuda else [],
        "nvidia_smi": subprocess.run([smi, "-L"], capture_output=True, text=True).stdout.strip() if smi else None,
        "installed": {name: installed(name) for name in ("ray", "mlflow", "pytest")},
        "scratch": str(scratch),
        "scratch_free_bytes": shutil.disk_usage(scratch).free,
    }


def untrained_model(arch: str):
    """A seeded, untrained VAE of an architecture's recipe for 28x28 samples."""
    import torch

    from vae_core.config import RECIPES, VAEConfig
    from vae_core.model import VAE

    recipe = RECIPES[arch]
    config = VAEConfig(
        input_shape=SAMPLE_SHAPE,
        latent_dim=recipe["latent_dim"],
        hidden_sizes=recipe["hidden_sizes"],
        architecture=arch,
        conv_channels=recipe["conv_channels"],
        prior_flow_layers=recipe["prior_flow_layers"],
    )
    torch.manual_seed(SEED)
    return VAE(config)


def predictor_for(model, n: int, device: str):
    from jobs.generate.predictor import Predictor
    from jobs.generate.spec import DatasetSpec

    config = model.decoder.config
    spec = DatasetSpec(
        model_name=f"gpu-check-{config.architecture}",
        model_version=1,
        n=n,
        seed=SEED,
        latent_dim=config.latent_dim,
        sample_shape=tuple(config.input_shape),
    )
    state = {key: value.numpy() for key, value in model.decoder.state_dict().items()}
    return Predictor(spec, config.to_dict(), state, device)


def measure_decode_cuda(model, n: int) -> dict:
    """Decoding alone on the GPU: rows/s at the job's block for n rows, and per block size on GRID_ROWS rows."""
    import torch

    from vae_core import sampling

    predictor = predictor_for(model, n, "cuda")
    block = predictor.spec.block_rows
    largest = max(DECODE_GRID)
    _, z = sampling.draw(SEED, np.arange(DISTINCT_BLOCKS * largest, dtype=np.int64), predictor.spec.latent_dim)

    def rows_per_s(batch: int, rows: int) -> float:
        sampling.decode(predictor.decoder, z[:batch], device="cuda")  # warm-up: kernels picked, memory allocated
        started = time.perf_counter()
        for done in range(0, rows, batch):
            first = (done // batch) % (len(z) // batch) * batch
            sampling.decode(predictor.decoder, z[first : first + min(batch, rows - done)], device="cuda")
        return rows / (time.perf_counter() - started)  # decode returns host arrays: the GPU work is done

    torch.cuda.reset_peak_memory_stats()
    grid = [
        {"block_rows": batch, "rows": min(n, GRID_ROWS), "rows_per_s": rows_per_s(batch, min(n, GRID_ROWS))}
        for batch in DECODE_GRID
    ]
    started = time.perf_counter()
    main = rows_per_s(block, n)
    seconds = time.perf_counter() - started
    return {
        "status": "measured",
        "rows": n,
        "block_rows": block,
        "rows_per_s": main,
        "seconds": seconds,
        "grid": grid,
        "tf32_rows_per_s": tf32_rows_per_s(lambda: rows_per_s(block, min(n, GRID_ROWS))),
        "gpu_peak_memory_bytes": torch.cuda.max_memory_allocated(),
        "gpu": torch.cuda.get_device_name(),
    }


def tf32_rows_per_s(measure) -> float | None:
    """The same decode with PyTorch's default TF32 convolutions and matmuls: what exact float32 costs
    (docs/decisions.md, "Devices"). None where torch predates the fp32_precision switches."""
    import torch

    from jobs.generate.predictor import use_exact_cuda_math

    if not hasattr(torch.backends.cudnn, "conv"):
        return None
    torch.backends.cudnn.conv.fp32_precision = torch.backends.cuda.matmul.fp32_precision = "tf32"
    try:
        return measure()
    finally:
        use_exact_cuda_math()


def measure_encode_cpu(model, n: int, scratch: Path) -> dict:
    import torch

    from jobs.generate.parts import arrow_schema

    torch.set_num_threads(1)
    predictor = predictor_for(model, n, "cpu")
    blocks = min(ENCODE_BLOCKS, -(-n // predictor.spec.block_rows))  # a tiny n (the CPU self-test) encodes one block
    schema = arrow_schema(predictor.spec)
    result = load_generate_benchmark().encode_cpu(predictor.spec, predictor, schema, scratch, blocks)
    (scratch / "encode.parquet").unlink()
    rows_per_core_s = n / result["seconds"]
    return {
        "status": "measured",
        "rows_measured": result["rows_measured"],
        "rows_per_s_per_core": rows_per_core_s,
        "rows_per_s_all_cores_bound": rows_per_core_s * os.cpu_count(),
        "bytes_per_row": result["bytes"] / n,
    }


def register(model) -> str:
    """The model as version 1 of its own registered name in the active MLflow store; returns its reference."""
    from registry import models
    from vae_core.training import TrainResult

    name = f"gpu-check-{model.decoder.config.architecture}"
    result = TrainResult(model=model, history=[], val_neg_elbo=0.0, train_size=1, holdout_size=1, seconds=0.0)
    with models.training_run("gpu-check", name, {}) as run:
        pinned = run.register(result, name, {})
    return f"{pinned.name}/{pinned.version}"


def cpu_busy_total() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs so far, from /proc/stat's first line (idle and iowait are not busy)."""
    values = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(values) - values[3] - values[4], sum(values)


def process_tree(root: int) -> list[int]:
    """`root` and every process descending from it, from /proc (Ray's workers are the command's descendants)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


class Sampler:
    """Every POLL_S while a command runs: the node's CPU utilisation, the GPUs' utilisation and memory
    (nvidia-smi, where there is one), and the peak RSS (VmHWM) of each process of the command's tree."""

    def __init__(self, root: int):
        self.root, self.stop = root, threading.Event()
        self.cpu, self.gpu_util, self.gpu_memory = [], [], []
        self.peaks: dict[int, int] = {}
        self.peak_rss_bytes = load_generate_benchmark().peak_rss_bytes
        self.smi = shutil.which("nvidia-smi")
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        last = cpu_busy_total()
        while not self.stop.wait(POLL_S):
            now = cpu_busy_total()
            self.cpu.append(100.0 * (now[0] - last[0]) / max(1, now[1] - last[1]))
            last = now
            for pid in process_tree(self.root):
                try:
                    self.peaks[pid] = max(self.peaks.get(pid, 0), self.peak_rss_bytes(pid))
                except OSError:  # ended meanwhile
                    continue
            if self.smi:
                query = [self.smi, "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
                lines = subprocess.run(query, capture_output=True, text=True).stdout.split("\n")
                readings = [[float(value) for value in line.split(",")] for line in lines if line.strip()]
                self.gpu_util.append(sum(util for util, _ in readings) / max(1, len(readings)))
                self.gpu_memory.append(sum(used for _, used in readings) * 2**20)

    def summary(self) -> dict:
        def stats(values: list[float]) -> dict | None:
            return {"mean": float(np.mean(values)), "max": float(np.max(values))} if values else None

        return {
            "samples": len(self.cpu),
            "period_s": POLL_S,
            "cpu_utilisation_percent": stats(self.cpu),
            "gpu_utilisation_percent": stats(self.gpu_util),
            "gpu_memory_used_bytes_max": max(self.gpu_memory, default=None),
            "process_peak_rss_bytes_max": max(self.peaks.values(), default=None),  # the largest process
            "process_peak_rss_bytes_sum": sum(self.peaks.values()) or None,
        }  # an upper bound (shared pages)


def vaegen(*args: str) -> tuple[subprocess.CompletedProcess, float, dict]:
    """Run `vaegen ARGS` as a user does (the console script beside this Python); (result, wall seconds, samples)."""
    script = Path(sys.executable).parent / "vaegen"
    module_call = [sys.executable, "-c", "from jobs.cli import vaegen_main; vaegen_main()"]
    command = ([str(script)] if script.is_file() else module_call) + list(args)
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = Sampler(process.pid)
    sampler.thread.start()
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    sampler.stop.set()
    sampler.thread.join()
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr), seconds, sampler.summary()


def failed(completed: subprocess.CompletedProcess) -> dict:
    return {
        "status": "failed",
        "command": " ".join(completed.args[1:]),
        "exit_code": completed.returncode,
        "stderr_tail": completed.stderr[-2000:],
    }


def measure_generate(reference: str, n: int, device: str, scratch: Path, deep_inspect: bool) -> dict:
    """`vaegen generate` of n rows on `device`, sampled while it runs; the dataset is deleted afterwards."""
    out = scratch / f"datasets-{device}"
    generated, seconds, samples = vaegen(
        "generate", "--model", reference, "--n", str(n), "--seed", str(SEED), "--out", str(out), "--device", device
    )
    try:
        if generated.returncode != 0:
            return failed(generated)
        (folder,) = [path for path in out.iterdir() if (path / "_manifest.json").is_file()]
        record = json.loads((folder / "_manifest.json").read_text())
        result = {
            "status": "measured",
            "command": " ".join(generated.args[1:]),
            "rows": n,
            "seconds": seconds,
            "rows_per_s": n / seconds,
            "job_seconds": record["timings"]["seconds"],
            "job_rows_per_s": record["timings"]["rows_per_s"],
            "execution": record["execution"],
            "total_bytes": record["total_bytes"],
            "parts": len(record["files"]),
            **samples,
        }
        if deep_inspect:
            inspected, inspect_s, _ = vaegen("inspect", str(folder), "--deep")
            passed = {"status": "passed", "seconds": inspect_s, "stdout_tail": inspected.stdout[-1000:]}
            result["inspect_deep"] = passed if inspected.returncode == 0 else failed(inspected)
        return result
    finally:
        shutil.rmtree(out, ignore_errors=True)


def run_cuda_tests(out: Path) -> dict:
    """tests/test_cuda.py in a fresh pytest; each case's outcome and skip or failure message, from its JUnit XML."""
    if missing("pytest"):
        return skipped(missing("pytest"))
    junit = out / JUNIT
    command = [
        sys.executable,
        "-m",
        "pytest",
        "tests/test_cuda.py",
        "-m",
        "cuda",
        "-q",
        "-rs",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
    ]
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    cases = []
    if junit.is_file():
        for case in ElementTree.parse(junit).getroot().iter("testcase"):
            outcome = next((child for child in case if child.tag in ("skipped", "failure", "error")), None)
            cases.append(
                {
                    "name": case.get("name"),
                    "seconds": float(case.get("time", 0)),
                    "outcome": "passed" if outcome is None else outcome.tag,
                    "message": None if outcome is None else outcome.get("message"),
                }
            )
    outcomes = [case["outcome"] for case in cases]
    status = "failed" if completed.returncode not in (0, 5) or {"failure", "error"} & set(outcomes) else "ran"
    return {
        "status": status,
        "command": " ".join(command[1:]),
        "exit_code": completed.returncode,
        "seconds": time.perf_counter() - started,
        "counts": {outcome: outcomes.count(outcome) for outcome in set(outcomes)},
        "cases": cases,
        "output_tail": completed.stdout[-3000:] if status == "failed" else completed.stdout[-500:],
    }


def attempt(measure, *args) -> dict:
    """A measurement's result, or its error recorded as a failure: one broken part must not cost the others."""
    try:
        return measure(*args)
    except Exception as error:  # noqa: BLE001 (anything: the report says what, the exit code that it failed)
        return {
            "status": "failed",
            "error": f"{type(error).__name__}: {error}",
            "traceback_tail": traceback.format_exc()[-2000:],
        }


def check_model(arch: str, n: int, scratch: Path, reference: str | None, why_no_jobs: str | None) -> dict:
    """Every measurement of one architecture; each one that cannot run here says why."""
    model = untrained_model(arch)
    no_cuda = missing("cuda")
    print(f"gpu_check: {arch}: decode on the GPU, encode on one core", file=sys.stderr, flush=True)
    result = {
        "config": model.decoder.config.to_dict(),
        "decode_cuda": skipped(no_cuda) if no_cuda else attempt(measure_decode_cuda, model, n),
        "encode_cpu": attempt(measure_encode_cpu, model, n, scratch),
    }
    for device in ("cuda", "cpu"):
        reason = why_no_jobs or (no_cuda if device == "cuda" else None)
        print(f"gpu_check: {arch}: vaegen generate --device {device} --n {n:,}", file=sys.stderr, flush=True)
        result[f"generate_{device}"] = (
            skipped(reason) if reason else attempt(measure_generate, reference, n, device, scratch, device == "cuda")
        )
    decode, encode = result["decode_cuda"], result["encode_cpu"]
    if decode["status"] == "measured":  # which side of a GPU node binds: its GPU's decode or its cores' encode
        result["decode_over_encode_all_cores"] = decode["rows_per_s"] / encode["rows_per_s_all_cores_bound"]
    return result


def statuses(report: dict) -> list[str]:
    found = [report["tests"]["status"]]
    for result in report["models"].values():
        found += [value["status"] for value in result.values() if isinstance(value, dict) and "status" in value]
        found += [
            result[key]["inspect_deep"]["status"]
            for key in ("generate_cuda", "generate_cpu")
            if "inspect_deep" in result[key]
        ]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for gpu_check.json and cuda_tests.xml")
    parser.add_argument("--n", type=int, default=10_000_000, help="rows of each measurement [default: 10,000,000]")
    parser.add_argument("--archs", default=",".join(ARCHS), help="comma-separated, of mlp and conv [default: both]")
    parser.add_argument("--scratch", default=None, help="where datasets are written and deleted [default: a temp dir]")
    parser.add_argument("--skip-tests", action="store_true", help="do not run tests/test_cuda.py")
    args = parser.parse_args()
    archs = args.archs.split(",")
    if args.n < 1 or not set(archs) <= set(ARCHS):
        parser.error(f"--n must be positive and --archs a list of {', '.join(ARCHS)}; got {args.n} and {args.archs!r}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vaegen-gpu-check-", dir=args.scratch) as folder:
        scratch = Path(folder)
        report = {
            "command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:]),
            "n": args.n,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "environment": environment(scratch),
        }
        print("gpu_check: tests/test_cuda.py", file=sys.stderr, flush=True)
        report["tests"], report["models"] = skipped("--skip-tests") if args.skip_tests else run_cuda_tests(out), {}
        save(report, out, started)
        why_no_jobs = missing("ray", "mlflow")
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch}/mlflow.db"
        os.environ.pop("RAY_ADDRESS", None)  # each generate starts its own Ray on this node, as a plain user's does
        for arch in archs:
            reference = None if why_no_jobs else register(untrained_model(arch))
            report["models"][arch] = check_model(arch, args.n, scratch, reference, why_no_jobs)
            save(report, out, started)
    report["complete"] = True
    save(report, out, started)
    print(f"gpu_check: {report['seconds']:.0f} s, {report['failed']} failed; report in {out / REPORT}", file=sys.stderr)
    return 1 if report["failed"] else 0


def save(report: dict, out: Path, started: float) -> None:
    """Written after each part, so that a run stopped by a time limit still leaves what it measured."""
    report.setdefault("complete", False)
    report["seconds"] = time.perf_counter() - started
    report["failed"] = statuses(report).count("failed")
    (out / REPORT).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.exit(main())
