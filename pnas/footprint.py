"""Deployment footprint of a binary child, counted as `larq.models.summary` counts it.

Counts, per layer and in total:
- 1-bit parameters: the kernels of the binary layers (stored packed, 1 bit each);
- 32-bit parameters: everything else (biases, float layers), except that a
  BatchNormalization layer counts two vectors per channel, not four: Larq's
  `LayerProfile` drops beta when moving_mean is there and gamma when
  moving_variance is, since at inference the four fold into one scale and one
  offset per channel (larq/models.py, `fused_pairs`);
- memory: 1-bit parameters / 8 plus 4 bytes per 32-bit parameter (Larq's
  "Model size"), against the same parameters in float32 (its "Float-32
  Equivalent");
- MACs: a multiply-accumulate is binary (XNOR-popcount) when both the kernel and
  the layer's input are ±1, and float otherwise (a binary kernel on the
  real-valued image, or a float layer);
- OPs: the cost the binary-network papers compare, Bi-Real Net's convention
  (Liu et al. 2018, arXiv:1808.00278, after XNOR-Net): OPs = FLOPs + BOPs / 64,
  with FLOPs the float MACs and BOPs the binary MACs, each MAC counted once
  (a 64-bit word computes 64 binary MACs in one XNOR and one popcount).
"""

import keras

from binarized.binary_layers import BinaryConv2D, BinaryDense, BinarySeparableConv2D
from binarized.graph import is_sign, layer_graph

BINARY_LAYERS = (BinaryConv2D, BinaryDense, BinarySeparableConv2D)
# Layers whose output is ±1 when every input is (padding adds the zeros a binary conv pads with anyway).
_KEEPS_BINARY = ("Concatenate", "MaxPooling2D", "Flatten", "Reshape", "InputLayer", "ZeroPadding2D", "Cropping2D")
_MAC_LAYERS = ("BinaryConv2D", "BinarySeparableConv2D", "BinaryDense", "Conv2D", "SeparableConv2D", "Dense")


# Binary MACs per OP: a 64-bit XNOR and popcount do 64 of them (Bi-Real Net's, XNOR-Net's count).
BINARY_MACS_PER_OP = 64


def count_ops(binary_macs, float_macs):
    """OPs = float MACs + binary MACs / 64 (Bi-Real Net's FLOPs + BOPs / 64, one per MAC), rounded to an int."""
    return int(round(float_macs + binary_macs / BINARY_MACS_PER_OP))


def layer_macs(layer):
    """Multiply-accumulates of one image through a conv or dense layer."""
    if type(layer).__name__ not in _MAC_LAYERS:
        return 0
    in_shape, out_shape = layer.input.shape, layer.output.shape
    if isinstance(layer, BinarySeparableConv2D) or type(layer).__name__ == "SeparableConv2D":
        kh, kw = layer.kernel_size
        depth = in_shape[-1] * layer.depth_multiplier
        return out_shape[1] * out_shape[2] * (kh * kw * depth + depth * layer.filters)
    if isinstance(layer, BinaryConv2D) or type(layer).__name__ == "Conv2D":
        kh, kw = layer.kernel_size
        return out_shape[1] * out_shape[2] * kh * kw * in_shape[-1] * layer.filters
    if isinstance(layer, BinaryDense) or type(layer).__name__ == "Dense":
        return in_shape[-1] * layer.units


def deployed_weights(layer):
    """The layer's weights that Larq's profile counts.

    All of them, except in a BatchNormalization layer: beta is dropped when
    moving_mean is there, then gamma when moving_variance is (Larq's
    `fused_pairs`), which leaves two vectors per channel.
    """
    weights = list(layer.weights)
    if isinstance(layer, keras.layers.BatchNormalization):
        for dropped, kept in (("beta", "moving_mean"), ("gamma", "moving_variance")):
            names = [w.path.split("/")[-1] for w in weights]
            if dropped in names and kept in names:
                weights.pop(names.index(dropped))
    return weights


def _binary_outputs(model, parents):
    """Names of the layers whose outputs are ±1."""
    binary = set()
    for layer in model.layers:
        kind = type(layer).__name__
        inbound = parents[layer.name]
        if is_sign(layer):
            binary.add(layer.name)
        elif kind in _KEEPS_BINARY and kind != "InputLayer" and inbound and all(n in binary for n in inbound):
            binary.add(layer.name)
    return binary


def _parents(model):
    """{layer name: names of the layers of `model` feeding it}."""
    parents, _ = layer_graph(model)
    return {name: [p for p in names if p is not None] for name, names in parents.items()}


def layer_footprint(model):
    """One dict per layer: name, type, output shape, 1-bit and 32-bit params, MACs."""
    parents_of = _parents(model)
    binary_inputs = _binary_outputs(model, parents_of)
    rows = []
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        weights = deployed_weights(layer)
        if isinstance(layer, BINARY_LAYERS):
            one_bit = sum(w.numpy().size for w in weights if "kernel" in w.path.split("/")[-1])
        else:
            one_bit = 0
        float_params = sum(w.numpy().size for w in weights) - one_bit
        macs = layer_macs(layer)
        parents = parents_of[layer.name]
        binary_input = bool(parents) and all(p in binary_inputs for p in parents)
        binary_macs = macs if isinstance(layer, BINARY_LAYERS) and binary_input else 0
        rows.append(
            {
                "name": layer.name,
                "type": type(layer).__name__,
                "output_shape": tuple(layer.output.shape),
                "binary_params": int(one_bit),
                "float_params": int(float_params),
                "binary_macs": int(binary_macs),
                "float_macs": int(macs - binary_macs),
            }
        )
    return rows


def totals(rows):
    """Sums of the rows, with the packed and float32 sizes in KiB."""
    binary = sum(r["binary_params"] for r in rows)
    floating = sum(r["float_params"] for r in rows)
    return {
        "binary_params": binary,
        "float_params": floating,
        "packed_kib": round((binary / 8 + floating * 4) / 1024, 2),
        "float32_kib": round((binary + floating) * 4 / 1024, 2),
        "binary_macs": sum(r["binary_macs"] for r in rows),
        "float_macs": sum(r["float_macs"] for r in rows),
        "ops": count_ops(sum(r["binary_macs"] for r in rows), sum(r["float_macs"] for r in rows)),
    }


def summary(model):
    """Totals of `model` (see module docstring)."""
    return totals(layer_footprint(model))


def format_table(rows):
    """The per-layer table and the totals, as text."""
    t = totals(rows)
    header = f"{'layer':26} {'type':22} {'output':18} {'1-bit par':>10} {'32-bit par':>10} {'1-bit MACs':>12} {'32-bit MACs':>12}"
    lines = [header, "-" * len(header)]
    for r in rows:
        shape = "x".join(str(d) for d in r["output_shape"][1:])
        lines.append(
            f"{r['name'][:26]:26} {r['type'][:22]:22} {shape:18} {r['binary_params']:>10} {r['float_params']:>10} "
            f"{r['binary_macs']:>12} {r['float_macs']:>12}"
        )
    lines.append("-" * len(header))
    lines.append(
        f"{'total':68} {t['binary_params']:>10} {t['float_params']:>10} {t['binary_macs']:>12} {t['float_macs']:>12}"
    )
    # No ratio here: the -ta run prints one, that of the packed file it writes (binarized.export).
    lines.append(
        f"model size: {t['packed_kib']:.2f} KiB with 1-bit weights packed, {t['float32_kib']:.2f} KiB in float32"
    )
    lines.append(f"OPs {t['ops']} = 32-bit MACs {t['float_macs']} + 1-bit MACs {t['binary_macs']} / "
                 f"{BINARY_MACS_PER_OP} (Bi-Real Net's count)")
    return "\n".join(lines)
