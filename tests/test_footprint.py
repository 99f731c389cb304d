"""pnas/footprint.py: parameters and MACs per layer, counted by hand and by Larq's rules."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pytest  # noqa: E402

from pnas import footprint  # noqa: E402
from pnas.model import model_fn  # noqa: E402


def _by_name(rows):
    return {r["name"]: r for r in rows}


def _kib(binary, floating):
    return (binary / 8 + floating * 4) / 1024, (binary + floating) * 4 / 1024


def test_footprint_of_one_cell_counted_by_hand():
    keras.utils.set_random_seed(0)
    model, mul_ops = model_fn([0, "3x3 bconv", 0, "3x3 bconv"], num_cells=1, num_cell_filters=[4],
                              dense_layers=[10])
    rows = footprint.layer_footprint(model)
    layers = _by_name(rows)

    # Two 3x3 convs, 1 -> 4 channels, stride 2 on the 28x28 image: 14x14x4 each.
    conv_params = 3 * 3 * 1 * 4
    conv_macs = 14 * 14 * 3 * 3 * 1 * 4
    features = 14 * 14 * (4 + 4)  # the two outputs concatenated, flattened
    for side in ("left", "right"):
        conv = layers[f"c0_b0_{side}"]
        # The image is real-valued: a binary kernel on it is a float MAC.
        assert (conv["binary_params"], conv["float_params"]) == (conv_params, 0)
        assert (conv["binary_macs"], conv["float_macs"]) == (0, conv_macs)
        assert conv["output_shape"] == (None, 14, 14, 4)
        bn = layers[f"c0_b0_{side}_bn"]
        # Larq's count: moving mean and variance per channel (gamma and beta fold into them).
        assert (bn["binary_params"], bn["float_params"], bn["binary_macs"], bn["float_macs"]) == (0, 2 * 4, 0, 0)
    dense = layers["dense0"]
    # The dense layer reads the flattened ±1 activations: binary MACs.
    assert (dense["binary_params"], dense["float_params"]) == (features * 10, 0)
    assert (dense["binary_macs"], dense["float_macs"]) == (features * 10, 0)
    assert layers["dense0_bn"]["float_params"] == 2 * 10
    for name in ("c0_b0_left_sign", "c0_b0_right_sign", "c0_b0", "flatten"):
        assert layers[name]["binary_params"] + layers[name]["float_params"] == 0
        assert layers[name]["binary_macs"] + layers[name]["float_macs"] == 0
    assert "image" not in layers

    binary = 2 * conv_params + features * 10
    floating = 2 * 2 * 4 + 2 * 10
    packed, float32 = _kib(binary, floating)
    totals = footprint.totals(rows)
    assert totals["binary_params"] == binary == 15752
    assert totals["float_params"] == floating == 36
    # Keras counts gamma and beta too: 2 per channel of the three BatchNorms.
    assert totals["binary_params"] + totals["float_params"] + floating == model.count_params()
    assert totals["packed_kib"] == pytest.approx(packed, abs=0.005)
    assert totals["float32_kib"] == pytest.approx(float32, abs=0.005)
    assert totals["binary_macs"] == features * 10
    assert totals["float_macs"] == 2 * conv_macs
    # mul_ops counts every MAC of a binary layer, whatever its input.
    assert mul_ops == totals["binary_macs"] + totals["float_macs"]
    assert footprint.summary(model) == totals

    table = footprint.format_table(rows)
    lines = table.splitlines()
    total_line = next(line for line in lines if line.startswith("total"))
    assert total_line.split() == ["total", str(binary), str(floating), str(features * 10), str(2 * conv_macs)]
    assert f"{packed:.2f} KiB with 1-bit weights packed, {float32:.2f} KiB in float32" in table
    assert "smaller" not in table  # a -ta run prints one ratio: its packed file's (binarized.export)
    # OPs: Bi-Real Net's float MACs + binary MACs / 64.
    assert totals["ops"] == round(2 * conv_macs + features * 10 / 64)
    assert f"OPs {totals['ops']} = 32-bit MACs {2 * conv_macs} + 1-bit MACs {features * 10} / 64" in table
    assert sum(line.startswith("c0_b0_left ") for line in lines) == 1


def test_footprint_counts_as_larq_on_a_network_counted_by_hand():
    """Larq's rules (larq/models.py): BatchNorm drops beta next to moving_mean and gamma next to moving_variance."""
    from binarized.binary_layers import BinaryConv2D, BinaryDense
    from binarized.binary_ops import binary_tanh

    keras.utils.set_random_seed(0)
    x = image = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(2, 3, name="conv")(x)  # float: 3*3*1*2 kernel + 2 bias = 20; 4x4x2 out
    x = keras.layers.BatchNormalization(center=False, name="bn_no_beta")(x)  # gamma, mean, var -> mean, var: 4
    x = keras.layers.Activation(binary_tanh, name="sign")(x)
    x = BinaryConv2D(3, 3, name="bconv")(x)  # 1-bit: 3*3*2*3 = 54; 2x2x3 out
    x = keras.layers.BatchNormalization(scale=False, name="bn_no_gamma")(x)  # beta, mean, var -> mean, var: 6
    x = keras.layers.Flatten(name="flatten")(x)  # 12 real values
    x = BinaryDense(4, use_bias=True, name="bdense")(x)  # 1-bit: 12*4 = 48; float bias: 4
    x = keras.layers.BatchNormalization(name="bn")(x)  # gamma, beta, mean, var -> mean, var: 8
    model = keras.Model(image, x)
    layers = _by_name(footprint.layer_footprint(model))

    counts = {name: (r["binary_params"], r["float_params"], r["binary_macs"], r["float_macs"]) for name, r in layers.items()}
    assert counts == {
        "conv": (0, 20, 0, 4 * 4 * 3 * 3 * 1 * 2),  # a float layer: 288 float MACs
        "bn_no_beta": (0, 4, 0, 0),
        "sign": (0, 0, 0, 0),
        "bconv": (54, 0, 2 * 2 * 3 * 3 * 2 * 3, 0),  # ±1 kernel on ±1 input: 216 binary MACs
        "bn_no_gamma": (0, 6, 0, 0),
        "flatten": (0, 0, 0, 0),
        "bdense": (48, 4, 0, 48),  # ±1 kernel on real BatchNorm outputs: 48 float MACs
        "bn": (0, 8, 0, 0),
    }
    totals = footprint.summary(model)
    # 1-bit: 54 + 48 = 102; 32-bit: 20 + 4 + 6 + 4 + 8 = 42.
    # Larq's "Model size": 102 / 8 + 42 * 4 = 180.75 bytes; "Float-32 Equivalent": (102 + 42) * 4 = 576 bytes.
    assert totals == {
        "binary_params": 102,
        "float_params": 42,
        "packed_kib": round(180.75 / 1024, 2),
        "float32_kib": round(576 / 1024, 2),
        "binary_macs": 216,
        "float_macs": 288 + 48,
        "ops": 339,  # Bi-Real Net's: 288 + 48 + 216 / 64 = 339.375
    }
    # Keras's own count has the dropped vectors too: gamma (2), beta (3), gamma and beta (4 + 4).
    assert model.count_params() == 102 + 42 + 2 + 3 + 8


def _two_cells(left, right):
    """A two-cell child (4 then 6 filters) of one block `left`, `right` on the cell input, and its rows by name."""
    keras.utils.set_random_seed(0)
    model, mul_ops = model_fn([0, left, 0, right], num_cells=2, num_cell_filters=[4, 6], dense_layers=[10])
    return model, mul_ops, _by_name(footprint.layer_footprint(model))


def test_footprint_of_a_second_cell_reading_binary_activations():
    model, mul_ops, layers = _two_cells("3x3 bconv", "3x3 bconv")
    # Cell 0 as above; cell 1 reads the concatenated ±1 outputs (14x14x8) at stride 2.
    c1_macs = 7 * 7 * 3 * 3 * 8 * 6
    for side in ("left", "right"):
        assert layers[f"c0_b0_{side}"]["float_macs"] == 14 * 14 * 3 * 3 * 1 * 4
        assert layers[f"c0_b0_{side}"]["binary_macs"] == 0
        conv = layers[f"c1_b0_{side}"]
        assert conv["binary_params"] == 3 * 3 * 8 * 6
        assert (conv["binary_macs"], conv["float_macs"]) == (c1_macs, 0)
        assert layers[f"c1_b0_{side}_bn"]["float_params"] == 2 * 6
    features = 7 * 7 * 12
    assert (layers["dense0"]["binary_macs"], layers["dense0"]["float_macs"]) == (features * 10, 0)
    totals = footprint.summary(model)
    assert totals["binary_params"] == 2 * 36 + 2 * 432 + features * 10
    assert totals["float_params"] == 2 * 8 + 2 * 12 + 20
    assert totals["binary_macs"] == 2 * c1_macs + features * 10
    assert totals["float_macs"] == 2 * 14 * 14 * 9 * 4
    assert mul_ops == totals["binary_macs"] + totals["float_macs"]
    packed, float32 = _kib(totals["binary_params"], totals["float_params"])
    assert totals["packed_kib"] == pytest.approx(packed, abs=0.005)
    assert totals["float32_kib"] == pytest.approx(float32, abs=0.005)


def test_footprint_a_maxpool_of_the_image_keeps_real_values_downstream():
    model, mul_ops, layers = _two_cells("3x3 maxpool", "3x3 bconv")
    # The max-pooled image (real values) joins the ±1 conv outputs: 14x14x(1+4).
    # Everything downstream reads some real values, so its MACs are float.
    c0 = 14 * 14 * 3 * 3 * 1 * 4
    c1 = 7 * 7 * 3 * 3 * 5 * 6
    dense = 7 * 7 * (5 + 6) * 10
    assert layers["c0_b0_left"]["type"] == "MaxPooling2D"
    assert layers["c0_b0"]["output_shape"] == (None, 14, 14, 5)
    assert (layers["c0_b0_right"]["binary_macs"], layers["c0_b0_right"]["float_macs"]) == (0, c0)
    assert (layers["c1_b0_right"]["binary_macs"], layers["c1_b0_right"]["float_macs"]) == (0, c1)
    assert layers["c1_b0_right"]["binary_params"] == 3 * 3 * 5 * 6
    assert (layers["dense0"]["binary_macs"], layers["dense0"]["float_macs"]) == (0, dense)
    totals = footprint.summary(model)
    assert (totals["binary_macs"], totals["float_macs"]) == (0, c0 + c1 + dense)
    assert totals["binary_params"] == 36 + 270 + dense
    assert totals["float_params"] == 8 + 12 + 20
    assert mul_ops == c0 + c1 + dense
