"""The bit-packed NumPy engine against Keras, on the same binary model.

For a saved model (`--model`), and/or for one model of each of the 10
operators (`--operators`: architecture [0, op, 0, op] at the default widths,
untrained, BatchNorm calibrated on 1,000 training images), it exports the
packed file and prints:

- the file's size against the float32 weights (all weights x 4 bytes);
- the share of multiply-accumulates that run as XNOR-popcount;
- the predicted class of the engine against Keras's on the 10,000 MNIST
  test images (and both accuracies);
- bit-exactness of every intermediate ±1 activation on 256 test images, and
  the threshold ties: elements where Keras's BatchNorm output is exactly 0
  (a tie), or within float32 rounding of 0 (|y| < 1e-5: a near-tie);
- images/s of the engine and of Keras `predict` at batch 1 and 256, in the
  same run (`--model` only; the median of `--repeats` timed rounds).

    python bench/packed_inference.py --model weights/packed_best/model.keras [--operators]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a saved .keras binary model")
    parser.add_argument("--operators", action="store_true", help="also one calibrated model of each operator")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per speed figure (median)")
    args = parser.parse_args(argv)
    if not args.model and not args.operators:
        parser.error("give --model and/or --operators")
    return args


if __name__ == "__main__":
    ARGS = parse_args()  # --help and a bad flag answer before TensorFlow is imported (about 7 s)

from binarized.quiet import import_keras_quietly  # noqa: E402

import_keras_quietly()  # TensorFlow's start-up lines stay off the terminal

import keras  # noqa: E402
import numpy as np  # noqa: E402

import binarized.binary_layers  # noqa: E402,F401  (registers the custom layers)
from binarized.export import export, float32_bytes  # noqa: E402
from binarized.packed import PackedModel  # noqa: E402
from mnist.mnist_data import get_dataset  # noqa: E402

NEAR_TIE = 1e-5


def bit_exactness(model, packed, images):
    """(mismatching bits, compared bits, exact ties, near ties, mismatches at a (near) tie) over all ±1 nodes."""
    values = packed.run(images, keep=True)
    names, bn_names = [], []
    for node in packed.nodes:
        value = values[node.name]
        if value.kind != "bits" or node.spec["op"] == "flatten":
            continue
        names.append(node.name)
        layers = node.spec.get("layers", [])
        bn_names.append(layers[1] if len(layers) == 3 else None)
    wanted = names + [b for b in bn_names if b]
    probe = keras.Model(model.input, [model.get_layer(n).output for n in wanted])
    outs = probe.predict(images, batch_size=256, verbose=0)
    outs = dict(zip(wanted, outs if isinstance(outs, list) else [outs]))
    mismatched = compared = ties = near = at_tie = 0
    for name, bn in zip(names, bn_names):
        ref = outs[name]
        ours = values[name].to_float().reshape(ref.shape)
        wrong = ours != ref
        mismatched += int(wrong.sum())
        compared += ref.size
        if bn:
            y = outs[bn]
            ties += int((y == 0).sum())
            near += int((np.abs(y) < NEAR_TIE).sum())
            at_tie += int((wrong & (np.abs(y) < NEAR_TIE)).sum())
    return mismatched, compared, ties, near, at_tie


def timed(fn, repeats):
    """Median seconds of `repeats` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def speeds(model, packed, images, repeats):
    """Images/s at batch 1 and 256: engine and Keras predict, interleaved."""
    batch = images[:256]
    singles = images[:20]
    rows = {}
    rows["engine b1"] = len(singles) / timed(lambda: [packed.predict(singles[i:i + 1]) for i in range(len(singles))], repeats)
    rows["keras b1"] = len(singles) / timed(lambda: [model.predict(singles[i:i + 1], verbose=0) for i in range(len(singles))], repeats)
    rows["engine b256"] = len(batch) / timed(lambda: packed.predict(batch, batch_size=256), repeats)
    rows["keras b256"] = len(batch) / timed(lambda: model.predict(batch, batch_size=256, verbose=0), repeats)
    return rows


def report(label, model, x_test, y_test, repeats, with_speed):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.bnn.npz")
        size = export(model, path)
        packed = PackedModel.load(path)
    ref_bytes = float32_bytes(model)
    binary_macs, all_macs = packed.macs()
    keras_scores = model.predict(x_test, batch_size=256, verbose=0)
    engine_scores = packed.predict(x_test)
    keras_class, engine_class = keras_scores.argmax(1), engine_scores.argmax(1)
    labels = y_test.argmax(1)
    agree = float((keras_class == engine_class).mean())
    mismatched, compared, ties, near, at_tie = bit_exactness(model, packed, x_test[:256])
    print(f"\n== {label}")
    print(f"file {size} B vs float32 weights {ref_bytes} B: {ref_bytes / size:.2f}x smaller")
    print(f"XNOR-popcount MACs {binary_macs} of {all_macs} per image: {100 * binary_macs / all_macs:.2f} %")
    print(f"same class on {len(x_test)} test images: {100 * agree:.2f} % "
          f"({int((keras_class != engine_class).sum())} differ); "
          f"accuracy Keras {100 * (keras_class == labels).mean():.2f} %, engine {100 * (engine_class == labels).mean():.2f} %; "
          f"max |score difference| {float(np.abs(keras_scores - engine_scores).max()):.3g}")
    print(f"±1 activations on 256 images: {mismatched} of {compared} bits differ "
          f"({at_tie} of them at a (near-)tie); BatchNorm outputs exactly 0: {ties}, |y| < {NEAR_TIE:g}: {near}")
    row = {"label": label, "size": size, "float32": ref_bytes, "xnor_share": binary_macs / all_macs,
           "agree": agree, "mismatched": mismatched, "compared": compared, "ties": ties, "near": near}
    if with_speed:
        s = speeds(model, packed, x_test, repeats)
        print(f"{'':12} {'batch 1 img/s':>14} {'batch 256 img/s':>16}")
        print(f"{'engine':12} {s['engine b1']:14.1f} {s['engine b256']:16.1f}")
        print(f"{'keras':12} {s['keras b1']:14.1f} {s['keras b256']:16.1f}")
        print(f"engine / keras: batch 1 {s['engine b1'] / s['keras b1']:.1f}x, batch 256 {s['engine b256'] / s['keras b256']:.2f}x")
        row.update(s)
    return row


def operator_models(x_calibration):
    from pnas.manager import calibrate_batchnorm
    from pnas.model import OPERATORS, model_fn

    for op in OPERATORS:
        keras.utils.set_random_seed(0)
        model, _ = model_fn([0, op, 0, op])
        calibrate_batchnorm(model, x_calibration)
        yield f"[0, '{op}', 0, '{op}'] (untrained, calibrated)", model


def main(args):
    x_train, _, _, _, x_test, y_test = get_dataset(train_size=1000, verbose=False)
    print(f"numpy {np.__version__}, keras {keras.__version__}, backend {keras.backend.backend()}, "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}")
    rows = []
    if args.model:
        model = keras.saving.load_model(args.model, compile=False)
        rows.append(report(args.model, model, x_test, y_test, args.repeats, True))
    if args.operators:
        for label, model in operator_models(x_train[:1000]):
            rows.append(report(label, model, x_test, y_test, args.repeats, False))
            keras.backend.clear_session(free_memory=True)
    print("\n| model | file / float32 | XNOR share | same class | bits differ |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['size']} B / {r['float32']} B = {r['float32'] / r['size']:.2f}x "
              f"| {100 * r['xnor_share']:.2f} % | {100 * r['agree']:.2f} % | {r['mismatched']} / {r['compared']} |")


if __name__ == "__main__":
    main(ARGS)
