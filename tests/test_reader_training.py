"""README.md "Training on a vaegen dataset", run verbatim: its Python block is extracted from the README and
executed against a real dataset (written by the job's PartWriter) of a conditional decoder registered in a real
SQLite MLflow store, with torchdata's StatefulDataLoader and 2 worker processes; then what it promises is checked."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import readme_block
from jobs.generate.spec import DatasetSpec
from registry import models
from tiny_datasets import write_dataset
from vae_core.config import VAEConfig
from vae_core.model import VAE
from vae_core.training import TrainResult

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Training on a vaegen dataset"
N = 2_000


@pytest.fixture(scope="module")
def conditional_dataset(module_sqlite, tmp_path_factory) -> Path:
    torch.manual_seed(2)
    config = VAEConfig(num_classes=10, class_prior=(0.1,) * 10)
    result = TrainResult(model=VAE(config), history=[], val_neg_elbo=40.0, train_size=1, holdout_size=1, seconds=0.0)
    with models.training_run("vaegen-train", "readme", {}) as run:
        pinned = run.register(result, "readme-cvae", {})
    loaded = models.load_decoder(pinned)
    spec = DatasetSpec(
        model_name=pinned.name,
        model_version=pinned.version,
        n=N,
        seed=42,
        latent_dim=2,
        sample_shape=(8, 8),
        rows_per_shard=1_000,
        block_rows=256,
        num_classes=10,
        label_policy="balanced",
        label_classes=tuple(range(10)),
        class_prior=(0.1,) * 10,
    )
    return write_dataset(
        tmp_path_factory.mktemp("datasets"), spec, loaded.config, loaded.state, model=dataclasses.asdict(pinned)
    )


def test_the_readme_training_block_runs_verbatim_and_keeps_its_promises(conditional_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope = {"DIR": str(conditional_dataset)}
    exec(compile(readme_block(SECTION, "python"), "README.md", "exec"), scope)  # noqa: S102 (the README's own lines)
    assert (tmp_path / "checkpoint.pt").exists()
    uninterrupted = np.concatenate([batch["sample_id"].numpy() for batch in scope["loader"]()])
    seen, rest = (np.concatenate([ids.numpy() for ids in scope[name]]) for name in ("seen", "rest"))
    assert len(seen) == 3 * 256 and np.array_equal(np.concatenate([seen, rest]), uninterrupted)
    elsewhere = np.concatenate([ids.numpy() for ids in scope["elsewhere"]])
    assert np.array_equal(np.sort(np.concatenate([seen, elsewhere])), np.arange(N))  # 2 workers -> 1: each row once
    stored = next(iter(scope["loader"](workers=0)))
    decoded = next(iter(torch.utils.data.DataLoader(scope["decoded"], batch_size=256)))
    for name in ("sample_id", "x", "label"):
        assert torch.equal(stored[name], decoded[name]), name
