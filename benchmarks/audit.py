"""What the audit before publish costs, as a share of the generation it follows.

For each n: `generate()` of the benchmark's 28x28 MLP decoder (2 -> 128 -> 784, trained on MNIST or upscaled
digits, with its quality report so that the quality check runs), timed from the model reference to the commit
(a private local Ray: its start-up is inside this time, as in a refresh); then the publish audit on the committed
dataset (jobs.audit.audit: inspect in full, the seeded deep sample, quality against the version's report),
timed whole and split into its inspect and quality parts. JSON out.

    python benchmarks/audit.py                       # n = 1,000,000
    python benchmarks/audit.py --n 1000000 10000000 --dtype uint8
    python benchmarks/audit.py --untrained           # same decoder shape, untrained, no report: no quality check
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def setup_untrained(store: Path) -> str:
    """The benchmark decoder's shape (2 -> 128 -> 784), untrained and without a report: seconds instead of the
    training and the report (minutes on a loaded machine); the audit then skips its quality checks."""
    import mlflow
    import torch

    from registry import models
    from vae_core.config import VAEConfig
    from vae_core.model import VAE
    from vae_core.training import TrainResult

    mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
    torch.manual_seed(0)
    config = VAEConfig(input_shape=(28, 28), latent_dim=2, hidden_sizes=(128,))
    result = TrainResult(model=VAE(config), history=[], val_neg_elbo=0.0, train_size=1, holdout_size=1, seconds=0.0)
    with models.training_run("benchmark", "benchmark-untrained", {}) as run:
        pinned = run.register(result, "bench-decoder", {})
    return f"{pinned.name}/{pinned.version}"


def measure(model: str, n: int, dtype: str, out: Path) -> dict:
    from jobs import audit
    from jobs.generate.job import GenerateConfig, generate
    from jobs.generate.storage import Storage
    from jobs.generate.verify import inspect

    started = time.perf_counter()
    result = generate(GenerateConfig(n=n, model=model, out=str(out), seed=42, dtype=dtype))
    generation_s = time.perf_counter() - started
    storage = Storage(str(out))
    started = time.perf_counter()
    record = audit.audit(storage, result.dataset_id, audit.AuditConfig(), None)
    audit_s = time.perf_counter() - started
    started = time.perf_counter()
    inspect(storage.location(result.dataset_id), deep=True, sample_seed=audit.AUDIT_SEED)  # the first two checks alone
    inspect_s = time.perf_counter() - started
    return {
        "n": n,
        "dtype": dtype,
        "dataset_bytes": result.manifest.total_bytes,
        "generation_s": round(generation_s, 3),
        "audit_s": round(audit_s, 3),
        "audit_share_of_generation": round(audit_s / generation_s, 4),
        "inspect_and_deep_s_rerun": round(inspect_s, 3),
        "verdict": record.verdict,
        "checks": {check.name: check.status for check in record.checks},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "uint8"])
    parser.add_argument("--out", default=None, help="[default: benchmarks/results/audit.json, audit_untrained.json]")
    parser.add_argument("--untrained", action="store_true", help="an untrained decoder without a report (see above)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vaegen-audit-bench-") as folder:
        store = Path(folder)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}/mlflow.db"
        os.environ.setdefault("VAEGEN_CACHE", str(store / "cache"))
        import generate as bench

        from jobs import report

        if args.untrained:
            model = setup_untrained(store)
        else:
            model = bench.setup_model(store)
            # the figures the audit compares with
            report.model_report(model, report.ReportConfig(root=str(store / "report")))
        bench.warm_up_imports()
        runs = []
        for n in args.n:
            runs.append(measure(model, n, args.dtype, store / f"out-{n}"))
            print(json.dumps(runs[-1]), flush=True)
            import shutil

            shutil.rmtree(store / f"out-{n}")
    load = os.getloadavg()
    machine = {"cpus": os.cpu_count(), "load_average_1_5_15": [round(value, 2) for value in load]}
    result = {"runs": runs, "machine": machine, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = Path(args.out or HERE / "results" / ("audit_untrained.json" if args.untrained else "audit.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
