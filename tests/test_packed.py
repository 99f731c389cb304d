"""Tests of the bit-packed export (binarized/export.py) and the NumPy engine (binarized/packed.py).

The packing layout and the bit-level helpers are checked against plain NumPy
on ±1 arrays; whole children of every operator, untrained with randomised
BatchNorm (negative and zero scales included) and odd widths (3, 33, 65), are
checked bit for bit against Keras at every ±1 activation; the integer
pre-activations of convs on ±1 inputs are checked against Keras's conv at
every position, the zero-padded borders included.
"""

import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from binarized import packed  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------- packing


def test_packing_layout_is_lsb_first_bit_one_for_minus_one_tail_zero():
    values = np.ones(33, np.float32)
    values[[0, 5, 31, 32]] = -1
    words = packed.pack(values)
    assert words.dtype == np.uint32 and words.shape == (2,)
    assert int(words[0]) == (1 << 0) | (1 << 5) | (1 << 31)
    assert int(words[1]) == 1  # channel 32 is bit 0 of word 1; bits 1-31 (the tail) are 0
    all_minus = packed.pack(-np.ones(3))
    assert int(all_minus[0]) == 0b111  # the 29 tail bits stay 0


@pytest.mark.parametrize("channels", [1, 3, 32, 33, 65])
def test_pack_unpack_round_trip(channels):
    rng = np.random.default_rng(channels)
    values = np.where(rng.random((4, 5, channels)) < 0.5, -1.0, 1.0).astype(np.float32)
    words = packed.pack(values)
    assert words.shape == (4, 5, -(-channels // 32))
    np.testing.assert_array_equal(packed.unpack(words, channels), values)
    tail = channels % 32
    if tail:
        assert not np.any(words[..., -1] >> np.uint32(tail))


@pytest.mark.parametrize("n", [3, 33, 65, 200])
def test_binary_dot_is_n_minus_twice_popcount_of_xor(n):
    rng = np.random.default_rng(n)
    a, b = (np.where(rng.random(n) < 0.5, -1, 1) for _ in range(2))
    assert packed.binary_dot(packed.pack(a), packed.pack(b), n) == int(a @ b)


def test_concat_bits_matches_concatenating_the_values():
    rng = np.random.default_rng(0)
    sizes = [3, 33, 65, 1, 31]
    parts = [np.where(rng.random((2, 3, 3, c)) < 0.5, -1.0, 1.0) for c in sizes]
    words, channels = packed.concat_bits([(packed.pack(p), p.shape[-1]) for p in parts])
    assert channels == sum(sizes)
    expected = np.concatenate(parts, axis=-1)
    np.testing.assert_array_equal(words, packed.pack(expected))
    np.testing.assert_array_equal(packed.unpack(words, channels), expected)


def test_packed_module_imports_neither_tensorflow_nor_keras():
    code = "import sys, binarized.packed; bad = {'tensorflow', 'keras'} & set(sys.modules); print(sorted(bad))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- against Keras

keras = pytest.importorskip("keras")
from binarized.export import export, export_model, main as export_main, write  # noqa: E402
from pnas.model import OPERATORS, model_fn  # noqa: E402

from pnas.manager import calibrate_batchnorm  # noqa: E402


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (n, 28, 28, 1)).astype(np.float32)


def _child(actions, filters, dense=(33, 10), seed=0, h="Glorot"):
    """An untrained child with calibrated, then randomised BatchNorm (scales < 0 and = 0 included)."""
    keras.utils.set_random_seed(seed)
    model, _ = model_fn(actions, num_cells=len(filters), num_cell_filters=filters, dense_layers=dense,
                        binary_kwargs={"H": h})
    calibrate_batchnorm(model, _images(32, seed + 1))
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            gamma = rng.normal(0, 1, c).astype(np.float32)
            gamma[0] = 0.0  # a constant channel
            layer.gamma.assign(gamma)
            layer.beta.assign(rng.normal(0, 0.3, c).astype(np.float32))
    return model


def _engine(model, tmp_path):
    path = tmp_path / "model.bnn.npz"
    export(model, str(path))
    return packed.PackedModel.load(str(path))


def _compare_every_activation(model, engine, x):
    """Asserts every ±1 node equals Keras's layer of that name, and the scores are equal."""
    acts = engine.activations(x)
    layers = {layer.name for layer in model.layers}
    # Nodes named after a Keras layer; a factorized reduction's convs are named conv+bn.
    names = [n for n in acts if n != "flatten" and n in layers]
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names] + [model.output])
    outs = [keras.ops.convert_to_numpy(o) for o in probe(x, training=False)]
    for name, ref in zip(names, outs[:-1]):
        # ±1, and 0 only on a ZeroPadding2D's border.
        assert set(np.unique(ref)) <= ({-1.0, 0.0, 1.0} if "previous" in name else {-1.0, 1.0}), name
        np.testing.assert_array_equal(acts[name].reshape(ref.shape), ref, err_msg=name)
    # Scores: float32(s * h) through the BatchNorm; Keras sums the ±h terms in
    # float32, so with h != 1 its last bits depend on its summation order.
    np.testing.assert_allclose(engine.predict(x), outs[-1], rtol=1e-5, atol=1e-5)
    return names


@pytest.mark.parametrize("op", list(OPERATORS))
def test_every_operator_is_bit_exact(op, tmp_path):
    # Block 2 reads block 1 (INPUT_LOOKFORWARD_DEPTH > 0); widths 3, 33, 65 leave
    # concatenations of 6, 12, 66, 132, 130, 260 channels, none a multiple of 32.
    model = _child([0, op, 0, op, 1, op, 0, "3x3 bconv"], [3, 33, 65])
    engine = _engine(model, tmp_path)
    names = _compare_every_activation(model, engine, _images(6, 7))
    assert "dense0_sign" in names and any(n.startswith("c2_b") for n in names)
    binary, total = engine.macs()
    if "pool" not in op:
        assert 0.5 * total < binary < total  # all but the layers on the image run as XNOR-popcount


@pytest.mark.parametrize(
    "actions",
    [[-1, "3x3 bconv", 0, "5x5 sep-bconv"], [-1, "3x3 maxpool", -1, "linear", 1, "3x3 sep-bconv", -1, "3x3 avgpool"]],
)
def test_previous_cell_input_factorized_reduction_is_bit_exact(actions, tmp_path):
    # Input -1: two stride-2 1x1 convs (one on the input shifted by a zero-padded
    # pixel) concatenated before one BatchNorm; 7x7 inputs read that zero border.
    model = _child(actions, [3, 33, 65])
    engine = _engine(model, tmp_path)
    names = _compare_every_activation(model, engine, _images(5, 2))
    assert "c2_previous_sign" in names
    # In the first, the shifted input (zeros on its border) stays packed bits.
    assert ("c2_previous_shift" in names) == (actions[1] == "3x3 bconv")


def test_first_layer_with_h_one_and_pooling_on_the_image(tmp_path):
    # Max pooling on the image is real-valued: the convs after it take the float path.
    model = _child([0, "3x3 maxpool", 0, "3x3 avgpool", 1, "5x5 sep-bconv", 1, "3x3 bconv"], [5, 33], dense=(10,), h=1.0)
    engine = _engine(model, tmp_path)
    _compare_every_activation(model, engine, _images(5, 3))
    # Block 1 is real-valued, so every concatenation holding it, and all after, take the float path.
    binary, total = engine.macs()
    assert binary == 0 and total > 0


@pytest.mark.parametrize("op", ["7x7 bconv", "5x5 sep-bconv"])
def test_integer_preactivations_match_keras_at_every_position_borders_included(op, tmp_path):
    model = _child([0, "3x3 bconv", 0, op], [3, 33], dense=(10,))
    engine = _engine(model, tmp_path)
    x = _images(4, 11)
    values = engine.run(x, keep=True)
    node = next(n for n in engine.nodes if n.name == "c1_b0_right_sign")
    source = values[engine.names[node.inputs[0]]]
    assert source.kind == "bits"
    ours = node.preactivation(source)
    layer = model.get_layer("c1_b0_right")
    keras_out = keras.ops.convert_to_numpy(keras.Model(model.input, layer.output)(x, training=False))
    # Channels whose BatchNorm scale is negative run with negated weights (the folded flip).
    flip = np.where(model.get_layer("c1_b0_right_bn").gamma.numpy() < 0, -1, 1).astype(np.int32)
    np.testing.assert_array_equal(ours, np.rint(keras_out / node.h).astype(np.int32) * flip)
    # The zero padding must matter: without the correction the borders would differ.
    corr = node.correction(tuple(source.hw))
    assert corr is not None and np.any(corr[0] != 0) and np.any(corr[-1] != 0)
    assert np.all(corr[corr.shape[0] // 2, corr.shape[1] // 2] == 0)  # the centre reads no padding


def test_thresholds_fold_negative_and_zero_scales(tmp_path):
    model = _child([0, "3x3 bconv", 0, "3x3 bconv"], [3, 33], dense=(10,))
    header, _ = export_model(model)
    engine = _engine(model, tmp_path)
    node = next(n for n in engine.nodes if n.name == "c1_b0_left_sign")
    bn = model.get_layer("c1_b0_left_bn")
    assert np.any(bn.gamma.numpy() < 0)  # some channels flip their comparison
    # Channel 0 has gamma = 0: its sign is that of beta for every input.
    n = node.n
    if bn.beta.numpy()[0] >= 0:
        assert node.thr[0] <= -n
    else:
        assert node.thr[0] > n
    _compare_every_activation(model, engine, _images(4, 5))
    assert header["nodes"][0] == {"op": "input", "name": "image", "shape": [28, 28, 1]}


def test_export_load_round_trip_and_file_contents(tmp_path):
    model = _child([0, "3x3 sep-bconv", 0, "1x7-7x1 bconv"], [3, 33], dense=(33, 10))
    path = tmp_path / "out.npz"
    size = export(model, str(path))
    assert size == path.stat().st_size
    with np.load(path) as data:
        assert sorted(data.files) == ["header", "payload"]
    engine = packed.PackedModel.load(str(path))
    assert engine.header["format"] == packed.FORMAT_NAME and engine.header["version"] == packed.FORMAT_VERSION
    assert engine.input_shape == (28, 28, 1)
    x = _images(3, 1)
    scores = engine.predict(x)
    assert scores.shape == (3, 10) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, keras.ops.convert_to_numpy(model(x, training=False)), rtol=1e-5, atol=1e-5)
    # Bits: one per binary weight, rounded up to whole words.
    header, payload = export_model(model)
    n_binary = sum(
        int(np.prod(w.shape)) for layer in model.layers for w in layer.weights if "kernel" in w.path.split("/")[-1]
    )
    assert header["sections"]["bits"][1] == -(-n_binary // 32)
    # The export is deterministic: a second write holds the same arrays.
    write(header, payload, str(tmp_path / "again.npz"))
    with np.load(path) as first, np.load(tmp_path / "again.npz") as second:
        for key in ("header", "payload"):
            np.testing.assert_array_equal(first[key], second[key])


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "out.npz"
    path.write_bytes(b"previous export")
    header, payload = {"format": packed.FORMAT_NAME}, np.arange(3, dtype=np.uint32)

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", disk_full)
        with pytest.raises(OSError, match="No space left"):
            write(header, payload, str(path))
    assert path.read_bytes() == b"previous export" and list(tmp_path.iterdir()) == [path]
    assert write(header, payload, str(path)) == path.stat().st_size
    with np.load(path) as data:
        np.testing.assert_array_equal(data["payload"], payload)
    assert list(tmp_path.iterdir()) == [path]


def test_cli_exports_and_refuses_an_unsupported_layer(tmp_path, capsys):
    good = _child([0, "3x3 bconv", 0, "3x3 maxpool"], [3], dense=(10,))
    good_path = tmp_path / "good.keras"
    good.save(good_path)
    assert export_main([str(good_path), str(tmp_path / "good.npz")]) == 0
    assert "smaller" in capsys.readouterr().out
    engine = packed.PackedModel.load(str(tmp_path / "good.npz"))
    x = _images(2, 4)
    np.testing.assert_allclose(engine.predict(x), keras.ops.convert_to_numpy(good(x, training=False)), rtol=1e-5, atol=1e-5)

    inputs = keras.Input((28, 28, 1), name="image")
    y = keras.layers.Conv2D(4, 3, name="float_conv")(inputs)
    y = keras.layers.Flatten()(y)
    bad = keras.Model(inputs, keras.layers.Dense(10)(y))
    bad_path = tmp_path / "bad.keras"
    bad.save(bad_path)
    out_path = tmp_path / "bad.npz"
    assert export_main([str(bad_path), str(out_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "float_conv" in err[0] and "Conv2D" in err[0]
    assert not out_path.exists() and [p for p in tmp_path.iterdir() if ".tmp" in p.name] == []


def test_a_missing_file_or_folder_is_named_not_mistaken_for_a_damaged_file(tmp_path, capsys):
    with pytest.raises(FileNotFoundError):
        packed.PackedModel.load(str(tmp_path / "missing.bnn.npz"))
    # The export writes into an existing folder only: a mistyped path creates nothing.
    model = _child([0, "3x3 bconv", 0, "3x3 maxpool"], [3], dense=(10,))
    with pytest.raises(FileNotFoundError, match="its folder .*nowhere does not exist"):
        export(model, str(tmp_path / "nowhere" / "out.npz"))
    model.save(tmp_path / "good.keras")
    assert export_main([str(tmp_path / "good.keras"), str(tmp_path / "nowhere" / "out.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot write ") and "does not exist" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.keras"]


def _write_idx(path, array):
    """An unsigned-byte IDX file, as MNIST's are."""
    array = np.asarray(array, np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.tobytes())


def test_command_line_scores_a_packed_file_on_the_test_images_with_numpy_alone(tmp_path):
    model = _child([0, "3x3 bconv", 0, "3x3 maxpool"], [5], dense=(10,))
    path = tmp_path / "m.bnn.npz"
    export(model, str(path))
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    images = pixels.astype(np.float32)[..., None] / np.float32(127.5) - np.float32(1)
    predicted = packed.PackedModel.load(str(path)).predict(images).argmax(axis=1)
    labels = predicted.copy()
    labels[:10] = (labels[:10] + 1) % 10  # 30 of 40 right
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    _write_idx(mnist / "t10k-images-idx3-ubyte", pixels)
    _write_idx(mnist / "t10k-labels-idx1-ubyte", labels)
    # In a fresh interpreter that blocks TensorFlow and Keras: NumPy alone runs it.
    code = ("import sys; sys.modules['tensorflow'] = None; sys.modules['keras'] = None; "
            "from binarized.packed import main; sys.exit(main())")
    result = subprocess.run([sys.executable, "-c", code, str(path), "--mnist", str(mnist)], cwd=ROOT,
                            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: test accuracy 0.7500 (30/40), ")
    missing = subprocess.run([sys.executable, "-m", "binarized.packed", str(path), "--mnist", str(tmp_path / "no")],
                             cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert missing.returncode == 2 and missing.stderr.startswith("error: no t10k-images-idx3-ubyte")
