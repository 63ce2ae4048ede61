"""The reference classifier whose penultimate layer is the feature space of every quality figure, and TSTR
(train on synthetic, test on real; Esteban et al. 2017), which trains one on generated rows."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from vae_core.errors import UsageError
from vae_core.quality_config import QualityConfig, check_images, check_labels


class ReferenceClassifier(nn.Module):
    """flatten -> hidden -> ReLU -> features -> ReLU -> K logits.

    The metric space is the penultimate layer before its ReLU: post-ReLU, units that never fire give zero-variance
    dimensions (a fifth of them on digits), which make covariances singular and carry no information.
    """

    def __init__(self, image_shape: tuple[int, int], num_classes: int, hidden_dim: int, feature_dim: int) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(self.image_shape), hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, feature_dim),
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(feature_dim, num_classes))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)  # (B, feature_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(images))  # (B, num_classes)


def train_reference_classifier(
    images: np.ndarray, labels: np.ndarray, config: QualityConfig = QualityConfig()
) -> tuple[ReferenceClassifier, dict[str, Any]]:
    """Train the feature extractor on real training images; bit-identical on CPU for a given seed."""
    images = check_images("images", images)
    labels = check_labels("labels", labels, len(images))
    num_classes = int(labels.max()) + 1
    missing = sorted(set(range(num_classes)) - set(labels.tolist()))
    if missing:
        raise UsageError(f"labels must cover every class 0..{num_classes - 1}; classes {missing} have no image")
    validation_count = round(config.validation_fraction * len(images))
    train_count = len(images) - validation_count
    if validation_count < 1 or train_count < 1:
        raise UsageError(
            f"{len(images)} images are too few to split with validation_fraction={config.validation_fraction}"
        )

    generator = torch.Generator().manual_seed(config.seed)
    # fork_rng keeps the caller's global RNG untouched while the layers draw their initial weights from it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = ReferenceClassifier(images.shape[1:], num_classes, config.hidden_dim, config.feature_dim)
    order = torch.randperm(len(images), generator=generator)
    inputs, targets = torch.from_numpy(images), torch.from_numpy(labels)
    train_x, train_y = inputs[order[:train_count]], targets[order[:train_count]]
    validation_x, validation_y = inputs[order[train_count:]], targets[order[train_count:]]

    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    loss = torch.zeros(())
    for _ in range(config.epochs):
        for batch in torch.randperm(train_count, generator=generator).split(config.batch_size):
            loss = nn.functional.cross_entropy(model(train_x[batch]), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    with torch.inference_mode():
        train_accuracy = (model(train_x).argmax(dim=1) == train_y).double().mean().item()
        validation_accuracy = (model(validation_x).argmax(dim=1) == validation_y).double().mean().item()
    info = {
        "train_accuracy": train_accuracy,
        "validation_accuracy": validation_accuracy,
        "final_batch_loss": loss.item(),
        "n_train": train_count,
        "n_validation": validation_count,
        "num_classes": num_classes,
    }
    return model, info


def embed_and_classify(
    model: ReferenceClassifier, images: np.ndarray, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    images = check_images("images", images, model.image_shape)
    feature_batches, probability_batches = [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.tensor(images[start : start + batch_size])  # a copy: callers may pass read-only arrays
            feats = model.embed(batch)  # (B, feature_dim)
            feature_batches.append(feats.double())
            probability_batches.append(torch.softmax(model.head(feats).double(), dim=1))  # (B, K)
    return torch.cat(feature_batches).numpy(), torch.cat(probability_batches).numpy()


def features(
    model: ReferenceClassifier, images: np.ndarray, batch_size: int = QualityConfig.inference_batch_size
) -> np.ndarray:
    """Penultimate-layer pre-activations, (N, feature_dim) float64: the space every metric here works in."""
    return embed_and_classify(model, images, batch_size)[0]


def predict_proba(
    model: ReferenceClassifier, images: np.ndarray, batch_size: int = QualityConfig.inference_batch_size
) -> np.ndarray:
    """Class probabilities, (N, K) float64."""
    return embed_and_classify(model, images, batch_size)[1]


def tstr_accuracy(
    generated_images: np.ndarray,
    generated_labels: np.ndarray,
    heldout_images: np.ndarray,
    heldout_labels: np.ndarray,
    num_classes: int,
    config: QualityConfig = QualityConfig(),
) -> float | None:
    """Train on synthetic, test on real (Esteban et al. 2017): accuracy on the real held-out split of a
    classifier trained only on generated labelled rows, with the reference classifier's architecture and
    recipe. Its TRTR counterpart is the reference classifier itself (same recipe, trained on the real training
    split). None when the generated labels miss a class: such a classifier could not name every real class."""
    generated_images = check_images("generated_images", generated_images)
    generated_labels = check_labels("generated_labels", generated_labels, len(generated_images), num_classes)
    if len(np.unique(generated_labels)) < num_classes:
        return None
    model, _ = train_reference_classifier(generated_images, generated_labels, config)
    probs = predict_proba(model, heldout_images, config.inference_batch_size)
    return float(np.mean(probs.argmax(axis=1) == heldout_labels))
