"""Every training data source, read from files the tests write, and every bad input as a UsageError."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vae_core.data import load
from vae_core.errors import UsageError


def write_idx(path: Path, array: np.ndarray, truncate_bytes: int = 0) -> Path:
    """An unsigned-byte IDX file as published by LeCun et al. (gzipped when the name ends in .gz)."""
    array = np.asarray(array, dtype=np.uint8)
    payload = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", side) for side in array.shape)
    payload += array.tobytes()
    if truncate_bytes:
        payload = payload[:-truncate_bytes]
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as handle:
        handle.write(payload)
    return path


def pixels(n: int, offset: int = 0, side: int = 4) -> np.ndarray:
    """Distinct uint8 images: image i is filled with (offset + i) * 10 + pixel index."""
    return ((np.arange(n)[:, None, None] + offset) * 10 + np.arange(side * side).reshape(side, side)) % 256


def expect_usage_error(spec: str, *fragments: str) -> str:
    with pytest.raises(UsageError) as caught:
        load(spec)
    message = str(caught.value)
    assert spec in message, message  # every message names the source the user gave
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- digits ---


def test_digits():
    data = load("digits")
    assert data.images.shape == (1797, 8, 8) and data.shape == (8, 8)
    assert data.images.dtype == np.float32
    assert float(data.images.min()) == 0.0 and float(data.images.max()) == 1.0
    assert data.labels.dtype == np.int64 and sorted(set(data.labels.tolist())) == list(range(10))
    assert data.num_classes == 10
    assert len(data.content_sha256()) == 64


def test_split_holds_out_the_last_rows():
    data = load("digits")
    train_set, holdout_set = data.split(0.2)
    assert len(holdout_set.images) == round(1797 * 0.2) == 359
    np.testing.assert_array_equal(holdout_set.images, data.images[-359:])
    np.testing.assert_array_equal(train_set.labels, data.labels[:-359])


# --- mnist:DIR ---


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_mnist_train_then_t10k_with_labels(tmp_path, suffix):
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", pixels(2, offset=100))
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", [7, 8])
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", pixels(3))
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", [1, 2, 3])
    data = load(f"mnist:{tmp_path}")
    assert data.images.shape == (5, 4, 4) and data.images.dtype == np.float32
    expected = np.concatenate([pixels(3), pixels(2, offset=100)]) / 255.0
    np.testing.assert_allclose(data.images, expected, rtol=1e-6)
    assert data.labels.tolist() == [1, 2, 3, 7, 8]


def test_mnist_without_labels_and_mixed_compression(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", pixels(3))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", pixels(2, offset=50))
    data = load(f"mnist:{tmp_path}")
    assert data.labels is None and data.num_classes == 0
    np.testing.assert_allclose(data.images[3], pixels(1, offset=50)[0] / 255.0, rtol=1e-6)


def test_mnist_labels_dropped_when_one_split_has_none(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", pixels(3))
    write_idx(tmp_path / "train-labels-idx1-ubyte", [0, 1, 2])
    write_idx(tmp_path / "t10k-images-idx3-ubyte", pixels(2))
    assert load(f"mnist:{tmp_path}").labels is None


def test_mnist_t10k_alone(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", pixels(2))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", [4, 5])
    data = load(f"mnist:{tmp_path}")
    assert data.images.shape == (2, 4, 4) and data.labels.tolist() == [4, 5]


def test_real_mnist_if_present():
    folder = Path("/work/shared/data/mnist")
    if not folder.is_dir():
        pytest.skip(f"no MNIST files at {folder}; the synthetic IDX tests above cover the reader")
    data = load(f"mnist:{folder}")
    assert data.shape == (28, 28) and float(data.images.max()) <= 1.0


# --- npz:FILE[:KEY] ---


def test_npz_default_key_with_labels(tmp_path):
    images = np.random.default_rng(0).random((6, 3, 3)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=images, y=np.arange(6) % 3)
    data = load(f"npz:{tmp_path / 'data.npz'}")
    np.testing.assert_array_equal(data.images, images)
    assert data.labels.tolist() == [0, 1, 2, 0, 1, 2]


def test_npz_explicit_key_and_labels_key(tmp_path):
    first, second = np.zeros((4, 2, 2)), np.full((4, 2, 2), 0.5)
    np.savez(tmp_path / "data.npz", first=first, second=second, labels=np.array([3, 2, 1, 0]))
    data = load(f"npz:{tmp_path / 'data.npz'}:second")
    np.testing.assert_array_equal(data.images, second.astype(np.float32))
    assert data.labels.tolist() == [3, 2, 1, 0]


def test_npz_single_array_of_any_name(tmp_path):
    np.savez(tmp_path / "one.npz", pictures=np.full((3, 5), 0.25))
    data = load(f"npz:{tmp_path / 'one.npz'}")
    assert data.images.shape == (3, 5) and data.labels is None


def test_npz_images_key(tmp_path):
    np.savez(tmp_path / "data.npz", images=np.full((2, 2, 2), 1.0), other=np.zeros(3))
    assert load(f"npz:{tmp_path / 'data.npz'}").images.shape == (2, 2, 2)


# --- parquet:PATH[:COLUMN] ---


def test_parquet_fixed_shape_tensor_with_labels(tmp_path):
    images = np.random.default_rng(1).random((5, 4, 4)).astype(np.float32)
    tensor = pa.FixedShapeTensorArray.from_numpy_ndarray(images)
    pq.write_table(pa.table({"x": tensor, "label": pa.array([0, 1, 2, 1, 0], pa.int16())}), tmp_path / "t.parquet")
    data = load(f"parquet:{tmp_path / 't.parquet'}")
    np.testing.assert_array_equal(data.images, images)
    assert data.labels.tolist() == [0, 1, 2, 1, 0] and data.labels.dtype == np.int64


def test_parquet_fixed_size_list_is_reshaped_to_a_square(tmp_path):
    flat = np.random.default_rng(2).random((3, 9)).astype(np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), 9)
    pq.write_table(pa.table({"x": column}), tmp_path / "f.parquet")
    data = load(f"parquet:{tmp_path / 'f.parquet'}")
    np.testing.assert_array_equal(data.images, flat.reshape(3, 3, 3))
    assert data.labels is None


def test_parquet_nested_fixed_size_lists_keep_their_shape(tmp_path):
    """vaegen's format-3 datasets store x as H fixed-size lists of W values."""
    images = np.random.default_rng(4).random((3, 2, 5)).astype(np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(pa.array(images.ravel()), 5), 2)
    pq.write_table(pa.table({"x": column, "label": pa.array([2, 0, 1], pa.int16())}), tmp_path / "n.parquet")
    data = load(f"parquet:{tmp_path / 'n.parquet'}")
    assert data.images.shape == (3, 2, 5)  # not squared: the file says 2 x 5
    np.testing.assert_array_equal(data.images, images)
    assert data.labels.tolist() == [2, 0, 1]


def test_parquet_custom_column_and_directory(tmp_path):
    folder = tmp_path / "dataset"
    folder.mkdir()
    images = np.random.default_rng(3).random((4, 2, 2)).astype(np.float32)
    table = pa.table({"pixels": pa.FixedShapeTensorArray.from_numpy_ndarray(images), "x": pa.array([1, 2, 3, 4])})
    pq.write_table(table, folder / "part-00000.parquet")
    data = load(f"parquet:{folder}:pixels")
    np.testing.assert_array_equal(data.images, images)


# --- every bad input: a one-line UsageError naming the source ---


@pytest.mark.parametrize("spec", ["bogus", "mnist", "mnist:", "npz:", "digits:extra", "csv:/tmp/x.csv", ""])
def test_unknown_spec(spec):
    with pytest.raises(UsageError, match="unknown data source") as caught:
        load(spec)
    assert repr(spec) in str(caught.value) and "digits, mnist:DIR" in str(caught.value)


@pytest.mark.parametrize("kind", ["mnist", "npz", "parquet"])
def test_missing_path(tmp_path, kind):
    expect_usage_error(f"{kind}:{tmp_path / 'nothing-here'}")


def test_mnist_empty_directory(tmp_path):
    expect_usage_error(f"mnist:{tmp_path}", "train-images-idx3-ubyte")


def test_mnist_truncated_idx(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", pixels(3), truncate_bytes=5)
    expect_usage_error(f"mnist:{tmp_path}", "truncated", "43 of 48")


def test_mnist_not_an_idx_file(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"PK\x03\x04 definitely a zip")
    expect_usage_error(f"mnist:{tmp_path}", "not an unsigned-byte IDX file")


def test_npz_empty(tmp_path):
    np.savez(tmp_path / "e.npz", x=np.zeros((0, 4, 4)))
    expect_usage_error(f"npz:{tmp_path / 'e.npz'}", "empty")


def test_parquet_empty(tmp_path):
    column = pa.FixedSizeListArray.from_arrays(pa.array([], pa.float32()), 4)
    pq.write_table(pa.table({"x": column}), tmp_path / "e.parquet")
    expect_usage_error(f"parquet:{tmp_path / 'e.parquet'}", "empty")


def test_nan(tmp_path):
    images = np.full((3, 2, 2), 0.5)
    images[1, 0, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=images)
    expect_usage_error(f"npz:{tmp_path / 'nan.npz'}", "NaN")


def test_uint8_pixels_are_outside_unit_range(tmp_path):
    np.savez(tmp_path / "u8.npz", x=pixels(3).astype(np.uint8))
    expect_usage_error(f"npz:{tmp_path / 'u8.npz'}", "outside [0, 1]", "255", "divide")


def test_negative_values(tmp_path):
    np.savez(tmp_path / "neg.npz", x=np.full((2, 2, 2), -0.5))
    expect_usage_error(f"npz:{tmp_path / 'neg.npz'}", "outside [0, 1]", "-0.5")


def test_npz_wrong_key(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 2, 2)))
    expect_usage_error(f"npz:{tmp_path / 'd.npz'}:pixels", "'pixels'", "['x']")


def test_npz_ambiguous_arrays(tmp_path):
    np.savez(tmp_path / "d.npz", a=np.zeros((2, 2)), b=np.zeros((2, 2)))
    expect_usage_error(f"npz:{tmp_path / 'd.npz'}", "name the image array")


def test_npz_bad_labels(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 2, 2)), y=np.array([0, -1, 2]))
    expect_usage_error(f"npz:{tmp_path / 'd.npz'}", "labels")
    np.savez(tmp_path / "e.npz", x=np.zeros((3, 2, 2)), y=np.array([0, 1]))
    expect_usage_error(f"npz:{tmp_path / 'e.npz'}", "labels have shape")


def test_parquet_wrong_column(tmp_path):
    pq.write_table(
        pa.table({"image": pa.FixedSizeListArray.from_arrays(pa.array([0.0] * 8), 4)}), tmp_path / "p.parquet"
    )
    expect_usage_error(f"parquet:{tmp_path / 'p.parquet'}", "no column 'x'", "image")
    expect_usage_error(f"parquet:{tmp_path / 'p.parquet'}:pixels", "no column 'pixels'")


def test_parquet_column_of_wrong_type(tmp_path):
    pq.write_table(pa.table({"x": pa.array([0.1, 0.2])}), tmp_path / "s.parquet")
    expect_usage_error(f"parquet:{tmp_path / 's.parquet'}", "need a list or tensor")


def test_parquet_values_outside_unit_range(tmp_path):
    images = (pixels(2) * 1.0).astype(np.float32)
    pq.write_table(pa.table({"x": pa.FixedShapeTensorArray.from_numpy_ndarray(images)}), tmp_path / "big.parquet")
    expect_usage_error(f"parquet:{tmp_path / 'big.parquet'}", "outside [0, 1]")


def test_parquet_ragged_lists(tmp_path):
    pq.write_table(
        pa.table({"x": pa.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6]], pa.list_(pa.float32()))}), tmp_path / "r.parquet"
    )
    expect_usage_error(f"parquet:{tmp_path / 'r.parquet'}", "different lengths")


def test_parquet_variable_list_type_of_equal_lengths(tmp_path):
    rows = [[0.0, 0.25, 0.5, 0.75], [1.0, 0.5, 0.25, 0.0]]
    pq.write_table(pa.table({"x": pa.array(rows, pa.list_(pa.float64()))}), tmp_path / "l.parquet")
    data = load(f"parquet:{tmp_path / 'l.parquet'}")
    np.testing.assert_array_equal(data.images, np.array(rows, dtype=np.float32).reshape(2, 2, 2))
