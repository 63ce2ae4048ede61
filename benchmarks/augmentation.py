"""One training recipe variant, trained and reported as `vaegen train` does, its quality and privacy figures
appended to a JSON-lines file: how docs/decisions.md's augmentation table (issue 25) was measured.

    python benchmarks/augmentation.py NAME '{"latent_dim": 32, "train": {"augment_shift": 2, "augment_rotate": 10}}'

OVERRIDES are fields of jobs.train.TrainJobConfig over the conv recipe ("train": TrainConfig fields; a list
becomes a tuple); conditional unless {"conditional": false}. Data: --data [default: MNIST's test split in
../shared/data/mnist]. torch uses THREADS threads (env, default 2). Each variant uses its own MLflow store."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KEYS = (
    "frechet_distance",
    "frechet_floor",
    "precision",
    "recall",
    "coverage",
    "label_accuracy",
    "tstr_accuracy",
    "trtr_accuracy",
    "memorisation_share",
    "dcr_ratio",
    "mia_auc",
    "mia_auc_floor",
    "authenticity",
    "authenticity_floor",
    "detection_auc",
    "detection_auc_floor",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("overrides", help="JSON: TrainJobConfig fields over the conv recipe")
    parser.add_argument("--data", default=f"mnist:{REPO.parent / 'shared' / 'data' / 'mnist'}")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "augmentation.jsonl"))
    args = parser.parse_args()
    overrides = json.loads(args.overrides)
    folder = tempfile.mkdtemp(prefix="vaegen-augmentation-")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
    os.environ.setdefault("VAEGEN_CACHE", f"{folder}/cache")
    import torch

    from jobs.train import TrainJobConfig, run

    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    train = overrides.pop("train", {})
    conditional = overrides.pop("conditional", True)
    fields = {key: tuple(value) if isinstance(value, list) else value for key, value in overrides.items()}
    config = TrainJobConfig.for_architecture(
        "conv",
        data=args.data,
        conditional=conditional,
        register_as="augmentation-bench",
        report_dir=f"{folder}/report",
        train=train,
        **fields,
    )
    started = time.perf_counter()
    result = run(config)
    metrics = result.quality.metrics
    row = {
        "name": args.name,
        "overrides": args.overrides,
        "data": args.data,
        "val_neg_elbo": result.val_neg_elbo,
        "train_s": result.train_seconds,
        "total_s": time.perf_counter() - started,
        **{key: metrics.figure(key) for key in KEYS},
    }
    print(json.dumps(row))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as sink:
        sink.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    sys.exit(main())
