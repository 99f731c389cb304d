"""Training speed of Larq's MNIST tutorial network: `binarized/` layers against Larq, alternated.

The network of Larq's introductory tutorial ("Introduction to BNNs with Larq"):
three binary 3x3 convolutions (32, 64, 64 filters; the first on the real-valued
image, the others on signs of their input), max-pooling after the first two,
two binary dense layers (64, 10), a BatchNorm without scale after each binary
layer, softmax; kernels clipped to [-1, 1]; 93,790 parameters. It is built
twice:

- with `binarized/` layers (`BinaryConv2D`, `BinaryDense`, `binary_tanh`
  activations, `FusedBatchNormalization`) on Keras 3 with `FusedAdam`, in this
  process (`--keras-adam`, `--keras-batchnorm`: Keras 3's own Adam and
  BatchNormalization instead);
- with Larq 0.14 (`QuantConv2D`, `QuantDense`, `ste_sign`, `weight_clip`) on
  tf-keras and its Adam, in a separate Python: Larq is not a dependency of
  this package. Make its environment once with
  `python3 -m venv V && V/bin/pip install tensorflow==2.21.0 keras==3.15.1 tf-keras==2.21.0 larq==0.14.0`
  and pass `--larq-python V/bin/python`.

Each run builds a fresh network, compiles it (sparse categorical cross-entropy,
as the tutorial does), fits a warm-up on a few batches of the same
shape (which traces the train step), then times one `fit` epoch on random
images, batch 128, from the first batch's start to the last one's end
(`on_train_begin` to `on_train_end`; the tf.data teardown after `fit` is left
out on both sides). The two alternate `--repeats` times; the medians of
images/s and their ratio are printed. Timings vary from run to run on a
shared machine: compare medians of alternated runs only.

    python bench/peer_larq.py --larq-python V/bin/python [--images 25600] [--repeats 3]

With `--mnist-epochs N` it trains each side instead as the tutorial does, once:
MNIST's 60,000 training images scaled to [-1, 1], batch 64, N epochs (the
tutorial's 6), and prints each one's accuracy on the 10,000 test images and
its seconds. The IDX files are read from `--mnist DIR` (default
`$MNIST_DATA_DIR` or `data/mnist`) by this script's own reader.

    python bench/peer_larq.py --larq-python V/bin/python --mnist-epochs 6
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARAMETERS = 93_790  # of the tutorial's network
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--larq-python", default=None,
                        help="the Python of an environment with Larq 0.14 and tf-keras (without it: binarized only)")
    parser.add_argument("--images", type=int, default=25_600, help="random training images per timed epoch")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--warmup-batches", type=int, default=10, help="batches of the untimed warm-up fit")
    parser.add_argument("--repeats", type=int, default=3, help="alternations of the two")
    parser.add_argument("--keras-adam", action="store_true", help="binarized side: Keras 3's Adam, not FusedAdam")
    parser.add_argument("--keras-batchnorm", action="store_true",
                        help="binarized side: Keras 3's BatchNormalization, not FusedBatchNormalization")
    parser.add_argument("--mnist-epochs", type=int, default=0,
                        help="train on MNIST for this many epochs and print test accuracy (0: the speed bench)")
    parser.add_argument("--mnist", default=os.environ.get("MNIST_DATA_DIR") or os.path.join(ROOT, "data", "mnist"),
                        help="folder of MNIST's four uncompressed IDX files")
    parser.add_argument("--side", choices=["larq"], default=None, help=argparse.SUPPRESS)  # the Larq subprocess
    args = parser.parse_args(argv)
    for name in ("images", "batch", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, received {getattr(args, name)}")
    if args.warmup_batches < 1:
        parser.error(f"--warmup-batches must be at least 1, received {args.warmup_batches}")
    if args.mnist_epochs < 0:
        parser.error(f"--mnist-epochs must be 0 or more, received {args.mnist_epochs}")
    if args.mnist_epochs and not all(os.path.isfile(os.path.join(args.mnist, name)) for name in IDX_FILES):
        parser.error(f"--mnist {args.mnist} lacks MNIST's IDX files {list(IDX_FILES)}; "
                     "get them with python -m mnist.download_mnist")
    if args.larq_python is not None and not os.access(args.larq_python, os.X_OK):
        parser.error(f"--larq-python {args.larq_python} is not an executable")
    return args


def data(images, seed=0):
    """Random images in [-1, 1] (the tutorial's scaling) and random labels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (images, 28, 28, 1)).astype("float32"), rng.integers(0, 10, images).astype("int32")


def mnist(folder):
    """MNIST's train and test sets from the IDX files, images scaled to [-1, 1] as the tutorial does."""
    import numpy as np

    def read(name, header):
        with open(os.path.join(folder, name), "rb") as f:
            return np.frombuffer(f.read(), np.uint8, offset=header)

    images = [read(name, 16).reshape(-1, 28, 28, 1).astype("float32") / 127.5 - 1 for name in IDX_FILES[0::2]]
    labels = [read(name, 8).astype("int32") for name in IDX_FILES[1::2]]
    return images[0], labels[0], images[1], labels[1]


def test_accuracy(keras_module, model, optimizer, args):
    """The tutorial's training on MNIST; returns its test accuracy and the seconds of its fit."""
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    if model.count_params() != PARAMETERS:
        raise RuntimeError(f"the network has {model.count_params()} parameters, not the tutorial's {PARAMETERS}")
    x, y, x_test, y_test = mnist(args.mnist)
    start = time.perf_counter()
    model.fit(x, y, batch_size=64, epochs=args.mnist_epochs, verbose=0)
    seconds = time.perf_counter() - start
    return {"test_accuracy": float(model.evaluate(x_test, y_test, batch_size=1000, verbose=0)[1]), "seconds": seconds}


def binarized_network(keras_batchnorm=False):
    """The tutorial's network from `binarized/` layers (Keras 3)."""
    import keras

    from binarized.binary_layers import BinaryConv2D, BinaryDense
    from binarized.binary_ops import binary_tanh
    from binarized.normalization import FusedBatchNormalization

    norm = keras.layers.BatchNormalization if keras_batchnorm else FusedBatchNormalization
    binary = dict(H=1.0, kernel_lr_multiplier=None, use_bias=False)
    sign = lambda: keras.layers.Activation(binary_tanh)  # noqa: E731  (Larq's input_quantizer="ste_sign")
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        BinaryConv2D(32, 3, **binary),  # the image is not binarized, only the kernel
        keras.layers.MaxPooling2D(2), norm(scale=False),
        sign(), BinaryConv2D(64, 3, **binary), keras.layers.MaxPooling2D(2), norm(scale=False),
        sign(), BinaryConv2D(64, 3, **binary), norm(scale=False),
        keras.layers.Flatten(),
        sign(), BinaryDense(64, **binary), norm(scale=False),
        sign(), BinaryDense(10, **binary), norm(scale=False),
        keras.layers.Activation("softmax"),
    ])


def larq_network():
    """The tutorial's network, as the tutorial writes it (Larq on tf-keras)."""
    import larq as lq
    import tensorflow as tf

    kwargs = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign", kernel_constraint="weight_clip")
    return tf.keras.models.Sequential([
        lq.layers.QuantConv2D(32, (3, 3), kernel_quantizer="ste_sign", kernel_constraint="weight_clip",
                              use_bias=False, input_shape=(28, 28, 1)),
        tf.keras.layers.MaxPooling2D((2, 2)), tf.keras.layers.BatchNormalization(scale=False),
        lq.layers.QuantConv2D(64, (3, 3), use_bias=False, **kwargs),
        tf.keras.layers.MaxPooling2D((2, 2)), tf.keras.layers.BatchNormalization(scale=False),
        lq.layers.QuantConv2D(64, (3, 3), use_bias=False, **kwargs), tf.keras.layers.BatchNormalization(scale=False),
        tf.keras.layers.Flatten(),
        lq.layers.QuantDense(64, use_bias=False, **kwargs), tf.keras.layers.BatchNormalization(scale=False),
        lq.layers.QuantDense(10, use_bias=False, **kwargs), tf.keras.layers.BatchNormalization(scale=False),
        tf.keras.layers.Activation("softmax"),
    ])


def images_per_second(keras_module, model, optimizer, args):
    """Warm-up fit, then one timed epoch; returns images/s."""
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    if model.count_params() != PARAMETERS:
        raise RuntimeError(f"the network has {model.count_params()} parameters, not the tutorial's {PARAMETERS}")
    x, y = data(args.images)
    warm = args.warmup_batches * args.batch
    model.fit(x[:warm], y[:warm], batch_size=args.batch, epochs=1, verbose=0)
    times = {}

    class Clock(keras_module.callbacks.Callback):
        def on_train_begin(self, logs=None):
            times["start"] = time.perf_counter()

        def on_train_end(self, logs=None):
            times["end"] = time.perf_counter()

    model.fit(x, y, batch_size=args.batch, epochs=1, verbose=0, callbacks=[Clock()])
    return {"images_per_second": len(x) / (times["end"] - times["start"])}


def measure(keras_module, model, optimizer, args):
    return (test_accuracy if args.mnist_epochs else images_per_second)(keras_module, model, optimizer, args)


def run_binarized(args):
    import keras

    from binarized.optimizers import FusedAdam

    keras.backend.clear_session(free_memory=True)
    keras.utils.set_random_seed(0)
    optimizer = keras.optimizers.Adam() if args.keras_adam else FusedAdam()
    return measure(keras, binarized_network(args.keras_batchnorm), optimizer, args)


def run_larq(args):
    """In the Larq environment: one run, its figures printed as JSON."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    print(json.dumps(measure(tf.keras, larq_network(), tf.keras.optimizers.Adam(), args)), flush=True)


def larq_subprocess(args):
    argv = [args.larq_python, os.path.abspath(__file__), "--side", "larq", "--images", str(args.images),
            "--batch", str(args.batch), "--warmup-batches", str(args.warmup_batches),
            "--mnist-epochs", str(args.mnist_epochs), "--mnist", args.mnist]
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        sys.exit(f"error: the Larq run failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(lines[-1])


def main(args):
    import keras

    adam = "Keras 3 Adam" if args.keras_adam else "FusedAdam"
    norm = "Keras BatchNormalization" if args.keras_batchnorm else "FusedBatchNormalization"
    if args.mnist_epochs:
        work = f"MNIST's 60,000 training images, batch 64, {args.mnist_epochs} epochs, once"
    else:
        work = f"{args.images:,} random images, batch {args.batch}"
    print(f"Larq's tutorial network ({PARAMETERS:,} parameters), {work}, {os.cpu_count()} CPUs; "
          f"binarized: keras {keras.__version__}, {adam}, {norm}; "
          f"larq: {args.larq_python or 'not run (no --larq-python)'}", flush=True)
    if args.mnist_epochs:
        sides = [("binarized", run_binarized)] + ([("larq", larq_subprocess)] if args.larq_python else [])
        for side, run in sides:
            result = run(args)
            print(f"{side}: test accuracy {result['test_accuracy']:.4f} after {args.mnist_epochs} epochs "
                  f"({result['seconds']:.0f} s)", flush=True)
        return
    rates = {"binarized": [], "larq": []}
    for r in range(args.repeats):
        rates["binarized"].append(run_binarized(args)["images_per_second"])
        line = f"run {r + 1}: binarized {rates['binarized'][-1]:,.0f} images/s"
        if args.larq_python:
            rates["larq"].append(larq_subprocess(args)["images_per_second"])
            line += f", larq {rates['larq'][-1]:,.0f} images/s"
        print(line, flush=True)
    median = {side: statistics.median(values) for side, values in rates.items() if values}
    line = f"median: binarized {median['binarized']:,.0f} images/s"
    if "larq" in median:
        line += f", larq {median['larq']:,.0f} images/s, binarized/larq {median['binarized'] / median['larq']:.2f}x"
    print(line)


if __name__ == "__main__":
    ARGS = parse_args()  # --help and a bad flag answer before TensorFlow is imported
    if ARGS.side == "larq":
        run_larq(ARGS)
    else:
        sys.path.insert(0, ROOT)
        from binarized.quiet import import_keras_quietly

        import_keras_quietly()
        main(ARGS)
