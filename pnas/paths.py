"""Where an experiment's files go: every output path of a search, a retrain and a report.

One object per experiment name, so that the search, `python -m pnas.report`,
train.py and the child trainer agree on the layout:

    architectures/NAME.txt, NAME.jsonl   the log and the records
    architectures/NAME.final.jsonl       the final stage's records
    logs/NAME/                           state, settings, summary, plots, TensorBoard
    weights/NAME/                        child and encoder weights, the retrained model
    scores/NAME/scores_B.csv             every candidate of stage B, ranked
"""

import os
import re
import shutil


def _running(pid):
    """Whether a process `pid` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ExperimentPaths:
    """The output paths of the experiment `exp_name`, under `root`."""

    def __init__(self, exp_name, root="."):
        self.exp_name = exp_name
        self.root = root
        self.architectures = os.path.join(root, "architectures", f"{exp_name}.txt")
        self.records = os.path.join(root, "architectures", f"{exp_name}.jsonl")
        # The final stage's trainings: beside the records, not in the original's log.
        self.final_records = os.path.join(root, "architectures", f"{exp_name}.final.jsonl")
        self.log_dir = os.path.join(root, "logs")
        self.exp_log_dir = os.path.join(root, "logs", exp_name)
        self.state = os.path.join(self.exp_log_dir, "search_state.json")
        self.settings = os.path.join(self.exp_log_dir, "settings.json")
        self.retrain_args = os.path.join(self.exp_log_dir, "retrain_args.json")
        self.summary = os.path.join(self.exp_log_dir, "summary.txt")
        self.weights_dir = os.path.join(root, "weights")
        self.exp_weights_dir = os.path.join(root, "weights", exp_name)
        self.encoder_weights = os.path.join(self.exp_weights_dir, "encoder.weights.h5")
        self.scores_dir = os.path.join(root, "scores", exp_name)

    def scores(self, b):
        """Every candidate of stage b with its predicted reward, best first."""
        return os.path.join(self.scores_dir, f"scores_{b}.csv")

    def encoder_log_dir(self, b):
        """TensorBoard summaries of the encoder's training after stage b."""
        return os.path.join(self.exp_log_dir, "encoder", f"b{b}")

    def stage_encoder_weights(self, b):
        """Encoder weights after its training on stages 1..b (kept for resume)."""
        return os.path.join(self.exp_log_dir, "encoder", f"after_b{b}.weights.h5")

    def weights(self, name):
        """The weights file of the child trained under `name` ('child', 'best', ...)."""
        return os.path.join(self.exp_weights_dir, f"{name}.weights.h5")

    @property
    def model(self):
        """The whole retrained model (`python train.py -ta True`), as Keras saves it."""
        return os.path.join(self.exp_weights_dir, "model.keras")

    @property
    def packed_model(self):
        """The retrained model exported bit-packed (`binarized.export`)."""
        return os.path.join(self.exp_weights_dir, "model.bnn.npz")

    @property
    def resume(self):
        """The state of a `-ta` training after its last finished epoch (`pnas.manager.TrainingCheckpoint`)."""
        return os.path.join(self.exp_weights_dir, "resume.npz")

    @property
    def retrain_settings(self):
        """The settings of the last retrain (`python train.py -ta True`)."""
        return os.path.join(self.exp_log_dir, "train_architecture_settings.json")

    def outputs(self):
        """The files and folders a search writes, for checking up front that they can be written."""
        return [self.architectures, self.records, self.final_records, self.exp_log_dir, self.exp_weights_dir,
                self.scores_dir]

    # What a search writes under logs/NAME/ and weights/NAME/ (with their temporary files, `pnas.files`).
    # Not there: the encoder weights weights/NAME/encoder.* that RESTORE_CONTROLLER adopts, and what
    # train.py -ta writes (best.weights.h5, model.keras, model.bnn.npz, logs/NAME/best/, its settings).
    _LOG_OUTPUTS = re.compile(
        r"(search_state\.json|settings\.json|retrain_args\.json|summary\.txt|rewards\.png|predicted_vs_actual\.png"
        r"|pareto\.png|encoder|child_\d+)(\.tmp\d+.*)?"
    )
    _WEIGHT_OUTPUTS = re.compile(r"child\d*\.weights\.h5(\.tmp\d+.*)?")

    def search_outputs(self):
        """Every file and folder the search of this name wrote, but the encoder that RESTORE_CONTROLLER adopts."""
        found = [p for p in (self.architectures, self.records, self.final_records, self.scores_dir)
                 if os.path.lexists(p)]
        for folder, pattern in ((self.exp_log_dir, self._LOG_OUTPUTS), (os.path.dirname(self.encoder_weights),
                                                                         self._WEIGHT_OUTPUTS)):
            if os.path.isdir(folder):
                found += [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if pattern.fullmatch(n)]
        for log in (self.architectures, self.records, self.final_records):  # temporary files of an interrupted write
            folder = os.path.dirname(log)
            if os.path.isdir(folder):
                found += [os.path.join(folder, n) for n in sorted(os.listdir(folder))
                          if re.fullmatch(re.escape(os.path.basename(log)) + r"\.tmp\d+.*", n)]
        return found

    # A temporary file of `mnist.files.atomic_path`: the target's name, ".tmp", the writer's pid, a suffix.
    _TEMPORARY = re.compile(r".+\.tmp\d+.*")

    def leftover_temporaries(self):
        """The temporary files that writes killed before their `os.replace` left in this experiment's folders.

        Under logs/NAME/, weights/NAME/ and scores/NAME/ (and their subfolders), and
        architectures/NAME.txt.tmp*, NAME.jsonl.tmp*; another experiment's files are not its.
        """
        found = []
        for top in (self.exp_log_dir, self.exp_weights_dir, self.scores_dir):
            for folder, _, names in os.walk(top):
                found += [os.path.join(folder, n) for n in sorted(names) if self._TEMPORARY.fullmatch(n)]
        for log in (self.architectures, self.records):
            folder = os.path.dirname(log)
            if os.path.isdir(folder):
                found += [os.path.join(folder, n) for n in sorted(os.listdir(folder))
                          if re.fullmatch(re.escape(os.path.basename(log)) + r"\.tmp\d+.*", n)]
        return found

    def remove_leftover_temporaries(self):
        """Removes `leftover_temporaries()` whose writer is no longer running; returns those removed.

        A temporary file names its writer's pid: one of a live process other
        than this one (e.g. `python train.py -ta` saving under weights/NAME/)
        is a write in progress, and stays.
        """
        removed = []
        for path in self.leftover_temporaries():
            pid = int(re.search(r"\.tmp(\d+)", os.path.basename(path)).group(1))
            if pid != os.getpid() and _running(pid):
                continue
            try:
                os.remove(path)
            except FileNotFoundError:
                continue
            removed.append(path)
        return removed

    def discard(self):
        """Removes `search_outputs()`: OVERWRITE starts from a clean slate. Returns what it removed."""
        removed = self.search_outputs()
        for path in removed:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        return removed
