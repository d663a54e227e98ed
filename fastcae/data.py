"""Datasets for training contractive autoencoders, all local: nothing is downloaded.

Every loader returns a :class:`Dataset` whose ``x`` is an (N, D) float32 tensor
scaled to [0, 1], ready for a sigmoid decoder and a BCE or MSE loss:

* :func:`load_digits`: scikit-learn's bundled 8x8 handwritten digits, with labels;
* :func:`load_patches`: random patches of the photographs bundled with scikit-image;
* :func:`load_array`: a user's ``.npy`` / ``.npz`` file;
* :func:`load_idx`: MNIST-format IDX files, gzip-compressed or not;
* :func:`load_dataset`: any of the above from one string, e.g. a command-line argument.

:func:`train_test_split` makes a seeded split. Every failure a user can cause
raises :class:`DatasetError`, whose one-line message names the file or dataset.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "PATCH_IMAGES",
    "Dataset",
    "DatasetError",
    "load_array",
    "load_dataset",
    "load_digits",
    "load_idx",
    "load_patches",
    "train_test_split",
]

StrPath = str | os.PathLike[str]

# Photographs shipped inside the scikit-image wheel, read from its own data
# directory so no pooch download is ever attempted. "page" and "text" are left
# out: scanned text is not natural-image statistics.
PATCH_IMAGES: tuple[str, ...] = ("camera", "coins", "moon", "grass", "gravel", "brick", "clock_motion")

_NPZ_IMAGE_KEYS: tuple[str, ...] = ("x", "X", "data", "images")
_NPZ_LABEL_KEYS: tuple[str, ...] = ("y", "labels", "targets")

# IDX element types: type code -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
# "train-images-idx3-ubyte" -> "train-labels-idx1-ubyte"; some mirrors use "images.idx3".
_MNIST_IMAGES = re.compile(r"images([.-])idx3")


class DatasetError(ValueError):
    """A dataset could not be loaded or split; the message is one line naming the file or dataset."""


# eq=False: the generated __eq__ would compare tensors, whose truth value is ambiguous.
@dataclass(frozen=True, eq=False)
class Dataset:
    """Samples for a CAE, one per row.

    Attributes:
        name: what the data is, e.g. ``"digits"`` or a file name.
        x: (N, D) float32, values in [0, 1].
        y: (N,) int64 class labels, or None when there are none.
        image_shape: (height, width) with height * width == D when each row is an image
            (for plotting rows and filters), else None.
    """

    name: str
    x: torch.Tensor
    y: torch.Tensor | None
    image_shape: tuple[int, int] | None


def load_digits() -> Dataset:
    """scikit-learn's bundled handwritten digits (no download).

    Returns:
        Dataset ``"digits"``: x (1797, 64) float32, the 0..16 pixel counts divided by 16;
        y (1797,) int64 digits 0..9; image_shape (8, 8).
    """
    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()
    x = torch.from_numpy(bunch.data.astype(np.float32) / 16)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    return Dataset("digits", x, y, (8, 8))


def load_patches(n_patches: int = 20000, size: int = 8, seed: int = 0) -> Dataset:
    """Square patches cut at random positions from scikit-image's bundled grayscale photographs.

    Positions are drawn uniformly over every patch position of every image in
    :data:`PATCH_IMAGES`, so larger images contribute proportionally more patches.
    The same ``seed`` always gives the same patches.

    Returns:
        Dataset ``"patches"``: x (n_patches, size * size) float32 in [0, 1], rows in
        row-major pixel order; y None; image_shape (size, size).

    Raises:
        DatasetError: ``n_patches < 1``, ``size`` outside [1, smallest image side], or a
            bundled image missing from the installed scikit-image.
    """
    if n_patches < 1:
        raise DatasetError(f"load_patches: n_patches must be at least 1, got {n_patches}")
    images = _bundled_images()
    smallest = min(min(image.shape) for image in images)
    if not 1 <= size <= smallest:
        raise DatasetError(
            f"load_patches: size must be between 1 and {smallest} (the smallest image side), got {size}"
        )
    # All windows of each image as a (rows, cols, size, size) view, without copying.
    windows = [np.lib.stride_tricks.sliding_window_view(image, (size, size)) for image in images]
    counts = torch.tensor([w.shape[0] * w.shape[1] for w in windows])
    ends = torch.cumsum(counts, 0)
    generator = torch.Generator().manual_seed(seed)
    flat = torch.randint(int(ends[-1]), (n_patches,), generator=generator)
    image_index = torch.searchsorted(ends, flat, right=True)
    position = flat - (ends - counts)[image_index]
    image_index, position = image_index.numpy(), position.numpy()
    patches = np.empty((n_patches, size, size), dtype=np.float32)
    for i, w in enumerate(windows):
        chosen = image_index == i
        rows, cols = np.divmod(position[chosen], w.shape[1])
        patches[chosen] = w[rows, cols]
    return Dataset("patches", torch.from_numpy(patches.reshape(n_patches, -1)), None, (size, size))


def _bundled_images() -> list[np.ndarray]:
    """The :data:`PATCH_IMAGES` as 2-D float32 arrays in [0, 1]."""
    import skimage.data
    from skimage.io import imread
    from skimage.util import img_as_float32

    directory = Path(skimage.data.__file__).parent
    images = []
    for name in PATCH_IMAGES:
        path = directory / f"{name}.png"
        if not path.is_file():
            raise DatasetError(f"load_patches: bundled image {path} is missing from the scikit-image install")
        images.append(img_as_float32(imread(path)))
    return images


def load_array(path: StrPath) -> Dataset:
    """A dataset from a NumPy ``.npy`` or ``.npz`` file (read with ``allow_pickle=False``).

    A ``.npy`` file holds the images, shape (N, ...). In a ``.npz`` file the images are
    under ``"x"``, ``"X"``, ``"data"`` or ``"images"`` (first match), else the first array
    that is not labels; labels, if any, are under ``"y"``, ``"labels"`` or ``"targets"``
    and must be N integers.

    Each sample is flattened to a row. Scaling to [0, 1]: uint8 and uint16 arrays are
    divided by their dtype's maximum (255, 65535); other integer arrays holding values in
    [0, 255] are taken as 8-bit pixels stored in a wider type (NumPy's default int64)
    and divided by 255; float arrays already within [0, 1] are kept as they are; any
    other array is min-max scaled over the whole array (not per sample or per feature),
    so its smallest value maps to 0 and its largest to 1. Boolean arrays map to 0 and 1.

    Returns:
        Dataset named after the file: x (N, D) float32; y (N,) int64 or None; image_shape
        (h, w) for an (N, h, w) array, (s, s) for an (N, D) array with D == s * s, else None.

    Raises:
        DatasetError: missing or unreadable file, no images, an array that is not (N, ...)
            or holds non-finite values, or bad labels.
    """
    path = _existing_file(path)
    try:
        images, labels = _read_npy_or_npz(path)
    except DatasetError:  # a ValueError too, but already says what is wrong
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{path}: cannot read as a .npy/.npz file ({_one_line(exc)})") from exc
    return _make_dataset(path, images, labels)


def _read_npy_or_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(images, labels or None) from a ``.npy`` or ``.npz`` file, keys chosen as :func:`load_array` says."""
    # np.load tells the two formats apart by content, whatever the file's suffix.
    loaded = np.load(path, allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        return loaded, None
    with loaded:
        label_key = next((key for key in _NPZ_LABEL_KEYS if key in loaded.files), None)
        image_key = next((key for key in _NPZ_IMAGE_KEYS if key in loaded.files), None)
        if image_key is None:
            image_key = next((key for key in loaded.files if key != label_key), None)
        if image_key is None:
            raise DatasetError(f"{path}: no image array in the .npz file (keys: {loaded.files})")
        return loaded[image_key], None if label_key is None else loaded[label_key]


def load_idx(images_path: StrPath, labels_path: StrPath | None = None) -> Dataset:
    """A dataset from MNIST-format IDX files, each gzip-compressed or not.

    Compression is detected from the gzip magic bytes, not the file name. The IDX
    header is ``00 00 <type code> <ndims>`` then ndims big-endian int32 sizes; every
    IDX element type is read (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D
    float32, 0x0E float64) and scaled to [0, 1] as in :func:`load_array`.

    If ``labels_path`` is None and the images file follows the MNIST naming
    (``...-images-idx3-ubyte[.gz]``), the sibling ``...-labels-idx1-ubyte[.gz]`` is used
    when it exists, compressed or not.

    Returns:
        Dataset named after the images file: x (N, D) float32; y (N,) int64 or None;
        image_shape (h, w) for an (N, h, w) images file, as in :func:`load_array` otherwise.

    Raises:
        DatasetError: missing file, bad magic bytes, unknown type code, a size that does
            not match the header (truncated file), or labels that are not N integers.
    """
    images_path = _existing_file(images_path)
    if labels_path is None:
        labels_path = _mnist_labels_sibling(images_path)
    if labels_path is None:
        return _make_dataset(images_path, _read_idx(images_path))
    labels_path = _existing_file(labels_path)
    return _make_dataset(images_path, _read_idx(images_path), _read_idx(labels_path), labels_path)


def _mnist_labels_sibling(images_path: Path) -> Path | None:
    """The existing MNIST labels file next to ``images_path``, or None."""
    name = _MNIST_IMAGES.sub(r"labels\1idx1", images_path.name)
    if name == images_path.name:
        return None
    stem = name.removesuffix(".gz")
    for candidate in (name, stem, f"{stem}.gz"):
        if (images_path.parent / candidate).is_file():
            return images_path.parent / candidate
    return None


def _read_idx(path: Path) -> np.ndarray:
    """The array stored in an IDX file, gzip-compressed or not, in its IDX shape and dtype."""
    raw = path.read_bytes()
    if raw.startswith(_GZIP_MAGIC):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(f"{path}: corrupt or truncated gzip data ({_one_line(exc)})") from exc
    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        raise DatasetError(
            f"{path}: not an IDX file: expected magic bytes 00 00 <type> <ndims>, "
            f"got {raw[:4].hex(' ') or 'an empty file'}"
        )
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        known = ", ".join(f"0x{code:02X} ({dtype.name})" for code, dtype in _IDX_DTYPES.items())
        raise DatasetError(f"{path}: unsupported IDX type code 0x{type_code:02X}: expected one of {known}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(
            f"{path}: truncated IDX header: {ndim} dimensions need {header} bytes, got {len(raw)}"
        )
    # Sizes read as unsigned: a corrupt header then fails the size check below, not with a negative shape.
    shape = tuple(int(n) for n in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header != expected:
        raise DatasetError(
            f"{path}: IDX data is {len(raw) - header} bytes, but the header's shape {shape} of {dtype.name} "
            f"needs {expected} (truncated or corrupt file)"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def load_dataset(spec: str) -> Dataset:
    """A dataset by name or path: ``"digits"``, ``"patches"`` (default arguments), or a file.

    A path ending in ``.npy`` or ``.npz`` goes to :func:`load_array`; a file name containing
    ``"idx"`` or ``"ubyte"`` (e.g. ``train-images-idx3-ubyte.gz``) goes to :func:`load_idx`.

    Raises:
        DatasetError: ``spec`` is neither a known name nor such a path, or the file is
            missing or invalid.
    """
    if spec == "digits":
        return load_digits()
    if spec == "patches":
        return load_patches()
    name = Path(spec).name.lower()
    if name.endswith((".npy", ".npz")):
        return load_array(spec)
    if "idx" in name or "ubyte" in name:
        return load_idx(spec)
    raise DatasetError(
        f"unknown dataset {spec!r}: expected 'digits', 'patches', or a path to a .npy/.npz/IDX file"
    )


def train_test_split(data: Dataset, test_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Split ``data`` into (train, test) by a seeded random permutation of its rows.

    The test part has ``round(N * test_fraction)`` rows, kept between 1 and N - 1 so
    neither part is empty; both parts keep ``name`` and ``image_shape``, and labels
    follow their rows. The same ``seed`` always gives the same split.

    Raises:
        DatasetError: ``test_fraction`` not strictly between 0 and 1, or fewer than 2 rows.
    """
    if not 0 < test_fraction < 1:
        raise DatasetError(f"test_fraction must be strictly between 0 and 1, got {test_fraction}")
    n = data.x.shape[0]
    if n < 2:
        raise DatasetError(f"dataset {data.name!r} has {n} row(s): a train/test split needs at least 2")
    n_test = min(max(round(n * test_fraction), 1), n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return _rows(data, order[n_test:]), _rows(data, order[:n_test])


def _rows(data: Dataset, index: torch.Tensor) -> Dataset:
    y = None if data.y is None else data.y[index]
    return dataclasses.replace(data, x=data.x[index], y=y)


def _make_dataset(
    path: Path, images: np.ndarray, labels: np.ndarray | None = None, labels_path: Path | None = None
) -> Dataset:
    """The Dataset named after ``path`` from its (N, ...) images and optional (N,) labels.

    Errors name ``path``, or ``labels_path`` for labels read from another file.
    """
    if images.ndim < 2 or 0 in images.shape:
        raise DatasetError(
            f"{path}: expected a non-empty array of shape (N, ...) with at least 2 dimensions, "
            f"got shape {images.shape}"
        )
    n = images.shape[0]
    x = torch.from_numpy(_unit_range(images.reshape(n, -1), path))
    y = None if labels is None else torch.from_numpy(_labels(labels, n, labels_path or path))
    return Dataset(path.name, x, y, _image_shape(images.shape))


def _unit_range(array: np.ndarray, path: Path) -> np.ndarray:
    """``array`` as float32 in [0, 1], scaled as :func:`load_array` describes."""
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        if array.dtype in (np.uint8, np.uint16):
            return array.astype(np.float32) / np.float32(np.iinfo(array.dtype).max)
        if array.min() >= 0 and array.max() <= 255:  # 8-bit pixels in a wider integer type
            return array.astype(np.float32) / np.float32(255)
        array = array.astype(np.float64)  # any other range: min-max scaled below
    if not np.issubdtype(array.dtype, np.floating):
        raise DatasetError(f"{path}: expected integer or float data, got dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise DatasetError(f"{path}: data contains NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if low >= 0 and high <= 1:
        return array.astype(np.float32)
    # float64 arithmetic keeps a small range on a large offset from collapsing; a constant
    # array outside [0, 1] has no range to scale and maps to all zeros.
    return ((array.astype(np.float64) - low) / (high - low or 1)).astype(np.float32)


def _labels(labels: np.ndarray, n: int, path: Path) -> np.ndarray:
    """``labels`` as an (n,) int64 array."""
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(
            f"{path}: expected labels of shape ({n},) with an integer dtype, "
            f"got shape {labels.shape} of {labels.dtype}"
        )
    return labels.astype(np.int64)


def _image_shape(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """(h, w) of each sample of an (N, h, w) array, or (s, s) for (N, s * s); None otherwise."""
    if len(shape) == 3:
        return shape[1], shape[2]
    if len(shape) == 2:
        side = math.isqrt(shape[1])
        if side * side == shape[1]:
            return side, side
    return None


def _existing_file(path: StrPath) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    return path


def _one_line(exc: BaseException) -> str:
    """An exception's message collapsed to one line, for wrapping in a DatasetError."""
    return " ".join(str(exc).split()) or type(exc).__name__
