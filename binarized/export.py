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

import argparse
import errno
import io
import json
import os
import sys

import numpy as np

from binarized.graph import is_sign, layer_graph
from binarized.packed import FORMAT_NAME, FORMAT_VERSION, pack_bits
from mnist.files import write_atomic


class UnsupportedLayerError(ValueError):
    """The model holds a layer (or a use of one) that the packed engine cannot run."""


def _unsupported(layer, why):
    return UnsupportedLayerError(f"layer '{layer.name}' ({type(layer).__name__}) {why}")


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


def _separable_weights(layer, cin):
    """The engine's spec, h, sign bits and sums of a `BinarySeparableConv2D` reading `cin` channels."""
    if layer.padding not in ("same", "valid"):
        raise _unsupported(layer, f"has padding {layer.padding!r}")
    kh, kw = layer.kernel_size
    dm = layer.depth_multiplier
    h = float(np.float32(layer.depthwise_h)) * float(np.float32(layer.pointwise_h))
    dw = _negative(layer.depthwise_kernel.numpy(), layer.depthwise_h).reshape(kh * kw, cin * dm)
    w = _negative(layer.pointwise_kernel.numpy(), layer.pointwise_h).reshape(cin * dm, -1).T  # (O, mid)
    spec = dict(op="sep", k=[kh, kw], s=list(layer.strides), pad=layer.padding, cin=cin, dm=dm)
    return spec, h, {"wd": dw, "wp": w}, kh * kw * cin * dm


def _conv_weights(layer, cin):
    """The engine's spec, h, sign bits and sums of a `BinaryConv2D` reading `cin` channels."""
    kh, kw = layer.kernel_size
    kernel = _negative(layer.kernel.numpy(), layer.kernel_h)  # (kh, kw, cin, O)
    w = kernel.transpose(3, 0, 1, 2).reshape(kernel.shape[3], kh * kw, cin)
    spec = dict(op="conv", k=[kh, kw], s=list(layer.strides), pad=layer.padding, cin=cin)
    return spec, float(np.float32(layer.kernel_h)), {"w": w}, kh * kw * cin


def _dense_weights(layer, in_shape):
    """The engine's spec, h, sign bits and sums of a `BinaryDense` reading a flattened (H, W, C) tensor."""
    hin, win, cin = in_shape
    kernel = _negative(layer.kernel.numpy(), layer.kernel_h)  # (H * W * C, O)
    if kernel.shape[0] != hin * win * cin:
        raise _unsupported(layer, f"reads {kernel.shape[0]} features, not the {hin}x{win}x{cin} before it")
    w = kernel.T.reshape(kernel.shape[1], hin * win, cin)
    spec = dict(op="dense", k=[hin, win], s=[1, 1], pad="valid", cin=cin)
    return spec, float(np.float32(layer.kernel_h)), {"w": w}, hin * win * cin


def _binary_node(layer, bn, sign, source, builder, channels=None, name=None):
    """The node of a binary layer fused with its BatchNorm (and sign).

    Args:
        source: The `_Value` the layer reads.
        channels: A slice selecting the BatchNorm channels of this layer where
            several layers' outputs are concatenated before one BatchNorm.

    Returns:
        The node's spec.
    """
    if layer.use_bias:
        raise _unsupported(layer, "has a bias, which the packed engine does not fold")
    rank = len(bn.input.shape)
    if bn.axis not in (-1, rank - 1):
        raise _unsupported(bn, "normalises an axis other than the channels")
    kind = type(layer).__name__
    if kind == "BinarySeparableConv2D":
        spec, h, bits, n = _separable_weights(layer, source.shape[-1])
    elif kind == "BinaryConv2D":
        spec, h, bits, n = _conv_weights(layer, source.shape[-1])
    else:
        spec, h, bits, n = _dense_weights(layer, source.shape)
    cout = int(layer.output.shape[-1])
    spec = {"name": name or (sign or bn).name, "layers": [x.name for x in (layer, bn, sign) if x is not None],
            "in": source.node, **spec, "cout": cout, "h": h, "out": "bits" if sign is not None else "float"}
    channels = slice(0, cout) if channels is None else channels
    last = "wp" if "wp" in bits else "w"  # the weights whose sums the BatchNorm reads
    if sign is not None and source.kind == "bits":
        thr, flip = _thresholds(bn, h, n, rank, channels)
        bits[last] = bits[last].copy()
        bits[last][flip] = ~bits[last][flip]  # negated weights negate s for that channel
        spec["thr"] = builder.ints.add(thr)
    else:
        inv, off = _bn_terms(bn)
        spec["inv"] = builder.floats.add(inv[channels])
        spec["off"] = builder.floats.add(off[channels])
    for key, value in bits.items():
        spec[key] = builder.bits.add(value)
    return spec


class _Value:
    """What a layer's output is to the engine: the node computing it, its (H, W, C) and 'bits' or 'float'."""

    def __init__(self, node, shape, kind):
        self.node, self.shape, self.kind = node, tuple(int(d) for d in shape), kind


_BINARY_TYPES = ("BinaryConv2D", "BinarySeparableConv2D", "BinaryDense")


def _is_binary(layer):
    return type(layer).__name__ in _BINARY_TYPES


class _Export:
    """Walks a child's layers in order; each layer type has its handler (`_HANDLERS`).

    A handler adds the layer's node to the builder and records the layer's
    `_Value` (and those of the layers it fuses: a binary layer takes its
    BatchNorm and sign along). The shapes are Keras's own.
    """

    def __init__(self, model):
        self.model = model
        self.by_name = {layer.name: layer for layer in model.layers}
        self.parents, self.children = layer_graph(model)
        self.builder = _Builder()
        self.values = {}  # layer name -> _Value
        self.input_shape = None

    def run(self):
        for layer in self.model.layers:
            if layer.name in self.values:
                continue  # fused into a node already
            parents = self.parents[layer.name]
            if None in parents:
                raise _unsupported(layer, "reads a tensor that no layer of the model produces")
            kind = type(layer).__name__
            if kind not in _HANDLERS:
                raise _unsupported(layer, "is not supported by the packed engine")
            if len(parents) != 1 and kind not in ("Concatenate", "InputLayer"):
                raise _unsupported(layer, f"has {len(parents)} inputs")
            _HANDLERS[kind](self, layer)
        return self.finish()

    def parent(self, layer):
        return self.values[self.parents[layer.name][0]]

    def add(self, spec, layers, shape, kind):
        """Adds the node `spec` computing `layers` (the last one's output has `shape`)."""
        value = _Value(self.builder.add_node(spec), shape, kind)
        for layer in layers:
            if layer is not None:
                self.values[layer.name] = value
        return value

    def only_child(self, layer, kind=None):
        """The one layer reading `layer` (of type `kind`), or None."""
        after = self.children[layer.name]
        if len(after) != 1:
            return None
        child = self.by_name[after[0]]
        return child if kind is None or _kind(child) == kind else None

    def sign_after(self, bn):
        child = self.only_child(bn)
        return child if child is not None and is_sign(child) else None

    def feeds_joint_batchnorm(self, layer):
        """True for a binary layer whose only consumer is a Concatenate of binary
        layers only, which feeds exactly one BatchNormalization."""
        concat = self.only_child(layer, "Concatenate")
        if concat is None:
            return False
        if any(not _is_binary(self.by_name[p]) or self.children[p] != [concat.name] for p in self.parents[concat.name]):
            return False
        return self.only_child(concat, "BatchNormalization") is not None

    def input(self, layer):
        shape = tuple(int(d) for d in layer.output.shape[1:])
        if len(shape) != 3 or self.input_shape is not None:
            raise _unsupported(layer, f"has shape {shape}; the engine takes one (H, W, C) image input")
        self.input_shape = shape
        self.add({"op": "input", "name": layer.name, "shape": list(shape)}, [layer], shape, "float")

    def binary(self, layer):
        if self.feeds_joint_batchnorm(layer):
            return  # built with the Concatenate that joins it (a factorized reduction)
        bn = self.only_child(layer, "BatchNormalization")
        if bn is None:
            raise _unsupported(layer, "is not followed by exactly one BatchNormalization")
        if type(layer).__name__ == "BinaryDense" and len(layer.input.shape) != 2:
            raise _unsupported(layer, "reads a tensor that is not flat")
        sign = self.sign_after(bn)
        spec = _binary_node(layer, bn, sign, self.parent(layer), self.builder)
        out = sign or bn
        shape = out.output.shape[1:] if len(out.output.shape) == 4 else (1, 1, out.output.shape[-1])
        self.add(spec, (layer, bn, sign), shape, spec["out"])

    def joint_binary(self, layer):
        """A Concatenate of binary layers before one BatchNorm (and sign): a node per layer, then the concat."""
        bn = self.only_child(layer, "BatchNormalization")
        sign = self.sign_after(bn)
        members, offset, kinds = [], 0, set()
        for name in self.parents[layer.name]:
            conv = self.by_name[name]
            cout = int(conv.output.shape[-1])
            spec = _binary_node(conv, bn, sign, self.parent(conv), self.builder,
                                channels=slice(offset, offset + cout), name=f"{conv.name}+{bn.name}")
            members.append(self.add(spec, [conv], conv.output.shape[1:], spec["out"]).node)
            offset += cout
            kinds.add(spec["out"])
        spec = {"op": "concat", "name": (sign or bn).name, "in": members,
                "layers": [x.name for x in (layer, bn, sign) if x is not None]}
        self.add(spec, (layer, bn, sign), (sign or bn).output.shape[1:], "bits" if kinds == {"bits"} else "float")

    def pool(self, layer):
        if layer.data_format != "channels_last":
            raise _unsupported(layer, "is not channels_last")
        source = self.parent(layer)
        op = "maxpool" if type(layer).__name__ == "MaxPooling2D" else "avgpool"
        spec = {"op": op, "name": layer.name, "in": source.node, "k": list(layer.pool_size),
                "s": list(layer.strides), "pad": layer.padding}
        self.add(spec, [layer], layer.output.shape[1:], "bits" if op == "maxpool" and source.kind == "bits" else "float")

    def concat(self, layer):
        if all(_is_binary(self.by_name[p]) and self.feeds_joint_batchnorm(self.by_name[p])
               for p in self.parents[layer.name]):
            return self.joint_binary(layer)
        if layer.axis not in (-1, 3):
            raise _unsupported(layer, f"concatenates along axis {layer.axis}, not the channels")
        sources = [self.values[p] for p in self.parents[layer.name]]
        shapes = [s.shape for s in sources]
        if len({s[:2] for s in shapes}) != 1:
            raise _unsupported(layer, f"joins tensors of different sizes {shapes}")
        kind = "bits" if all(s.kind == "bits" for s in sources) else "float"
        spec = {"op": "concat", "name": layer.name, "in": [s.node for s in sources]}
        self.add(spec, [layer], layer.output.shape[1:], kind)

    def shift(self, layer):
        """ZeroPadding2D or Cropping2D."""
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise _unsupported(layer, "is not channels_last")
        pad = type(layer).__name__ == "ZeroPadding2D"
        amount = [list(map(int, pair)) for pair in (layer.padding if pad else layer.cropping)]
        source = self.parent(layer)
        spec = {"op": "zeropad" if pad else "crop", "name": layer.name, "in": source.node, "amount": amount}
        self.add(spec, [layer], layer.output.shape[1:], source.kind)

    def flatten(self, layer):
        # The engine flattens in Keras's order; the dense layer after it reads the (H, W, C) before it.
        source = self.parent(layer)
        self.add({"op": "flatten", "name": layer.name, "in": source.node}, [layer], source.shape, source.kind)

    def identity(self, layer):
        """A dropout layer: the identity at inference, no node."""
        self.values[layer.name] = self.parent(layer)

    def finish(self):
        outputs = [name for name in self.by_name if not self.children[name]]
        last = len(self.builder.nodes) - 1
        if len(outputs) != 1 or outputs[0] not in self.values or self.values[outputs[0]].node != last:
            raise UnsupportedLayerError(f"model '{self.model.name}' must have one output, computed by its last layer")
        sections, payload = self.builder.payload()
        result = self.values[outputs[0]]
        header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "input_shape": list(self.input_shape),
                  "sections": sections, "nodes": self.builder.nodes,
                  # What the last node gives per image: PackedModel.load checks it.
                  "output": {"values": int(np.prod(result.shape)), "kind": result.kind}}
        return header, payload


# The handler of each layer type the engine runs (as `binarized.packed._NODE_TYPES` holds its node types).
# binarized.normalization's layer is Keras' BatchNormalization computed by a fused kernel.
_SAME_KIND = {"FusedBatchNormalization": "BatchNormalization"}


def _kind(layer):
    """The layer's class name; a subclass that computes its base's function is named as its base."""
    name = type(layer).__name__
    return _SAME_KIND.get(name, name)


_HANDLERS = {
    "InputLayer": _Export.input,
    "BinaryConv2D": _Export.binary,
    "BinarySeparableConv2D": _Export.binary,
    "BinaryDense": _Export.binary,
    "MaxPooling2D": _Export.pool,
    "AveragePooling2D": _Export.pool,
    "Concatenate": _Export.concat,
    "ZeroPadding2D": _Export.shift,
    "Cropping2D": _Export.shift,
    "Flatten": _Export.flatten,
    "Dropout": _Export.identity,
    "DropoutNoScale": _Export.identity,
}


def export_model(model):
    """Turns a binary Keras child into (header dict, payload uint8 array).

    Raises:
        UnsupportedLayerError: a layer the engine cannot run, named in the message.
    """
    return _Export(model).run()


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


def check_folder(path):
    """Raises FileNotFoundError when the folder `path` is to be written in does not exist (it is not created)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, f"cannot write {path}: its folder {folder} does not exist; "
                                "create it first or name a file in an existing folder", folder)


def export(model, path):
    """Exports `model` to `path`, in an existing folder; returns the file's size in bytes.

    Raises:
        FileNotFoundError: the folder of `path` does not exist.
    """
    check_folder(path)
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
    parser = argparse.ArgumentParser(
        prog="python -m binarized.export",
        description="Exports a binary Keras child to one bit-packed file that "
                    "binarized.packed.PackedModel runs with NumPy (docs/packed.md).",
    )
    parser.add_argument("model", metavar="MODEL.keras", help="the Keras model (e.g. weights/NAME/model.keras of -ta)")
    parser.add_argument("out", metavar="OUT.npz", help="the packed file to write")
    args = parser.parse_args(argv)
    src, dst = args.model, args.out
    try:
        check_folder(dst)  # answered before Keras is imported
    except FileNotFoundError as exc:
        print(f"error: {exc.strerror}", file=sys.stderr)
        return 2
    from binarized.quiet import import_keras_quietly

    import_keras_quietly()
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
