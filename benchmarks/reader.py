"""Rows per second into a training loop: the stored dataset vs decode on read, for the MLP and the conv recipe at 28x28.

    python benchmarks/reader.py [--n 20000] [--workers 0 2] [--device cpu] [--out benchmarks/out/reader.json]

One MLflow store (SQLite, in a temporary folder) holds an untrained decoder of each `vaegen train` recipe at
28x28 (vae_core.config.RECIPES; decode cost does not depend on training): mlp 2 -> 128 -> 784, conv z16 ->
(32, 64) transposed convolutions with its 8-layer prior flow. For each, one float32 dataset of n rows is
written by the job's own PartWriter (default 4,096-row decode blocks, 65,536-row parts), then read for one
shuffled epoch through `open_dataset(DIR).torch(batch_size=256, ...)` and torch's DataLoader(batch_size=None)
into a training step (a linear layer on x, Adam): source="stored" reads and decompresses the parts,
source="decode" regenerates every row from the manifest. Reported: rows/s of the epoch, and the machine's load
average, since the figures on a shared machine move with it, and rows per CPU second (this process and its
DataLoader workers), which move less.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BATCH_ROWS = 256


def register_recipes() -> dict:
    """{architecture: (pinned, loaded)} for an untrained 28x28 decoder of each recipe, in the active store."""
    import torch

    from registry import models
    from vae_core.config import RECIPES, VAEConfig
    from vae_core.model import VAE
    from vae_core.training import TrainResult

    registered = {}
    for architecture, recipe in RECIPES.items():
        torch.manual_seed(0)
        config = VAEConfig(
            input_shape=(28, 28),
            latent_dim=recipe["latent_dim"],
            hidden_sizes=recipe["hidden_sizes"],
            architecture=architecture,
            conv_channels=recipe["conv_channels"],
            prior_flow_layers=recipe["prior_flow_layers"],
        )
        result = TrainResult(model=VAE(config), history=[], val_neg_elbo=0.0, train_size=1, holdout_size=1, seconds=0.0)
        with models.training_run("benchmark", f"reader-{architecture}", {}) as run:
            pinned = run.register(result, f"bench-reader-{architecture}", {})
        registered[architecture] = (pinned, models.load_decoder(pinned))
    return registered


def write_dataset(root: Path, pinned, loaded, n: int) -> str:
    """A committed float32 dataset of n rows, written without Ray by the job's PartWriter; returns its folder."""
    from jobs.generate import manifest
    from jobs.generate.parts import PartWriter
    from jobs.generate.predictor import Predictor
    from jobs.generate.spec import DatasetSpec
    from jobs.generate.storage import Storage

    config = loaded.config
    spec = DatasetSpec(
        model_name=pinned.name,
        model_version=pinned.version,
        n=n,
        seed=0,
        latent_dim=config.latent_dim,
        sample_shape=tuple(config.input_shape),
    )
    storage = Storage(str(root))
    writer = PartWriter(Predictor(spec, config.to_dict(), loaded.state), storage, spec.dataset_id)
    parts = [writer(shard) for shard in range(spec.num_shards)]
    storage.delete_dir(spec.dataset_id, "_parts")
    record = manifest.build(
        spec,
        dataclasses.asdict(pinned),
        parts,
        timings={},
        lineage={"tracking_uri": None},
        execution={"device": "cpu"},
        label_counts=None,
    )
    storage.write_json(record.to_json(), spec.dataset_id, manifest.MANIFEST)
    return storage.location(spec.dataset_id)


def epoch_rows_per_s(location: str, source: str, workers: int, device: str) -> dict:
    """One shuffled epoch into a training step; the reader is built (weights loaded) before the clock starts."""
    import torch
    from torch.utils.data import DataLoader

    from jobs.reader import open_dataset

    dataset = open_dataset(location, verify=False)
    # batches made by the stream (numpy slices), not collated row by row: the reader's fast path
    stream = dataset.torch(columns=["x"], shuffle=True, seed=0, batch_size=BATCH_ROWS, source=source, device=device)
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    model = torch.nn.Linear(28 * 28, 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rows, started, cpu_started = 0, time.perf_counter(), cpu_s()
    for batch in loader:
        loss = model(batch["x"].flatten(1).float()).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rows += len(batch["x"])
    # the epoch's end shut the (non-persistent) workers down and reaped them: RUSAGE_CHILDREN holds their CPU time
    seconds, cpu_seconds = time.perf_counter() - started, cpu_s() - cpu_started
    return {
        "source": source,
        "workers": workers,
        "rows": rows,
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds, 1),
        "cpu_s": round(cpu_seconds, 3),
        "rows_per_cpu_s": round(rows / cpu_seconds, 1),
    }


def cpu_s() -> float:
    """CPU seconds of this process and its reaped children (DataLoader workers end with their epoch): on a shared
    machine, rows per CPU second move less with the load than rows per second."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="rows per dataset")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts to measure")
    parser.add_argument("--device", default="cpu", help="where decode on read decodes (cpu, cuda)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "reader.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vaegen-bench-reader-") as folder:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
        os.chdir(folder)  # MLflow's local artifacts land here
        results = []
        load_before = os.getloadavg()
        for architecture, (pinned, loaded) in register_recipes().items():
            location = write_dataset(Path(folder) / "datasets", pinned, loaded, args.n)
            for workers in args.workers:
                for source in ("stored", "decode"):
                    result = {"architecture": architecture, **epoch_rows_per_s(location, source, workers, args.device)}
                    print(json.dumps(result), file=sys.stderr)
                    results.append(result)
    report = {
        "n": args.n,
        "batch_rows": BATCH_ROWS,
        "device": args.device,
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "machine": platform.platform(),
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
