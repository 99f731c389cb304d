"""Turns the MNIST IDX files into the arrays the networks train on.

``get_dataset`` returns images scaled to [-1, 1] and labels one-hot encoded
with -1/+1 entries, the targets of the squared hinge loss used for binarized
networks (Courbariaux et al., 2016, "Binarized Neural Networks", arXiv:1602.02830).
The first 5,000 images of the original 60,000-image training set are held out
for validation, so the validation set is the same for every run.
"""

import hashlib
import logging
import math
import pathlib
import zipfile

import numpy as np
from scipy import ndimage

from mnist.download_mnist import ensure_mnist
from mnist.files import atomic_path

logger = logging.getLogger(__name__)

# IDX magic numbers: two zero bytes, a type byte (0x08 = unsigned byte) and
# the number of dimensions.
IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
_UNSIGNED_BYTE = 0x08

NUM_CLASSES = 10
# Held out from the front of the original training set for validation.
VALIDATION_SIZE = 5000

# Expansion ("expanded MNIST"): copies of each training image, randomly
# rotated and shifted, the background filled with the image's median.
EXPANSION_COPIES = 4
MAX_ROTATION_DEG = 15.0
MAX_SHIFT_PX = 2.0
# Bumped whenever the expansion's output would change, so stale caches are
# recomputed instead of silently reused.
_EXPANSION_VERSION = 2


class MnistFormatError(ValueError):
    """A file is not a well-formed IDX file of the expected kind."""


def read_idx(path, expected_magic=None):
    """Reads an unsigned-byte IDX file.

    Args:
        path: The file to read.
        expected_magic: If given, the magic number the file must have
            (``IMAGES_MAGIC`` or ``LABELS_MAGIC``).

    Returns:
        A uint8 array with the dimensions stored in the file.

    Raises:
        MnistFormatError: Bad magic number, unsupported element type, or a
            file length that does not match its header. The message names the
            file and suggests deleting it so it is downloaded again.
    """
    path = pathlib.Path(path)
    data = path.read_bytes()

    def fail(problem):
        return MnistFormatError(
            f"{path} is not a valid IDX file: {problem}. It is probably corrupt; "
            f"delete it so that it is downloaded again.")

    if len(data) < 4:
        raise fail(f"only {len(data)} bytes, too short for the header")
    magic = int.from_bytes(data[:4], "big")
    if data[0] != 0 or data[1] != 0 or data[2] != _UNSIGNED_BYTE or data[3] == 0:
        raise fail(f"bad magic number {magic} (0x{magic:08x}); expected "
                   f"0x0000{_UNSIGNED_BYTE:02x}nn, unsigned bytes in nn dimensions")
    if expected_magic is not None and magic != expected_magic:
        raise fail(f"magic number {magic}, expected {expected_magic}")
    ndim = data[3]
    header_bytes = 4 + 4 * ndim
    if len(data) < header_bytes:
        raise fail(f"{len(data)} bytes, too short for a header of {ndim} dimensions")
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected_bytes = header_bytes + math.prod(dims)
    if len(data) != expected_bytes:
        raise fail(f"{len(data)} bytes, but its header (dimensions {dims}) "
                   f"implies {expected_bytes}")
    return np.frombuffer(data, dtype=np.uint8, offset=header_bytes).reshape(dims)


def write_idx(path, array):
    """Writes a uint8 array as an IDX file (the inverse of ``read_idx``).

    Args:
        path: Destination file; overwritten.
        array: Array-like of integers in [0, 255], at least one dimension.

    Raises:
        ValueError: ``array`` has no dimensions or values outside [0, 255].
    """
    array = np.asarray(array)
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"array must have 1 to 255 dimensions, got {array.ndim}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError("array values must be in [0, 255], got "
                         f"[{array.min()}, {array.max()}]")
    header = bytes([0, 0, _UNSIGNED_BYTE, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    pathlib.Path(path).write_bytes(header + array.astype(np.uint8).tobytes())


def load_raw(data_dir=None):
    """Obtains and parses the four MNIST files.

    Args:
        data_dir: Passed to ``ensure_mnist``; None means its default.

    Returns:
        ``(train_images, train_labels, test_images, test_labels)``: uint8
        arrays of shapes (N, 28, 28), (N,), (M, 28, 28), (M,).

    Raises:
        MnistUnavailableError: The files could not be obtained.
        MnistFormatError: A file is malformed, or images and labels disagree.
    """
    return _read_files(ensure_mnist(data_dir))


def _read_files(data_dir):
    """Parses the four verified files in ``data_dir``; see ``load_raw``."""
    arrays = []
    for split in ("train", "t10k"):
        images_path = data_dir / f"{split}-images-idx3-ubyte"
        labels_path = data_dir / f"{split}-labels-idx1-ubyte"
        images = read_idx(images_path, IMAGES_MAGIC)
        labels = read_idx(labels_path, LABELS_MAGIC)
        if len(images) != len(labels):
            raise MnistFormatError(
                f"{images_path} holds {len(images)} images but {labels_path} "
                f"holds {len(labels)} labels; delete both so they are "
                f"downloaded again.")
        if labels.size and labels.max() >= NUM_CLASSES:
            raise MnistFormatError(
                f"{labels_path} holds label {labels.max()}, outside 0..9; "
                f"delete it so that it is downloaded again.")
        arrays += [images, labels]
    return tuple(arrays)


def scale_images(images):
    """Maps uint8 pixels [0, 255] to float32 [-1, 1] (x / 127.5 - 1), adding a channel axis."""
    # A table lookup makes one pass over the (possibly 275,000-image) array
    # instead of allocating a float temporary per arithmetic step.
    table = np.arange(256, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)
    return table[np.asarray(images, dtype=np.uint8)][..., np.newaxis]


def encode_labels(labels):
    """One-hot encodes labels with -1/+1 entries (the squared hinge targets).

    Args:
        labels: Integer class labels in [0, NUM_CLASSES), shape (N,).

    Returns:
        float32 array of shape (N, NUM_CLASSES): +1 at the label, -1 elsewhere.
    """
    encoded = np.full((len(labels), NUM_CLASSES), -1.0, dtype=np.float32)
    encoded[np.arange(len(labels)), labels] = 1.0
    return encoded


def move_image(image, angle_deg, shift, fill):
    """Rotates an image about its centre, then shifts it, as the original did.

    Both steps are `scipy.ndimage` cubic-spline resamplings (`rotate` with
    `reshape=False`, then `shift`), the original's calls; pixels that come
    from outside the image read as ``fill``.

    Args:
        image: (H, W) array.
        angle_deg: Rotation angle in degrees.
        shift: (rows, columns) shift in pixels.
        fill: Value of the pixels that come from outside the image.

    Returns:
        float64 array (H, W).
    """
    image = np.asarray(image, dtype=np.float64)
    rotated = ndimage.rotate(image, angle_deg, reshape=False, order=3, mode="constant", cval=fill)
    return ndimage.shift(rotated, shift, order=3, mode="constant", cval=fill)


def expand_images(images, seed=0, copies=EXPANSION_COPIES):
    """Builds "expanded MNIST": each image followed by randomly moved copies.

    Each copy is rotated by an angle uniform in ±MAX_ROTATION_DEG and shifted
    by an amount uniform in ±MAX_SHIFT_PX along each axis (``move_image``:
    cubic splines, as the original), with the background filled by the
    image's median; results are rounded back to uint8 so they can be cached
    compactly and scaled like the originals.

    Args:
        images: uint8 array (N, H, W).
        seed: Seeds the random rotations and shifts; the same seed gives the
            same output, and the copies of image i do not depend on N.
        copies: Number of moved copies per image.

    Returns:
        uint8 array (N * (copies + 1), H, W), ordered per original image: the
        image itself, then its ``copies`` copies.
    """
    images = np.asarray(images, dtype=np.uint8)
    n, height, width = images.shape
    low = np.array([-MAX_ROTATION_DEG, -MAX_SHIFT_PX, -MAX_SHIFT_PX])
    # One draw of shape (N, copies, 3) so the parameters of image i are the
    # same whatever N is: a prefix of the data expands to a prefix.
    params = np.random.default_rng(seed).uniform(low, -low, size=(n, copies, 3))
    out = np.empty((n, copies + 1, height, width), dtype=np.uint8)
    out[:, 0] = images
    fill = np.median(images.reshape(n, -1), axis=1)
    for i in range(n):
        for j, (angle, shift_r, shift_c) in enumerate(params[i]):
            moved = move_image(images[i], angle, (shift_r, shift_c), fill[i])
            # The spline overshoots near sharp edges: clip back into the pixel range.
            out[i, j + 1] = np.clip(np.rint(moved), 0, 255)
    return out.reshape(-1, height, width)


def expanded_cache_path(data_dir, seed, n):
    """Where ``get_dataset`` caches the expansion of the first n training images."""
    return pathlib.Path(data_dir) / f"expanded_seed{seed}_n{n}.npz"


def _expand_cached(images, seed, cache_path):
    """``expand_images`` through an on-disk cache keyed on seed and input."""
    key = hashlib.sha256(images.tobytes()).hexdigest() + f"/v{_EXPANSION_VERSION}"
    expected_shape = (len(images) * (EXPANSION_COPIES + 1),) + images.shape[1:]
    if cache_path.is_file():
        try:
            with np.load(cache_path) as cached:
                if str(cached["key"]) == key:
                    expanded = cached["images"]
                    if expanded.shape == expected_shape and expanded.dtype == np.uint8:
                        logger.info("loaded expanded training set from %s", cache_path)
                        return expanded
            logger.info("%s is stale (other data or version); recomputing", cache_path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            logger.warning("ignoring unreadable cache %s (%s); recomputing",
                           cache_path, e)
    logger.info("expanding %d training images x%d (seed %d)",
                len(images), EXPANSION_COPIES + 1, seed)
    expanded = expand_images(images, seed)
    try:
        with atomic_path(cache_path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, images=expanded, key=np.array(key))
    except OSError as e:
        # The cache only saves time: a folder that cannot hold it is no error.
        logger.warning("cannot cache the expansion at %s (%s)", cache_path, e)
    return expanded


def _check_size(name, value, available):
    if value is None:
        return available
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer or None, got {value!r}")
    if value > available:
        raise ValueError(f"{name}={value} exceeds the {available} examples available")
    return int(value)


def get_dataset(use_expansion=False, train_size=None, val_size=None, test_size=None,
                data_dir=None, seed=0, verbose=False):
    """Returns MNIST split into training, validation and test arrays.

    Validation is the first VALIDATION_SIZE (5,000) images of the original
    training set, training the remaining 55,000, test the 10,000 test images,
    each in file order.

    Args:
        use_expansion: Replace the training split by its expansion (see
            ``expand_images``): each image followed by 4 randomly rotated and
            shifted copies, so 5 times as many examples. The expansion is
            cached in the data directory (``expanded_cache_path``).
        train_size: Keep only the first this many training images (applied
            before expansion, so the expanded split has 5 times as many).
            None keeps all.
        val_size: Keep only the first this many validation images.
        test_size: Keep only the first this many test images.
        data_dir: Directory of the MNIST files, passed to ``ensure_mnist``;
            None means its default.
        seed: Seed of the expansion's random rotations and shifts.
        verbose: Print the shape of each array (scripts ask; a library call prints nothing).

    Returns:
        ``[x_train, y_train, x_val, y_val, x_test, y_test]``; images float32
        (N, 28, 28, 1) in [-1, 1], labels float32 (N, 10) with +1 at the class
        and -1 elsewhere.

    Raises:
        ValueError: A size is negative, not an integer, or too large.
        MnistUnavailableError: The files could not be obtained.
        MnistFormatError: A file is malformed.
    """
    data_dir = ensure_mnist(data_dir)
    train_images, train_labels, test_images, test_labels = _read_files(data_dir)
    if len(train_images) <= VALIDATION_SIZE:
        raise MnistFormatError(
            f"the training file holds {len(train_images)} images, too few to hold "
            f"out {VALIDATION_SIZE} for validation")
    val_images, val_labels = train_images[:VALIDATION_SIZE], train_labels[:VALIDATION_SIZE]
    train_images, train_labels = train_images[VALIDATION_SIZE:], train_labels[VALIDATION_SIZE:]

    n_train = _check_size("train_size", train_size, len(train_images))
    n_val = _check_size("val_size", val_size, len(val_images))
    n_test = _check_size("test_size", test_size, len(test_images))
    train_images, train_labels = train_images[:n_train], train_labels[:n_train]
    if use_expansion:
        cache = expanded_cache_path(data_dir, seed, n_train)
        train_images = _expand_cached(train_images, seed, cache)
        train_labels = np.repeat(train_labels, EXPANSION_COPIES + 1)

    arrays = [
        scale_images(train_images), encode_labels(train_labels),
        scale_images(val_images[:n_val]), encode_labels(val_labels[:n_val]),
        scale_images(test_images[:n_test]), encode_labels(test_labels[:n_test]),
    ]
    if verbose:
        names = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
        for name, array in zip(names, arrays):
            print(f"{name} shape: {array.shape}")
    return arrays
