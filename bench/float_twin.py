"""Trains the float twin of a shipped model and keeps its result in that model's card.

The float twin (`pnas.model.model_fn(..., float_twin=True)`) has the model's cells, widths and
dense head, with float Conv/Dense layers and tanh in place of the binary layers and sign: what
the architecture reaches without binarization, and at what size and cost. It trains as
`python train.py -ta True` trained the model: train.py's settings with the card's command's
overrides and the card's settings (widths, dense head, expansion, seed) on top, the same 55,000
training images in the same order each epoch (expanded where the model's were), BatchNorm
calibrated and the twin validated on the 5,000 validation images after each epoch, the learning
rate decaying over all the epochs. The best epoch is chosen by validation accuracy alone; its
weights are then evaluated once on the 10,000 test images.

The result goes into the card, in --cards (default bench/results/model_cards.json), as
`float_twin`: epochs, best_val, best_epoch, test_accuracy, seconds, train_size (None: all),
float_params (every parameter is 32-bit; BatchNorm counted as two vectors a channel, as the
card counts it), kib (float_params * 4 / 1024), macs (all float: the model's binary + float
MACs, checked against `pnas.footprint` of the twin before training) and ops (= macs, all
FLOPs). `python bench/model_card.py` then shows it.

    python bench/float_twin.py NAME [--epochs N] [--train-size N] [--cards PATH] [--dry-run]
"""

import argparse
import functools
import json
import os
import shlex
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import train  # noqa: E402  (imports no TensorFlow)

DEFAULT_CARDS = os.path.join(ROOT, "bench", "results", "model_cards.json")


def fail(message):
    """One clear line on stderr and exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {value}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="the card's name (a shipped model, e.g. c0_w32_h10)")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="epochs to train (default: the card's NUM_EPOCHS)")
    parser.add_argument("--train-size", type=positive_int, default=None,
                        help="train on the first N training images only (default: all 55,000), for smoke checks: "
                             "such a run writes nothing into the default cards file, only into one that --cards names")
    parser.add_argument("--cards", default=DEFAULT_CARDS,
                        help="the JSON file of the kept cards (default bench/results/model_cards.json), whose card "
                             "NAME gets the float_twin")
    parser.add_argument("--dry-run", action="store_true",
                        help="build the twin, check its footprint against the card and print the plan; "
                             "train and write nothing")
    return parser.parse_args(argv)


def read_cards(path):
    """The cards kept in `path`; exits 2 where there are none."""
    try:
        with open(path) as f:
            cards = json.load(f)
    except OSError as exc:
        fail(f"cannot read the cards file {path}: {exc.strerror}")
    except ValueError as exc:
        fail(f"{path} is not JSON: {exc}")
    if not isinstance(cards, list) or not all(isinstance(c, dict) and "name" in c for c in cards):
        fail(f"{path} is not a list of cards (as bench/model_card.py writes them)")
    return cards


def find_card(cards, name, path):
    """The card named `name`; exits 2 naming the cards kept where there is none."""
    for card in cards:
        if card["name"] == name:
            return card
    fail(f"no card {name!r} in {path}; the cards kept: {', '.join(c['name'] for c in cards) or 'none'}")


def card_settings(card):
    """train.py's settings of the card's training: its command's overrides, then the card's settings on top.

    The command holds every setting that shapes the child and differs from train.py's defaults at
    the time; the card's settings (widths, dense head, expansion, seed, B, operators) hold even if
    those defaults have changed since.
    """
    from pnas.settings import SettingsError, validate

    overrides = [word for word in shlex.split(card["command"]) if word.startswith("--")]
    _, settings, _ = train.parse_args(["-ta", "True", *overrides])  # a bad override exits 2 with its fix
    settings.update(card["settings"])
    try:
        validate(settings)
    except SettingsError as exc:
        fail(f"card {card['name']!r}: {exc}")
    return settings


def architecture_of(settings):
    """`[input1, 'op1', ...]` of the settings' REPRESENTATION_STRING, as train.py's -ta reads it."""
    from pnas.encoder import RepresentationError, StateSpace

    space = StateSpace(settings["B"], settings["operators"], settings["INPUT_LOOKBACK_DEPTH"],
                       settings["INPUT_LOOKFORWARD_DEPTH"])
    try:
        return space.parse(space.from_representation_string(settings["REPRESENTATION_STRING"]))
    except RepresentationError as exc:
        fail(f"the card's representation string: {exc}")


def check_footprint(card, totals):
    """Exits 2 unless the twin has the card's parameters and MACs, every one 32-bit (its topology is the model's)."""
    params = totals["binary_params"] + totals["float_params"]
    macs = totals["binary_macs"] + totals["float_macs"]
    want_params = card["binary_params"] + card["float_params"]
    want_macs = card["binary_macs"] + card["float_macs"]
    if totals["binary_params"] or totals["binary_macs"] or (params, macs) != (want_params, want_macs):
        fail(f"the float twin built from card {card['name']!r} has {params:,} parameters and {macs:,} MACs "
             f"({totals['binary_params']:,} and {totals['binary_macs']:,} of them binary), its model "
             f"{want_params:,} and {want_macs:,}: the card's settings do not rebuild its architecture")


def same_file(a, b):
    return os.path.realpath(a) == os.path.realpath(b)


def keep_twin(path, name, twin):
    """Writes `twin` as the `float_twin` of card `name` in `path`, atomically, other cards untouched.

    The file is read again here: a training takes hours, in which another card may have been kept.
    """
    from mnist.files import atomic_path

    cards = read_cards(path)
    find_card(cards, name, path)["float_twin"] = twin
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(cards, f, indent=1)  # as bench/model_card.py writes it


def main(argv=None):
    args = parse_args(argv)
    card = find_card(read_cards(args.cards), args.name, args.cards)
    settings = card_settings(card)
    epochs = args.epochs or settings["NUM_EPOCHS"]
    if args.train_size is not None:
        settings["TRAIN_SIZE"] = args.train_size
    settings["NUM_EPOCHS"] = epochs  # its learning rate decays over the epochs it trains
    architecture = architecture_of(settings)
    write = not (args.train_size is not None and same_file(args.cards, DEFAULT_CARDS))
    print(f"Float twin of {args.name}: {architecture}, {epochs} epoch{'s' if epochs != 1 else ''}")
    for line in train.settings_lines(settings):
        print(line)
    if not write:
        print(f"--train-size given: the result is printed, not written into {args.cards} "
              "(name another file with --cards to keep it)")

    from binarized.quiet import import_keras_quietly

    import_keras_quietly()
    import keras

    import pnas.model
    from pnas import footprint
    from pnas.config import SearchConfig

    child = SearchConfig.from_settings(settings).child.replace(epochs=epochs, evaluate_test=True, verbose=2)
    model_fn = functools.partial(pnas.model.model_fn, float_twin=True)
    model, _ = model_fn(architecture, **child.model_kwargs())
    totals = footprint.summary(model)
    del model
    check_footprint(card, totals)
    params = totals["float_params"]
    macs = totals["float_macs"]
    print(f"{params:,} 32-bit parameters ({params * 4 / 1024:.2f} KiB), {macs:,} float MACs per image, "
          f"as the model's {card['binary_params']:,} + {card['float_params']:,} parameters and "
          f"{card['binary_macs']:,} + {card['float_macs']:,} MACs")
    if args.dry_run:
        print(f"Dry run: nothing trained; a run would write the float_twin of {args.name} into {args.cards}"
              if write else "Dry run: nothing trained")
        return 0

    from mnist.download_mnist import MnistUnavailableError
    from mnist.mnist_data import MnistFormatError, get_dataset
    from pnas.checkpoint import TrainingCheckpoint
    from pnas.manager import ChildTrainingError, NetworkManager

    try:
        dataset = get_dataset(settings["USE_EXPANSION"], train_size=settings["TRAIN_SIZE"], seed=settings["SEED"],
                              verbose=True)
    except (MnistUnavailableError, MnistFormatError, ValueError) as exc:
        fail(" ".join(str(exc).split()))
    keras.utils.set_random_seed(settings["SEED"])
    with tempfile.TemporaryDirectory(prefix="float_twin_") as scratch:
        manager = NetworkManager(dataset, **child.manager_kwargs(scratch))
        # With a checkpoint, epoch e visits the images in `epoch_order(SEED, e)`, the order the
        # model's -ta training saw them in. The file is scratch: an interrupted twin starts afresh.
        checkpoint = TrainingCheckpoint(os.path.join(scratch, "resume.npz"), {"float_twin": args.name})
        try:
            result = manager.train_child(
                model_fn, **child.train_kwargs(architecture, name="float_twin", label="float twin"),
                checkpoint=checkpoint, seed=settings["SEED"],
            )
        except KeyboardInterrupt:
            print("\nInterrupted: nothing written.", file=sys.stderr)
            sys.exit(130)
        except ChildTrainingError as exc:
            print(f"error: the float twin's training diverged: {exc}; nothing written", file=sys.stderr)
            sys.exit(1)
    t = result["footprint"]
    macs = t["binary_macs"] + t["float_macs"]
    params = t["binary_params"] + t["float_params"]
    twin = dict(
        epochs=epochs, best_val=round(result["reward"], 4), best_epoch=result["best_epoch"],
        test_accuracy=round(result["test_accuracy"], 4), seconds=round(result["seconds"]),
        train_size=settings["TRAIN_SIZE"], float_params=params, kib=params * 4 / 1024, macs=macs, ops=macs,
    )
    print(f"Float twin of {args.name}: test accuracy {twin['test_accuracy']:.4f} (best validation "
          f"{twin['best_val']:.4f} at epoch {twin['best_epoch']} of {epochs}), {params:,} 32-bit parameters "
          f"({twin['kib']:.2f} KiB), {macs:,} float MACs = {macs / 1e6:.3f} M OPs, {twin['seconds']}s; the model: "
          f"test accuracy {card['engine_accuracy']:.4f} in {card['file_kib']:.2f} KiB, {card['ops'] / 1e6:.3f} M OPs")
    if write:
        keep_twin(args.cards, args.name, twin)
        print(f"Kept as the float_twin of {args.name} in {args.cards}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
