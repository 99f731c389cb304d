"""The progressive search loop: decide (expand + rank), run (train), record.

The search state is one JSON file, rewritten atomically after every child.
The architectures log and the JSON-lines records are regenerated from it, so
a search killed at any point resumes with no child trained twice and no log
line lost or duplicated.
"""

import json
import logging
import os
import shutil
import time
import traceback

import keras
import numpy as np

from pnas.encoder import Encoder, StateSpace
from pnas.manager import NetworkManager
from pnas.model import model_fn

logger = logging.getLogger(__name__)

STATE_VERSION = 1


class SearchConfigError(ValueError):
    """A resumed search whose settings differ from the saved ones."""


class SearchAborted(RuntimeError):
    """Too many children failed in a row."""


def write_atomic(path, text):
    """Writes `text` to `path` through a temporary file and `os.replace`."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class SearchPaths:
    """Where a search writes its outputs."""

    def __init__(self, exp_name, root="."):
        self.exp_name = exp_name
        self.architectures = os.path.join(root, "architectures", f"{exp_name}.txt")
        self.records = os.path.join(root, "architectures", f"{exp_name}.jsonl")
        self.log_dir = os.path.join(root, "logs")
        self.exp_log_dir = os.path.join(root, "logs", exp_name)
        self.state = os.path.join(self.exp_log_dir, "search_state.json")
        self.settings = os.path.join(self.exp_log_dir, "settings.json")
        self.weights_dir = os.path.join(root, "weights")
        self.encoder_weights = os.path.join(root, "weights", exp_name, "encoder.weights.h5")
        self.scores_dir = os.path.join(root, "scores", exp_name)

    def stage_encoder_weights(self, b):
        """Encoder weights after the `train_step` of stage b (kept for resume)."""
        return os.path.join(self.exp_log_dir, "encoder", f"after_b{b}.weights.h5")

    def outputs(self):
        return [self.architectures, self.records, self.exp_log_dir, os.path.dirname(self.encoder_weights), self.scores_dir]


def search_config(settings):
    """The settings that define a search: resuming with others is refused."""
    keys = [
        "B", "K_", "operators", "NUM_CELLS", "NUM_CELL_FILTERS", "DENSE_LAYERS", "DROPOUT",
        "MAX_EPOCHS", "BATCHSIZE", "USE_EXPANSION", "TRAIN_SIZE", "SEED", "CONTROLLER_CELLS",
        "REGULARIZATION", "RNN_TRAINING_EPOCHS", "INPUT_LOOKFORWARD_DEPTH",
    ]
    return {k: _jsonable(settings[k]) for k in keys}


def _jsonable(value):
    return json.loads(json.dumps(value))


class SearchState:
    """Everything needed to resume: config, beams, predictions, finished children."""

    def __init__(self, path, config):
        self.path = path
        self.data = {
            "version": STATE_VERSION,
            "config": config,
            "beams": {},  # str(b) -> list of children (lists of ints)
            "predicted": {},  # str(b) -> predicted rewards of the beam
            "children": [],  # finished child records, in training order
            "finished": False,
        }

    @classmethod
    def load_or_create(cls, path, config, overwrite=False):
        state = cls(path, config)
        if os.path.exists(path) and not overwrite:
            with open(path) as f:
                saved = json.load(f)
            if saved.get("config") != config:
                diff = sorted(
                    k for k in set(config) | set(saved.get("config", {}))
                    if config.get(k) != saved.get("config", {}).get(k)
                )
                raise SearchConfigError(
                    f"a search with other settings ({', '.join(diff)}) already exists under this "
                    "EXPERIMENT_NAME; use a new --EXPERIMENT_NAME or --OVERWRITE=True to start afresh"
                )
            state.data = saved
        return state

    @property
    def resumed(self):
        return bool(self.data["children"]) or bool(self.data["beams"])

    def save(self):
        write_atomic(self.path, json.dumps(self.data))

    def beam(self, b):
        beam = self.data["beams"].get(str(b))
        return None if beam is None else [tuple(c) for c in beam]

    def set_beam(self, b, beam, predicted=None):
        self.data["beams"][str(b)] = [list(c) for c in beam]
        if predicted is not None:
            self.data["predicted"][str(b)] = [float(p) for p in predicted]

    def predicted(self, b):
        return self.data["predicted"].get(str(b))

    def finished_children(self):
        return {tuple(r["child"]): r for r in self.data["children"]}

    def records(self, stage=None):
        return [r for r in self.data["children"] if stage is None or r["stage"] == stage]


def format_architectures(state, state_space, settings):
    """The architectures log, in the original research code's format."""
    lines = [
        f"Architecture search {settings['EXPERIMENT_NAME']}: B={settings['B']}, K_={settings['K_']}, "
        f"operators={settings['operators']}, MAX_EPOCHS={settings['MAX_EPOCHS']}"
    ]
    stage = None
    for record in state.records():
        if record["stage"] != stage:
            stage = record["stage"]
            lines.append(f"---- B= {stage} Architectures ----")
        lines.append(f"Sr. No: {record['sr_no']}")
        lines.append(f"Reward: {record['reward']:.4f}")
        lines.append(f"Architecture: {record['architecture']}")
        lines.append(f'Representation String: "{record["representation_string"]}"')
    if state.data["finished"]:
        lines.append(f"---- Search finished: {len(state.records())} architectures trained ----")
    return "\n".join(lines) + "\n"


def write_logs(state, state_space, settings, paths):
    """Regenerates the architectures log and the JSON-lines records from the state."""
    write_atomic(paths.architectures, format_architectures(state, state_space, settings))
    write_atomic(paths.records, "".join(json.dumps(r) + "\n" for r in state.records()))


def _seed(base, *parts):
    """A deterministic seed per step, so that resumed runs draw the same numbers."""
    seed = int(base)
    for part in parts:
        seed = (seed * 1000003 + int(part)) % (2**31 - 1)
    return seed


class Search:
    """Progressive NAS over binary cells.

    Args:
        settings: dict of the train.py constants (after overrides).
        dataset: `[x_train, y_train, x_val, y_val, x_test, y_test]`.
        paths: `SearchPaths`.
    """

    def __init__(self, settings, dataset, paths):
        self.settings = settings
        self.paths = paths
        self.state_space = StateSpace(
            settings["B"], settings["operators"], 0, settings["INPUT_LOOKFORWARD_DEPTH"]
        )
        self.state = SearchState.load_or_create(
            paths.state, search_config(settings), overwrite=settings["OVERWRITE"]
        )
        self.manager = NetworkManager(
            dataset,
            exp_name=settings["EXPERIMENT_NAME"],
            epochs=settings["MAX_EPOCHS"],
            batchsize=settings["BATCHSIZE"],
            weights_dir=paths.weights_dir,
            log_dir=paths.log_dir,
            verbose=settings["VERBOSE"],
        )
        self.consecutive_failures = 0
        self.start_time = time.time()

    # ----------------------------------------------------------------- decide
    def _new_encoder(self):
        s = self.settings
        return Encoder(
            self.state_space,
            K=s["K_"],
            controller_cells=s["CONTROLLER_CELLS"],
            regularization=s["REGULARIZATION"],
            epochs=s["RNN_TRAINING_EPOCHS"],
            weights_path=self.paths.encoder_weights,
            scores_dir=self.paths.scores_dir,
        )

    def _adopt_earlier_encoder(self):
        """With RESTORE_CONTROLLER, a fresh search starts from an earlier run's encoder.

        The weights are copied into this search's state folder, so a resumed
        run starts from the same weights even after they were overwritten.
        """
        if self.state.resumed or not self.settings["RESTORE_CONTROLLER"]:
            return
        self.state.data["encoder_restored"] = False
        if not os.path.exists(self.paths.encoder_weights):
            return
        try:
            self._new_encoder().load_weights(self.paths.encoder_weights)
        except Exception as exc:  # e.g. saved with other operators or CONTROLLER_CELLS
            print(
                f"Warning: RESTORE_CONTROLLER: {self.paths.encoder_weights} does not fit these settings "
                f"({type(exc).__name__}); the encoder starts untrained."
            )
            return
        os.makedirs(os.path.dirname(self.paths.stage_encoder_weights(0)), exist_ok=True)
        shutil.copyfile(self.paths.encoder_weights, self.paths.stage_encoder_weights(0))
        self.state.data["encoder_restored"] = True
        print(f"Restored the encoder from {self.paths.encoder_weights}")

    def train_encoder(self, b):
        """Trains the encoder on stages 1..b, continuing from its stage b-1 weights."""
        keras.backend.clear_session(free_memory=True)
        keras.utils.set_random_seed(_seed(self.settings["SEED"], 1, b))
        encoder = self._new_encoder()
        if b > 1 or self.state.data.get("encoder_restored"):
            encoder.load_weights(self.paths.stage_encoder_weights(b - 1))
        previous = [r for r in self.state.records() if r["stage"] < b]
        encoder.history = [(tuple(r["child"]), r["reward"]) for r in previous]
        current = self.state.records(stage=b)
        encoder.children = [tuple(r["child"]) for r in current]
        loss = encoder.train_step([r["reward"] for r in current])
        encoder.save_weights(self.paths.stage_encoder_weights(b))
        logger.info("Encoder trained on %d children, loss %.5f", len(encoder.history), loss)
        print(f"Encoder trained on {len(encoder.history)} children after b = {b}: loss {loss:.5f}")
        return encoder

    def decide(self, b):
        """The beam of stage b: all 1-block cells, else the encoder's top K_."""
        beam = self.state.beam(b)
        if beam is not None:
            return beam
        if b == 1:
            beam, predicted = self.state_space.initial_children(), None
        else:
            encoder = self.train_encoder(b - 1)
            beam = encoder.update_step()
            predicted = encoder.last_scores
        self.state.set_beam(b, beam, predicted)
        self.state.save()
        return beam

    # -------------------------------------------------------------------- run
    def run_child(self, child, sr_no):
        s = self.settings
        keras.utils.set_random_seed(_seed(s["SEED"], 2, sr_no))
        return self.manager.train_child(
            model_fn,
            self.state_space.parse(child),
            s["NUM_CELLS"],
            s["NUM_CELL_FILTERS"],
            s["DENSE_LAYERS"],
            dropout=tuple(s["DROPOUT"]),
            name="child",
        )

    # ----------------------------------------------------------------- record
    def record(self, b, child, sr_no, result=None, error=None, trace=None):
        record = {
            "sr_no": sr_no,
            "stage": b,
            "child": list(child),
            "architecture": self.state_space.parse(child),
            "representation_string": self.state_space.representation_string(child),
            "status": "ok" if error is None else "failed",
        }
        if error is None:
            record.update(result)
        else:
            record.update({"reward": 0.0, "error": error, "traceback": trace})
        predicted = self.state.predicted(b)
        beam = self.state.beam(b)
        if predicted is not None:
            record["predicted_reward"] = predicted[beam.index(child)]
        self.state.data["children"].append(record)
        self.state.save()
        write_logs(self.state, self.state_space, self.settings, self.paths)
        return record

    # ------------------------------------------------------------------- loop
    def run(self):
        """Runs (or resumes) the search; returns the finished child records."""
        s = self.settings
        if self.state.data["finished"]:
            print("This search has already finished; use --OVERWRITE=True or a new EXPERIMENT_NAME to run it again.")
            return self.state.records()
        total = self.state_space.stage_sizes(s["K_"])
        self._adopt_earlier_encoder()
        done = self.state.finished_children()
        if done:
            print(f"Resuming: {len(done)} children already trained.")
        for b in range(1, s["B"] + 1):
            beam = self.decide(b)
            print(f"---- B= {b}: {len(beam)} children ----")
            for i, child in enumerate(beam, start=1):
                if child in done:
                    continue
                sr_no = len(self.state.records()) + 1
                print(
                    f"[b {b}/{s['B']}, child {i}/{len(beam)}, #{sr_no} of {sum(total)}] "
                    f"{self.state_space.parse(child)}"
                )
                try:
                    result = self.run_child(child, sr_no)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # a failing child must not end the search
                    logger.debug("Child %s failed", child, exc_info=True)
                    record = self.record(
                        b, child, sr_no, error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc()
                    )
                    self.consecutive_failures += 1
                    print(f"  FAILED: {record['error']}")
                    if self.consecutive_failures >= s["MAX_CONSECUTIVE_FAILURES"]:
                        raise SearchAborted(
                            f"{self.consecutive_failures} children failed in a row (last: {record['error']}); "
                            "fix the cause and rerun the same command to resume"
                        ) from exc
                    continue
                self.consecutive_failures = 0
                record = self.record(b, child, sr_no, result=result)
                best = max(r["reward"] for r in self.state.records())
                print(
                    f"  reward {record['reward']:.4f}, test {record['test_accuracy']:.4f}, "
                    f"mul_ops {record['mul_ops']}, {record['seconds']:.1f}s; best so far {best:.4f}"
                )
            done = self.state.finished_children()
        # Final encoder training, so the saved encoder has seen every stage.
        if not self.state.data["finished"]:
            self.train_encoder(s["B"])
            self.state.data["finished"] = True
            self.state.save()
            write_logs(self.state, self.state_space, s, self.paths)
        return self.state.records()
