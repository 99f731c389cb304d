"""The numbers of docs/results.md: each shipped model's card, the anchors, and the plot.

For each `-ta` training given as EXPERIMENT_NAME=LOG (its folder under --root, and the output
train.py printed), it reads the saved model (weights/NAME/model.keras), its packed file
(weights/NAME/model.bnn.npz), its settings (logs/NAME/train_architecture_settings.json) and
the log (epoch lines, best validation accuracy, seconds), then prints, as Markdown:

- the card of each model: representation string, the settings that differ from train.py's,
  the exact command, epochs and wall time, best validation accuracy, test accuracy from Keras
  and from the packed NumPy engine with their agreement, packed KiB (the file's size and
  Larq's count), binary and 32-bit parameters, binary and float MACs and OPs;
- one table of these models and the published binary networks (`ANCHORS`), and the plot
  docs/results.png: test accuracy against the file's KiB and against OPs.

A card may hold its model's float twin (`float_twin`, written by bench/float_twin.py: the same
cells with float layers and tanh, every parameter 32-bit and every MAC a FLOP): the card then
says what it reached, the table lists it after its model and the plot draws it hollow, in its
model's colour.

OPs follow Bi-Real Net (Liu et al. 2018): OPs = FLOPs + binary OPs / 64, with a float
multiply-accumulate counted as one FLOP and an XNOR-popcount MAC as one binary OP.

    python bench/model_card.py --root /path/of/the/runs NAME=run.log [NAME=run.log ...] [--copy models/]

The cards are kept in `--cards` (default bench/results/model_cards.json): a run given here
replaces its card of the same name (keeping its float twin where the architecture and its
settings are the same), and the Markdown and the plot show every card there, so a model
trained on another machine, whose weights/ are gone, keeps its card. With no run given, it
prints and plots the kept cards; --plot names another file than docs/results.png.
"""

import argparse
import json
import os
import re
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# The published binary networks on MNIST's test set, with sizes computed from their architectures
# (docs/results.md shows the arithmetic). packed_kib: 1-bit weights / 8 + 4 bytes per 32-bit
# parameter (BatchNorm as two vectors a channel, as Larq counts); macs: (binary, float) per image.
LARQ_TUTORIAL = dict(binary_params=93088, float_params=702,
                     macs=(11 * 11 * 64 * 9 * 32 + 3 * 3 * 64 * 9 * 64 + 576 * 64 + 640, 26 * 26 * 32 * 9))
ANCHORS = [
    # BNN (Hubara, Courbariaux et al. 2016), the MLP of 3 x 4096 binary units (Theano, 0.96 % error).
    dict(name="BNN MLP 3x4096", accuracy=0.9904, binary_params=784 * 4096 + 2 * 4096 * 4096 + 4096 * 10,
         float_params=2 * (3 * 4096 + 10), macs=(2 * 4096 * 4096 + 4096 * 10, 784 * 4096),
         source="arXiv:1602.02830, Table 1"),
    # FINN's LFC (Umuroglu et al. 2017): a binarized MLP 784-1024-1024-1024-10, binarized input.
    dict(name="FINN LFC (w1a1)", accuracy=0.984, binary_params=784 * 1024 + 2 * 1024 * 1024 + 1024 * 10,
         float_params=2 * (3 * 1024 + 10), macs=(784 * 1024 + 2 * 1024 * 1024 + 1024 * 10, 0),
         source="arXiv:1612.07119, Table 2"),
    # BinaryConnect (Courbariaux et al. 2015), deterministic: binary weights, real activations
    # (its MACs are float additions, counted here as FLOPs).
    dict(name="BinaryConnect (det.)", accuracy=0.9871, binary_params=784 * 1024 + 2 * 1024 * 1024 + 1024 * 10,
         float_params=2 * (3 * 1024 + 10), macs=(0, 784 * 1024 + 2 * 1024 * 1024 + 1024 * 10),
         source="arXiv:1511.00363, Table 2 (1.29 % error)"),
    # Larq's MNIST tutorial CNN: 3 binary convolutions, 2 binary dense layers (93,790 parameters).
    dict(LARQ_TUTORIAL, name="Larq tutorial CNN", accuracy=0.9751, source="larq/docs tutorials/mnist.ipynb, 6 epochs"),
    # The same network and recipe trained here with Larq 0.14 (bench/peer_larq.py --mnist-epochs 6), one run.
    dict(LARQ_TUTORIAL, name="Larq tutorial CNN, measured", accuracy=0.9610,
         source="Larq 0.14 here, bench/peer_larq.py --mnist-epochs 6"),
]


def ops(binary_macs, float_macs):
    """OPs in Bi-Real Net's convention: FLOPs + binary OPs / 64."""
    return float_macs + binary_macs / 64


def anchor_rows():
    rows = []
    for a in ANCHORS:
        kib = (a["binary_params"] / 8 + 4 * a["float_params"]) / 1024
        rows.append(dict(name=a["name"], accuracy=a["accuracy"], kib=kib, binary_params=a["binary_params"],
                         float_params=a["float_params"], binary_macs=a["macs"][0], float_macs=a["macs"][1],
                         ops=ops(*a["macs"]), source=a["source"]))
    return rows


def parse_log(path):
    """Epochs, best validation accuracy and its epoch, and the training's seconds from a `-ta` run's output."""
    with open(path) as f:
        text = f.read()
    epochs = re.findall(r"^  epoch (\d+)/(\d+) - (\d+)s - .*val_accuracy: ([0-9.]+)", text, re.M)
    best = re.search(r"Best validation accuracy ([0-9.]+) at epoch (\d+)", text)
    seconds = re.search(r"parameters \d+, (\d+)s", text)
    resumed = re.findall(r"Resuming from .*", text)
    return dict(epochs=int(epochs[-1][1]) if epochs else None, best_val=float(best.group(1)) if best else None,
                best_epoch=int(best.group(2)) if best else None,
                # A resumed run's last line counts only its own epochs: sum every epoch line's instead.
                seconds=int(seconds.group(1)) if seconds and not resumed else sum(int(e[2]) for e in epochs),
                epoch_seconds=[int(e[2]) for e in epochs], resumed=resumed)


def command(settings):
    """The `python train.py -ta True ...` command of these settings (the ones that differ from train.py's)."""
    import train
    from pnas.config import RETRAIN_SETTINGS
    from pnas.settings import format_override

    # What a -ta training reads: the settings that shape a child, and -ta's own.
    used = set(RETRAIN_SETTINGS) | {"NUM_EPOCHS", "TRAIN_SIZE", "REPRESENTATION_STRING"}
    args = [format_override(name, settings[name]) for name in train.SETTINGS
            if name in settings and name in used and name != "DROPOUT"
            and json.loads(json.dumps(getattr(train, name), default=list))
            != json.loads(json.dumps(settings[name], default=list))]
    return "python train.py -ta True " + " ".join(args)


def card(root, name, log_path):
    """The numbers of one trained model."""
    from binarized.quiet import import_keras_quietly

    import_keras_quietly()
    import keras
    import numpy as np

    import binarized.binary_layers  # noqa: F401  (registers the layers)
    from binarized.packed import PackedModel, _mnist_test
    from pnas import footprint

    weights = os.path.join(root, "weights", name)
    with open(os.path.join(root, "logs", name, "train_architecture_settings.json")) as f:
        settings = json.load(f)
    model = keras.saving.load_model(os.path.join(weights, "model.keras"), compile=False)
    images, labels = _mnist_test(os.environ.get("MNIST_DATA_DIR") or os.path.join(ROOT, "data", "mnist"))
    keras_class = model.predict(images, batch_size=1000, verbose=0).argmax(axis=1)
    packed_path = os.path.join(weights, "model.bnn.npz")
    engine_class = PackedModel.load(packed_path).predict(images).argmax(axis=1)
    t = footprint.summary(model)
    log = parse_log(log_path)
    return dict(
        name=name, representation_string=settings["REPRESENTATION_STRING"], command=command(settings),
        settings={k: settings[k] for k in ("B", "operators", "NUM_CELL_FILTERS", "DENSE_LAYERS", "USE_EXPANSION",
                                           "NUM_EPOCHS", "SEED")},
        log=log, keras_accuracy=float(np.mean(keras_class == labels)),
        engine_accuracy=float(np.mean(engine_class == labels)), agreement=float(np.mean(keras_class == engine_class)),
        file_kib=os.path.getsize(packed_path) / 1024, packed_kib=t["packed_kib"], binary_params=t["binary_params"],
        float_params=t["float_params"], binary_macs=t["binary_macs"], float_macs=t["float_macs"],
        ops=t.get("ops", ops(t["binary_macs"], t["float_macs"])), packed_path=packed_path,
    )


# A card's settings that shape its float twin: all but the epochs (the twin records its own).
TWIN_SETTINGS = ("B", "operators", "NUM_CELL_FILTERS", "DENSE_LAYERS", "USE_EXPANSION", "SEED")


def keep_float_twin(new, old):
    """`new` with the float twin of `old`, the card it replaces, where both are the same architecture."""
    if "float_twin" not in old or old["representation_string"] != new["representation_string"]:
        return new
    if any(old["settings"].get(k) != new["settings"].get(k) for k in TWIN_SETTINGS):
        return new
    return dict(new, float_twin=old["float_twin"])


def twin_line(c):
    """The card's line about its float twin."""
    t = c["float_twin"]
    subset = f" on the first {t['train_size']:,} training images" if t.get("train_size") else ""
    took = f"{t['seconds'] / 60:.0f} min" if t["seconds"] >= 60 else f"{t['seconds']} s"
    epochs = f"{t['epochs']} epoch{'s' if t['epochs'] != 1 else ''}"
    flags = f" --epochs {t['epochs']}" if t["epochs"] != c["settings"]["NUM_EPOCHS"] else ""
    flags += f" --train-size {t['train_size']}" if t.get("train_size") else ""
    return (f"- float twin (the same cells with float layers and tanh, "
            f"`python bench/float_twin.py {c['name']}{flags}`): "
            f"test accuracy {t['test_accuracy']:.4f} after {epochs}{subset} (best validation {t['best_val']:.4f}, "
            f"epoch {t['best_epoch']}; {took}), {t['float_params']:,} 32-bit parameters ({t['kib']:.2f} KiB), "
            f"{t['macs']:,} float MACs: {t['ops'] / 1e6:.3f} M OPs")


def markdown(cards):
    lines = []
    for c in cards:
        log = c["log"]
        lines += [
            f"### `models/{c['name']}.bnn.npz`", "",
            f"- representation string `{c['representation_string']}` "
            f"(B = {c['settings']['B']}, operators {c['settings']['operators']})",
            f"- command: `{c['command']}`",
            f"- {log['epochs']} epochs, {log['seconds'] / 60:.0f} min of training on a 2-core CPU "
            f"(epochs of {min(log['epoch_seconds'] or [0])}-{max(log['epoch_seconds'] or [0])} s)"
            + (f"; resumed {len(log['resumed'])} time(s)" if log["resumed"] else ""),
            f"- best validation accuracy {log['best_val']:.4f} (epoch {log['best_epoch']}); test accuracy: Keras "
            f"{c['keras_accuracy']:.4f}, packed engine {c['engine_accuracy']:.4f} (same class on "
            f"{100 * c['agreement']:.2f} % of the 10,000 test images)",
            f"- {c['file_kib']:.2f} KiB file ({c['packed_kib']:.2f} KiB as Larq counts it); {c['binary_params']:,} binary "
            f"and {c['float_params']:,} 32-bit parameters",
            f"- {c['binary_macs']:,} binary and {c['float_macs']:,} float MACs per image: {c['ops'] / 1e6:.3f} M OPs",
            *([twin_line(c)] if "float_twin" in c else []), "",
        ]
    lines += ["| model | test accuracy | KiB | binary params | binary MACs | float MACs | OPs |",
              "|---|---|---|---|---|---|---|"]
    for c in cards:
        lines.append(f"| `{c['name']}` (this package) | {100 * c['engine_accuracy']:.2f} % | {c['file_kib']:.1f} | "
                     f"{c['binary_params']:,} | {c['binary_macs']:,} | {c['float_macs']:,} | {c['ops'] / 1e6:.3f} M |")
        if "float_twin" in c:  # the table has no column of 32-bit parameters: the twin's are all 32-bit
            t = c["float_twin"]
            lines.append(f"| `{c['name']}` float twin (this package) | {100 * t['test_accuracy']:.2f} % | "
                         f"{t['kib']:.1f} | 0 ({t['float_params']:,} 32-bit) | 0 | {t['macs']:,} | "
                         f"{t['ops'] / 1e6:.3f} M |")
    for a in anchor_rows():
        lines.append(f"| {a['name']} ({a['source']}) | {100 * a['accuracy']:.2f} % | {a['kib']:.1f} | "
                     f"{a['binary_params']:,} | {a['binary_macs']:,} | {a['float_macs']:,} | {a['ops'] / 1e6:.3f} M |")
    return "\n".join(lines)


def plot(cards, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    anchors = anchor_rows()
    for ax, key, label in ((axes[0], "kib", "size (KiB, log scale)"), (axes[1], "ops", "OPs per image (log scale)")):
        for a in anchors:
            ax.scatter(a[key], 100 * a["accuracy"], marker="s", color="grey")
            ax.annotate(a["name"], (a[key], 100 * a["accuracy"]), fontsize=7, xytext=(4, -8), textcoords="offset points")
        for i, c in enumerate(cards):  # each model a colour of its own, named in the legend
            x = c["file_kib"] if key == "kib" else c["ops"]
            ax.scatter(x, 100 * c["engine_accuracy"], marker="o", color=f"C{i % 10}", label=c["name"], zorder=3)
            if "float_twin" in c:  # hollow, joined to its model by a dotted line
                t = c["float_twin"]
                ax.plot([x, t[key]], [100 * c["engine_accuracy"], 100 * t["test_accuracy"]], ls=":", lw=0.8,
                        color=f"C{i % 10}", zorder=2)
                ax.scatter(t[key], 100 * t["test_accuracy"], marker="o", facecolors="none",
                           edgecolors=f"C{i % 10}", zorder=3)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("MNIST test accuracy (%)")
        ax.grid(alpha=0.3)
    if any("float_twin" in c for c in cards):  # one legend entry stands for every twin
        axes[0].scatter([], [], marker="o", facecolors="none", edgecolors="black",
                        label="float twin (hollow,\nits model's colour)")
    axes[0].legend(fontsize=7, loc="lower right", title="this package", title_fontsize=7)
    axes[0].set_title("accuracy against size")
    axes[1].set_title("accuracy against OPs (FLOPs + binary OPs / 64)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="NAME=LOG: an experiment of a -ta run and the file of its output")
    parser.add_argument("--root", default=".", help="the folder holding the runs' weights/ and logs/")
    parser.add_argument("--copy", default=None, help="copy each packed file here as NAME.bnn.npz")
    parser.add_argument("--plot", default=os.path.join(ROOT, "docs", "results.png"),
                        help="the plot's file (default docs/results.png)")
    parser.add_argument("--cards", default=os.path.join(ROOT, "bench", "results", "model_cards.json"),
                        help="the JSON file of the kept cards, updated with the runs given")
    args = parser.parse_args(argv)
    for run in args.runs:
        if "=" not in run:
            parser.error(f"{run!r} is not NAME=LOG; give the experiment's name and the file of its output")
    new = [card(args.root, *run.split("=", 1)) for run in args.runs]
    kept = []
    if os.path.exists(args.cards):
        with open(args.cards) as f:
            kept = json.load(f)
    old = {c["name"]: c for c in kept}
    new = [keep_float_twin(c, old[c["name"]]) if c["name"] in old else c for c in new]
    names = {c["name"] for c in new}
    cards = [c for c in kept if c["name"] not in names] + new
    if not cards:
        parser.error(f"no run given and no cards kept in {args.cards}")
    print(markdown(cards))
    plot(cards, args.plot)
    if new:
        tmp = args.cards + ".tmp"
        with open(tmp, "w") as f:
            json.dump([{k: v for k, v in c.items() if k != "packed_path"} for c in cards], f, indent=1)
        os.replace(tmp, args.cards)
    if args.copy:
        os.makedirs(args.copy, exist_ok=True)
        for c in new:
            shutil.copyfile(c["packed_path"], os.path.join(args.copy, f"{c['name']}.bnn.npz"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
