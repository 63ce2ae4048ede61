"""Held-out loss, generated-data quality and training time of every shipped model, measured in one run.

    python benchmarks/quality.py [--threads 2] [--only conv] [--out benchmarks/out/quality.json]

Data: scikit-learn's digits (first 80% train, last 20% held out) and, when ../shared/data/mnist exists, the
MNIST test split (first 8,000 images train, last 2,000 held out). Models, each unconditional and as a
class-conditional VAE: the tutorial's MLP (latent 2, 128 hidden: `--arch mlp`), a larger MLP (latent 16, 512),
that MLP with the prior flow, and the conv recipe (`vaegen train`'s default). Each one is trained by the
real job (TrainJobConfig, as `vaegen train` builds it) with that recipe's defaults, registered, and
reported as `vaegen report` does (10,000 samples from the fixed report seed, reference classifier trained on
the train split); TSTR for conditional models. torch uses --threads threads (recorded in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from vae_core.quality_names import HEADLINE

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO.parent / "shared" / "data" / "mnist"
# (name, architecture, overrides of that architecture's recipe)
MODELS = (
    ("default MLP (latent 2, 128)", "mlp", {}),
    ("larger MLP (latent 16, 512)", "mlp", {"latent_dim": 16, "hidden_sizes": (512,)}),
    ("larger MLP + prior flow", "mlp", {"latent_dim": 16, "hidden_sizes": (512,), "prior_flow_layers": 8}),
    ("conv + prior flow (`vaegen train` default)", "conv", {}),
    # issue 25's recipe for private data: the conv recipe, latent 32, trained on randomly shifted and rotated images
    (
        "conv + prior flow + augmentation, latent 32",
        "conv",
        {"latent_dim": 32, "train": {"augment_shift": 2, "augment_rotate": 10}},
    ),
)
KEYS = tuple(key for key in HEADLINE if key != "mean_confidence")  # the figures the README table shows


def fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def markdown(rows: list[dict]) -> str:
    lines = [
        "| data | model | kind | held-out -ELBO | Fréchet (floor) | precision (floor) | recall (floor) | "
        "density (floor) | coverage (floor) | label acc. | TSTR (TRTR) | memorised | DCR ratio | MIA AUC (floor) | "
        "authenticity (floor) | detection AUC (floor) | train s |",
        "|" + " --- |" * 3 + " ---: |" * 14,
    ]
    for row in rows:
        lines.append(
            f"| {row['data']} | {row['model']} | {'conditional' if row['conditional'] else 'unconditional'} | "
            f"{row['held_out_neg_elbo']:.1f} | {fmt(row['frechet_distance'])} ({fmt(row['frechet_floor'])}) | "
            f"{fmt(row['precision'])} ({fmt(row['precision_floor'])}) | "
            f"{fmt(row['recall'])} ({fmt(row['recall_floor'])}) | "
            f"{fmt(row['density'])} ({fmt(row['density_floor'])}) | "
            f"{fmt(row['coverage'])} ({fmt(row['coverage_floor'])}) | "
            f"{fmt(row['label_accuracy'])} | {fmt(row['tstr_accuracy'])} ({fmt(row['trtr_accuracy'])}) | "
            f"{fmt(row['memorisation_share'], 2)} | {fmt(row['dcr_ratio'])} | "
            f"{fmt(row['mia_auc'])} ({fmt(row['mia_auc_floor'])}) | "
            f"{fmt(row['authenticity'])} ({fmt(row['authenticity_floor'])}) | "
            f"{fmt(row['detection_auc'])} ({fmt(row['detection_auc_floor'])}) | {row['train_s']:.0f} |"
        )
    return "\n".join(lines)


def privacy_seconds(reports, reference: str) -> float:
    """What the privacy block adds to a 10k-sample report: the same report's figures without and with it."""
    from registry import models
    from vae_core import privacy, reference_classifier

    loaded = models.load_decoder(models.resolve(reference))
    config = reports.ReportConfig()
    train, holdout = reports.reference_split(loaded, None)
    classifier, _, _ = reports.classifier_for(train, config)
    generated, _ = reports.draw_images(loaded.build(), config.n, config.seed)
    feats = [
        reference_classifier.embed_and_classify(classifier, images, 4096)[0]
        for images in (train.images, holdout.images, generated)
    ]
    started = time.perf_counter()
    privacy.privacy_metrics(train.images, holdout.images, generated.astype("float32"), *feats)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads [default: one per CPU]")
    parser.add_argument(
        "--only",
        choices=sorted({architecture for _, architecture, _ in MODELS}),
        default=None,
        help="only the models of one architecture",
    )
    parser.add_argument("--data", choices=["digits", "mnist"], default=None, help="only one data source")
    parser.add_argument("--mnist", default=str(MNIST), help="folder of MNIST's IDX files [default: %(default)s]")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "quality.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vaegen-quality-") as folder:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
        os.environ["VAEGEN_CACHE"] = f"{folder}/cache"
        import mlflow
        import torch

        from jobs import report as reports
        from jobs.train import TrainJobConfig, run

        torch.set_num_threads(args.threads)
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        sources = {"digits": "digits"}
        if Path(args.mnist).is_dir():
            sources["MNIST"] = f"mnist:{args.mnist}"
        else:
            print(f"skipping MNIST: {args.mnist} not found", file=sys.stderr)
        if args.data:
            sources = {name: spec for name, spec in sources.items() if name.lower() == args.data}
        rows = []
        for source_name, source in sources.items():
            for model_name, architecture, overrides in MODELS:
                if args.only and architecture != args.only:
                    continue
                for conditional in (False, True):
                    config = TrainJobConfig.for_architecture(
                        architecture,
                        data=source,
                        conditional=conditional,
                        register_as="quality-bench",
                        report_dir=f"{folder}/report",
                        **overrides,
                    )
                    result = run(config)
                    metrics = result.quality.metrics
                    report_started = time.perf_counter()
                    reports.model_report(
                        f"quality-bench/{result.pinned.version}", reports.ReportConfig(root=f"{folder}/again")
                    )
                    report_s = time.perf_counter() - report_started  # the classifier is cached: the report alone
                    privacy_s = privacy_seconds(reports, f"quality-bench/{result.pinned.version}")
                    row = {
                        "data": source_name,
                        "model": model_name,
                        "architecture": architecture,
                        "conditional": conditional,
                        "params": config.params(),
                        "held_out_neg_elbo": result.val_neg_elbo,
                        "train_s": result.train_seconds,
                        "report_10k_s": report_s,
                        "privacy_10k_s": privacy_s,
                        **{key: metrics.figure(key) for key in KEYS},
                        "per_class_frechet": metrics.per_class_frechet_distance,
                        "per_class_frechet_floor": metrics.per_class_frechet_floor,
                    }
                    rows.append(row)
                    print(
                        json.dumps({key: value for key, value in row.items() if not key.startswith("per_class")}),
                        file=sys.stderr,
                        flush=True,
                    )
    total_s = time.perf_counter() - started
    table = markdown(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "command": "python benchmarks/quality.py " + " ".join(sys.argv[1:]),
                "torch_threads": args.threads,
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                },
                "total_s": total_s,
                "rows": rows,
                "table": table,
            },
            indent=2,
        )
    )
    print(table)
    print(
        f"\n{len(rows)} models trained and reported in {total_s:.0f} s on {args.threads} torch threads", file=sys.stderr
    )


if __name__ == "__main__":
    main()
