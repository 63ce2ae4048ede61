"""The privacy gates of `vaegen promote` (issue 25): a decoder that copies its training rows is refused with one
line per failing gate, unless --force with a reason; held-out real data in the samples' place passes; a version
reported before the privacy block cannot compare; the flags are in --help."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import torch

from conftest import register_untrained_decoder
from helpers import invoke
from jobs.generate import card
from registry import models
from registry.privacy_gate import PrivacyThresholds, privacy_verdicts
from vae_core import data, fidelity, privacy
from vae_core.config import VAEConfig

COPIER = "copier"
REPORT_N = "2000"  # each training row is copied ~1.4 times: the attack sees a copy of ~3 members in 4


def copier_config(rows: int) -> VAEConfig:
    """A 1-D latent MLP decoder whose two hidden layers of rows - 1 ReLUs make a unit step at each of rows - 1
    quantiles of N(0, 1)."""
    return VAEConfig(input_shape=(8, 8), latent_dim=1, hidden_sizes=(rows - 1, rows - 1))


def make_copier(model: torch.nn.Module, images: np.ndarray, steepness: float = 1e5) -> None:
    """Weights that decode z in the k-th of len(images) equal-probability bins of N(0, 1) to images[k], up to 1e-4
    per pixel: the decoder of a VAE that memorised its training set, built in milliseconds instead of trained."""
    count = len(images)
    cuts = torch.distributions.Normal(0.0, 1.0).icdf(torch.arange(1, count, dtype=torch.float64) / count).float()
    logits = torch.logit(torch.from_numpy(images.reshape(count, -1)).float().clamp(1e-4, 1 - 1e-4))
    first, second, last = model.decoder.net[0], model.decoder.net[2], model.decoder.net[4]
    with torch.no_grad():
        # step_i = relu(1 - relu(1 - s (z - q_i))): exactly 0 below the cut q_i and exactly 1 from q_i + 1/s on,
        # so the sum of the jumps below telescopes to one row's logits without float32 error from large s z
        first.weight.fill_(-steepness)
        first.bias.copy_(1 + steepness * cuts)
        second.weight.copy_(-torch.eye(count - 1))
        second.bias.fill_(1.0)
        last.weight.copy_((logits[1:] - logits[:-1]).T)
        last.bias.copy_(logits[0])


@pytest.fixture(scope="module")
def copier(module_sqlite):
    """copier/1: decodes every training row of digits (the first 80%), nothing else; its report in the store."""
    train, _ = data.load("digits").split(0.2)
    return register_untrained_decoder(
        COPIER, config=copier_config(len(train.images)), init=lambda model: make_copier(model, train.images)
    )


def test_the_copier_reproduces_training_rows():
    train, _ = data.load("digits").split(0.2)
    rows = train.images[:50]
    from vae_core.model import VAE

    model = VAE(copier_config(len(rows)))
    make_copier(model, rows)
    bins = torch.distributions.Normal(0.0, 1.0).icdf((torch.arange(len(rows)) + 0.5) / len(rows)).reshape(-1, 1)
    decoded = model.decoder(bins.float()).detach().numpy()
    assert np.abs(decoded - rows).max() < 1e-3


def test_a_memorising_decoder_fails_the_privacy_gates_one_line_each(copier):
    report = invoke("report", "--model", f"{COPIER}/1", "--n", REPORT_N, "--data", "digits")
    assert report.exit_code == 0, report.output
    assert "privacy (figure, real floor" in report.stdout and "  mia_auc " in report.stdout, report.stdout
    shows_block(copier)

    refused = invoke("promote", f"{COPIER}/1", "--reason", "leaky")
    assert refused.exit_code != 0, refused.output
    lines = refused.stdout.splitlines()
    for name in ("mia_auc", "dcr_ratio"):
        failed = [line for line in lines if line.startswith(f"gate {name} ")]
        assert len(failed) == 1 and " FAIL " in failed[0] and "--force" in failed[0], refused.stdout
    mia = next(line for line in lines if line.startswith("gate mia_auc "))
    assert float(mia.split()[3]) > 0.8, mia  # a clear margin over the 0.6 default
    dcr = next(line for line in lines if line.startswith("gate dcr_ratio "))
    assert float(dcr.split()[3]) < 0.1, dcr
    # a copy of the training set is as hard to tell from it as the training set itself: detection is no leak test
    assert any(line.startswith("gate detection_auc  PASS") for line in lines), refused.stdout
    assert mlflow.MlflowClient().get_registered_model(COPIER).aliases == {}

    forced = invoke("promote", f"{COPIER}/1", "--reason", "public digits", "--force", "--max-memorisation", "1")
    assert forced.exit_code == 0, forced.output
    record = json.loads(mlflow.MlflowClient().get_model_version(COPIER, "1").tags["vaegen.promotion.champion"])
    assert {"mia_auc", "dcr_ratio"} <= set(record["forced"]) and record["reason"] == "public digits"


def shows_block(pinned) -> None:
    """The block reaches the run's metrics, the version's description and a dataset card, with floors and gates."""
    client = mlflow.MlflowClient()
    assert client.get_run(pinned.run_id).data.metrics["quality.mia_auc"] > 0.8
    description = client.get_model_version(pinned.name, str(pinned.version)).description
    assert "**Privacy**" in description and "| mia_auc |" in description and "| <= 0.6 |" in description, description
    text = card._quality_text(card.from_version_tags(models.load_decoder(pinned).tags), "somewhere")
    block = text[text.index(card.PRIVACY_HEADING) :]
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in block.splitlines() if line.startswith("| ")}
    assert rows["dcr_ratio"][2] == "1" and rows["dcr_ratio"][3] == ">= 0.9", block  # its floor: a ratio already
    assert float(rows["mia_auc"][1]) > 0.8 and 0.3 < float(rows["mia_auc"][2]) < 0.7 and rows["mia_auc"][3] == "<= 0.6"
    assert rows["authenticity"][3] == "–" and "Alaa et al. 2022" in rows["authenticity"][4], block


def test_a_version_reported_before_the_privacy_block_cannot_compare(module_sqlite):
    pinned = register_untrained_decoder("old-report", config=VAEConfig(input_shape=(8, 8)))
    loaded = models.load_decoder(pinned)
    models.record_quality(
        loaded,
        {
            "precision": 0.9,
            "class_coverage": 1.0,
            "memorisation_share": 0.0,
            "frechet_distance": 1.0,
            "frechet_floor": 1.0,
            "dcr_ratio": 1.1,
        },
    )
    refused = invoke("promote", "old-report/1", "--reason", "old")
    assert refused.exit_code != 0
    lines = [line for line in refused.stdout.splitlines() if line.startswith(("gate mia_auc", "gate detection_auc"))]
    assert len(lines) == 2 and all(
        "FAIL  cannot compare: no " in line and "vaegen report --model old-report/1" in line for line in lines
    ), refused.stdout
    assert "gate dcr_ratio      PASS" in refused.stdout  # reports before the block had the ratio already
    assert invoke("promote", "old-report/1", "--reason", "old", "--force").exit_code == 0


def test_held_out_real_data_as_samples_passes_and_each_gate_says_why_it_fails():
    train, heldout = data.load("digits").split(0.2)
    unseen, stand_in = heldout.images[::2], heldout.images[1::2]
    pixels = lambda images: images.reshape(len(images), -1).astype(np.float64)  # noqa: E731
    figures = privacy.privacy_metrics(
        train.images, unseen, stand_in, pixels(train.images), pixels(unseen), pixels(stand_in)
    )
    heldout_distance, generated_distance = fidelity.closest_record_distances(train.images, unseen, stand_in)
    figures.update(fidelity.distance_to_closest_record(heldout_distance, generated_distance))
    verdicts = privacy_verdicts(figures, PrivacyThresholds(), "v1", "`vaegen report`")
    assert [(gate.name, gate.passed) for gate in verdicts] == [
        ("mia_auc", True),
        ("dcr_ratio", True),
        ("detection_auc", True),
    ], verdicts

    leaky = {"mia_auc": 0.9, "mia_auc_floor": 0.5, "dcr_ratio": 0.1, "detection_auc": 1.0, "detection_auc_floor": 0.6}
    verdicts = privacy_verdicts(leaky, PrivacyThresholds(), "v1", "`vaegen report`")
    assert [gate.passed for gate in verdicts] == [False] * 3 and all(gate.forceable for gate in verdicts)
    assert [gate.detail.split(":")[0] for gate in verdicts] == [
        "0.900 <= 0.6 (real floor 0.500)",
        "0.100 >= 0.9 (real floor 1.000)",
        "1.000 <= 0.95 (real floor 0.600)",
    ]
    assert all("\n" not in gate.detail for gate in verdicts)
    off = privacy_verdicts(leaky, PrivacyThresholds(max_mia_auc=None, max_detection_auc=None), "v1", "x")
    assert [gate.name for gate in off] == ["dcr_ratio"]


def test_promote_help_lists_the_privacy_gates():
    result = invoke("promote", "--help")
    for flag in ("--max-mia-auc", "--min-dcr-ratio", "--max-detection-auc", "--no-privacy-gate"):
        assert flag in result.stdout, result.stdout
