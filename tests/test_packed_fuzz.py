"""Mangled packed files (binarized/packed.py): 301 seeded mutations of a valid exported `.bnn.npz`.

Each mutation ends in one of two ways: a `PackedFormatError` naming the file
and the cause, or a model that loads and predicts an (N, 10) array. Never
another exception, never a hang (an alarm per mutation), and never a large
allocation (tracemalloc's peak, which counts NumPy's arrays, per mutation).
"""

import io
import json
import os
import signal
import tracemalloc

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from binarized.packed import PackedFormatError, PackedModel  # noqa: E402

MUTATIONS = 301
KINDS = ("flip file bytes", "truncate", "flip header bytes", "flip payload bytes", "change a header number",
         "unknown version", "drop the last node")
# The valid file's load + predict peaks at ~0.6 MiB; a header may ask for more only within
# MAX_ACTIVATION, and none of these mutations should come near this.
PEAK_LIMIT = 64 << 20
HANG_S = 60


@pytest.fixture(scope="module")
def valid_file(tmp_path_factory):
    """A 2-cell child of every binary operator kind and a max pool, exported (bytes)."""
    keras = pytest.importorskip("keras")
    from binarized.export import export
    from pnas.manager import calibrate_batchnorm
    from pnas.model import model_fn

    keras.utils.set_random_seed(0)
    actions = [0, "3x3 sep-bconv", 0, "3x3 maxpool", 0, "1x7-7x1 bconv", 1, "3x3 bconv"]
    model, _ = model_fn(actions, num_cells=2, num_cell_filters=[3, 5], dense_layers=(10,), binary_kwargs={"H": "Glorot"})
    calibrate_batchnorm(model, np.random.default_rng(1).uniform(-1, 1, (16, 28, 28, 1)).astype(np.float32))
    path = tmp_path_factory.mktemp("packed") / "model.bnn.npz"
    export(model, str(path))
    return path.read_bytes()


def _npz(header_bytes, payload):
    buffer = io.BytesIO()
    np.savez_compressed(buffer, header=np.frombuffer(header_bytes, np.uint8), payload=payload)
    return buffer.getvalue()


def _numbers(value, path=()):
    """Paths to every int in a JSON value (bools are not numbers here)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, path + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _numbers(item, path + (i,))
    elif isinstance(value, int) and not isinstance(value, bool):
        yield path


def _flip(data, rng, n):
    data = bytearray(data)
    for i in rng.integers(0, len(data), n):
        data[i] ^= int(rng.integers(1, 256))
    return bytes(data)


def mutate(valid, kind, rng):
    """The bytes of a mutated file, and what was done (for a failure's message)."""
    with np.load(io.BytesIO(valid)) as data:
        header_bytes, payload = bytes(data["header"]), np.array(data["payload"])
    if kind == "flip file bytes":
        n = int(rng.integers(1, 9))
        return _flip(valid, rng, n), f"{n} bytes of the file flipped"
    if kind == "truncate":
        size = int(rng.integers(0, len(valid)))
        return valid[:size], f"truncated to {size} of {len(valid)} bytes"
    if kind == "flip header bytes":
        n = int(rng.integers(1, 5))
        return _npz(_flip(header_bytes, rng, n), payload), f"{n} bytes of the header flipped"
    if kind == "flip payload bytes":
        n = int(rng.integers(1, 65))
        flipped = np.frombuffer(_flip(payload.tobytes(), rng, n), np.uint8)
        return _npz(header_bytes, flipped), f"{n} bytes of the payload flipped"
    header = json.loads(header_bytes)
    if kind == "drop the last node":
        # The scores' node gone: the node before it would be the output, and its weights unread.
        dropped = header["nodes"].pop()
        return _npz(json.dumps(header).encode(), payload), f"the last node {dropped['name']!r} dropped"
    if kind == "unknown version":
        header["version"] = [2, 0, -1, 99, "1", None][int(rng.integers(0, 6))]
        return _npz(json.dumps(header).encode(), payload), f"version {header['version']!r}"
    # A size or an offset: any int of the header, to a neighbour, zero, negative or huge.
    paths = list(_numbers(header))
    path = paths[int(rng.integers(0, len(paths)))]
    target = header
    for key in path[:-1]:
        target = target[key]
    old = target[path[-1]]
    new = [old + 1, old - 1, 0, -1, 2 * old, old + int(rng.integers(2, 1000)), 2**31, 10**12][int(rng.integers(0, 8))]
    target[path[-1]] = new
    return _npz(json.dumps(header).encode(), payload), f"header {'/'.join(map(str, path))}: {old} -> {new}"


def _alarm(signum, frame):
    raise TimeoutError(f"a mutation ran for more than {HANG_S} s")


def test_the_valid_file_loads_and_predicts(valid_file, tmp_path):
    path = tmp_path / "valid.bnn.npz"
    path.write_bytes(valid_file)
    assert PackedModel.load(str(path)).predict(np.zeros((3, 28, 28, 1), np.float32)).shape == (3, 10)


def test_mangled_files_are_refused_with_the_file_and_cause_or_still_predict(valid_file, tmp_path):
    rng = np.random.default_rng(24)
    images = np.random.default_rng(0).uniform(-1, 1, (3, 28, 28, 1)).astype(np.float32)
    outcomes = {kind: {"refused": 0, "predicts": 0} for kind in KINDS}
    peaks = []
    previous = signal.signal(signal.SIGALRM, _alarm)
    tracemalloc.start()
    try:
        for i in range(MUTATIONS):
            kind = KINDS[i % len(KINDS)]
            data, what = mutate(valid_file, kind, rng)
            path = tmp_path / f"m{i:03d}.bnn.npz"
            path.write_bytes(data)
            tracemalloc.reset_peak()
            signal.alarm(HANG_S)
            try:
                scores = PackedModel.load(str(path)).predict(images)
            except PackedFormatError as exc:
                message = str(exc)
                assert str(path) in message, f"mutation {i} ({what}): {message}"
                assert len(message) > len(str(path)) + 10, f"mutation {i} ({what}): no cause in {message!r}"
                assert "\n" not in message.strip(), f"mutation {i} ({what}): {message!r}"
                outcomes[kind]["refused"] += 1
            except Exception as exc:  # the point of the test: any other exception is a defect
                pytest.fail(f"mutation {i} ({what}) raised {type(exc).__name__}: {exc}")
            else:
                assert scores.shape == (3, 10), f"mutation {i} ({what}): scores {scores.shape}"
                outcomes[kind]["predicts"] += 1
            finally:
                signal.alarm(0)
            peaks.append((tracemalloc.get_traced_memory()[1], i, what))
            path.unlink()
    finally:
        tracemalloc.stop()
        signal.signal(signal.SIGALRM, previous)
    peak, i, what = max(peaks)
    assert peak < PEAK_LIMIT, f"mutation {i} ({what}) allocated {peak} bytes"
    print(f"outcomes {outcomes}; largest peak {peak} bytes ({what})")
    # Every kind was tried, and the checks were reached: each kind refused some files.
    assert sum(o["refused"] + o["predicts"] for o in outcomes.values()) == MUTATIONS
    for kind in ("flip file bytes", "truncate", "flip header bytes", "change a header number", "unknown version"):
        assert outcomes[kind]["refused"] > 0, kind
    assert outcomes["unknown version"]["predicts"] == 0
    assert outcomes["drop the last node"]["predicts"] == 0
    # Flipped payload bytes change weights and thresholds, not sizes: the model still runs.
    assert outcomes["flip payload bytes"]["predicts"] > 0


def _parts(valid):
    with np.load(io.BytesIO(valid)) as data:
        return json.loads(bytes(data["header"])), np.array(data["payload"])


def _refusal(tmp_path, header, payload):
    path = tmp_path / "mutated.bnn.npz"
    path.write_bytes(_npz(json.dumps(header).encode(), payload))
    with pytest.raises(PackedFormatError) as info:
        PackedModel.load(str(path))
    return str(info.value)


def test_a_header_without_its_last_node_is_refused(valid_file, tmp_path):
    header, payload = _parts(valid_file)
    assert header["output"] == {"values": 10, "kind": "float"}
    dropped = header["nodes"].pop()
    assert "no node uses" in _refusal(tmp_path, header, payload)
    # With its weights gone from the payload too, the output declared is what is missed.
    header, payload = _parts(valid_file)
    header["output"]["values"] = 64
    message = _refusal(tmp_path, header, payload)
    assert f"the last node {dropped['name']!r} gives 10 float values per image, the header declares 64 float" in message


def test_payload_bytes_that_no_node_uses_are_refused(valid_file, tmp_path):
    header, payload = _parts(valid_file)
    longer = np.concatenate([payload, np.zeros(4, np.uint8)])
    assert "4 bytes that no node uses" in _refusal(tmp_path, header, longer)
    # A section larger than its nodes read: one float too many.
    header["sections"]["floats"][1] += 1
    assert "section 'floats' holds 1 values that no node uses" in _refusal(tmp_path, header, longer)


def test_a_file_written_before_the_output_was_declared_still_loads(valid_file, tmp_path):
    header, payload = _parts(valid_file)
    del header["output"]
    path = tmp_path / "old.bnn.npz"
    path.write_bytes(_npz(json.dumps(header).encode(), payload))
    assert PackedModel.load(str(path)).predict(np.zeros((2, 28, 28, 1), np.float32)).shape == (2, 10)
