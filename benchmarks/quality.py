"""Held-out loss and generated-data quality, measured in one run, for the README's tables.

    python benchmarks/quality.py [--epochs 50] [--out benchmarks/out/quality.json]

Data: scikit-learn's digits (first 80% train, last 20% held out) and, when ../shared/data/mnist
exists, the MNIST test split (first 8,000 images train, last 2,000 held out). Models: the
classic default (latent 2, one hidden layer of 128), a larger one (latent 16, 512 hidden),
and both as class-conditional VAEs. Each registered version gets `vaegen report`'s metrics
(10,000 samples from the fixed report seed, reference classifier trained on the train split).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO.parent / "shared" / "data" / "mnist"
MODELS = {"default (latent 2, 128)": (2, (128,)), "larger (latent 16, 512)": (16, (512,))}
KEYS = ("frechet_distance", "frechet_floor", "precision", "precision_floor", "recall", "recall_floor", "coverage",
        "memorisation_share", "label_accuracy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "quality.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vaegen-quality-") as folder:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
        os.environ["VAEGEN_CACHE"] = f"{folder}/cache"
        import mlflow

        from jobs.train import TrainJobConfig, run
        from vae_core.config import TrainConfig

        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        sources = {"digits": "digits"}
        if MNIST.is_dir():
            sources["MNIST t10k (8,000 / 2,000)"] = f"mnist:{MNIST}"
        else:
            print(f"skipping MNIST: {MNIST} not found", file=sys.stderr)
        rows = []
        for source_name, source in sources.items():
            for model_name, (latent_dim, hidden) in MODELS.items():
                for conditional in (False, True):
                    started = time.perf_counter()
                    result = run(TrainJobConfig(data=source, latent_dim=latent_dim, hidden_sizes=hidden, conditional=conditional,
                                                train=TrainConfig(epochs=args.epochs), register_as="quality-bench",
                                                report_dir=f"{folder}/report"))
                    total_s = time.perf_counter() - started
                    metrics = result.quality.metrics
                    report_started = time.perf_counter()
                    from jobs import report as reports

                    reports.model_report(f"quality-bench/{result.pinned.version}", reports.ReportConfig(out_dir=f"{folder}/again"))
                    report_s = time.perf_counter() - report_started  # classifier cached: the report alone
                    row = {"data": source_name, "model": model_name, "conditional": conditional,
                           "held_out_neg_elbo": result.val_neg_elbo, "train_s": result.train_seconds,
                           "train_and_report_s": total_s, "report_10k_s": report_s,
                           **{key: metrics.get(key) for key in KEYS},
                           "per_class_frechet": metrics.get("per_class_frechet_distance"),
                           "per_class_frechet_floor": metrics.get("per_class_frechet_floor")}
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"epochs": args.epochs, "command": "python benchmarks/quality.py " + " ".join(sys.argv[1:]),
                                          "rows": rows}, indent=2))
    header = "| data | model | kind | held-out -ELBO (nats) | Frechet (floor) | precision (floor) | recall (floor) | coverage | memorised | label acc. | train s |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for row in rows:
        fmt = lambda value: "-" if value is None else f"{value:.3g}"  # noqa: E731
        print(f"| {row['data']} | {row['model']} | {'conditional' if row['conditional'] else 'unconditional'} | "
              f"{row['held_out_neg_elbo']:.2f} | {fmt(row['frechet_distance'])} ({fmt(row['frechet_floor'])}) | "
              f"{fmt(row['precision'])} ({fmt(row['precision_floor'])}) | {fmt(row['recall'])} ({fmt(row['recall_floor'])}) | "
              f"{fmt(row['coverage'])} | {fmt(row['memorisation_share'])} | {fmt(row['label_accuracy'])} | {row['train_s']:.1f} |")


if __name__ == "__main__":
    main()
