"""Convolutional VAEs with a prior flow (issue 14), end to end on real parts: train and register with the real
job, load without pickle, serve the generic pyfunc, promote behind the gates, generate on a real local Ray
(content identical for 1 and 2 workers and two shard sizes, resume byte for byte) and report; the renamed
class_coverage; and a version registered before these fields existed still loads."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from mlflow import MlflowClient

from helpers import assert_one_error_line, generate_dataset, invoke, part_hashes, read_rows
from jobs import report as reports
from jobs.generate import manifest
from jobs.generate.spec import part_name
from jobs.train import TrainJobConfig, TrainJobResult, run
from registry import evidence, gates, models
from registry.models import TrainingRun
from vae_core import seeds
from vae_core.config import VAEConfig
from vae_core.model import VAE
from vae_core.sampling import block_ranges

CONV, COND = "vae-conv", "vae-conv-cond"
N, SEED, BLOCK_ROWS = 6_000, 23, 1_000  # 1,000-row decode blocks: every worker and shard size meets the same blocks
# Gate options for tiny test models: gate 3 runs and prints every check, but nothing a 3-epoch model cannot meet.
LENIENT = (
    "--min-precision",
    "0",
    "--min-class-coverage",
    "0",
    "--max-frechet-ratio",
    "1000",
    "--min-label-accuracy",
    "0",
    "--min-tstr-ratio",
    "0",
    "--max-detection-auc",
    "1",
)  # a briefly trained model's samples are told apart


@dataclasses.dataclass(frozen=True)
class Trained:
    conv: TrainJobResult
    cond: TrainJobResult


def tiny_conv(name: str, report_dir: Path, **fields) -> TrainJobConfig:
    """The conv recipe of `vaegen train`, shrunk: 4 and 8 channels, 3 epochs, a 2-layer flow fitted in 6 steps."""
    return TrainJobConfig.for_architecture(
        "conv",
        train={"epochs": 3, "prior_flow_steps": 6},
        conv_channels=(4, 8),
        latent_dim=4,
        prior_flow_layers=2,
        register_as=name,
        report_dir=str(report_dir),
        **fields,
    )


@pytest.fixture(scope="module")
def trained(module_sqlite, cache_root) -> Trained:
    root = module_sqlite.root
    return Trained(
        conv=run(tiny_conv(CONV, root / "report-conv")),
        cond=run(tiny_conv(COND, root / "report-cond", conditional=True)),
    )


def decode_on_the_grid(loaded: models.LoadedDecoder, n: int, seed: int, labels: np.ndarray | None) -> np.ndarray:
    """x as the job must write it: global blocks of BLOCK_ROWS ids decoded whole, on one thread as CPU workers do."""
    decoder = loaded.build()
    blocks = block_ranges(0, n, BLOCK_ROWS)
    ids = np.arange(blocks[-1][1], dtype=np.int64)
    z = torch.from_numpy(seeds.latents(seeds.row_seeds(seed, ids), loaded.config.latent_dim))
    label_tensor = None if labels is None else torch.from_numpy(labels.astype(np.int64))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return np.concatenate(
                [
                    decoder(z[start:stop], None if label_tensor is None else label_tensor[start:stop]).numpy()
                    for start, stop in blocks
                ]
            )[:n]
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------- registry


def test_a_conv_version_rebuilds_from_its_config_loads_without_pickle_and_serves_the_pyfunc(trained, no_pickle):
    for name, reference in ((CONV, trained.conv), (COND, trained.cond)):
        loaded = models.load_decoder(models.resolve(f"{name}/1"))
        config = loaded.config
        assert (config.architecture, config.conv_channels, config.prior_flow_layers) == ("conv", (4, 8), 2)
        assert models.version_config(loaded.pinned) == config  # from the version's tag, no download
        assert all(value.dtype == np.float32 for value in loaded.state.values())
        assert any(key.startswith("net.up.") for key in loaded.state) and any(
            key.startswith("prior_flow.") for key in loaded.state
        )
        z = np.random.default_rng(3).standard_normal((12, 4)).astype(np.float32)
        labels = np.arange(12, dtype=np.int64) % 10
        model_input = {"z": z, "label": labels} if config.conditional else z
        predicted = mlflow.pyfunc.load_model(f"models:/{name}/1").predict(model_input)
        with torch.no_grad():
            ours = loaded.build()(torch.from_numpy(z), torch.from_numpy(labels) if config.conditional else None).numpy()
        assert predicted.shape == (12, 8, 8) and predicted.dtype == np.float32
        np.testing.assert_array_equal(predicted, ours)
        params = MlflowClient().get_run(reference.pinned.run_id).data.params
        assert (
            params["architecture"] == "conv"
            and params["prior_flow_layers"] == "2"
            and int(params["torch_threads"]) >= 1
        )


def test_a_version_registered_before_the_conv_fields_still_loads_serves_and_passes_the_load_gate(
    module_sqlite, no_pickle
):
    """config.json and the config tag exactly as vaegen wrote them before `architecture`, `conv_channels` and the
    prior flow existed; the weights are an MLP's, keyed as they always were."""
    older = {
        "class_prior": [],
        "hidden_sizes": [16],
        "input_shape": [8, 8],
        "latent_dim": 2,
        "num_classes": 0,
        "pixel_semantics": "bernoulli-mean-in-[0,1]",
    }
    torch.manual_seed(0)
    model = VAE(VAEConfig.from_dict(older))
    with models.training_run("vaegen-train", "older", {}), tempfile.TemporaryDirectory() as folder:
        weights, config_path = Path(folder, "weights.npz"), Path(folder, "config.json")
        np.savez(weights, **{key: value.numpy() for key, value in model.decoder.state_dict().items()})
        config_path.write_text(json.dumps(older, sort_keys=True))
        TrainingRun._log_pyfunc(model.config, weights, config_path, "vae-older")
    MlflowClient().set_model_version_tag("vae-older", "1", "vaegen.config", json.dumps(older, sort_keys=True))
    pinned = models.resolve("vae-older/1")
    loaded = models.load_decoder(pinned)
    assert loaded.config.architecture == "mlp" and loaded.config.prior_flow_layers == 0
    assert models.version_config(pinned) == loaded.config
    z = np.random.default_rng(1).standard_normal((5, 2)).astype(np.float32)
    with torch.no_grad():
        expected = model.decoder(torch.from_numpy(z)).numpy()
    np.testing.assert_array_equal(loaded.build()(torch.from_numpy(z)).detach().numpy(), expected)
    np.testing.assert_array_equal(mlflow.pyfunc.load_model("models:/vae-older/1").predict(z), expected)
    assert gates.gate_loads(loaded, 64).passed


# ---------------------------------------------------------------- quality gates and the renamed class coverage


def test_conv_versions_carry_the_new_metrics_and_promote_behind_the_gates(trained):
    for name, trained_result in ((CONV, trained.conv), (COND, trained.cond)):
        tags = MlflowClient().get_model_version(name, "1").tags
        for key in (
            "class_coverage",
            "density",
            "coverage",
            "density_floor",
            "coverage_floor",
            "dcr_ratio",
            "trtr_accuracy",
        ):
            assert float(tags[f"vaegen.quality.{key}"]) == pytest.approx(
                getattr(trained_result.quality.metrics, key), rel=1e-5
            ), key
        result = invoke("promote", f"{name}/1", "--reason", "conv", *LENIENT)
        assert result.exit_code == 0, result.output
        gate = next(line for line in result.stdout.splitlines() if line.startswith("gate quality"))
        assert "PASS" in gate and "class_coverage" in gate and "frechet_ratio" in gate, gate
        assert ("tstr_ratio" in gate) == (name == COND), gate
        assert models.resolve(f"{name}@champion").version == 1
    metrics = trained.cond.quality.metrics
    assert 0.1 < metrics.tstr_accuracy <= 1 and metrics.trtr_accuracy > 0.9
    assert trained.conv.quality.metrics.tstr_accuracy is None  # no labels asked for, nothing to train on
    assert "vaegen.quality.tstr_accuracy" not in MlflowClient().get_model_version(CONV, "1").tags


def test_the_renamed_coverage_option_is_refused_with_its_new_name(trained):
    result = invoke("promote", f"{CONV}/1", "--reason", "x", "--min-coverage", "0.8")
    assert_one_error_line(result, 2, "--min-coverage was renamed --min-class-coverage", "--min-class-coverage 0.8")


def test_a_report_from_before_class_coverage_is_refused_by_the_gate_not_reread(trained):
    loaded = models.load_decoder(models.resolve(f"{CONV}/1"))
    older_tags = {
        key: value
        for key, value in loaded.tags.items()
        if key.startswith("quality.") and key not in ("quality.class_coverage", "quality.coverage")
    }
    older_tags["quality.coverage"] = "1.0"  # what an older report stored there: the class share
    older_tags[evidence.SEAL_TAG] = evidence.seal(loaded.artifacts_sha256, older_tags)  # as vaegen sealed that report
    gate = gates.gate_quality(dataclasses.replace(loaded, tags=older_tags), gates.QualityThresholds())
    assert not gate.passed
    assert gate.detail.startswith("cannot compare") and "predates class_coverage" in gate.detail
    assert f"vaegen report --model {CONV}/1" in gate.detail


# ---------------------------------------------------------------- generation contracts on a real local Ray


@dataclasses.dataclass(frozen=True)
class Generated:
    one_worker: object
    two_workers: object
    other_shards: object
    cond: object


@pytest.fixture(scope="module")
def generated(trained, local_ray_module, tmp_path_factory) -> Generated:
    local_ray_module.ensure()
    root = tmp_path_factory.mktemp("conv-datasets")
    options = {"batch_size": BLOCK_ROWS}
    return Generated(
        one_worker=generate_dataset(root / "one", f"{CONV}/1", N, SEED, 2_000, num_workers=1, **options),
        two_workers=generate_dataset(root / "two", f"{CONV}/1", N, SEED, 2_000, num_workers=2, **options),
        other_shards=generate_dataset(root / "other", f"{CONV}/1", N, SEED, 1_500, **options),
        cond=generate_dataset(root / "cond", f"{COND}/1", N, SEED, 2_000, num_workers=2, **options),
    )


@pytest.mark.slow
def test_conv_content_is_the_same_for_any_worker_count_and_shard_size(generated):
    one, two, other = (
        Path(result.location) for result in (generated.one_worker, generated.two_workers, generated.other_shards)
    )
    assert len(part_hashes(one)) == 3 and part_hashes(one) == part_hashes(two)  # byte-identical parts
    assert len(part_hashes(other)) == 4 and pq.read_table(other).equals(pq.read_table(two))  # same rows, other files
    rows = read_rows(str(two))
    np.testing.assert_array_equal(rows["sample_id"], np.arange(N))
    np.testing.assert_array_equal(
        rows["z"], seeds.latents(seeds.row_seeds(SEED, np.arange(N)), 4)
    )  # z: the N(0, I) draw
    loaded = models.load_decoder(models.resolve(f"{CONV}/1"))
    np.testing.assert_array_equal(
        rows["x"], decode_on_the_grid(loaded, N, SEED, None)
    )  # x: the registered decoder of z
    cond = read_rows(generated.cond.location)
    np.testing.assert_array_equal(cond["label"], np.arange(N) % 10)
    cond_loaded = models.load_decoder(models.resolve(f"{COND}/1"))
    np.testing.assert_array_equal(cond["x"], decode_on_the_grid(cond_loaded, N, SEED, np.arange(N) % 10))


@pytest.mark.slow
def test_a_conv_dataset_resumes_byte_for_byte(generated, local_ray, tmp_path):
    clean = Path(generated.one_worker.location)
    unfinished = tmp_path / "out" / clean.name
    shutil.copytree(clean, unfinished)
    record = json.loads((unfinished / manifest.MANIFEST).read_text())
    (unfinished / manifest.MANIFEST).unlink()  # as if the driver died before the commit
    (unfinished / part_name(1)).unlink()
    (unfinished / manifest.PROGRESS).write_text(
        json.dumps({key: record[key] for key in ("format", "dataset_id", "spec", "spec_fingerprint", "model")})
    )
    result = invoke("generate", "--resume", str(unfinished))
    assert result.exit_code == 0, result.output
    assert part_hashes(unfinished) == part_hashes(clean)


@pytest.mark.slow
def test_a_conditional_conv_dataset_reports_tstr_beside_trtr(generated, tmp_path):
    result = reports.dataset_report(
        generated.cond.location, reports.ReportConfig(n=N, out_dir=str(tmp_path / "report"))
    )
    metrics = result.metrics
    assert metrics.subject == "dataset" and metrics.n_generated == N
    assert metrics.tstr_accuracy is not None and metrics.trtr_accuracy > 0.9
    for key in ("density", "coverage", "density_floor", "coverage_floor", "dcr_p5", "dcr_floor_p5", "dcr_ratio"):
        assert getattr(metrics, key) is not None and np.isfinite(getattr(metrics, key)), key
    assert json.loads((tmp_path / "report" / "report.json").read_text())["tstr_accuracy"] == metrics.tstr_accuracy
