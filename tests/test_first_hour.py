"""A new user's first hour (issue 22): progress on long steps, previews with a row per class, models that say
what they are, promotions that keep an alias's data shape, mistakes reported early and in the user's words.

Pure functions directly; the commands through click's CliRunner on a real SQLite MLflow store with untrained
decoders registered the way training registers them (conftest.register_untrained_decoder): seconds, not a
training run.
"""

from __future__ import annotations

import io
import json
import re

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import register_untrained_decoder
from jobs import plots
from jobs.cli import main
from jobs.generate import ray_session
from jobs.generate.job import GenerateConfig, dataset_spec
from jobs.progress import Progress
from jobs.train import TrainJobConfig
from registry import descriptions, lineage
from registry.pinned import PinnedModel
from vae_core import data as data_sources
from vae_core.config import RECIPES, VAEConfig
from vae_core.errors import UsageError
from vae_core.training import model_config_for


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


# ---------------------------------------------------------------- progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_off_a_terminal_logs_the_start_then_every_interval_and_the_end_with_total_and_eta():
    stream = io.StringIO()
    with Progress(3_000, "train", unit="steps", stream=stream, log_interval_s=3600) as progress:
        progress.advance(1_000, "epoch 1/3")  # inside the interval: no line
        progress.advance(2_000, "epoch 3/3")  # done: a line
    lines = stream.getvalue().splitlines()
    assert lines[0] == "train: 0/3,000 steps, 0 steps/s, ETA unknown"
    assert len(lines) == 2 and re.fullmatch(
        r"train: 3,000/3,000 steps, [\d,.]+ steps/s, done in [\d.]+ s; epoch 3/3", lines[1]
    ), lines
    stream = io.StringIO()
    progress = Progress(4, "quality report", unit="stages", stream=stream, log_interval_s=0)  # every advance
    progress.advance(1, "features done")
    assert re.fullmatch(
        r"quality report: 1/4 stages, \S+ stages/s, ETA \d+ s; features done", stream.getvalue().splitlines()[1]
    )


def test_progress_on_a_terminal_is_a_bar_with_the_note():
    stream = Terminal()
    with Progress(10, "generate d", unit="parts", stream=stream) as progress:
        progress.advance(10, "part-00000.parquet")
    text = stream.getvalue()
    assert "generate d" in text and "100%" in text and "10/10" in text and "part-00000.parquet" in text
    assert "ETA" not in text  # tqdm's own format: no log lines on a terminal


# ---------------------------------------------------------------- previews


def test_class_rows_put_each_class_on_its_own_row_and_unlabelled_samples_in_a_square():
    images = np.arange(64, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)  # image i is all i
    labels = np.arange(64) % 10  # balanced labels as a dataset holds them: classes cycle
    grid, columns = plots.class_rows(images, labels)
    assert columns == 7 and grid.shape == (70, 2, 2)  # 10 rows of 7: classes 0-3 have 7 samples, the rest 6
    rows = grid[:, 0, 0].reshape(10, 7)
    assert rows[0].tolist() == [0, 10, 20, 30, 40, 50, 60] and rows[9].tolist() == [9, 19, 29, 39, 49, 59, 0]
    capped, columns = plots.class_rows(images, labels, 4)  # a report's preview: the first 4 of each class
    assert columns == 4 and capped[:, 0, 0].reshape(10, 4)[3].tolist() == [3, 13, 23, 33]
    square, columns = plots.class_rows(images, None)
    assert columns == 8 and square is images


# ---------------------------------------------------------------- what a version says it is


@pytest.mark.parametrize("conditional", [False, True])
@pytest.mark.parametrize("architecture", list(RECIPES))
def test_model_facts_and_description_state_each_recipe(architecture, conditional):
    config = TrainJobConfig.for_architecture(architecture, conditional=conditional)
    model_config = model_config_for(
        data_sources.load("digits"),
        config.latent_dim,
        config.hidden_sizes,
        conditional,
        config.architecture,
        config.conv_channels,
        config.prior_flow_layers,
    )
    facts = descriptions.model_facts(model_config.to_dict(), config.params())
    expected = {
        "conv": {
            "architecture": "conv, channels 32,64, RealNVP prior flow of 8 couplings",
            "latent_dim": "16",
            "training_budget": "3000 steps of 128, cosine schedule; prior flow 1000 steps",
        },
        "mlp": {
            "architecture": "MLP, hidden 128",
            "latent_dim": "2",
            "training_budget": "50 epochs of 128, constant schedule",
        },
    }[architecture]
    assert facts == {
        **expected,
        "input_shape": "8x8",
        "recipe": f"--arch {architecture}",
        "conditioning": "class-conditional (10 classes)" if conditional else "unconditional",
    }
    tags, run = {"config": model_config.to_json()}, {"params": config.params()}
    text = descriptions.version_description("m", 1, tags, run, None)
    assert text.startswith(
        ("Class-conditional (10 classes)" if conditional else "Unconditional")
        + f" VAE decoder ({expected['architecture']}), 8x8 samples, latent {expected['latent_dim']}"
    )
    assert f"| training budget | {expected['training_budget']} |" in text


def test_a_recipe_changed_by_flags_names_the_flags():
    config = TrainJobConfig.for_architecture("mlp", latent_dim=16, hidden_sizes=(512,), prior_flow_layers=8)
    model_config = VAEConfig(input_shape=(28, 28), latent_dim=16, hidden_sizes=(512,), prior_flow_layers=8)
    facts = descriptions.model_facts(model_config.to_dict(), config.params())
    assert facts["recipe"] == "--arch mlp --latent-dim 16 --hidden 512 --prior-flow 8"
    assert facts["architecture"] == "MLP, hidden 512, RealNVP prior flow of 8 couplings"


def test_an_augmented_training_says_so_in_its_budget():
    config = TrainJobConfig.for_architecture("conv", latent_dim=32, train={"augment_shift": 2, "augment_rotate": 10})
    model_config = VAEConfig(
        input_shape=(1, 28, 28),
        latent_dim=32,
        hidden_sizes=(),
        architecture="conv",
        conv_channels=(32, 64),
        prior_flow_layers=8,
    )
    facts = descriptions.model_facts(model_config.to_dict(), config.params())
    assert facts["recipe"] == "--arch conv --latent-dim 32"
    assert facts["training_budget"] == (
        "3000 steps of 128, cosine schedule; prior flow 1000 steps; augmented: shifts up to 2 px, rotations up to "
        "10 degrees"
    )


def test_a_forced_promotion_says_so_and_past_which_gates():
    assert descriptions.action_text({"action": "promote", "forced": []}) == "promote"
    assert (
        descriptions.action_text({"action": "promote", "forced": ["held_out_elbo", "quality"]})
        == "promote(forced: held_out_elbo, quality)"
    )
    assert descriptions.action_text({"action": "promote", "forced": True}) == "promote(--force)"  # older records
    event = {
        "action": "promote",
        "version": 2,
        "previous_version": 1,
        "at": "2026-12-02T10:00:00Z",
        "forced": ["quality"],
    }
    text = descriptions.history_description("m", {"champion": [event]})
    assert "| promote(forced: quality) | [v2]" in text


# ---------------------------------------------------------------- mistakes, early and in the user's words


def test_labels_on_an_unconditional_model_are_a_usage_error():
    pinned = PinnedModel("m", 1, "r", "s", "m/1")
    with pytest.raises(UsageError, match=r"--labels 3,5: m/1 is unconditional .* drop --labels"):
        dataset_spec(GenerateConfig(n=10, labels="3,5"), pinned, VAEConfig(), 0)
    assert dataset_spec(GenerateConfig(n=10), pinned, VAEConfig(), 0).label_policy is None  # the default is fine


def test_inspect_of_a_path_that_does_not_exist_says_not_found(tmp_path):
    result = invoke("inspect", str(tmp_path / "datasets" / "no-such-dataset"))
    assert result.exit_code == 2, result.output
    assert "no-such-dataset not found: check the path" in result.stderr and "Traceback" not in result.output


def test_refresh_help_names_only_its_own_options():
    text = invoke("refresh", "--help").output
    assert "--resume" not in text and "--n INTEGER" in text
    assert "--resume" in invoke("generate", "--help").output


@pytest.fixture(scope="module")
def two_shapes(untrained_version):
    """vae-decoder/1: 8x8, unconditional; /2: 28x28, 10 classes; /3: 8x8 unconditional again."""
    register_untrained_decoder(config=VAEConfig(input_shape=(28, 28), num_classes=10, class_prior=(0.1,) * 10))
    register_untrained_decoder()
    return untrained_version


def test_a_wrong_model_reference_is_reported_before_ray_starts(two_shapes, tmp_path, monkeypatch):
    def no_ray() -> bool:
        raise AssertionError("Ray was started before the model reference was resolved")

    monkeypatch.setattr(ray_session, "connect", no_ray)
    typo = invoke("generate", "--model", "vae-decodr@champion", "--n", "10", "--out", str(tmp_path))
    assert typo.exit_code == 2 and "vae-decodr" in typo.stderr, typo.output
    labels = invoke("generate", "--model", "vae-decoder/1", "--labels", "3,5", "--n", "10", "--out", str(tmp_path))
    assert labels.exit_code == 2 and "is unconditional" in labels.stderr, labels.output
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_promotion_keeps_the_alias_data_shape_unless_told_by_name(two_shapes):
    first = invoke("promote", "vae-decoder/1", "--reason", "digits", "--no-quality-gate")
    assert first.exit_code == 0, first.output
    refused = invoke("promote", "vae-decoder/2", "--reason", "mnist", "--no-quality-gate", "--force")
    assert refused.exit_code == 1, refused.output  # --force is for "nothing to compare with", not for this
    gate = next(line for line in refused.stdout.splitlines() if line.startswith("gate schema"))
    assert (
        "FAIL" in gate
        and (
            "would write 28x28 samples with a label column (classes 0..9) instead of v1's 8x8 "
            "samples without labels; pass --allow-schema-change"
        )
        in gate
    ), gate
    same = invoke("promote", "vae-decoder/3", "--reason", "retrained", "--no-quality-gate")
    assert same.exit_code == 0 and "same as v1: 8x8 samples without labels" in same.stdout, same.output
    allowed = invoke("promote", "vae-decoder/2", "--reason", "mnist now", "--no-quality-gate", "--allow-schema-change")
    assert allowed.exit_code == 0, allowed.output
    assert "(allowed by --allow-schema-change)" in allowed.stdout
    listing = invoke("models", "vae-decoder")
    row = r"vae-decoder +2 +champion +\S+ +28x28 +2 +conditional \(10 classes\)"
    assert re.search(row, listing.stdout), listing.stdout


def test_training_and_dataset_runs_are_tagged_and_experiments_open_as_model_training(two_shapes):
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("vaegen-train")
    assert experiment.tags[lineage.EXPERIMENT_KIND_TAG] == lineage.MODEL_TRAINING_KIND
    runs = client.search_runs([experiment.experiment_id])
    assert runs and {run.data.tags.get(lineage.RUN_KIND_TAG) for run in runs} == {"training"}
    assert json.loads(client.get_model_version("vae-decoder", "2").tags["vaegen.config"])["num_classes"] == 10
