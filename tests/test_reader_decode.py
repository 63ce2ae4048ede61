"""Decode on read (jobs/reader_decode.py) and recipe-only datasets (jobs/generate/recipe.py), against a real
SQLite MLflow registry (conftest.py) holding untrained MLP and conv decoders, conditional and not: the rows a
reader regenerates from the manifest equal, bit for bit, the rows the job's own PartWriter stored."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from helpers import invoke
from jobs import reader
from jobs.generate.records import Manifest
from jobs.generate.spec import DatasetSpec
from registry import models
from tiny_datasets import write_dataset
from vae_core.config import VAEConfig
from vae_core.errors import UsageError
from vae_core.model import VAE
from vae_core.training import TrainResult

CONFIGS = {
    "mlp": VAEConfig(),
    "mlp-cond": VAEConfig(num_classes=10, class_prior=(0.1,) * 10),
    "conv": VAEConfig(architecture="conv", conv_channels=(8, 16)),
    "conv-cond": VAEConfig(architecture="conv", conv_channels=(8, 16), num_classes=10, class_prior=(0.1,) * 10),
}


@dataclasses.dataclass(frozen=True)
class Registered:
    pinned: models.PinnedModel
    loaded: models.LoadedDecoder


@pytest.fixture(scope="module")
def decoders(module_sqlite) -> dict[str, Registered]:
    """One seeded, untrained decoder per architecture and conditioning, registered as dec-<kind>/1."""
    registered = {}
    for kind, config in CONFIGS.items():
        torch.manual_seed(1)
        result = TrainResult(
            model=VAE(config), history=[], val_neg_elbo=40.0, train_size=1, holdout_size=1, seconds=0.0
        )
        with models.training_run("vaegen-train", kind, {}) as run:
            pinned = run.register(result, f"dec-{kind}", {})
        registered[kind] = Registered(pinned, models.load_decoder(pinned))
    return registered


def stored_dataset(root: Path, decoder: Registered, **fields) -> reader.Dataset:
    """A dataset of `decoder` written by the job's PartWriter (no Ray), its manifest pinning the registered version."""
    config = decoder.loaded.config
    spec = DatasetSpec(
        **{
            "model_name": decoder.pinned.name,
            "model_version": decoder.pinned.version,
            "n": 700,
            "seed": 42,
            "latent_dim": config.latent_dim,
            "sample_shape": tuple(config.input_shape),
            "rows_per_shard": 300,
            "block_rows": 128,
            **fields,
            **(
                {
                    "num_classes": 10,
                    "label_policy": "balanced",
                    "label_classes": tuple(range(10)),
                    "class_prior": tuple(config.class_prior),
                }
                if config.conditional
                else {}
            ),
        }
    )
    return reader.open_dataset(
        str(write_dataset(root, spec, config, decoder.loaded.state, model=dataclasses.asdict(decoder.pinned)))
    )


def batches(stream) -> dict[str, np.ndarray]:
    loaded = list(DataLoader(stream, batch_size=64))
    return {name: torch.cat([batch[name] for batch in loaded]).numpy() for name in loaded[0]}


# every dtype with MLP and conv, conditional and not, in six datasets rather than all twelve pairs
@pytest.mark.parametrize(
    ("kind", "dtype"),
    [
        ("mlp", "float32"),
        ("mlp-cond", "float16"),
        ("mlp", "uint8"),
        ("conv", "float16"),
        ("conv-cond", "uint8"),
        ("conv-cond", "float32"),
    ],
)
def test_decode_on_read_equals_the_stored_rows(decoders, tmp_path, kind, dtype):
    dataset = stored_dataset(tmp_path, decoders[kind], dtype=dtype)
    columns = ["sample_id", "seed", "z", "x"] + (["label"] if dataset.has_labels else [])
    for split in ({}, {"rank": 1, "world_size": 3}):
        stored = batches(dataset.torch(columns=columns, shuffle=True, seed=9, **split))
        decoded = batches(dataset.torch(columns=columns, shuffle=True, seed=9, source="decode", **split))
        assert stored.keys() == decoded.keys() and len(stored["sample_id"]) == (700 if not split else 233)
        for name in columns:
            assert stored[name].dtype == decoded[name].dtype, name
            assert np.array_equal(stored[name], decoded[name]), name  # bit for bit, in the same order
    assert stored["x"].std() > 0 and not np.array_equal(stored["sample_id"], np.sort(stored["sample_id"]))


def test_decoding_elsewhere_than_where_the_rows_were_made_says_so(decoders, tmp_path):
    dataset = stored_dataset(tmp_path, decoders["mlp"])
    made_on_cuda = Manifest.from_json({**dataset.manifest.to_json(), "execution": {"device": "cuda"}})
    dataset = dataclasses.replace(dataset, manifest=made_on_cuda)
    with pytest.warns(reader.reader_decode.DeviceBitsWarning, match="made on cuda: x differs .* in the last bits"):
        dataset.torch(source="decode")
    with pytest.raises(UsageError, match="source must be one of stored, decode, got 'parts'"):
        dataset.torch(source="parts")


def test_a_recipe_only_dataset_of_a_billion_rows_is_created_inspected_and_read_in_seconds(decoders, tmp_path):
    started = time.perf_counter()
    made = invoke(
        "generate",
        "--recipe-only",
        "--n",
        str(10**9),
        "--model",
        "dec-mlp-cond/1",
        "--seed",
        "42",
        "--out",
        str(tmp_path),
    )
    assert made.exit_code == 0, made.output
    location = Path(made.stdout.split("location: ")[1].strip())
    assert location.name == "dec-mlp-cond-v1-n1000000000-seed42-float32-labels-balanced-f3-recipe"
    assert [path.name for path in location.iterdir()] == ["_manifest.json"]
    assert (location / "_manifest.json").stat().st_size < 16_000  # kilobytes for 10**9 rows
    created = time.perf_counter()
    inspected = invoke("inspect", str(location))
    assert inspected.exit_code == 0, inspected.output
    assert "rows: 1,000,000,000 in 0 files" in inspected.stdout and "verified: recipe-only" in inspected.stdout
    assert "counts {'0': 100000000, " in inspected.stdout
    dataset = reader.open_dataset(str(location))
    assert dataset.recipe_only and dataset.n == 10**9
    for stored_read in (dataset.torch, dataset.to_numpy):
        with pytest.raises(UsageError, match="is recipe-only .*torch\\(source='decode'\\)"):
            stored_read()
    first = next(iter(DataLoader(dataset.torch(columns=["sample_id", "x", "label"], source="decode"), batch_size=256)))
    shuffled = next(
        iter(
            DataLoader(
                dataset.torch(columns=["sample_id"], shuffle=True, source="decode", rank=2, world_size=8),
                batch_size=256,
            )
        )
    )
    read = time.perf_counter()
    print(
        f"recipe of 10**9 rows: created in {created - started:.2f} s, inspected in {read - created:.2f} s "
        f"with its first rows read"
    )
    # the same rows as a stored dataset of the same model and seed (the job's default decode grid)
    stored = stored_dataset(tmp_path / "stored", decoders["mlp-cond"], n=1_000, rows_per_shard=1_000, block_rows=4_096)
    expected = stored.to_numpy(["sample_id", "x", "label"])
    for name in ("sample_id", "x", "label"):
        assert np.array_equal(first[name].numpy(), expected[name][:256]), name
    ids = shuffled["sample_id"].tolist()
    assert min(ids) >= 0 and max(ids) < 10**9 and len(set(ids)) == 256
    assert read - started < 60  # seconds, on a loaded 2-core machine (measured: see the printed line)
    again = invoke(
        "generate",
        "--recipe-only",
        "--n",
        str(10**9),
        "--model",
        "dec-mlp-cond/1",
        "--seed",
        "42",
        "--out",
        str(tmp_path),
    )
    assert again.exit_code == 0 and "already committed" in again.output


def test_a_tampered_recipe_fails_inspect_and_recipe_only_takes_no_resume(decoders, tmp_path):
    import json

    from jobs.generate.config import GenerateConfig

    made = invoke(
        "generate", "--recipe-only", "--n", "5000", "--model", "dec-mlp/1", "--seed", "3", "--out", str(tmp_path)
    )
    assert made.exit_code == 0, made.output
    location = Path(made.stdout.split("location: ")[1].strip())
    assert invoke("inspect", str(location)).exit_code == 0
    record = json.loads((location / "_manifest.json").read_text())
    (location / "_manifest.json").write_text(json.dumps({**record, "n": 6_000}))  # rows the recipe does not define
    inspected = invoke("inspect", str(location))
    assert inspected.exit_code == 1 and "PROBLEM manifest:" in inspected.stdout, inspected.output
    with pytest.raises(UsageError, match="--recipe-only writes one file at once, there is nothing to --resume"):
        GenerateConfig(n=None, resume=str(location), recipe_only=True)
