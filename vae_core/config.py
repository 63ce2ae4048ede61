"""Configuration of the model and of training: frozen, flat, self-describing."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from typing import Any

from vae_core.errors import UsageError

# Pixel semantics stored with every model: decoder outputs are Bernoulli means in [0, 1].
PIXEL_SEMANTICS = "bernoulli-mean-in-[0,1]"
ARCHITECTURES = ("mlp", "conv")
LR_SCHEDULES = ("constant", "cosine")
# Every conv layer: kernel 4, stride 2, padding 1 maps a side s to floor(s / 2) (DCGAN's choice; a kernel
# divisible by the stride lets the transposed convolutions up avoid checkerboard artefacts).
CONV_KERNEL, CONV_STRIDE, CONV_PADDING = 4, 2, 1
# Each architecture's defaults for `vaegen train` (jobs.train.TrainJobConfig.for_architecture). mlp is the tutorial's
# model as it always was; conv is the recipe measured to reach Frechet within 2x of real on MNIST (README, decisions).
RECIPES: dict[str, dict] = {
    "mlp": {
        "latent_dim": 2,
        "hidden_sizes": (128,),
        "conv_channels": (),
        "prior_flow_layers": 0,
        "lr_schedule": "constant",
        "steps": None,
        "augment_shift": 0,
        "augment_rotate": 0.0,
    },
    "conv": {
        "latent_dim": 16,
        "hidden_sizes": (),
        "conv_channels": (32, 64),
        "prior_flow_layers": 8,
        "lr_schedule": "cosine",
        "steps": 3_000,
        "augment_shift": 0,
        "augment_rotate": 0.0,
    },
}


# Caps on what a config may ask for (README "Limits"): a config.json arrives from the registry, where anyone with
# write access can put one, so every size it implies is bounded before any tensor or module is built from it.
MAX_LATENT_DIM = 4_096
MAX_HIDDEN_LAYERS, MAX_HIDDEN_SIZE = 16, 16_384
MAX_CONV_LAYERS, MAX_CONV_CHANNELS = 8, 4_096
MAX_FLOW_LAYERS, MAX_FLOW_HIDDEN = 64, 8_192
MAX_CLASSES = 32_768  # a dataset's label column is int16
MAX_INPUT_RANK, MAX_INPUT_VALUES = 4, 1 << 24  # a sample: at most 4 axes and 16,777,216 values (a 4096x4096 image)
MAX_PARAMETERS = 250_000_000  # 1 GB of float32 decoder weights


def conv_side(side: int) -> int:
    """A side after one conv layer: floor((side + 2 * padding - kernel) / stride) + 1 = floor(side / 2)."""
    return (side + 2 * CONV_PADDING - CONV_KERNEL) // CONV_STRIDE + 1


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    input_shape: tuple[int, ...] = (8, 8)  # set from the data; 8x8 is the embedded digits set
    latent_dim: int = 2  # the classic example: a 2-D latent space you can plot
    hidden_sizes: tuple[int, ...] = (
        128,
    )  # decoder hidden layers (conv: between z and the feature maps); the encoder mirrors them
    num_classes: int = 0  # 0 = unconditional; K > 0 = class-conditional (CVAE, one-hot label)
    class_prior: tuple[float, ...] = ()  # training class frequencies (conditional models only)
    pixel_semantics: str = PIXEL_SEMANTICS
    # Fields added with the conv architecture; configs registered before them load with these defaults.
    architecture: str = "mlp"  # "mlp" as the tutorial; "conv": strided convolutions down, transposed up
    conv_channels: tuple[int, ...] = ()  # conv only: channels after each stride-2 layer, e.g. (32, 64)
    prior_flow_layers: int = 0  # 0: z is decoded as drawn; > 0: RealNVP couplings map the N(0, I) draw first
    prior_flow_hidden: int = 256  # width of each coupling's two hidden layers

    def __post_init__(self) -> None:
        self._check_types_and_caps()
        if self.architecture not in ARCHITECTURES:
            raise UsageError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}")
        if self.prior_flow_layers < 0 or self.prior_flow_hidden < 1:
            raise UsageError(
                f"prior flow layers must be >= 0 and its hidden width >= 1, "
                f"got {self.prior_flow_layers} and {self.prior_flow_hidden}"
            )
        if self.architecture == "conv":
            self._check_conv()
        elif self.conv_channels:
            raise UsageError(f"conv_channels {self.conv_channels} need architecture conv, got {self.architecture!r}")
        if self.latent_dim < 1:
            raise UsageError(f"latent_dim must be a positive integer, got {self.latent_dim}")
        if not self.input_shape or any(side < 1 for side in self.input_shape):
            raise UsageError(f"input_shape must be positive sides, got {self.input_shape}")
        if any(size < 1 for size in self.hidden_sizes):
            raise UsageError(f"hidden sizes must be positive integers, got {self.hidden_sizes}")
        if self.num_classes and len(self.class_prior) != self.num_classes:
            raise UsageError(
                f"class_prior must have num_classes={self.num_classes} entries, got {len(self.class_prior)}"
            )

    @property
    def input_dim(self) -> int:
        return math.prod(self.input_shape)

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) as the conv layers see it: an (H, W) input has one channel."""
        return (1, *self.input_shape) if len(self.input_shape) == 2 else tuple(self.input_shape)  # type: ignore[return-value]

    @property
    def image_channels(self) -> int:
        return self.image_shape[0]

    @property
    def conv_sides(self) -> list[tuple[int, int]]:
        """(H, W) of the image, then after each strided conv layer."""
        sides = [tuple(self.image_shape[1:])]
        for _ in self.conv_channels:
            height, width = sides[-1]
            sides.append((conv_side(height), conv_side(width)))
        return sides  # type: ignore[return-value]

    def _check_types_and_caps(self) -> None:
        """Every field of the right JSON type and within the caps, before any other check computes with it."""
        integers = {
            "latent_dim": (1, MAX_LATENT_DIM),
            "num_classes": (0, MAX_CLASSES),
            "prior_flow_layers": (0, MAX_FLOW_LAYERS),
            "prior_flow_hidden": (1, MAX_FLOW_HIDDEN),
        }
        lists = {
            "input_shape": (MAX_INPUT_RANK, MAX_INPUT_VALUES),
            "hidden_sizes": (MAX_HIDDEN_LAYERS, MAX_HIDDEN_SIZE),
            "conv_channels": (MAX_CONV_LAYERS, MAX_CONV_CHANNELS),
        }
        for name, (low, high) in integers.items():
            _check_int(name, getattr(self, name), low, high)
        for name, (most_entries, high) in lists.items():
            values = getattr(self, name)
            if not isinstance(values, tuple) or len(values) > most_entries:
                raise UsageError(f"{name} must be a list of at most {most_entries} integers, got {_short(values)}")
            for value in values:
                _check_int(f"each of {name}", value, 1, high)
        if math.prod(self.input_shape) > MAX_INPUT_VALUES:
            raise UsageError(
                f"input_shape {self.input_shape} has {math.prod(self.input_shape):,} values per sample, "
                f"more than the {MAX_INPUT_VALUES:,} vaegen allows"
            )
        if (
            not isinstance(self.class_prior, tuple)
            or len(self.class_prior) > MAX_CLASSES
            or not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in self.class_prior)
        ):
            raise UsageError(
                f"class_prior must be a list of at most {MAX_CLASSES:,} numbers, got {_short(self.class_prior)}"
            )
        for name in ("architecture", "pixel_semantics"):
            if not isinstance(getattr(self, name), str):
                raise UsageError(f"{name} must be a string, got {_short(getattr(self, name))}")

    def _check_conv(self) -> None:
        if len(self.input_shape) not in (2, 3):
            raise UsageError(
                f"architecture conv needs images of shape (H, W) or (C, H, W), got {self.input_shape}; "
                "use architecture mlp for flat feature vectors"
            )
        if not self.conv_channels or any(channels < 1 for channels in self.conv_channels):
            raise UsageError(f"conv channels must be one or more positive integers, got {self.conv_channels}")
        if min(self.conv_sides[-1]) < 1:
            height, width = self.image_shape[1:]
            most = 0
            while min(height, width) >= 2:
                height, width, most = conv_side(height), conv_side(width), most + 1
            raise UsageError(
                f"{len(self.conv_channels)} conv layers halve a {self.image_shape[1]}x{self.image_shape[2]} "
                f"image below one pixel; use at most {most} (got conv channels {self.conv_channels})"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VAEConfig:
        if not isinstance(data, dict):
            raise UsageError(f"a VAEConfig must be a JSON object, got {_short(data)}")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown VAEConfig fields {unknown}; this vaegen knows {sorted(known)}")
        tuples = {"input_shape", "hidden_sizes", "class_prior", "conv_channels"}
        return cls(
            **{key: tuple(value) if key in tuples and isinstance(value, list) else value for key, value in data.items()}
        )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise UsageError(
            f'{name} must be an integer in [{low}, {high:,}] (vaegen\'s cap, README "Limits"), got {_short(value)}'
        )


def _mlp_shapes(prefix: str, sizes: list[int]) -> dict[str, tuple[int, ...]]:
    """vae_core.model._mlp's parameters: Linear layers at even indices (a ReLU between each two)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for index, (size_in, size_out) in enumerate(itertools.pairwise(sizes)):
        shapes[f"{prefix}{2 * index}.weight"], shapes[f"{prefix}{2 * index}.bias"] = (size_out, size_in), (size_out,)
    return shapes


def decoder_state_shapes(config: VAEConfig) -> dict[str, tuple[int, ...]]:
    """The shapes of `Decoder(config).state_dict()`, computed without torch or any allocation, so that a registered
    config is checked against its weights before a module exists (registry.artifacts; tests/test_hostile_versions.py
    compares this with the real module for every architecture)."""
    conditioned = config.latent_dim + config.num_classes
    if config.architecture == "conv":
        (small_height, small_width), channels = config.conv_sides[-1], [config.image_channels, *config.conv_channels]
        shapes = _mlp_shapes(
            "net.fc.0.", [conditioned, *config.hidden_sizes, channels[-1] * small_height * small_width]
        )
        for position, index in enumerate(range(len(config.conv_channels), 0, -1)):
            layer = f"net.up.{2 * position}."  # transposed convolutions with a ReLU between each two
            shapes[layer + "weight"] = (channels[index], channels[index - 1], CONV_KERNEL, CONV_KERNEL)
            shapes[layer + "bias"] = (channels[index - 1],)
    else:
        shapes = _mlp_shapes("net.", [conditioned, *config.hidden_sizes, config.input_dim])
    if config.prior_flow_layers:
        shapes["prior_flow.shift"] = shapes["prior_flow.log_scale"] = (config.latent_dim,)
        hidden = config.prior_flow_hidden
        for layer in range(config.prior_flow_layers):
            sizes = [conditioned, hidden, hidden, 2 * config.latent_dim]
            shapes.update(_mlp_shapes(f"prior_flow.couplings.{layer}.net.", sizes))
    return shapes


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 50  # digits (1,437 train images) still improve past 30 epochs; 50 take ~3 s on 2 cores
    steps: int | None = None  # optimizer steps instead of epochs: the same budget for a small source and a large one
    batch_size: int = 128  # small sets (1,797 digits) still get ~12 steps per epoch
    learning_rate: float = 1e-3  # Adam's default, as in Kingma and Welling's experiments
    holdout_fraction: float = 0.2  # the LAST 20% of the source is held out: 8,000/2,000 on MNIST t10k
    seed: int = 0  # fixes init, shuffling and the reparameterisation noise
    lr_schedule: str = "constant"  # "cosine": anneal to 0 over the run (Loshchilov and Hutter 2017), per step
    prior_flow_steps: int = 1_000  # models with a prior flow: Adam steps of 256 latents (~31 passes over MNIST's 8,000)
    # Each training batch randomly shifted by up to augment_shift pixels and rotated by up to augment_rotate
    # degrees (the classic MNIST augmentation): the decoder learns the digits, not the training rows' exact pixels
    augment_shift: int = 0
    augment_rotate: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise UsageError(f"--epochs must be a positive integer, got {self.epochs}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be a positive integer, got {self.batch_size}")
        if not self.learning_rate > 0:
            raise UsageError(f"--learning-rate must be positive, got {self.learning_rate}")
        if not 0 < self.holdout_fraction < 1:
            raise UsageError(f"--holdout-fraction must lie in (0, 1), got {self.holdout_fraction}")
        if self.seed < 0:
            raise UsageError(f"--seed must be a non-negative integer, got {self.seed}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UsageError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.steps is not None and self.steps < 1:
            raise UsageError(f"--steps must be a positive integer, got {self.steps}")
        if self.prior_flow_steps < 1:
            raise UsageError(f"--prior-flow-steps must be a positive integer, got {self.prior_flow_steps}")
        if self.augment_shift < 0:
            raise UsageError(f"--augment-shift must be a non-negative number of pixels, got {self.augment_shift}")
        if not 0 <= self.augment_rotate <= 180:
            raise UsageError(f"--augment-rotate must lie in [0, 180] degrees, got {self.augment_rotate}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
