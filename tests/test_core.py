"""Tier 1: tiny, seeded, fast tests of vae_core (networks, loss, seed scheme, sampling, training)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from vae_core import sampling, seeds
from vae_core.config import TrainConfig, VAEConfig
from vae_core.data import Dataset, load
from vae_core.errors import UsageError
from vae_core.model import VAE, Decoder, Encoder, PriorFlow, negative_elbo
from vae_core.training import augment, evaluate, model_config_for, train

MASK64 = 2**64 - 1


# --- a plain-Python reference of contract 1 (Python ints, math module), independent of numpy ---


def ref_mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def ref_splitmix64(state: int, k: int) -> int:
    return ref_mix64((state + k * 0x9E3779B97F4A7C15) & MASK64)


def ref_seed(dataset_seed: int, sample_id: int) -> int:
    return ref_splitmix64(dataset_seed, sample_id + 1)


def ref_latent(seed_i: int, latent_dim: int) -> list[float]:
    z = []
    for p in range((latent_dim + 1) // 2):
        a, b = ref_splitmix64(seed_i, 2 * p + 1), ref_splitmix64(seed_i, 2 * p + 2)
        u1 = ((a >> 11) + 1) * 2.0**-53
        u2 = (b >> 11) * 2.0**-53
        r = math.sqrt(-2.0 * math.log(u1))
        z += [r * math.cos(2 * math.pi * u2), r * math.sin(2 * math.pi * u2)]
    return z[:latent_dim]


def ref_prior_label(seed_i: int, latent_dim: int, prior: list[float]) -> int:
    m = 2 * math.ceil(latent_dim / 2)
    u = (ref_splitmix64(seed_i, m + 1) >> 11) * 2.0**-53
    for label, cumulative in enumerate(itertools.accumulate(prior)):
        if cumulative > u:
            return label
    return len(prior) - 1


TEST_VECTORS = [  # DESIGN.md contract 1
    (0, 0, 16294208416658607535, [-0.278874923, -0.881064674, -0.764222862]),
    (42, 0, 13679457532755275413, [1.406144963, -0.401378328, 1.094753132]),
    (42, 999999, 15868137721870187777, [-0.413530887, -2.659981118, -0.015785636]),
]


# --- networks and loss ---


@pytest.mark.parametrize("num_classes", [0, 3])
def test_shapes(num_classes):
    prior = tuple([1.0 / num_classes] * num_classes) if num_classes else ()
    config = VAEConfig(
        input_shape=(6, 5), latent_dim=4, hidden_sizes=(16, 8), num_classes=num_classes, class_prior=prior
    )
    torch.manual_seed(0)
    x = torch.rand(7, 6, 5)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0]) if num_classes else None
    mu, logvar = Encoder(config)(x, labels)
    assert mu.shape == logvar.shape == (7, 4)
    decoder = Decoder(config)
    with torch.no_grad():
        out = decoder(torch.randn(7, 4), labels)
    assert out.shape == (7, 6, 5)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert decoder.net[0].in_features == 4 + num_classes
    logits, mu, logvar = VAE(config)(x, labels, torch.Generator().manual_seed(0))
    assert logits.shape == (7, 30) and mu.shape == (7, 4)


def test_conditional_decoder_uses_the_label_and_requires_it():
    config = VAEConfig(input_shape=(4,), latent_dim=2, hidden_sizes=(8,), num_classes=2, class_prior=(0.5, 0.5))
    torch.manual_seed(0)
    decoder = Decoder(config)
    z = torch.zeros(1, 2)
    assert not torch.equal(decoder(z, torch.tensor([0])), decoder(z, torch.tensor([1])))
    with pytest.raises(ValueError, match="labels"):
        decoder(z)


def test_config_rejects_bad_values_and_round_trips():
    config = VAEConfig(input_shape=(8, 8), latent_dim=3, hidden_sizes=(32, 16))
    assert VAEConfig.from_dict(config.to_dict()) == config
    with pytest.raises(UsageError, match="latent_dim"):
        VAEConfig(latent_dim=0)
    with pytest.raises(UsageError, match="class_prior"):
        VAEConfig(num_classes=3, class_prior=(1.0,))
    with pytest.raises(UsageError, match="--epochs must be a positive integer, got 0"):
        TrainConfig(epochs=0)


def test_negative_elbo_matches_hand_computation():
    x = [[0.25, 1.0], [0.0, 0.5]]
    logits = [[0.5, -1.0], [2.0, 0.0]]
    mu = [[0.3], [-1.2]]
    logvar = [[-0.2], [0.4]]

    def sigmoid(value):
        return 1.0 / (1.0 + math.exp(-value))

    per_sample = []
    for xs, ls, m, lv in zip(x, logits, mu, logvar, strict=True):
        bce = -sum(
            xi * math.log(sigmoid(li)) + (1 - xi) * math.log(1 - sigmoid(li)) for xi, li in zip(xs, ls, strict=True)
        )
        kl = -0.5 * (1 + lv[0] - m[0] ** 2 - math.exp(lv[0]))
        per_sample.append(bce + kl)
    expected = sum(per_sample) / len(per_sample)
    tensor = lambda values: torch.tensor(values, dtype=torch.float64)  # noqa: E731
    got = negative_elbo(tensor(x), tensor(logits), tensor(mu), tensor(logvar))
    assert float(got) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(2.9013, abs=1e-4)  # (2.1624 + 0.0544 + 2.8200 + 0.7659) / 2, on paper


# --- contract 1: the seed scheme ---


def test_reference_implementation_reproduces_design_test_vectors():
    for dataset_seed, sample_id, seed_i, first_three in TEST_VECTORS:
        assert ref_seed(dataset_seed, sample_id) == seed_i
        assert ref_latent(seed_i, 3) == pytest.approx(first_three, abs=1e-9)


@pytest.mark.parametrize("dataset_seed, sample_id, seed_i, first_three", TEST_VECTORS)
def test_seed_scheme_test_vectors(dataset_seed, sample_id, seed_i, first_three):
    row_seed = seeds.row_seeds(dataset_seed, np.array([sample_id]))
    assert row_seed.dtype == np.uint64 and int(row_seed[0]) == seed_i
    z = seeds.latents(row_seed, 3)
    assert z.dtype == np.float32 and z.shape == (1, 3)
    # float32 storage: the published 9-digit values agree to float32 rounding...
    np.testing.assert_allclose(z[0], first_three, rtol=1e-6, atol=1e-7)
    # ...and the float64 math matches the independent reference before the cast.
    np.testing.assert_array_equal(z[0], np.array(ref_latent(seed_i, 3), dtype=np.float32))


def test_latents_match_reference_for_many_rows_and_dims():
    ids = np.arange(0, 5000, 97)
    row_seed = seeds.row_seeds(2**64 - 1, ids)
    assert [int(value) for value in row_seed] == [ref_seed(2**64 - 1, int(i)) for i in ids]
    z = seeds.latents(row_seed, 5)
    expected = np.array([ref_latent(int(value), 5) for value in row_seed])
    np.testing.assert_allclose(z, expected, rtol=1e-6, atol=1e-6)


def test_odd_latent_dim_drops_the_last_value():
    row_seed = seeds.row_seeds(7, np.arange(50))
    odd, even = seeds.latents(row_seed, 3), seeds.latents(row_seed, 4)
    assert odd.shape == (50, 3)
    np.testing.assert_array_equal(odd, even[:, :3])
    assert seeds.latents(row_seed, 1).shape == (50, 1)


def test_latents_do_not_depend_on_sharding():
    whole_seeds, whole_z = sampling.draw(42, np.arange(1000), 6)
    parts = [sampling.draw(42, np.arange(start, stop), 6) for start, stop in [(0, 500), (500, 1000)]]
    np.testing.assert_array_equal(whole_seeds, np.concatenate([part[0] for part in parts]))
    np.testing.assert_array_equal(whole_z, np.concatenate([part[1] for part in parts]))
    # and not on order or gaps either: row 999 alone is row 999 in the batch
    np.testing.assert_array_equal(sampling.draw(42, np.array([999]), 6)[1][0], whole_z[999])


def test_latents_look_standard_normal():
    z = seeds.latents(seeds.row_seeds(1, np.arange(20000)), 4)
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1.0) < 0.02


def test_dataset_seed_range_is_checked():
    with pytest.raises(ValueError, match="dataset seed"):
        seeds.row_seeds(-1, np.arange(3))
    with pytest.raises(ValueError, match="dataset seed"):
        seeds.row_seeds(2**64, np.arange(3))


# --- contract 1b: labels ---


def test_balanced_labels_cycle_through_classes():
    ids = np.arange(100, 130)
    labels = sampling.labels_for("balanced", ids, seeds.row_seeds(0, ids), 2, (1, 4, 7), ())
    assert labels.dtype == np.int16
    assert labels.tolist() == [(1, 4, 7)[i % 3] for i in range(100, 130)]


@pytest.mark.parametrize("dataset_seed", [0, 42, 2**63 + 5])
@pytest.mark.parametrize("latent_dim", [2, 3])
def test_prior_labels_match_reference(dataset_seed, latent_dim):
    prior = [0.1, 0.05, 0.45, 0.4]
    ids = np.arange(0, 3000, 3)
    row_seed = seeds.row_seeds(dataset_seed, ids)
    labels = sampling.labels_for("prior", ids, row_seed, latent_dim, (0, 1, 2, 3), tuple(prior))
    expected = [ref_prior_label(int(value), latent_dim, prior) for value in row_seed]
    assert labels.dtype == np.int16
    assert labels.tolist() == expected
    frequencies = np.bincount(labels, minlength=4) / len(labels)
    np.testing.assert_allclose(frequencies, prior, atol=0.05)


def test_prior_labels_use_output_after_the_latent():
    """m = 2*ceil(d/2): d=3 and d=4 share the same u, d=2 differs."""
    row_seed = seeds.row_seeds(5, np.arange(500))
    prior = np.array([0.5, 0.5])
    assert np.array_equal(seeds.prior_labels(row_seed, 3, prior), seeds.prior_labels(row_seed, 4, prior))
    assert not np.array_equal(seeds.prior_labels(row_seed, 2, prior), seeds.prior_labels(row_seed, 4, prior))


# --- sampling on the block grid ---


def test_block_ranges():
    assert sampling.block_ranges(0, 8, 8) == [(0, 8)]
    assert sampling.block_ranges(5, 23, 8) == [(0, 8), (8, 16), (16, 24)]
    assert sampling.block_ranges(16, 17, 8) == [(16, 24)]
    assert sampling.block_ranges(7, 9, 8) == [(0, 8), (8, 16)]


def _decode_shard(decoder, dataset_seed, start, stop, block_rows, latent_dim):
    """Decode sample ids [start, stop) by decoding each covering global block whole, then slicing."""
    rows = []
    for block_start, block_stop in sampling.block_ranges(start, stop, block_rows):
        _, z = sampling.draw(dataset_seed, np.arange(block_start, block_stop), latent_dim)
        images = sampling.decode(decoder, z)
        rows.append(images[max(start, block_start) - block_start : min(stop, block_stop) - block_start])
    return np.concatenate(rows)


def test_decoding_on_the_block_grid_is_bit_identical_for_any_split():
    config = VAEConfig(input_shape=(8, 8), latent_dim=3, hidden_sizes=(32,))
    torch.manual_seed(0)
    decoder = Decoder(config).eval()
    whole = _decode_shard(decoder, 9, 0, 300, 64, 3)
    assert whole.shape == (300, 8, 8) and whole.dtype == np.float32
    for cuts in ([0, 1, 300], [0, 64, 128, 300], [0, 37, 100, 101, 250, 300], [0, 299, 300]):
        pieces = [_decode_shard(decoder, 9, a, b, 64, 3) for a, b in itertools.pairwise(cuts)]
        assert np.concatenate(pieces).tobytes() == whole.tobytes(), cuts


def test_manifold_latents_grid():
    grid = sampling.manifold_latents(5)
    assert grid.shape == (25, 2) and grid.dtype == np.float32
    assert grid[12].tolist() == pytest.approx([0.0, 0.0], abs=1e-6)  # the centre of the grid is the mean
    assert grid[:, 0].min() == pytest.approx(-1.6449, abs=1e-3)  # 5% quantile of N(0, 1)


# --- training ---


@pytest.fixture(scope="module")
def small_digits() -> Dataset:
    data = load("digits")
    return Dataset(data.source, data.images[:400], data.labels[:400])


def _losses(result):
    return [(metrics.epoch, metrics.train_loss, metrics.val_loss) for metrics in result.history]


def test_training_is_deterministic_for_a_seed(small_digits):
    config = model_config_for(small_digits, 2, (32,), conditional=False)
    first = train(small_digits, config, TrainConfig(epochs=2, seed=3))
    second = train(small_digits, config, TrainConfig(epochs=2, seed=3))
    other = train(small_digits, config, TrainConfig(epochs=2, seed=4))
    assert _losses(first) == _losses(second)
    assert all(
        torch.equal(a, b)
        for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values(), strict=True)
    )
    assert _losses(first) != _losses(other)
    assert [metrics.epoch for metrics in first.history] == [1, 2]
    assert (first.train_size, first.holdout_size) == (320, 80)


def test_training_reduces_held_out_loss(small_digits):
    config = model_config_for(small_digits, 2, (64,), conditional=False)
    train_set, holdout_set = small_digits.split(0.2)
    torch.manual_seed(0)
    untrained = evaluate(VAE(config), holdout_set, seed=0)
    result = train(small_digits, config, TrainConfig(epochs=15, seed=0))
    assert result.val_neg_elbo == result.history[-1].val_loss
    assert result.history[-1].val_loss < result.history[0].val_loss
    assert result.val_neg_elbo < untrained - 5.0, (untrained, result.val_neg_elbo)


@pytest.mark.parametrize("shape", [(8, 8), (1, 28, 28), (3, 6, 10)])
def test_augmentation_moves_each_image_by_whole_pixels_reproducibly_and_is_off_by_default(shape):
    x = torch.zeros(64, *shape)
    x[..., 3, 4] = 1.0  # one lit pixel per image (and channel)
    shifted = augment(x, 2, 0.0, torch.Generator().manual_seed(7))
    assert torch.equal(shifted, augment(x, 2, 0.0, torch.Generator().manual_seed(7)))
    assert shifted.shape == x.shape and torch.allclose(shifted, shifted.round(), atol=1e-5)  # whole pixels: no blur
    lit = [torch.nonzero(image.reshape(-1, *shape[-2:])[0] > 0.5).tolist() for image in shifted]
    offsets = {(row - 3, column - 4) for ((row, column),) in lit}
    assert offsets <= {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)} and len(offsets) > 10, offsets
    assert torch.equal(augment(x, 0, 0.0, torch.Generator()), x)
    turned = augment(x, 0, 30.0, torch.Generator().manual_seed(0))
    assert not torch.equal(turned, x) and turned.shape == x.shape
    assert (TrainConfig().augment_shift, TrainConfig().augment_rotate) == (0, 0.0)
    for bad in ({"augment_shift": -1}, {"augment_rotate": 181.0}):
        with pytest.raises(UsageError, match="--augment"):
            TrainConfig(**bad)


def test_augmented_training_is_deterministic_and_differs_from_plain_training(small_digits):
    config = model_config_for(small_digits, 2, (32,), conditional=False)
    augmented = TrainConfig(epochs=2, seed=3, augment_shift=1, augment_rotate=10.0)
    assert _losses(train(small_digits, config, augmented)) == _losses(train(small_digits, config, augmented))
    assert _losses(train(small_digits, config, augmented)) != _losses(
        train(small_digits, config, TrainConfig(epochs=2, seed=3))
    )


def test_conditional_training_records_class_prior(small_digits):
    config = model_config_for(small_digits, 2, (16,), conditional=True)
    assert config.num_classes == 10
    expected = np.bincount(small_digits.labels, minlength=10) / len(small_digits.labels)
    np.testing.assert_allclose(config.class_prior, expected)
    result = train(small_digits, config, TrainConfig(epochs=1))
    assert math.isfinite(result.val_neg_elbo)
    unlabeled = Dataset("npz:x.npz", small_digits.images, None)
    with pytest.raises(UsageError, match="npz:x.npz"):
        model_config_for(unlabeled, 2, (16,), conditional=True)


def test_vae_core_imports_no_side_effect_packages():
    code = (
        "import sys\n"
        "import vae_core, vae_core.config, vae_core.errors, vae_core.model, vae_core.data, "
        "vae_core.training, vae_core.seeds, vae_core.sampling\n"
        "banned = [name for name in ('mlflow', 'ray', 'click') if name in sys.modules]\n"
        "assert not banned, banned\n"
        "print('ok')\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "ok"


# --- the conv architecture ---


@pytest.mark.parametrize(
    "input_shape, channels, sides",
    [
        ((8, 8), (8, 16), [(8, 8), (4, 4), (2, 2)]),  # the bundled digits
        ((28, 28), (4, 8, 8), [(28, 28), (14, 14), (7, 7), (3, 3)]),  # MNIST: odd sides 7 and 3 on the way down
        ((3, 9, 7), (4, 6), [(9, 7), (4, 3), (2, 1)]),  # several channels, odd and unequal sides
    ],
)
@pytest.mark.parametrize("num_classes", [0, 3])
def test_conv_shapes_for_any_image_shape(input_shape, channels, sides, num_classes):
    prior = tuple([1.0 / num_classes] * num_classes) if num_classes else ()
    config = VAEConfig(
        input_shape=input_shape,
        latent_dim=4,
        hidden_sizes=(16,),
        num_classes=num_classes,
        class_prior=prior,
        architecture="conv",
        conv_channels=channels,
    )
    assert config.conv_sides == sides
    torch.manual_seed(0)
    x = torch.rand(5, *input_shape)
    labels = torch.tensor([0, 1, 2, 0, 1]) if num_classes else None
    model = VAE(config)
    logits, mu, logvar = model(x, labels, torch.Generator().manual_seed(0))
    assert logits.shape == (5, math.prod(input_shape)) and mu.shape == logvar.shape == (5, 4)
    with torch.no_grad():
        out = model.decoder(torch.randn(5, 4), labels)
    assert out.shape == (5, *input_shape) and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    ups = [m for m in model.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [m.out_channels for m in convs] == list(channels)
    assert [m.out_channels for m in ups] == [*reversed(channels[:-1]), config.image_channels]
    assert convs[0].in_channels == config.image_channels  # the image meets convolutions first, not a Linear layer
    if num_classes:  # the label reaches the decoder: another label, another image
        with torch.no_grad():
            z = torch.zeros(1, 4)
            assert not torch.equal(model.decoder(z, torch.tensor([0])), model.decoder(z, torch.tensor([1])))


def test_conv_config_rejects_what_it_cannot_build():
    with pytest.raises(UsageError, match=r"4 conv layers halve a 8x8 image below one pixel; use at most 3"):
        VAEConfig(input_shape=(8, 8), architecture="conv", conv_channels=(8, 8, 8, 8))
    with pytest.raises(
        UsageError, match=r"needs images of shape \(H, W\) or \(C, H, W\), got \(64,\); use architecture mlp"
    ):
        VAEConfig(input_shape=(64,), architecture="conv", conv_channels=(8,))
    with pytest.raises(UsageError, match="conv channels must be one or more positive integers, got \\(\\)"):
        VAEConfig(input_shape=(8, 8), architecture="conv")
    with pytest.raises(UsageError, match="architecture must be one of mlp, conv, got 'resnet'"):
        VAEConfig(architecture="resnet")
    with pytest.raises(UsageError, match="need architecture conv"):
        VAEConfig(conv_channels=(8,))
    config = VAEConfig(input_shape=(28, 28), architecture="conv", conv_channels=(32, 64), hidden_sizes=())
    assert VAEConfig.from_dict(json.loads(config.to_json())) == config


def test_a_config_registered_before_the_conv_architecture_still_loads_and_rebuilds():
    # config.json exactly as vaegen wrote it before `architecture` and `conv_channels` existed
    older = (
        '{"class_prior": [], "hidden_sizes": [128], "input_shape": [8, 8], "latent_dim": 2, '
        '"num_classes": 0, "pixel_semantics": "bernoulli-mean-in-[0,1]"}'
    )
    config = VAEConfig.from_dict(json.loads(older))
    assert config.architecture == "mlp" and config.conv_channels == ()
    # ... and the weights it was saved with (an MLP's state dict keys) load strictly into today's Decoder
    older_keys = {"net.0.weight": (128, 2), "net.0.bias": (128,), "net.2.weight": (64, 128), "net.2.bias": (64,)}
    decoder = Decoder(config)
    assert {key: tuple(value.shape) for key, value in decoder.state_dict().items()} == older_keys
    decoder.load_state_dict({key: torch.zeros(shape) for key, shape in older_keys.items()})
    with torch.no_grad():
        assert torch.equal(decoder(torch.ones(3, 2)), torch.full((3, 8, 8), 0.5))


@pytest.mark.parametrize("threads", [1, 2])
def test_conv_decoding_on_the_block_grid_is_bit_identical_for_any_split(threads):
    config = VAEConfig(
        input_shape=(28, 28),
        latent_dim=5,
        hidden_sizes=(),
        architecture="conv",
        conv_channels=(8, 16),
        prior_flow_layers=4,
        prior_flow_hidden=16,
    )
    torch.manual_seed(0)
    decoder = Decoder(config).eval()
    _perturb(decoder.prior_flow)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        whole = _decode_shard(decoder, 9, 0, 300, 64, 5)
        assert whole.shape == (300, 28, 28) and whole.dtype == np.float32
        for cuts in ([0, 1, 300], [0, 64, 128, 300], [0, 37, 100, 101, 250, 300], [0, 299, 300]):
            pieces = [_decode_shard(decoder, 9, a, b, 64, 5) for a, b in itertools.pairwise(cuts)]
            assert np.concatenate(pieces).tobytes() == whole.tobytes(), cuts
    finally:
        torch.set_num_threads(before)


# --- the prior flow ---


def _perturb(flow) -> None:
    """A freshly built flow is the identity map (zero last layers); give every parameter some value."""
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))


@pytest.mark.parametrize("num_classes", [0, 3])
def test_prior_flow_density_is_the_change_of_variables(num_classes):
    prior = tuple([1.0 / num_classes] * num_classes) if num_classes else ()
    config = VAEConfig(
        input_shape=(8, 8),
        latent_dim=5,
        num_classes=num_classes,
        class_prior=prior,
        prior_flow_layers=6,
        prior_flow_hidden=8,
    )
    torch.manual_seed(0)
    flow = PriorFlow(config).double()
    _perturb(flow)
    u = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 1]) if num_classes else None
    z = flow(u, labels)
    for row in range(4):
        label = None if labels is None else labels[row : row + 1]
        jacobian = torch.autograd.functional.jacobian(
            lambda point, label=label: flow(point[None], label)[0], u[row]
        )  # (5, 5)
        standard_normal = -0.5 * float(u[row] @ u[row]) - 2.5 * math.log(2 * math.pi)
        expected = standard_normal - math.log(abs(float(torch.linalg.det(jacobian))))
        assert float(flow.log_prob(z[row : row + 1], label)) == pytest.approx(expected, abs=1e-9)
    if num_classes:  # the label changes the map
        assert not torch.allclose(flow(u, labels), flow(u, (labels + 1) % 3))


def test_decoder_maps_a_prior_draw_through_the_flow_and_a_fresh_flow_is_the_identity():
    config = VAEConfig(input_shape=(8, 8), latent_dim=3, hidden_sizes=(16,), prior_flow_layers=4, prior_flow_hidden=8)
    torch.manual_seed(0)
    decoder = Decoder(config).eval()
    z = torch.randn(6, 3)
    with torch.no_grad():
        assert torch.equal(decoder.prior_flow(z), z)  # zero-initialised couplings, unit scale, no shift
        _perturb(decoder.prior_flow)
        mapped = decoder.prior_flow(z)
        assert not torch.allclose(mapped, z)
        assert torch.equal(decoder(z), torch.sigmoid(decoder.logits(mapped)).view(6, 8, 8))
    assert all(value.dtype == torch.float32 for value in decoder.state_dict().values())  # weights.npz stays float32
    assert not any("mask" in key for key in decoder.state_dict())  # masks are rebuilt from the config


def test_fitting_the_prior_flow_raises_the_likelihood_of_the_aggregate_posterior(small_digits):
    config = dataclasses.replace(
        model_config_for(small_digits, 4, (32,), conditional=False), prior_flow_layers=4, prior_flow_hidden=32
    )
    result = train(small_digits, config, TrainConfig(epochs=20, prior_flow_steps=200))
    train_set, holdout_set = small_digits.split(0.2)
    model = result.model
    with torch.no_grad():
        mu, logvar = model.encode(torch.from_numpy(train_set.images))
        z = model.reparameterize(mu, logvar, torch.Generator().manual_seed(9))
        fitted = float(model.decoder.prior_flow.log_prob(z).mean())
        standard = float(torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1).mean())
    assert fitted > standard + 0.5, (fitted, standard)  # nats per latent vector: the flow fits the posterior better
    # the registered -ELBO is measured under the flow prior, and it is the better bound
    assert result.val_neg_elbo == pytest.approx(evaluate(model, holdout_set, 0, with_prior_flow=True))
    assert result.val_neg_elbo < evaluate(model, holdout_set, 0)
