"""Exports a binary Keras child to one compact bit-packed file.

    python -m binarized.export MODEL.keras OUT.npz

The file (format described in `docs/packed.md`) holds the binary kernels as
bits, each BatchNorm + sign folded into integer thresholds, the float
BatchNorm terms only where the engine needs floats (a binary layer on a
real-valued input, and the final scores), the layer graph, the input shape
and a format version. `binarized.packed.PackedModel.load` runs it with NumPy.

A model holding a layer the engine cannot run is refused with one line that
names the layer (exit code 2), and nothing is written.
"""

import io
import json
import os
import sys

import numpy as np

from binarized.packed import FORMAT_NAME, FORMAT_VERSION, pack_bits
from mnist.files import write_atomic


class UnsupportedLayerError(ValueError):
    """The model holds a layer (or a use of one) that the packed engine cannot run."""


def _unsupported(layer, why):
    return UnsupportedLayerError(f"layer '{layer.name}' ({type(layer).__name__}) {why}")


def _graph(model):
    """Parents and children of every layer, by name (every layer is called once)."""
    producer = {id(layer.output): layer.name for layer in model.layers}
    parents, children = {}, {layer.name: [] for layer in model.layers}
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            parents[layer.name] = []
            continue
        inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
        names = []
        for tensor in inputs:
            if id(tensor) not in producer:
                raise _unsupported(layer, "reads a tensor that no layer of the model produces")
            names.append(producer[id(tensor)])
        parents[layer.name] = names
        for name in names:
            children[name].append(layer.name)
    return parents, children


def _is_sign(layer):
    return type(layer).__name__ == "Activation" and getattr(layer.activation, "__name__", "") == "binary_tanh"


def _negative(kernel, h):
    """Bits of binarize(kernel, h): -1 where kernel / h < 0, in float32 as Keras computes it."""
    return (np.asarray(kernel, np.float32) / np.float32(h)) < 0


def _bn_terms(bn):
    """(inv, off) float32 as tf.nn.batch_normalization computes them: y = x * inv + off."""
    from keras import ops

    mean = ops.convert_to_tensor(bn.moving_mean)
    variance = ops.convert_to_tensor(bn.moving_variance)
    inv = ops.rsqrt(variance + bn.epsilon)
    if bn.scale:
        inv = inv * ops.convert_to_tensor(bn.gamma)
    off = -mean * inv if not bn.center else ops.convert_to_tensor(bn.beta) - mean * inv
    return ops.convert_to_numpy(inv).astype(np.float32), ops.convert_to_numpy(off).astype(np.float32)


def _thresholds(bn, h, n, rank, channels=slice(None)):
    """Folds BatchNorm + sign of integer sums s in [-n, n] into thresholds.

    Runs the BatchNorm layer itself on every candidate `float32(s * h)`, so the
    thresholds reproduce Keras's float32 rounding exactly (for sums that Keras
    computes exactly).

    Returns:
        (thr int64 (C,), flip bool (C,)): +1 iff s >= thr, or, where flip,
        iff -s >= thr (the layer's weights for that channel are negated).
    """
    from keras import ops

    wanted = channels
    channels = int(bn.moving_mean.shape[0])
    s = np.arange(-n, n + 1, dtype=np.int64)
    x = (s.astype(np.float64) * h).astype(np.float32)
    x = np.broadcast_to(x.reshape((-1,) + (1,) * (rank - 1)), (len(s),) + (1,) * (rank - 2) + (channels,))
    y = ops.convert_to_numpy(bn(np.ascontiguousarray(x), training=False)).reshape(len(s), channels)
    plus = y[:, wanted] >= 0
    thr = np.empty(plus.shape[1], np.int64)
    flip = np.zeros(plus.shape[1], bool)
    for c in range(plus.shape[1]):
        col = plus[:, c]
        if np.all(col[1:] >= col[:-1]):  # +1 from some s up
            thr[c] = n + 1 if not col.any() else s[np.argmax(col)]
        elif np.all(col[1:] <= col[:-1]):  # +1 up to some s: negate the weights
            flip[c] = True
            thr[c] = -s[len(s) - 1 - np.argmax(col[::-1])]
        else:
            raise _unsupported(bn, "is not monotonic in its input (NaN statistics?)")
    return thr, flip


class _Section:
    """One flat array of the payload, appended to piece by piece."""

    def __init__(self, dtype):
        self.dtype, self.parts, self.size = dtype, [], 0

    def add(self, values):
        """Appends `values` (flattened); returns their `[offset, size]` reference."""
        flat = np.asarray(values, self.dtype).ravel()
        ref = [self.size, int(flat.size)]
        self.parts.append(flat)
        self.size += flat.size
        return ref

    def array(self):
        return np.concatenate(self.parts) if self.parts else np.zeros(0, self.dtype)


class _Builder:
    """The nodes of an export and their payload: sign bits, integer thresholds, floats."""

    def __init__(self):
        self.nodes = []
        self.bits = _Section(bool)
        self.ints = _Section(np.int64)
        self.floats = _Section(np.float32)

    def add_node(self, spec):
        self.nodes.append(spec)
        return len(self.nodes) - 1

    def payload(self):
        """(sections, bytes): bit words, then thresholds, then floats, little-endian."""
        bits = self.bits.array()
        words = pack_bits(bits).astype("<u4") if bits.size else np.zeros(0, "<u4")
        ints = self.ints.array()
        small = ints.size == 0 or np.abs(ints).max() < 2**15
        ints = ints.astype("<i2" if small else "<i4")
        floats = self.floats.array().astype("<f4")
        chunks, sections, offset = [], {}, 0
        for key, arr in (("bits", words), ("ints", ints), ("floats", floats)):
            raw = arr.tobytes()
            sections[key] = [offset, int(arr.size)] + ([arr.dtype.str] if key == "ints" else [])
            chunks.append(raw)
            offset += len(raw)
        return sections, np.frombuffer(b"".join(chunks), np.uint8)


def _binary_node(layer, bn, sign, src, in_shape, in_kind, builder, channels=None, name=None):
    """The node of a binary layer fused with its BatchNorm (and sign).

    `channels` (a slice) selects the BatchNorm channels of this layer where
    several layers' outputs are concatenated before one BatchNorm.
    """
    from binarized.binary_layers import BinaryConv2D, BinaryDense, BinarySeparableConv2D

    if layer.use_bias:
        raise _unsupported(layer, "has a bias, which the packed engine does not fold")
    rank = len(bn.input.shape)
    if bn.axis not in (-1, rank - 1):
        raise _unsupported(bn, "normalises an axis other than the channels")
    hin, win, cin = in_shape
    spec = {"name": name or (sign or bn).name, "layers": [x.name for x in (layer, bn, sign) if x is not None], "in": src}
    if isinstance(layer, BinarySeparableConv2D):
        if layer.padding not in ("same", "valid"):
            raise _unsupported(layer, f"has padding {layer.padding!r}")
        kh, kw = layer.kernel_size
        dm = layer.depth_multiplier
        h = float(np.float32(layer.depthwise_h)) * float(np.float32(layer.pointwise_h))
        dw = _negative(layer.depthwise_kernel.numpy(), layer.depthwise_h).reshape(kh * kw, cin * dm)
        w = _negative(layer.pointwise_kernel.numpy(), layer.pointwise_h).reshape(cin * dm, -1).T  # (O, mid)
        cout = w.shape[0]
        n = kh * kw * cin * dm
        spec.update(op="sep", k=[kh, kw], s=list(layer.strides), pad=layer.padding, cin=cin, dm=dm)
        out_hw = _out_hw((hin, win), (kh, kw), layer.strides, layer.padding)
    elif isinstance(layer, BinaryConv2D):
        kh, kw = layer.kernel_size
        h = float(np.float32(layer.kernel_h))
        kernel = _negative(layer.kernel.numpy(), layer.kernel_h)  # (kh, kw, cin, O)
        w = kernel.transpose(3, 0, 1, 2).reshape(kernel.shape[3], kh * kw, cin)
        cout = w.shape[0]
        n = kh * kw * cin
        spec.update(op="conv", k=[kh, kw], s=list(layer.strides), pad=layer.padding, cin=cin)
        out_hw = _out_hw((hin, win), (kh, kw), layer.strides, layer.padding)
    elif isinstance(layer, BinaryDense):
        h = float(np.float32(layer.kernel_h))
        kernel = _negative(layer.kernel.numpy(), layer.kernel_h)  # (H * W * C, O)
        if kernel.shape[0] != hin * win * cin:
            raise _unsupported(layer, f"reads {kernel.shape[0]} features, not the {hin}x{win}x{cin} before it")
        cout = kernel.shape[1]
        w = kernel.T.reshape(cout, hin * win, cin)
        n = hin * win * cin
        spec.update(op="dense", k=[hin, win], s=[1, 1], pad="valid", cin=cin)
        out_hw = (1, 1)
    else:  # pragma: no cover - the caller only passes binary layers
        raise _unsupported(layer, "is not a binary layer")
    spec.update(cout=int(cout), h=h, out="bits" if sign is not None else "float")
    channels = slice(0, int(cout)) if channels is None else channels

    if sign is not None and in_kind == "bits":
        thr, flip = _thresholds(bn, h, n, len(bn.input.shape), channels)
        w = w.copy()
        w[flip] = ~w[flip]  # negated weights negate s for that channel
        spec["thr"] = builder.ints.add(thr)
    else:
        inv, off = _bn_terms(bn)
        spec["inv"] = builder.floats.add(inv[channels])
        spec["off"] = builder.floats.add(off[channels])
    if spec["op"] == "sep":
        spec["wd"] = builder.bits.add(dw)
        spec["wp"] = builder.bits.add(w)
    else:
        spec["w"] = builder.bits.add(w)
    return spec, (out_hw[0], out_hw[1], int(cout)), spec["out"]


def _feeds_joint_batchnorm(layer, by_name, parents, children, binary_types):
    """True for a binary layer whose only consumer is a Concatenate of binary
    layers only, which feeds exactly one BatchNormalization."""
    after = children[layer.name]
    if len(after) != 1 or type(by_name[after[0]]).__name__ != "Concatenate":
        return False
    concat = after[0]
    if any(not isinstance(by_name[p], binary_types) or children[p] != [concat] for p in parents[concat]):
        return False
    after_concat = children[concat]
    return len(after_concat) == 1 and type(by_name[after_concat[0]]).__name__ == "BatchNormalization"


def _out_hw(in_hw, kernel, strides, padding):
    out = []
    for size, k, s in zip(in_hw, kernel, strides):
        out.append(-(-size // s) if padding == "same" else (size - k) // s + 1)
    return tuple(out)


def export_model(model):
    """Turns a binary Keras child into (header dict, payload uint8 array).

    Raises:
        UnsupportedLayerError: a layer the engine cannot run, named in the message.
    """
    from binarized.binary_layers import BinaryConv2D, BinaryDense, BinarySeparableConv2D, DropoutNoScale

    binary_types = (BinaryConv2D, BinaryDense, BinarySeparableConv2D)
    by_name = {layer.name: layer for layer in model.layers}
    parents, children = _graph(model)
    builder = _Builder()
    node_of, shape_of, kind_of = {}, {}, {}  # by layer name: node index, (H, W, C), 'bits'|'float'
    fused = set()
    input_shape = None

    def source(layer, index=0):
        return node_of[parents[layer.name][index]]

    for layer in model.layers:
        kind = type(layer).__name__
        name = layer.name
        if name in fused:
            continue
        if kind == "InputLayer":
            shape = tuple(int(d) for d in layer.output.shape[1:])
            if len(shape) != 3 or input_shape is not None:
                raise _unsupported(layer, f"has shape {shape}; the engine takes one (H, W, C) image input")
            input_shape = shape
            node_of[name] = builder.add_node({"op": "input", "name": name, "shape": list(shape)})
            shape_of[name], kind_of[name] = shape, "float"
            continue
        if len(parents[name]) != 1 and kind != "Concatenate":
            raise _unsupported(layer, f"has {len(parents[name])} inputs")
        parent = parents[name][0]
        if isinstance(layer, binary_types) and _feeds_joint_batchnorm(layer, by_name, parents, children, binary_types):
            continue  # built with the Concatenate that joins it (a factorized reduction)
        if kind == "Concatenate" and all(
            isinstance(by_name[p], binary_types) and _feeds_joint_batchnorm(by_name[p], by_name, parents, children, binary_types)
            for p in parents[name]
        ):
            bn = by_name[children[name][0]]
            after_bn = children[bn.name]
            sign = by_name[after_bn[0]] if len(after_bn) == 1 and _is_sign(by_name[after_bn[0]]) else None
            members, offset, kinds = [], 0, set()
            for p in parents[name]:
                conv = by_name[p]
                src = parents[p][0]
                cout = int(conv.output.shape[-1])
                spec, shape, out_kind = _binary_node(
                    conv, bn, sign, node_of[src], shape_of[src], kind_of[src], builder,
                    channels=slice(offset, offset + cout), name=f"{conv.name}+{bn.name}",
                )
                members.append(builder.add_node(spec))
                offset += cout
                kinds.add(out_kind)
                fused.add(p)
            group_name = (sign or bn).name
            index = builder.add_node({"op": "concat", "name": group_name, "in": members,
                                      "layers": [x.name for x in (layer, bn, sign) if x is not None]})
            out_shape = (*shape[:2], offset)
            out_kind = "bits" if kinds == {"bits"} else "float"
            for member in (layer, bn, sign):
                if member is not None:
                    fused.add(member.name)
                    node_of[member.name], shape_of[member.name], kind_of[member.name] = index, out_shape, out_kind
            continue
        if isinstance(layer, binary_types):
            after = children[name]
            bn = by_name[after[0]] if len(after) == 1 else None
            if bn is None or type(bn).__name__ != "BatchNormalization":
                raise _unsupported(layer, "is not followed by exactly one BatchNormalization")
            after_bn = children[bn.name]
            sign = by_name[after_bn[0]] if len(after_bn) == 1 and _is_sign(by_name[after_bn[0]]) else None
            if isinstance(layer, BinaryDense) and len(layer.input.shape) != 2:
                raise _unsupported(layer, "reads a tensor that is not flat")
            spec, shape, out_kind = _binary_node(
                layer, bn, sign, node_of[parent], shape_of[parent], kind_of[parent], builder
            )
            index = builder.add_node(spec)
            for member in (layer, bn, sign):
                if member is not None:
                    fused.add(member.name)
                    node_of[member.name], shape_of[member.name], kind_of[member.name] = index, shape, out_kind
            continue
        if kind in ("MaxPooling2D", "AveragePooling2D"):
            if layer.data_format != "channels_last":
                raise _unsupported(layer, "is not channels_last")
            h, w, c = shape_of[parent]
            out_hw = _out_hw((h, w), layer.pool_size, layer.strides, layer.padding)
            op = "maxpool" if kind == "MaxPooling2D" else "avgpool"
            node_of[name] = builder.add_node({
                "op": op, "name": name, "in": node_of[parent], "k": list(layer.pool_size),
                "s": list(layer.strides), "pad": layer.padding,
            })
            shape_of[name] = (*out_hw, c)
            kind_of[name] = "bits" if op == "maxpool" and kind_of[parent] == "bits" else "float"
            continue
        if kind == "Concatenate":
            if layer.axis not in (-1, 3):
                raise _unsupported(layer, f"concatenates along axis {layer.axis}, not the channels")
            shapes = [shape_of[p] for p in parents[name]]
            if len({s[:2] for s in shapes}) != 1:
                raise _unsupported(layer, f"joins tensors of different sizes {shapes}")
            node_of[name] = builder.add_node({"op": "concat", "name": name, "in": [node_of[p] for p in parents[name]]})
            shape_of[name] = (*shapes[0][:2], sum(s[2] for s in shapes))
            kind_of[name] = "bits" if all(kind_of[p] == "bits" for p in parents[name]) else "float"
            continue
        if kind in ("ZeroPadding2D", "Cropping2D"):
            if getattr(layer, "data_format", "channels_last") != "channels_last":
                raise _unsupported(layer, "is not channels_last")
            amount = [list(map(int, pair)) for pair in (layer.padding if kind == "ZeroPadding2D" else layer.cropping)]
            op = "zeropad" if kind == "ZeroPadding2D" else "crop"
            node_of[name] = builder.add_node({"op": op, "name": name, "in": node_of[parent], "amount": amount})
            h, w, c = shape_of[parent]
            sign_ = 1 if op == "zeropad" else -1
            shape_of[name] = (h + sign_ * sum(amount[0]), w + sign_ * sum(amount[1]), c)
            kind_of[name] = kind_of[parent]
            continue
        if kind == "Flatten":
            node_of[name] = builder.add_node({"op": "flatten", "name": name, "in": node_of[parent]})
            shape_of[name], kind_of[name] = shape_of[parent], kind_of[parent]
            continue
        if isinstance(layer, DropoutNoScale) or kind == "Dropout":
            # Identity at inference.
            node_of[name], shape_of[name], kind_of[name] = node_of[parent], shape_of[parent], kind_of[parent]
            continue
        raise _unsupported(layer, "is not supported by the packed engine")

    output_layers = [name for name in by_name if not children[name]]
    last = len(builder.nodes) - 1
    if len(output_layers) != 1 or node_of.get(output_layers[0]) != last:
        raise UnsupportedLayerError(f"model '{model.name}' must have one output, computed by its last layer")
    sections, payload = builder.payload()
    header = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "input_shape": list(input_shape),
        "sections": sections,
        "nodes": builder.nodes,
    }
    return header, payload


def write(header, payload, path):
    """Writes the file atomically: a compressed .npz of two arrays, 'header' (UTF-8 JSON) and 'payload'."""
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, header=np.frombuffer(text, np.uint8), payload=payload)
    write_atomic(path, buffer.getvalue())
    return os.path.getsize(path)


def float32_bytes(model):
    """Bytes of all the model's float weights (latent kernels and BatchNorm vectors) as float32."""
    return 4 * sum(int(np.prod(w.shape)) for w in model.weights if "float" in str(w.dtype))


def export(model, path):
    """Exports `model` to `path`; returns the file's size in bytes."""
    header, payload = export_model(model)
    return write(header, payload, path)


def export_and_evaluate(model_path, out_path, x_test, y_test):
    """Exports a saved model and compares the engine with Keras on a test set.

    Args:
        model_path: A saved `.keras` binary model.
        out_path: Where the packed file goes.
        x_test: Images (N, H, W, C) in [-1, 1].
        y_test: Labels (N, classes), the class at the largest entry.

    Returns:
        dict: size (bytes), float32_bytes, ratio, keras_accuracy, engine_accuracy
        and agreement (the share of images where both predict the same class).

    Raises:
        UnsupportedLayerError: The model holds a layer the engine cannot run.
    """
    import keras

    import binarized.binary_layers  # noqa: F401  (registers the custom layers)
    from binarized.packed import PackedModel

    model = keras.saving.load_model(model_path, compile=False)
    size = export(model, out_path)
    labels = np.asarray(y_test).argmax(axis=1)
    keras_class = model.predict(x_test, batch_size=256, verbose=0).argmax(axis=1)
    engine_class = PackedModel.load(out_path).predict(x_test).argmax(axis=1)
    reference = float32_bytes(model)
    return {
        "size": size,
        "float32_bytes": reference,
        "ratio": reference / size,
        "keras_accuracy": float((keras_class == labels).mean()),
        "engine_accuracy": float((engine_class == labels).mean()),
        "agreement": float((keras_class == engine_class).mean()),
    }


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m binarized.export MODEL.keras OUT.npz", file=sys.stderr)
        return 2
    src, dst = argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    import binarized.binary_layers  # noqa: F401  (registers the custom layers)

    try:
        model = keras.saving.load_model(src, compile=False)
    except (OSError, ValueError) as exc:
        print(f"error: cannot load {src}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    try:
        size = export(model, dst)
    except UnsupportedLayerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ref = float32_bytes(model)
    print(f"wrote {dst}: {size} bytes, {ref} bytes of float32 weights ({ref / size:.1f}x smaller)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
