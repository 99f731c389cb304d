"""Progressive NAS over binarized CNN cells on MNIST.

    python train.py                      # run (or resume) the architecture search
    python train.py -ta True             # train REPRESENTATION_STRING to convergence
    python train.py --B=2 --RUNNER=ray   # override any constant below (see --help)
    python train.py --help               # every setting, its default and what it does
"""

import os

# Keep TensorFlow's C++ log lines out of the user's terminal.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

# ------- Experiment Settings -------
EXPERIMENT_NAME = "default"  # Names the files under architectures/, logs/, weights/, scores/
SEED = 0  # Seeds every child's and the encoder's training; same SEED on CPU -> same search
OVERWRITE = False  # True: remove the outputs of a saved search of the same EXPERIMENT_NAME and start afresh
                   # (all but its encoder weights, which RESTORE_CONTROLLER adopts) instead of resuming it
VERBOSE = 2  # Keras fit output per child: 0 silent, 1 per-batch progress bar, 2 one line per epoch
# -----------------------------------

# -------Controller Training Settings-------
B = 3  # Maximum number of blocks in the cell
K_ = 128  # Number of children to be trained for each block size (beam width)
SURROGATE = 'lstm'  # What ranks the candidates: 'lstm' (the original's RNN encoder, set up by the settings
                    # below) or 'ridge' (a ridge regression on operand counts; no TensorFlow): docs/surrogate.md
REGULARIZATION = 0  # L2 regularization strength on the RNN controller (encoder) weights
CONTROLLER_CELLS = 100  # Number of cells (units) in the RNN controller
RNN_TRAINING_EPOCHS = 15  # Number of training epochs during each run of the encoder training
RESTORE_CONTROLLER = True  # Start a new search from the encoder weights of an earlier run, when present
INPUT_LOOKBACK_DEPTH = 0  # 0: a block reads the cell input (and the earlier blocks INPUT_LOOKFORWARD_DEPTH allows);
                          # -1: also the previous cell's input (the PNAS paper's cell), reduced to the cell input's size
INPUT_LOOKFORWARD_DEPTH = 0  # Earlier blocks of the same cell a block may read (0: none, None: all)
MAX_CONSECUTIVE_FAILURES = 3  # Stop the search after this many failed children in a row
MAX_MUL_OPS = None  # The original's op budget: children with a larger mul_ops (every MAC of a binary-weight layer,
                    # binary or not) are skipped (None: off)
MAX_OPS = None  # Op budget in OPs, 32-bit MACs + binary MACs / 64 (Bi-Real Net's count): children above it are
                # skipped (None: off). A binary conv of a real-valued input is 32-bit work (docs/cell-space.md)
ENCODER_ENSEMBLE = 1  # Encoders averaged for ranking; with n > 1 each trains on a different (n-1)/n
ENCODER_BATCHSIZE = 1  # Children per encoder gradient step (the original's: 1; None: all in one batch,
                       # 15 steps per stage, which ranked no better than chance: docs/surrogate.md)
ENCODER_LR = 1e-3  # Encoder's Adam learning rate, x0.98 every 500 steps (the original's schedule)
ENCODER_TARGETS = 'scaled'  # 'scaled': rewards z-scored, then to 0.5 +- 0.1 for the sigmoid output;
                            # 'standardize': z-scored, linear output; 'raw': the original's sigmoid on the
                            # rewards as they are, which predicts one value for all when rewards near 1
ENCODER_AUGMENT = True  # Train on the equivalent token orders of a cell (blocks reordered, operands swapped),
                        # one drawn per epoch, and rank by the mean over them: the LSTM then beats random
                        # search under training noise, which without it it does not (docs/surrogate.md)
ENCODER_READOUT = 'last'  # 'last': the LSTM's last output (the original's); 'mean': the mean over the tokens
CHILDREN_PER_PROCESS = 10  # Children trained per worker process before it is replaced (0: in this process);
                           # TensorFlow leaks ~30 MB per trained model, which a fresh process returns
PARALLEL_CHILDREN = 1  # Children trained side by side, each in a worker with its share of the CPU cores;
                       # 2 on a 2-core CPU trains small children ~1.4x faster (docs/cpu-search.md)
RUNNER = 'processes'  # Where children train: 'processes' (worker processes on this machine, or this process
                      # with CHILDREN_PER_PROCESS=0), 'inline' (this process) or 'ray' (docs/cluster.md)
RAY_ADDRESS = None  # RUNNER='ray': None starts a Ray on this machine; 'auto' or 'host:port' joins a cluster
RAY_CPUS_PER_CHILD = 1  # RUNNER='ray': CPU cores of each child's task (its TensorFlow threads)
RAY_GPUS_PER_CHILD = 0  # RUNNER='ray': GPUs of each child's task (e.g. 1, or 0.5 for two children per GPU)
RAY_MAX_RETRIES = 1  # RUNNER='ray': reruns of a child whose worker or node died, before it is failed
FINAL_TOP = 2  # Final stage: after the last stage, retrain the search's FINAL_TOP best cells (0: none)
               # and pick the best of those; one short training is too noisy to pick by (docs/surrogate.md)
FINAL_EPOCHS = None  # ... each for FINAL_EPOCHS epochs (None: MAX_EPOCHS)
FINAL_TRAIN_SIZE = None  # ... on the first FINAL_TRAIN_SIZE training images (None: all 55,000)
# ------------------------------------------

# ------- Common Settings --------
DROP_INPUT = 0.2  # Dropout rate on the flattened features entering the dense head
DROP_HIDDEN = 0.5  # Dropout rate between the hidden dense layers
DROPOUT = (False, DROP_INPUT, DROP_HIDDEN)  # (enabled, input rate, hidden rate); only in the dense head
MAX_EPOCHS = 20  # Maximum number of epochs to train each child network
BATCHSIZE = 128  # Batch size while training child networks
NUM_CELLS = 3  # Number of cells stacked in each architecture; each halves the image size
NUM_CELL_FILTERS = [16, 24, 32]  # Number of filters of each operator in each cell (one entry per cell)
DENSE_LAYERS = [32, 10]  # Units of the binary dense head; the last must be 10 (the classes).
                         # [32, 48, 64] cells with a [256, 10] head: rewards 1-3 points higher, for ~2x the
                         # training time; every reference then meets the 0.97 target (docs/child-training.md)
USE_EXPANSION = False  # True: train on expanded MNIST (each image plus 4 rotated and shifted copies)
TRAIN_SIZE = None  # Train on the first TRAIN_SIZE of the 55,000 training images only (None: all)
TEST_CHILDREN = False  # True: also evaluate every child on the 10,000 test images (the summary's test column);
                       # off, as the search never reads them: ~14 % of a proxy child (docs/cpu-search.md)
operators = ['3x3 sep-bconv', '5x5 sep-bconv', '1x7-7x1 bconv',
             '3x3 bconv']  # Operations of the search space (all 10 are listed in pnas/config.py's OPERATORS)
# --------------------------------

# ------- Child Training Settings --------
BINARY_H = 'Glorot'  # Binary weights are ±H; latent weights start in and are clipped to [-H, H].
                     # 'Glorot' (the BNN paper's): with H=1 Adam's small steps rarely flip a sign and
                     # 1-block children reached only 0.63-0.75 after 3 epochs (docs/child-training.md)
KERNEL_LR_MULTIPLIER = 'Glorot'  # Scales the latent kernels' gradient (no effect with Adam)
LR_START = 3e-2  # Adam learning rate at a child's first step; binary weights need large steps to flip:
                 # 1e-3 (the original's) gave 1.5-4 points lower rewards after 3 epochs, 1e-2 0.3-1.3
                 # points lower than 3e-2 (docs/child-training.md)
LR_END = 1e-4  # ... decaying exponentially to this at its last step
LOSS = 'squared_hinge'  # 'squared_hinge' (the original's, labels ±1) or 'crossentropy'
# ----------------------------------------

# -------Architecture Training Settings-----
NUM_EPOCHS = 200  # Epochs of the -ta training, as the original; its learning rate decays over all of them.
                  # 200 has not been run here; --NUM_EPOCHS=50 reached 99.19 % test with wider cells and
                  # 98.69 % with the original widths, where 30 and 100 epochs ended alike (docs: Convergence)
REPRESENTATION_STRING = "[[1. 0. 0.]] [[1. 0. 0. 0.]] [[1. 0. 0.]] [[1. 0. 0. 0.]]"  # Architecture to train with -ta True
LOAD_SAVED = False  # Continue the -ta training from its saved best weights
# ------------------------------------------

# The settings: every UPPER_CASE constant above, and `operators`. What each one means for a search
# (the config field it feeds, whether it defines the search, the types it takes) is in pnas/config.py.
SETTINGS = [name for name in dict(globals()) if name.isupper() or name == "operators"]


def fail(message):
    """One clear line on stderr and exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


OVERRIDE_RULE = (
    "Override any setting below as --NAME=value. A text setting takes a bare word (--RUNNER=ray, "
    "--EXPERIMENT_NAME=try1) or a quoted Python literal (--RUNNER=\"'ray'\"); every other value is a "
    "Python literal (--B=2, --TRAIN_SIZE=None, --DENSE_LAYERS=\"[64, 10]\")."
)


def output_lock(name, train_arch):
    """The `pnas.lock.FolderLock` of a search (`logs/NAME/`) or of a `-ta` training (`weights/NAME/`)."""
    from pnas.lock import FolderLock

    if train_arch:
        return FolderLock(os.path.join("weights", name), f"the weights folder of experiment {name!r}")
    return FolderLock(os.path.join("logs", name), f"the experiment {name!r}")


def refuse_if_in_use(argv):
    """Exits 2 at once when another process holds this run's lock, before the slow imports.

    Reads only -ta and --EXPERIMENT_NAME from `argv`; whatever it cannot read
    is left to the full parse (which takes the lock itself).
    """
    import ast

    name, train_arch = EXPERIMENT_NAME, False
    for i, arg in enumerate(argv):
        if arg.startswith("--EXPERIMENT_NAME="):
            try:
                name = ast.literal_eval(arg.split("=", 1)[1])
            except (ValueError, SyntaxError):
                name = arg.split("=", 1)[1]
        elif arg in ("-ta", "--train_architecture") and i + 1 < len(argv):
            train_arch = argv[i + 1] == "True"
        elif arg.startswith(("-ta=", "--train_architecture=")):
            train_arch = arg.split("=", 1)[1] == "True"
    if not isinstance(name, str) or not name:
        return
    lock = output_lock(name, train_arch)
    holder = lock.held_by_other()
    if holder is not None:
        fail(lock.describe(*holder))


def take_lock(name, train_arch):
    """Takes this run's lock for the rest of the process, or exits 2 naming the process that holds it."""
    from pnas.lock import ExperimentInUse

    lock = output_lock(name, train_arch)
    try:
        return lock.acquire()
    except ExperimentInUse as exc:
        fail(str(exc))



def parse_args(argv):
    """(whether -ta True, the settings with the overrides of `argv` applied and checked, the names overridden).

    Imports no Keras: `--help` and a bad setting answer at once.
    """
    from pnas.config import TYPES
    from pnas.settings import SettingsError, apply_overrides, settings_help, validate

    defaults = {name: globals()[name] for name in SETTINGS}
    with open(os.path.abspath(__file__), encoding="utf-8") as f:
        settings_text = settings_help(f.read(), defaults)
    parser = argparse.ArgumentParser(
        description="Progressive NAS over binarized CNN cells on MNIST.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"{textwrap.fill(OVERRIDE_RULE, 100)}\n\nSettings (defaults as set in train.py):\n\n{settings_text}",
    )
    parser.add_argument(
        "-ta", "--train_architecture", default="False", choices=["True", "False"],
        help="True: train REPRESENTATION_STRING for NUM_EPOCHS instead of searching",
    )
    args, overrides = parser.parse_known_args(argv)
    try:
        settings, overridden = apply_overrides(defaults, overrides, TYPES)
        if "DROPOUT" not in overridden:
            # DROPOUT is built from the rates: keep it in step with their overrides.
            settings["DROPOUT"] = (settings["DROPOUT"][0], settings["DROP_INPUT"], settings["DROP_HIDDEN"])
        settings["DROPOUT"] = tuple(settings["DROPOUT"])
        validate(settings)
    except SettingsError as exc:
        fail(str(exc))
    return args.train_architecture == "True", settings, overridden


def logged_cell_settings(settings, overridden):
    """(The settings of a -ta run, the line that says what they took from the search EXPERIMENT_NAME, if any).

    B, operators and the lookback come from that search's saved settings unless given: a
    representation string means a cell only with them (`pnas.retrain`). A string that cannot
    mean the cell asked for exits 2 with the override that fixes it.
    """
    from pnas.paths import ExperimentPaths
    from pnas.retrain import adopted_line, logged_cell_settings as logged, saved_search_settings
    from pnas.settings import SettingsError

    path = ExperimentPaths(settings["EXPERIMENT_NAME"]).settings
    try:
        settings, adopted = logged(settings, overridden, saved_search_settings(path), settings["EXPERIMENT_NAME"])
    except SettingsError as exc:
        fail(str(exc))
    return settings, [adopted_line(settings, adopted, path)] if adopted else []


def retrain_args(settings, overridden):
    """`--NAME=value` arguments repeating the overrides that shape a retrained child, in train.py's order."""
    from pnas.config import RETRAIN_SETTINGS
    from pnas.settings import format_override

    return [
        format_override(name, settings[name]) for name in SETTINGS if name in RETRAIN_SETTINGS and name in overridden
    ]


def settings_lines(settings):
    """The settings that differ from train.py's (the run's settings.json holds them all), under a line that says so."""
    changed = [name for name in SETTINGS if settings[name] != globals()[name]]
    if not changed:
        return ["Settings: train.py's defaults (python train.py --help lists them)"]
    return ["Settings that differ from train.py's (python train.py --help lists the defaults):"] + [
        f"  {name} = {settings[name]!r}" for name in changed
    ]


# Lines printed once the input has passed every check (`keras_after_the_checks`): a refused run
# prints its one error line and nothing before it.
_AFTER_THE_CHECKS = []


def keras_after_the_checks():
    """Prints the settings, then imports Keras (about 7 s, TensorFlow's start-up lines kept off stderr).

    Called once the input has passed every check: up to here train.py has
    parsed the settings, checked the outputs and the resume, and loaded MNIST
    without Keras, so that bad input is answered in a second.
    """
    from binarized.quiet import import_keras_quietly

    for line in _AFTER_THE_CHECKS:
        print(line)
    _AFTER_THE_CHECKS.clear()
    import_keras_quietly()


def load_dataset(settings):
    from mnist.download_mnist import MnistUnavailableError
    from mnist.mnist_data import MnistFormatError, get_dataset

    try:
        return get_dataset(
            settings["USE_EXPANSION"], train_size=settings["TRAIN_SIZE"], seed=settings["SEED"], verbose=True
        )
    except (MnistUnavailableError, MnistFormatError) as exc:
        fail(" ".join(str(exc).split()))
    except ValueError as exc:
        fail(f"cannot load MNIST with these settings: {exc}")


def save_settings(settings, path):
    from mnist.files import write_atomic

    write_atomic(path, json.dumps(settings, indent=2, default=list) + "\n")


def search(settings, overridden=()):
    from pnas.config import SearchConfig
    from pnas.lock import ExperimentInUse
    from pnas.paths import ExperimentPaths
    from pnas.records import ALREADY_FINISHED, SearchConfigError, SearchState
    from pnas.runners import RunnerLost, RunnerUnavailable, check_ray_address, make_runner
    from pnas.settings import SettingsError, check_writable

    config = SearchConfig.from_settings(settings)
    paths = ExperimentPaths(config.experiment_name)
    lock = None
    try:
        if config.runner.kind == "ray":
            check_ray_address(config.runner.ray_address)  # a wrong address, in a second (make_runner checks again)
        check_writable(paths.outputs())
        if config.overwrite:
            # Held until this process ends; taken before anything of the old search is removed.
            lock = output_lock(config.experiment_name, train_arch=False).acquire()
            removed = paths.discard()
            if removed:
                print(f"OVERWRITE: removed the {len(removed)} outputs of the earlier search {config.experiment_name!r} "
                      "(its encoder weights, if any, stay for RESTORE_CONTROLLER)")
        # A resume that will be refused is refused before the data is loaded.
        state = SearchState.load_or_create(
            paths.state, config.identity_dict(), overwrite=config.overwrite, records_path=paths.records
        )
    except (SettingsError, SearchConfigError, ExperimentInUse, RunnerUnavailable) as exc:
        fail(str(exc))
    if state.data.finished:  # nothing to train: answered without the data or Keras
        print(ALREADY_FINISHED)
        print_finished(config, paths, state.records())
        return
    dataset = load_dataset(settings)
    keras_after_the_checks()
    from pnas.search import Search, SearchAborted

    try:
        runner = make_runner(config, dataset, paths)
    except RunnerUnavailable as exc:
        fail(str(exc))
    try:
        search = Search(config, dataset, paths, runner=runner, state=state,
                        final_dataset=lambda: load_dataset(dict(settings, TRAIN_SIZE=settings["FINAL_TRAIN_SIZE"])))
    except SearchConfigError as exc:
        runner.close()
        fail(str(exc))
    # Held until this process ends: a second search of this name is refused before it writes anything.
    # (Taken after every check of the input, so that bad input still leaves no folder behind; a
    # second search is normally refused long before, by refuse_if_in_use.)
    try:
        lock = lock or output_lock(config.experiment_name, train_arch=False).acquire()  # noqa: F841
    except ExperimentInUse as exc:
        runner.close()
        fail(str(exc))
    search.state_space.print_state_space()
    search.state_space.print_total_models(config.encoder.k)
    save_settings(settings, paths.settings)
    save_settings(retrain_args(settings, overridden), paths.retrain_args)
    try:
        records = search.run()
    except RunnerLost as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.stderr.flush()
        sys.stdout.flush()
        # Not sys.exit: Ray's exit handlers would wait a minute for the lost head and print lines of their own.
        os._exit(1)
    except KeyboardInterrupt:
        print("\nInterrupted: every finished child is saved. Rerun the same command to resume.", file=sys.stderr)
        sys.exit(130)
    except SearchAborted as exc:
        fail(str(exc))
    print_finished(config, paths, records)


def print_finished(config, paths, records):
    """The lines that end a search: where its architectures are, its summary, where its plots are."""
    from pnas import report

    final = ""
    if os.path.exists(paths.final_records):
        with open(paths.final_records) as f:
            final = f", and {sum(1 for line in f if line.strip())} in the final stage ({paths.final_records})"
    print(f"Search finished: {len(records)} children trained or failed; architectures in {paths.architectures}{final}")
    print(report.report(config.experiment_name), end="")
    print(f"Plots and this summary are in {paths.exp_log_dir}/")


def training_key(settings):
    """The settings a -ta training computes with (those that shape the child, and -ta's own).

    A rerun that differs from the saved training in one of them is another training; in any other
    setting (VERBOSE, the search's settings, a setting added to train.py since), it resumes.
    """
    from pnas.config import RETRAIN_SETTINGS

    used = (set(RETRAIN_SETTINGS) - {"EXPERIMENT_NAME"}) | {"NUM_EPOCHS", "TRAIN_SIZE", "REPRESENTATION_STRING"}
    return {name: settings[name] for name in SETTINGS if name in used}


def resume_point(settings, paths):
    """The `TrainingCheckpoint` of this -ta training; says whether it resumes, or exits 2 if the file is another's.

    OVERWRITE=True removes the file of an earlier training and starts afresh.
    """
    from pnas.checkpoint import CheckpointMismatch, TrainingCheckpoint

    key = training_key(settings)
    checkpoint = TrainingCheckpoint(paths.resume, key)
    if settings["OVERWRITE"] and checkpoint.exists():
        checkpoint.remove()
        print(f"OVERWRITE: removed {paths.resume}; training afresh")
    try:
        saved = checkpoint.load()
    except CheckpointMismatch as exc:
        fail(f"{exc}; rerun with those settings to resume it, or add --OVERWRITE=True to train afresh")
    except (OSError, ValueError, KeyError) as exc:
        fail(f"{paths.resume} cannot be read ({type(exc).__name__}: {exc}); remove it or add --OVERWRITE=True "
             "to train afresh")
    if saved is not None:
        print(f"Resuming from {paths.resume}: {saved['epochs_done']} of {settings['NUM_EPOCHS']} epochs done, "
              f"continuing at epoch {saved['epochs_done'] + 1} (best validation accuracy so far "
              f"{saved['best']:.4f}, epoch {saved['best_epoch'] + 1 if saved['best_epoch'] is not None else '-'})")
    return checkpoint


def train_architecture(settings):
    from pnas.config import SearchConfig
    from pnas.encoder import RepresentationError, StateSpace
    from pnas.paths import ExperimentPaths
    from pnas.settings import SettingsError, check_writable

    state_space = StateSpace(
        settings["B"], settings["operators"], settings["INPUT_LOOKBACK_DEPTH"], settings["INPUT_LOOKFORWARD_DEPTH"]
    )
    try:
        child = state_space.from_representation_string(settings["REPRESENTATION_STRING"])
    except RepresentationError as exc:
        fail(f"REPRESENTATION_STRING: {exc}")
    paths = ExperimentPaths(settings["EXPERIMENT_NAME"])
    try:
        check_writable([paths.exp_weights_dir, paths.exp_log_dir])
    except SettingsError as exc:
        fail(str(exc))
    if settings["LOAD_SAVED"] and not os.path.exists(paths.weights("best")):
        fail(f"LOAD_SAVED=True but {paths.weights('best')} does not exist; train once without LOAD_SAVED")
    architecture = state_space.parse(child)
    print(f"Training architecture {architecture} for {settings['NUM_EPOCHS']} epochs")
    dataset = load_dataset(settings)
    lock = take_lock(settings["EXPERIMENT_NAME"], train_arch=True)  # noqa: F841  (held until the end)
    checkpoint = resume_point(settings, paths)
    keras_after_the_checks()
    import keras

    from pnas.manager import ChildTrainingError, NetworkManager
    from pnas.model import model_fn

    keras.utils.set_random_seed(settings["SEED"])
    # The child settings of the search, trained for NUM_EPOCHS.
    child = SearchConfig.from_settings(settings).child.replace(epochs=settings["NUM_EPOCHS"], evaluate_test=True)
    manager = NetworkManager(dataset, **child.manager_kwargs(paths.exp_weights_dir, paths.exp_log_dir))
    save_settings(settings, paths.retrain_settings)
    try:
        result = manager.train_child(
            model_fn, **child.train_kwargs(architecture, name="best"), load_saved=settings["LOAD_SAVED"],
            model_path=paths.model, checkpoint=checkpoint, seed=settings["SEED"],
        )
    except KeyboardInterrupt:
        print(f"\nInterrupted: every finished epoch is saved in {paths.resume}; rerun the same command to "
              "resume.", file=sys.stderr)
        sys.exit(130)
    except ChildTrainingError as exc:
        fail(f"training diverged: {exc}")
    from pnas.footprint import format_table

    print(format_table(result["footprint_layers"]))
    print(f"Best validation accuracy {result['reward']:.4f} at epoch {result['best_epoch']}")
    print(f"Test accuracy {result['test_accuracy']:.4f}")
    macs = result["footprint"]
    print(f"Binary MACs (binary inputs and weights, as Larq counts) {macs['binary_macs']}, 32-bit MACs "
          f"{macs['float_macs']}, mul_ops {result['mul_ops']}, parameters {result['params']}, {result['seconds']:.0f}s")
    print(f"Saved {paths.weights('best')} and {paths.model}")
    # The deployable form: bit-packed weights run by the NumPy XNOR-popcount engine (docs/packed.md).
    from binarized.export import UnsupportedLayerError, export_and_evaluate

    try:
        packed = export_and_evaluate(paths.model, paths.packed_model, dataset[4], dataset[5])
    except UnsupportedLayerError as exc:
        print(f"No packed export: {exc}")
    else:
        print(f"Saved {paths.packed_model}: {packed['size']} bytes, {packed['ratio']:.1f}x smaller than the "
              f"{packed['float32_bytes']} bytes of float32 weights")
        print(f"Test accuracy: packed engine {packed['engine_accuracy']:.4f}, Keras {packed['keras_accuracy']:.4f} "
              f"(same class on {100 * packed['agreement']:.2f} % of the test images)")
    checkpoint.remove()  # trained and saved: a rerun trains afresh


def main(argv=None):
    # Library warnings (e.g. a corrupt MNIST file being replaced) join the
    # progress on stdout: stderr is kept for the one-line errors.
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s", stream=sys.stdout)
    # Worker processes print their epoch lines to the same stdout: each of ours goes out whole, where
    # a pipe's block buffer would split one mid-line and let a worker's line land inside it.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    argv = sys.argv[1:] if argv is None else argv
    refuse_if_in_use(argv)  # in a second, not after the ~10 s of importing Keras
    train_arch, settings, overridden = parse_args(argv)
    settings, adopted = logged_cell_settings(settings, overridden) if train_arch else (settings, [])
    # Keras is imported, and the settings printed, once the input is checked and the data loaded
    # (`keras_after_the_checks`), so that bad input is answered in a second, in one line.
    _AFTER_THE_CHECKS[:] = settings_lines(settings) + adopted
    from pnas.files import WriteFailed

    try:
        if train_arch:
            train_architecture(settings)
        else:
            search(settings, overridden)
    except WriteFailed as exc:
        # The file named keeps its previous content: free space (or fix the disk) and rerun to resume.
        print(f"error: {exc}; free space or fix the disk, then rerun the same command to resume", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
