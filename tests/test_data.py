"""Dataset loaders: bundled data, .npy/.npz and IDX files written here, dispatch and splitting."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fastcae.data import (
    PATCH_IMAGES,
    Dataset,
    DatasetError,
    load_array,
    load_dataset,
    load_digits,
    load_idx,
    load_patches,
    train_test_split,
)


def error_message(call, *args) -> str:
    """The message of the DatasetError that ``call(*args)`` raises, checked to be one line."""
    with pytest.raises(DatasetError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """``array`` in IDX format: 00 00 <type> <ndims>, big-endian int32 sizes, big-endian data."""
    header = bytes([0, 0, type_code, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, *, type_code: int = 0x08, compress: bool = False) -> Path:
    data = idx_bytes(array, type_code)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def random_uint8(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def as_rows(images: np.ndarray, scale: float) -> torch.Tensor:
    return torch.from_numpy(images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(scale))


# --- bundled data -------------------------------------------------------------------------------


def test_digits_are_sklearn_digits_scaled_to_unit_range():
    from sklearn.datasets import load_digits as sklearn_load_digits

    data = load_digits()
    reference = sklearn_load_digits()
    assert data.name == "digits"
    assert data.x.shape == (1797, 64) and data.x.dtype == torch.float32
    assert torch.equal(data.x, torch.from_numpy(reference.data / 16).float())
    assert data.x.min() == 0 and data.x.max() == 1
    assert data.y.dtype == torch.int64
    assert torch.equal(data.y, torch.from_numpy(reference.target).long())
    assert data.y.unique().tolist() == list(range(10))
    assert data.image_shape == (8, 8)


def test_patch_images_ship_inside_skimage():
    import skimage.data

    directory = Path(skimage.data.__file__).parent
    assert all((directory / f"{name}.png").is_file() for name in PATCH_IMAGES)


def test_patches_shape_range_and_content():
    data = load_patches(n_patches=300, size=6, seed=1)
    assert data.name == "patches"
    assert data.x.shape == (300, 36) and data.x.dtype == torch.float32
    assert data.y is None and data.image_shape == (6, 6)
    assert 0 <= data.x.min() and data.x.max() <= 1
    assert data.x.std(dim=1).mean() > 0.01  # image texture, not flat fill
    assert torch.unique(data.x, dim=0).shape[0] > 290


def test_patches_are_seeded():
    first, again, other = (load_patches(n_patches=200, seed=seed).x for seed in (3, 3, 4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_patches_are_windows_of_the_images(monkeypatch):
    # Pixel (r, c) of this image holds r * width + c, so a patch's values give its position.
    height, width, size = 20, 30, 4
    ramp = np.arange(height * width, dtype=np.float32).reshape(height, width)
    monkeypatch.setattr("fastcae.data._bundled_images", lambda: [ramp])
    patches = load_patches(n_patches=500, size=size, seed=0).x.reshape(-1, size, size).numpy()
    top_left = patches[:, 0, 0].astype(np.int64)
    expected = top_left[:, None, None] + np.arange(size)[:, None] * width + np.arange(size)
    np.testing.assert_array_equal(patches, expected)
    rows, cols = np.divmod(top_left, width)
    # 500 draws over 17 x 27 positions reach every edge row and column.
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (0, height - size, 0, width - size)


def test_patches_draw_uniformly_over_all_positions(monkeypatch):
    # 100 positions in a black image, 400 in a white one: about 20% of the patches are black.
    images = [np.zeros((10, 10), np.float32), np.ones((10, 40), np.float32)]
    monkeypatch.setattr("fastcae.data._bundled_images", lambda: images)
    x = load_patches(n_patches=5000, size=1, seed=0).x
    assert abs((x == 0).float().mean().item() - 0.2) < 0.03


@pytest.mark.parametrize(
    ("n_patches", "size", "words"), [(0, 8, "n_patches"), (10, 0, "size"), (10, 999, "size")]
)
def test_patches_bad_arguments(n_patches, size, words):
    assert words in error_message(load_patches, n_patches, size)


# --- .npy / .npz ------------------------------------------------------------------------------------


def test_npy_uint8_divided_by_255_with_square_image_shape(tmp_path):
    images = random_uint8(5, 16)
    images[0, 0] = 255
    np.save(tmp_path / "u8.npy", images)
    data = load_array(tmp_path / "u8.npy")
    assert data.name == "u8.npy"
    assert data.x.dtype == torch.float32 and data.x.max() == 1
    torch.testing.assert_close(data.x, as_rows(images, 255))
    assert data.y is None and data.image_shape == (4, 4)


def test_npy_uint16_divided_by_its_max(tmp_path):
    images = np.array([[0, 65535, 32768]], dtype=np.uint16)
    np.save(tmp_path / "u16.npy", images)
    torch.testing.assert_close(load_array(tmp_path / "u16.npy").x, as_rows(images, 65535))


def test_npy_int64_pixels_divided_by_255(tmp_path):
    """NumPy's default integer type holding 8-bit pixel values is not divided by the int64 maximum."""
    images = np.array([[0, 255, 51]], dtype=np.int64)
    np.save(tmp_path / "i64.npy", images)
    torch.testing.assert_close(load_array(tmp_path / "i64.npy").x, as_rows(images, 255))


def test_npy_wide_integer_range_is_min_max_scaled(tmp_path):
    np.save(tmp_path / "i32.npy", np.array([[-100, 300], [100, 700]], dtype=np.int32))
    assert load_array(tmp_path / "i32.npy").x.tolist() == [[0.0, 0.5], [0.25, 1.0]]


def test_npy_image_stack_keeps_its_image_shape(tmp_path):
    images = random_uint8(5, 2, 3)
    np.save(tmp_path / "stack.npy", images)
    data = load_array(tmp_path / "stack.npy")
    assert data.x.shape == (5, 6) and data.image_shape == (2, 3)
    torch.testing.assert_close(data.x[1], torch.from_numpy(images[1].ravel() / 255).float())


def test_npy_float_in_unit_range_passes_through(tmp_path):
    images = np.random.default_rng(0).random((4, 10))
    np.save(tmp_path / "f64.npy", images)
    data = load_array(tmp_path / "f64.npy")
    assert data.x.dtype == torch.float32
    assert torch.equal(data.x, torch.from_numpy(images.astype(np.float32)))
    assert data.image_shape is None  # 10 is not a square


@pytest.mark.parametrize(
    "images", [[[-2.0, 0.0], [2.0, 6.0]], [[10.0, 40.0], [70.0, 130.0]]], ids=["negative", "above 1"]
)
def test_npy_float_out_of_range_is_min_max_scaled_over_the_whole_array(tmp_path, images):
    np.save(tmp_path / "f.npy", np.array(images, dtype=np.float32))
    assert load_array(tmp_path / "f.npy").x.tolist() == [[0.0, 0.25], [0.5, 1.0]]


def test_npy_bool_maps_to_zero_and_one(tmp_path):
    np.save(tmp_path / "b.npy", np.array([[True, False], [False, True]]))
    assert load_array(tmp_path / "b.npy").x.tolist() == [[1.0, 0.0], [0.0, 1.0]]


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (np.arange(6, dtype=np.uint8), "at least 2 dimensions"),
        (np.zeros((0, 4), dtype=np.uint8), "non-empty"),
        (np.array([[0.5, np.nan]]), "NaN"),
        (np.array([["a", "b"]]), "dtype"),
    ],
    ids=["1-D", "empty", "nan", "strings"],
)
def test_npy_bad_contents(tmp_path, array, words):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    message = error_message(load_array, path)
    assert str(path) in message and words in message


def test_npy_unreadable_files(tmp_path):
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([[{}, None]], dtype=object), allow_pickle=True)
    text = tmp_path / "text.npy"
    text.write_text("not numpy\n")
    for path in (pickled, text):
        message = error_message(load_array, path)
        assert str(path) in message and "cannot read" in message
    assert "no such file" in error_message(load_array, tmp_path / "missing.npy")


@pytest.mark.parametrize("image_key", ["x", "X", "data", "images"])
@pytest.mark.parametrize("label_key", ["y", "labels", "targets"])
def test_npz_images_and_labels_by_key(tmp_path, image_key, label_key):
    images, labels = random_uint8(6, 3, 3), np.array([3, 1, 4, 1, 5, 9], dtype=np.int32)
    np.savez(tmp_path / "d.npz", **{label_key: labels, image_key: images})
    data = load_array(tmp_path / "d.npz")
    torch.testing.assert_close(data.x, as_rows(images, 255))
    assert data.y.dtype == torch.int64 and data.y.tolist() == labels.tolist()
    assert data.image_shape == (3, 3)


def test_npz_falls_back_to_the_first_array_that_is_not_labels(tmp_path):
    images = random_uint8(3, 4)
    np.savez(tmp_path / "d.npz", labels=np.array([0, 1, 2]), pixels=images)
    data = load_array(tmp_path / "d.npz")
    torch.testing.assert_close(data.x, as_rows(images, 255))
    assert data.y.tolist() == [0, 1, 2]


def test_npz_without_labels(tmp_path):
    np.savez(tmp_path / "d.npz", x=random_uint8(3, 4))
    assert load_array(tmp_path / "d.npz").y is None


@pytest.mark.parametrize(
    ("arrays", "words"),
    [
        ({"x": random_uint8(3, 4), "y": np.array([0, 1])}, "labels of shape (3,)"),
        ({"x": random_uint8(3, 4), "y": np.array([0.0, 1.0, 2.0])}, "integer dtype"),
        ({"y": np.array([0, 1, 2])}, "no image array"),
    ],
    ids=["label count", "float labels", "labels only"],
)
def test_npz_bad_contents(tmp_path, arrays, words):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    message = error_message(load_array, path)
    assert str(path) in message and words in message


# --- IDX -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_idx_finds_sibling_labels(tmp_path, compress):
    suffix = ".gz" if compress else ""
    images, labels = random_uint8(6, 3, 4), np.array([7, 2, 1, 0, 4, 1], dtype=np.uint8)
    path = write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, compress=compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, compress=compress)
    data = load_idx(path)
    assert data.name == path.name
    torch.testing.assert_close(data.x, as_rows(images, 255))
    assert data.y.dtype == torch.int64 and data.y.tolist() == labels.tolist()
    assert data.image_shape == (3, 4)


def test_idx_sibling_labels_may_differ_in_compression(tmp_path):
    path = write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", random_uint8(2, 2, 2), compress=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([5, 6], dtype=np.uint8))
    assert load_idx(path).y.tolist() == [5, 6]


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_idx_without_sibling_labels(tmp_path, compress):
    path = write_idx(tmp_path / "train-images-idx3-ubyte", random_uint8(4, 2, 2), compress=compress)
    data = load_idx(path)
    assert data.y is None and data.x.shape == (4, 4)


def test_idx_explicit_labels_path(tmp_path):
    images = write_idx(tmp_path / "imgs.idx", random_uint8(3, 5, 5))
    labels = write_idx(tmp_path / "lbls.idx", np.array([1, 2, 3], dtype=np.uint8), compress=True)
    assert load_idx(images, labels).y.tolist() == [1, 2, 3]
    assert "no such file" in error_message(load_idx, images, tmp_path / "nope.idx")


def test_idx_gzip_is_detected_by_magic_bytes_not_name(tmp_path):
    images = random_uint8(3, 2, 2)
    compressed_no_suffix = write_idx(tmp_path / "a.idx", images, compress=True)
    plain_with_gz_suffix = write_idx(tmp_path / "b.idx.gz", images)
    for path in (compressed_no_suffix, plain_with_gz_suffix):
        torch.testing.assert_close(load_idx(path).x, as_rows(images, 255))


def test_idx_float32_type_is_read(tmp_path):
    images = np.random.default_rng(0).random((2, 3, 3)).astype(">f4")
    path = write_idx(tmp_path / "f.idx", images, type_code=0x0D)
    assert torch.equal(load_idx(path).x, torch.from_numpy(images.reshape(2, -1).astype(np.float32)))


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_idx_truncated_file(tmp_path, compress):
    data = idx_bytes(random_uint8(4, 3, 3))
    path = tmp_path / "cut-images-idx3-ubyte"
    path.write_bytes(gzip.compress(data)[:-6] if compress else data[:-1])
    message = error_message(load_idx, path)
    assert str(path) in message and "truncated" in message


def test_idx_truncated_header(tmp_path):
    path = tmp_path / "head.idx"
    path.write_bytes(idx_bytes(random_uint8(4, 3, 3))[:10])
    message = error_message(load_idx, path)
    assert str(path) in message and "header" in message


def test_idx_wrong_magic(tmp_path):
    path = tmp_path / "magic.idx"
    path.write_bytes(b"\x01" + idx_bytes(random_uint8(2, 2))[1:])
    message = error_message(load_idx, path)
    assert str(path) in message and "not an IDX file" in message


def test_idx_unsupported_type_code(tmp_path):
    path = write_idx(tmp_path / "type.idx", random_uint8(2, 2), type_code=0x0A)
    message = error_message(load_idx, path)
    assert str(path) in message and "0x0A" in message


def test_idx_label_count_mismatch_names_the_labels_file(tmp_path):
    path = write_idx(tmp_path / "train-images-idx3-ubyte", random_uint8(3, 2, 2))
    labels = write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([1, 2], dtype=np.uint8))
    message = error_message(load_idx, path)
    assert str(labels) in message and "(3,)" in message


# --- load_dataset -----------------------------------------------------------------------------------


def test_load_dataset_bundled_names():
    assert load_dataset("digits").x.shape == (1797, 64)
    patches = load_dataset("patches")
    assert patches.name == "patches" and patches.x.shape == (20000, 64)


def test_load_dataset_paths(tmp_path):
    images = random_uint8(3, 2, 2)
    np.save(tmp_path / "a.npy", images)
    with open(tmp_path / "b.NPZ", "wb") as file:  # np.savez would append ".npz" to a path
        np.savez(file, x=images, y=np.array([0, 1, 2]))
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    write_idx(tmp_path / "c-ubyte.gz", images, compress=True)
    for name in ("a.npy", "b.NPZ", "train-images-idx3-ubyte", "c-ubyte.gz"):
        data = load_dataset(str(tmp_path / name))
        assert data.name == name
        torch.testing.assert_close(data.x, as_rows(images, 255))
    assert load_dataset(str(tmp_path / "b.NPZ")).y.tolist() == [0, 1, 2]


def test_load_dataset_unknown_name(tmp_path):
    expected = "unknown dataset 'foo': expected 'digits', 'patches', or a path to a .npy/.npz/IDX file"
    assert error_message(load_dataset, "foo") == expected
    existing = tmp_path / "data.bin"
    existing.write_bytes(b"")
    assert error_message(load_dataset, str(existing)).startswith(f"unknown dataset '{existing}'")


@pytest.mark.parametrize("name", ["missing.npy", "missing.npz", "t10k-images-idx3-ubyte.gz"])
def test_load_dataset_missing_file(tmp_path, name):
    path = tmp_path / name
    assert error_message(load_dataset, str(path)) == f"{path}: no such file"


# --- train_test_split ---------------------------------------------------------------------------------


def numbered(n: int, labels: bool = True) -> Dataset:
    """n rows whose first column identifies the row (row / n), labelled by row number."""
    x = torch.stack([torch.arange(n) / n, torch.zeros(n)], dim=1)
    return Dataset("numbered", x, torch.arange(n) if labels else None, None)


@pytest.mark.parametrize(
    ("n", "fraction", "n_test"), [(10, 0.3, 3), (10, 0.2, 2), (10, 0.01, 1), (10, 0.99, 9), (1797, 0.2, 359)]
)
def test_split_sizes(n, fraction, n_test):
    train, test = train_test_split(numbered(n), fraction)
    assert (train.x.shape[0], test.x.shape[0]) == (n - n_test, n_test)


def test_split_is_a_disjoint_cover_with_labels_following_rows():
    data = numbered(50)
    train, test = train_test_split(data, 0.3, seed=5)
    rows = torch.cat([train.y, test.y])
    assert sorted(rows.tolist()) == list(range(50))
    for part in (train, test):
        assert torch.equal(part.x, data.x[part.y])
    assert not torch.equal(train.y, torch.sort(train.y).values)  # shuffled, not a prefix


def test_split_is_seeded():
    data = numbered(50)
    first, again, other = (train_test_split(data, seed=seed)[1].y for seed in (1, 1, 2))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_split_keeps_name_image_shape_and_missing_labels():
    data = Dataset("img", torch.rand(10, 4), None, (2, 2))
    for part in train_test_split(data):
        assert part.name == "img" and part.image_shape == (2, 2) and part.y is None


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_split_bad_fraction(fraction):
    assert "test_fraction" in error_message(train_test_split, numbered(10), fraction)


def test_split_needs_two_rows():
    assert "'numbered'" in error_message(train_test_split, numbered(1))
