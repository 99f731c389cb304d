"""The progressive search loop: decide (expand + rank), run (train), record.

The search state is one JSON file, rewritten atomically after every child.
The architectures log and the JSON-lines records are regenerated from it, so
a search killed at any point resumes with no child trained twice and no log
line lost or duplicated.
"""

import json
import logging
import multiprocessing.connection
import os
import shutil
import time
import traceback

import keras
import numpy as np

from pnas import report
from pnas.encoder import Encoder, StateSpace
from pnas.manager import NetworkManager
from pnas.model import model_fn
from pnas.worker import ChildFailed, ChildWorker

logger = logging.getLogger(__name__)

STATE_VERSION = 1


class SearchConfigError(ValueError):
    """A resumed search whose settings differ from the saved ones."""


class SearchAborted(RuntimeError):
    """The search cannot go on: too many children failed in a row, or none fits MAX_MUL_OPS."""


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

    def encoder_log_dir(self, b):
        """TensorBoard summaries of the encoder's training after stage b."""
        return os.path.join(self.exp_log_dir, "encoder", f"b{b}")

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
        "REGULARIZATION", "RNN_TRAINING_EPOCHS", "INPUT_LOOKBACK_DEPTH", "INPUT_LOOKFORWARD_DEPTH",
        "BINARY_H", "KERNEL_LR_MULTIPLIER", "LR_START", "LR_END", "LOSS",
        "MAX_MUL_OPS", "ENCODER_ENSEMBLE", "ENCODER_BATCHSIZE", "ENCODER_LR", "ENCODER_TARGETS",
    ]
    return {k: _jsonable(settings[k]) for k in keys}


# Search settings added after version 1 of the state file, with the values
# that earlier searches ran with.
CONFIG_ADDED = {
    "INPUT_LOOKBACK_DEPTH": 0,
    "ENCODER_BATCHSIZE": None,
    "ENCODER_LR": 2e-3,
    "ENCODER_TARGETS": "raw",
}


def manager_settings(settings):
    """The `NetworkManager` arguments that set how a child trains."""
    return {
        "initial_lr": settings["LR_START"],
        "final_lr": settings["LR_END"],
        "loss": settings["LOSS"],
        "binary_kwargs": {"H": settings["BINARY_H"], "kernel_lr_multiplier": settings["KERNEL_LR_MULTIPLIER"]},
    }


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
            "over_budget": [],  # candidates skipped for MAX_MUL_OPS
            "spearman": {},  # str(b) -> encoder's rank correlation on stage b
            "finished": False,
        }

    @classmethod
    def load_or_create(cls, path, config, overwrite=False):
        state = cls(path, config)
        if os.path.exists(path) and not overwrite:
            try:
                with open(path) as f:
                    saved = json.load(f)
                saved["config"], saved["children"]
            except (ValueError, KeyError, TypeError) as exc:  # truncated, partially copied or edited by hand
                raise SearchConfigError(
                    f"the search state {path} is unreadable ({type(exc).__name__}); restore it from a backup, "
                    "or start afresh with --OVERWRITE=True (or a new --EXPERIMENT_NAME)"
                ) from None
            # Settings added since the state was written take the values those searches ran with.
            for key, value in CONFIG_ADDED.items():
                saved["config"].setdefault(key, value)
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

    def drop_trailing_failures(self):
        """Forgets the failed children after the last success, so a rerun retries them.

        A search stops after MAX_CONSECUTIVE_FAILURES failures in a row; once
        the cause is fixed, rerunning trains those children again.
        """
        children = self.data["children"]
        dropped = 0
        while children and children[-1]["status"] == "failed":
            children.pop()
            dropped += 1
        return dropped

    def finished_children(self):
        return {tuple(r["child"]): r for r in self.data["children"]}

    def records(self, stage=None):
        return [r for r in self.data["children"] if stage is None or r["stage"] == stage]


# The original train.py's strings, character for character (its log was appended to as the search ran).
ARCHITECTURES_HEADER = "All the evaluated architectures will be logged in this file. \n \n \n"
STAGE_FINISHED = "\n \n --------------------EXPERIMENT FINISHED------------------- \n \n"


def format_architectures(state, state_space):
    """The architectures log, byte for byte in the original train.py's layout.

    A header; per stage, `---- B= {b - 1} Architectures ---- ` (the original
    counted stages from 0); per child, its number within the stage, its
    reward as `str(float)`, its architecture and representation string; and
    once every child of the stage is recorded, the original's "EXPERIMENT
    FINISHED" line. The stage's trained and failed children come first, in
    training order; then, once the stage is done, the candidates skipped for
    MAX_MUL_OPS, in the order the search met them. Failed and skipped
    children show reward 0.0. So the file only grows as the search runs, as
    the original's did, and regenerating it from the state gives the same
    bytes. Everything else (global index, status, test accuracy, footprint)
    is in the JSON lines.
    """
    text = ARCHITECTURES_HEADER
    for b in sorted(int(k) for k in state.data["beams"]):
        text += "---- B= " + str(b - 1) + " Architectures ---- \n"
        children = state.records(stage=b)
        complete = state.data["finished"] or len(children) >= len(state.beam(b))
        if complete:
            children = children + [r for r in state.data["over_budget"] if r["stage"] == b]
        for t, record in enumerate(children):
            child = tuple(int(v) for v in record["child"])
            reward = 0.0 if record["status"] != "ok" else float(record["reward"])
            text += (
                "\nSr. No: " + str(t + 1) + "\nReward: " + str(reward)
                + "\nArchitecture: " + str(state_space.parse(child))
                + "\nRepresentation String: " + '"' + state_space.representation_string(child) + '"' + "\n"
            )
        if complete:
            text += STAGE_FINISHED
    return text


def write_logs(state, state_space, settings, paths):
    """Regenerates the architectures log and the JSON-lines records from the state."""
    write_atomic(paths.architectures, format_architectures(state, state_space))
    records = state.records() + state.data["over_budget"]
    write_atomic(paths.records, "".join(json.dumps(r) + "\n" for r in records))


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
        train_fn: Trains a child in place of the worker processes:
            `train_fn(seed, **train_child_kwargs) -> result dict` (e.g. a
            lookup in a table of rewards, `bench/surrogate_eval.py`).
        plots: Redraw the plots after every stage.
    """

    def __init__(self, settings, dataset, paths, train_fn=None, plots=True):
        self.settings = settings
        self.paths = paths
        self.state_space = StateSpace(
            settings["B"], settings["operators"], settings["INPUT_LOOKBACK_DEPTH"],
            settings["INPUT_LOOKFORWARD_DEPTH"],
        )
        self.state = SearchState.load_or_create(
            paths.state, search_config(settings), overwrite=settings["OVERWRITE"]
        )
        manager_kwargs = dict(
            exp_name=settings["EXPERIMENT_NAME"],
            epochs=settings["MAX_EPOCHS"],
            batchsize=settings["BATCHSIZE"],
            weights_dir=paths.weights_dir,
            log_dir=paths.log_dir,
            verbose=settings["VERBOSE"],
            evaluate_test=settings["TEST_CHILDREN"],
            **manager_settings(settings),
        )
        self.train_fn = train_fn
        self.plots = plots
        if train_fn is not None:
            self.manager, self.workers = None, []
        elif settings["CHILDREN_PER_PROCESS"]:
            n = settings["PARALLEL_CHILDREN"]
            # Side by side, each worker gets its share of the cores.
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            threads = max(1, cores // n) if n > 1 else None
            self.manager = None
            self.workers = [
                ChildWorker(dataset, manager_kwargs, settings["CHILDREN_PER_PROCESS"], threads) for _ in range(n)
            ]
        else:
            self.manager, self.workers = NetworkManager(dataset, **manager_kwargs), []
        self.consecutive_failures = 0
        self.start_time = time.time()
        self._mul_ops = {}
        self._stage_clock = {}  # b -> when this run started stage b, its children finished since, seconds
        self._stage_sizes = None

    # ----------------------------------------------------------------- decide
    def _new_encoder(self, tensorboard_dir=None):
        s = self.settings
        return Encoder(
            self.state_space,
            K=s["K_"],
            controller_cells=s["CONTROLLER_CELLS"],
            regularization=s["REGULARIZATION"],
            epochs=s["RNN_TRAINING_EPOCHS"],
            weights_path=self.paths.encoder_weights,
            scores_dir=self.paths.scores_dir,
            ensemble=s["ENCODER_ENSEMBLE"],
            learning_rate=s["ENCODER_LR"],
            batch_size=s["ENCODER_BATCHSIZE"],
            targets=s["ENCODER_TARGETS"],
            tensorboard_dir=tensorboard_dir,
        )

    def _adopt_earlier_encoder(self):
        """With RESTORE_CONTROLLER, a fresh search starts from an earlier run's encoder.

        The weights are copied into this search's state folder, so a resumed
        run starts from the same weights even after they were overwritten.
        """
        if self.state.resumed or not self.settings["RESTORE_CONTROLLER"]:
            return
        self.state.data["encoder_restored"] = False
        encoder = self._new_encoder()
        if not encoder.has_weights(self.paths.encoder_weights):
            return
        try:
            encoder.load_weights(self.paths.encoder_weights)
        except Exception as exc:  # e.g. saved with other operators or CONTROLLER_CELLS
            print(
                f"Warning: RESTORE_CONTROLLER: {self.paths.encoder_weights} does not fit these settings "
                f"({type(exc).__name__}); the encoder starts untrained."
            )
            return
        os.makedirs(os.path.dirname(self.paths.stage_encoder_weights(0)), exist_ok=True)
        sources = encoder.weight_files(self.paths.encoder_weights)
        for source, target in zip(sources, encoder.weight_files(self.paths.stage_encoder_weights(0))):
            shutil.copyfile(source, target)
        self.state.data["encoder_restored"] = True
        print(f"Restored the encoder from {self.paths.encoder_weights}")

    def train_encoder(self, b):
        """Trains the encoder on stages 1..b, continuing from its stage b-1 weights."""
        keras.backend.clear_session(free_memory=True)
        keras.utils.set_random_seed(_seed(self.settings["SEED"], 1, b))
        encoder = self._new_encoder(tensorboard_dir=self.paths.encoder_log_dir(b))
        if b > 1 or self.state.data.get("encoder_restored"):
            encoder.load_weights(self.paths.stage_encoder_weights(b - 1))
        seen = [r for r in self.state.records() if r["stage"] <= b]
        encoder.children = [tuple(r["child"]) for r in seen if r["stage"] == b]
        steps_before = encoder.steps
        loss = encoder.fit([tuple(r["child"]) for r in seen], [r["reward"] for r in seen])
        encoder.save_weights(self.paths.stage_encoder_weights(b))
        # Cumulative: the steps behind the ranking of stage b + 1 (shown in the summary).
        self.state.data.setdefault("encoder_steps", {})[str(b)] = encoder.steps
        logger.info("Encoder trained on %d children, loss %.5f", len(seen), loss)
        print(
            f"Encoder trained on {len(seen)} children after b = {b}: {encoder.steps - steps_before} gradient steps "
            f"({encoder.steps} in all), loss {loss:.5f}"
        )
        return encoder

    def mul_ops(self, child):
        """The child's binary multiply-accumulates (builds it; cached)."""
        key = tuple(child)
        if key not in self._mul_ops:
            s = self.settings
            keras.backend.clear_session(free_memory=True)
            _, self._mul_ops[key] = model_fn(
                self.state_space.parse(child), None, s["NUM_CELLS"], s["NUM_CELL_FILTERS"], s["DENSE_LAYERS"],
                tuple(s["DROPOUT"]), manager_settings(s)["binary_kwargs"],
            )
        return self._mul_ops[key]

    def within_budget(self, b, child):
        """False (and recorded as over budget) when the child exceeds MAX_MUL_OPS."""
        budget = self.settings["MAX_MUL_OPS"]
        if budget is None:
            return True
        mul_ops = self.mul_ops(child)
        if mul_ops <= budget:
            return True
        self.state.data["over_budget"].append(
            {
                "stage": b,
                "child": list(child),
                "architecture": self.state_space.parse(child),
                "representation_string": self.state_space.representation_string(child),
                "status": "over_budget",
                "reward": None,
                "mul_ops": mul_ops,
            }
        )
        return False

    def decide(self, b):
        """The beam of stage b: all 1-block cells, else the encoder's top K_.

        Children above MAX_MUL_OPS are recorded as over budget and skipped;
        the next ones in rank order take their place.
        """
        beam = self.state.beam(b)
        if beam is not None:
            return beam
        self.state.data["over_budget"] = [r for r in self.state.data["over_budget"] if r["stage"] != b]
        if b == 1:
            beam, predicted = [c for c in self.state_space.initial_children() if self.within_budget(1, c)], None
        else:
            encoder = self.train_encoder(b - 1)
            beam = encoder.update_step(accept=lambda child: self.within_budget(b, child))
            predicted = encoder.last_scores
        if self.settings["MAX_MUL_OPS"] is not None:
            skipped = sum(r["stage"] == b for r in self.state.data["over_budget"])
            print(f"b = {b}: {skipped} candidates over MAX_MUL_OPS={self.settings['MAX_MUL_OPS']} skipped")
        self.state.set_beam(b, beam, predicted)
        self.state.save()
        write_logs(self.state, self.state_space, self.settings, self.paths)
        return beam

    # -------------------------------------------------------------------- run
    def child_job(self, child, sr_no, slot=0):
        """The seed and `train_child` arguments of child number `sr_no`, trained by worker `slot`."""
        s = self.settings
        kwargs = dict(
            actions=self.state_space.parse(child),
            num_cells=s["NUM_CELLS"],
            num_cell_filters=s["NUM_CELL_FILTERS"],
            dense_layers=s["DENSE_LAYERS"],
            dropout=tuple(s["DROPOUT"]),
            name="child" if slot == 0 else f"child{slot}",
            log_name=f"child_{sr_no:04d}",
        )
        return _seed(s["SEED"], 2, sr_no), kwargs

    def run_child(self, child, sr_no):
        """Trains one child, in the worker process unless CHILDREN_PER_PROCESS is 0."""
        seed, kwargs = self.child_job(child, sr_no)
        if self.train_fn is not None:
            return self.train_fn(seed, **kwargs)
        if self.workers:
            return self.workers[0].train(seed, **kwargs)
        keras.utils.set_random_seed(seed)
        return self.manager.train_child(model_fn, **kwargs)

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
            record.update({k: v for k, v in result.items() if k != "footprint_layers"})
        else:
            record.update({"reward": 0.0, "error": error, "traceback": trace})
        predicted = self.state.predicted(b)
        beam = self.state.beam(b)
        if predicted is not None:
            record["predicted_reward"] = predicted[beam.index(child)]
            steps = self.state.data.get("encoder_steps", {}).get(str(b - 1))
            if steps is not None:
                record["encoder_steps"] = steps
        self.state.data["children"].append(record)
        self.state.save()
        write_logs(self.state, self.state_space, self.settings, self.paths)
        return record

    def _no_candidate_within_budget(self, b):
        """Ends the search at stage b, whose candidates all exceed MAX_MUL_OPS; at b = 1 it cannot start."""
        budget = self.settings["MAX_MUL_OPS"]
        if b == 1:
            cheapest = min(r["mul_ops"] for r in self.state.data["over_budget"] if r["stage"] == 1)
            raise SearchAborted(
                f"no 1-block child is within MAX_MUL_OPS={budget} (the cheapest has {cheapest} multiply-accumulates); "
                "rerun with a larger MAX_MUL_OPS and --OVERWRITE=True"
            )
        print(f"---- B= {b}: no candidate within MAX_MUL_OPS={budget}; the search ends at b = {b - 1} ----")

    # ------------------------------------------------------------------- loop
    def _progress(self, b, i, n_beam, sr_no, total):
        s = self.settings
        now = time.time()
        elapsed = now - self.start_time
        self._stage_clock.setdefault(b, {"start": now, "done": 0, "seconds": 0.0})
        if self._stage_sizes is None:
            self._stage_sizes = self.state_space.stage_sizes(s["K_"])
        remaining = {later: self._stage_sizes[later - 1] for later in range(b + 1, s["B"] + 1)}
        remaining[b] = n_beam - len(self.state.records(stage=b))
        per_child = {stage: c["seconds"] / c["done"] for stage, c in self._stage_clock.items() if c["done"]}
        eta = estimate_eta(per_child, remaining)
        best = max((r["reward"] for r in self.state.records() if r["status"] == "ok"), default=None)
        return (
            f"[b {b}/{s['B']} | child {i}/{n_beam} | #{sr_no} of ~{total} | elapsed {_hms(elapsed)} | "
            f"ETA {_hms(eta) if eta is not None else '?'} | best {'-' if best is None else f'{best:.4f}'}]"
        )

    def _tick(self, b):
        """Counts a child of stage b as finished, for the ETA."""
        clock = self._stage_clock[b]
        clock["done"] += 1
        clock["seconds"] = time.time() - clock["start"]

    def end_stage(self, b):
        """Predictor quality of stage b, and the plots so far."""
        records = self.state.records(stage=b)
        rho = report.stage_spearman(records).get(b)
        if self.state.predicted(b) is not None:
            self.state.data["spearman"][str(b)] = rho
            for r in records:
                r["stage_spearman"] = rho
            n = sum(r.get("predicted_reward") is not None and r["status"] == "ok" for r in records)
            shown = "undefined" if rho is None else f"{rho:.3f}"
            steps = self.state.data.get("encoder_steps", {}).get(str(b - 1))
            after = "" if steps is None else f", ranked after {steps} gradient steps"
            print(f"Encoder Spearman rank correlation at b = {b}: {shown} (held out: {n} children "
                  f"predicted before they trained{after})")
        self.state.save()
        write_logs(self.state, self.state_space, self.settings, self.paths)
        if not self.plots:
            return
        try:
            report.plot_all(self.state.records() + self.state.data["over_budget"], self.paths.exp_log_dir)
        except Exception as exc:  # plots are a convenience; never stop a search for them
            logger.warning("Could not draw the plots: %s", exc)

    def run(self):
        """Runs (or resumes) the search; returns the finished child records."""
        try:
            return self._run()
        finally:
            for worker in self.workers:
                worker.close()

    def _finish(self, b, child, sr_no, result=None, exc=None):
        """Records a trained child, or a failed one (`exc`); aborts after too many failures in a row."""
        if exc is not None:
            logger.debug("Child %s failed", child, exc_info=exc)
            if isinstance(exc, ChildFailed):
                error, trace = exc.error, exc.trace
            else:
                error, trace = f"{type(exc).__name__}: {exc}", "".join(traceback.format_exception(exc))
            record = self.record(b, child, sr_no, error=error, trace=trace)
            self.consecutive_failures += 1
            print(f"  FAILED: {record['error']}")
            if self.consecutive_failures >= self.settings["MAX_CONSECUTIVE_FAILURES"]:
                raise SearchAborted(
                    f"{self.consecutive_failures} children failed in a row (last: {record['error']}); "
                    "fix the cause and rerun the same command to retry them and resume"
                ) from exc
            return
        self.consecutive_failures = 0
        record = self.record(b, child, sr_no, result=result)
        print(
            f"  {'' if len(self.workers) < 2 else f'#{sr_no} '}reward {record['reward']:.4f}, "
            f"test {report.accuracy(record['test_accuracy'])}, "
            f"mul_ops {record['mul_ops']}, {record['footprint']['packed_kib']:.1f} KiB packed, "
            f"{record['seconds']:.1f}s"
        )

    def _train_one_by_one(self, b, beam, done, total):
        for i, child in enumerate(beam, start=1):
            if child in done:
                continue
            sr_no = len(self.state.records()) + 1
            print(f"{self._progress(b, i, len(beam), sr_no, total)} {self.state_space.parse(child)}")
            result = error = None
            try:
                result = self.run_child(child, sr_no)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # a failing child must not end the search
                error = exc
            self._tick(b)
            self._finish(b, child, sr_no, result, error)

    def _train_side_by_side(self, b, beam, done, total):
        """Trains PARALLEL_CHILDREN children at a time; records them in beam order.

        Child number `sr_no` gets the same seed as in a one-by-one search, so
        the results differ from one only by the threads' arithmetic.
        """
        todo = [(i, child) for i, child in enumerate(beam, start=1) if child not in done]
        next_sr = next_record = len(self.state.records()) + 1
        running, finished = {}, {}  # worker -> (child, sr_no); sr_no -> (child, result, exc)
        while todo or running:
            for slot, worker in enumerate(self.workers):
                if todo and worker not in running:
                    i, child = todo.pop(0)
                    print(f"{self._progress(b, i, len(beam), next_sr, total)} "
                          f"{self.state_space.parse(child)}")
                    seed, kwargs = self.child_job(child, next_sr, slot)
                    worker.submit(seed, **kwargs)
                    running[worker] = (child, next_sr)
                    next_sr += 1
            ready = multiprocessing.connection.wait([w.conn for w in running])
            for worker in [w for w in running if w.conn in ready]:
                child, sr_no = running.pop(worker)
                try:
                    finished[sr_no] = (child, worker.result(), None)
                except ChildFailed as exc:
                    finished[sr_no] = (child, None, exc)
                self._tick(b)
            while next_record in finished:  # in order, so that a resume finds a prefix of the beam
                child, result, exc = finished.pop(next_record)
                self._finish(b, child, next_record, result, exc)
                next_record += 1

    def _run(self):
        s = self.settings
        if self.state.data["finished"]:
            print("This search has already finished; use --OVERWRITE=True or a new EXPERIMENT_NAME to run it again.")
            return self.state.records()
        total = sum(self.state_space.stage_sizes(s["K_"]))
        self._adopt_earlier_encoder()
        retried = self.state.drop_trailing_failures()
        if retried:
            print(f"Retrying the {retried} children that failed last.")
            self.state.save()
            write_logs(self.state, self.state_space, s, self.paths)
        done = self.state.finished_children()
        if done:
            print(f"Resuming: {len(done)} children already trained.")
        last_stage = s["B"]
        for b in range(1, s["B"] + 1):
            beam = self.decide(b)
            if not beam:
                # Nothing to train, so nothing for the next stage to expand.
                self._no_candidate_within_budget(b)
                last_stage = b - 1
                break
            print(f"---- B= {b}: {len(beam)} children ----")
            if len(self.workers) > 1:
                self._train_side_by_side(b, beam, done, total)
            else:
                self._train_one_by_one(b, beam, done, total)
            done = self.state.finished_children()
            self.end_stage(b)
        # Final encoder training, so the saved encoder has seen every stage.
        # (A search that ended early at b trained it on stages < b in decide(b).)
        if not self.state.data["finished"]:
            if last_stage == s["B"]:
                self.train_encoder(s["B"])
            self.state.data["finished"] = True
            self.state.save()
            write_logs(self.state, self.state_space, s, self.paths)
        return self.state.records()


def estimate_eta(per_child, remaining):
    """Seconds until the search ends, stage by stage.

    A child's cost grows with its blocks (7.7, 17.0 and 30.6 s per child at
    b = 1, 2 and 3 in a measured CPU search), so an average over all children
    so far, most of them small, is far too low in the last stage.

    Args:
        per_child: {b: wall-clock seconds per child of stage b}, for the stages
            measured so far (children side by side count at their rate).
        remaining: {b: children of stage b still to train}.

    Returns:
        The sum over stages of the children left times the seconds per child,
        or None before anything is measured. A stage not measured yet takes
        the nearest measured stage below it, scaled by the ratio of blocks.
    """
    if not per_child:
        return None
    eta = 0.0
    for b, n in remaining.items():
        if b in per_child:
            eta += n * per_child[b]
        else:
            known = max((m for m in per_child if m < b), default=min(per_child))
            eta += n * per_child[known] * b / known
    return eta


def _hms(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
