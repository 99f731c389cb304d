"""Record: the child records, the search state, and the logs made from them.

The search state is one JSON file, rewritten atomically after every child, as
each child finishes (side by side, not in beam order). The architectures log
and the JSON-lines records are regenerated from it, in beam order, so a search
killed at any point resumes with no finished child trained again and no log
line lost or duplicated. The JSON lines are the journal: a state file that
is unreadable is rebuilt from them (`SearchState.load_or_create`).
"""

import csv
import dataclasses
import io
import json
import logging
import os
from typing import Optional

from mnist.files import write_atomic
from pnas.config import LSTM_ONLY

logger = logging.getLogger(__name__)

STATE_VERSION = 1


class Status:
    """A child record's `status`."""

    OK = "ok"  # trained; `reward` is its best validation accuracy
    FAILED = "failed"  # raised, diverged, or its worker died; reward 0.0, `error` says why
    OVER_BUDGET = "over_budget"  # skipped for MAX_MUL_OPS or MAX_OPS; never trained, reward None


class SearchConfigError(ValueError):
    """A saved search that cannot be resumed with these settings; the message says what to do."""


# What a rerun of a search that ran to its end prints (`Search.run`, and train.py before it loads anything).
ALREADY_FINISHED = "This search has already finished; use --OVERWRITE=True or a new EXPERIMENT_NAME to run it again."


# Search settings added after version 1 of the state file, with the values
# that earlier searches ran with.
CONFIG_ADDED = {
    "INPUT_LOOKBACK_DEPTH": 0,
    "ENCODER_BATCHSIZE": None,
    "ENCODER_LR": 2e-3,
    "ENCODER_TARGETS": "raw",
    "SURROGATE": "lstm",
    "ENCODER_AUGMENT": False,
    "ENCODER_READOUT": "last",
    "MAX_OPS": None,
}


def _override(name, value):
    """`value` as a train.py override a shell passes unchanged (JSON's lists stand for tuples)."""
    from pnas.settings import format_override

    return format_override(name, value)


def _search_identity(config):
    """The identity settings that make a search what it is: the LSTM's own are left out when the ridge ranks."""
    if config.get("SURROGATE") == "ridge":
        return {name: value for name, value in config.items() if name not in LSTM_ONLY}
    return config


def _shown(settings, name):
    return repr(settings[name]) if name in settings else "(none)"


def _config_mismatch(saved, config):
    """The error line for resuming a search saved with the settings `saved` under `config`."""
    # A saved ridge search resumes whatever the LSTM's settings hold: only the others need repeating.
    ignored = LSTM_ONLY if saved.get("SURROGATE") == "ridge" else ()
    diff = sorted(k for k in set(config) | set(saved) if config.get(k) != saved.get(k) and k not in ignored)
    shown = ", ".join(f"{k}={_shown(saved, k)} (now {_shown(config, k)})" for k in diff)
    fix = "start afresh with a new --EXPERIMENT_NAME or --OVERWRITE=True"
    if all(k in saved and k in config for k in diff):
        fix = f"resume it with {' '.join(_override(k, saved[k]) for k in diff)}, or {fix}"
    return f"a search with other settings already exists under this EXPERIMENT_NAME: {shown}; {fix}"


@dataclasses.dataclass(frozen=True)
class ChildRecord:
    """One child as the search recorded it: a line of the JSONL records.

    `result` holds the trained child's numbers (`NetworkManager.train_child`,
    without the per-layer footprint); `error` and `trace` a failed one's cause.
    """

    stage: int
    child: tuple
    architecture: list
    representation_string: str
    status: str
    sr_no: Optional[int] = None
    reward: Optional[float] = None
    result: Optional[dict] = None
    error: Optional[str] = None
    trace: Optional[str] = None
    mul_ops: Optional[int] = None
    predicted_reward: Optional[float] = None
    encoder_steps: Optional[int] = None

    def to_json(self):
        """The JSON object, with the keys in the order the records have always had."""
        record = {} if self.sr_no is None else {"sr_no": self.sr_no}
        record.update(
            stage=self.stage, child=list(self.child), architecture=self.architecture,
            representation_string=self.representation_string, status=self.status,
        )
        if self.status == Status.OK:
            record.update({k: v for k, v in self.result.items() if k != "footprint_layers"})
        elif self.status == Status.FAILED:
            record.update(reward=0.0, error=self.error, traceback=self.trace)
        else:
            record.update(reward=None, mul_ops=self.mul_ops, **(self.result or {}))  # its costs: a different kind
        if self.predicted_reward is not None:
            record["predicted_reward"] = self.predicted_reward
            if self.encoder_steps is not None:
                record["encoder_steps"] = self.encoder_steps
        return record


@dataclasses.dataclass
class StageRecord:
    """What the search knows of stage b as a whole (a view of the state file's per-stage objects).

    Attributes:
        beam: The children the search trains at this stage, in training order (None: not decided yet).
        predicted: The surrogate's predicted reward of each (None at b = 1, where nothing ranks them).
        spearman: The held-out rank correlation of those predictions with the rewards, once the
            stage is done (None: not done, or undefined).
        encoder_steps: The encoder's gradient steps in all, once it trained on stages 1..b
            (None: not trained yet, or the ridge surrogate, which takes none).
    """

    beam: Optional[list] = None
    predicted: Optional[list] = None
    spearman: Optional[float] = None
    encoder_steps: Optional[int] = None


@dataclasses.dataclass
class StateFile:
    """The search state file (`logs/NAME/search_state.json`): every key it holds, with its type.

    The stage facts are objects keyed by `str(b)` (`beams`, `predicted`, `spearman`,
    `encoder_steps`), as the files of version 1 have always held them; `SearchState.stage(b)`
    reads them as one `StageRecord`.

    Attributes:
        config: The settings that define the search (`SearchConfig.identity_dict()`).
        beams: Each stage's beam, children as lists of ints.
        predicted: Each ranked stage's predicted rewards of its beam.
        children: The finished child records (`ChildRecord.to_json()`): a stage's children in the
            order they finished, until the stage is complete, then in beam order (by `sr_no`, which
            the search gives in beam order). `SearchState.records()` reads them in beam order.
        over_budget: The candidates skipped for MAX_MUL_OPS (`ChildRecord.to_json()`).
        spearman: Each ranked stage's held-out rank correlation (None: undefined).
        finished: Whether the search ran to its end.
        encoder_restored: Whether the encoder of stage 1 started from an earlier search's
            weights (RESTORE_CONTROLLER); None where the search did not ask.
        encoder_steps: The encoder's gradient steps in all after its training on stages 1..b.
        worker_time: Per stage, how its children kept the workers busy, summed over the runs that
            trained them: `{"slots": workers side by side, "wall_seconds": from the first child's
            start to the last one's end, "busy_seconds": the children's own training seconds}`.
        final: The final stage, once it has begun (absent from the file before, and in a search
            without one): `{"settings": FINAL_TOP, FINAL_EPOCHS and FINAL_TRAIN_SIZE, "beam": the
            cells it retrains, best first, "children": their records as they finish}`.
        version: The format's version.
    """

    config: dict
    beams: dict = dataclasses.field(default_factory=dict)
    predicted: dict = dataclasses.field(default_factory=dict)
    children: list = dataclasses.field(default_factory=list)
    over_budget: list = dataclasses.field(default_factory=list)
    spearman: dict = dataclasses.field(default_factory=dict)
    finished: bool = False
    encoder_restored: Optional[bool] = None
    encoder_steps: dict = dataclasses.field(default_factory=dict)
    worker_time: dict = dataclasses.field(default_factory=dict)
    final: Optional[dict] = None
    version: int = STATE_VERSION

    @classmethod
    def from_json(cls, data):
        """The state of a file's JSON object.

        Raises:
            ValueError: a key that is not a field, or a value of another type than its field's.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"unknown keys {unknown}")
        for name, value in data.items():
            kind = _JSON_TYPES[fields[name].type]
            if not isinstance(value, kind):
                raise ValueError(f"{name} is a {type(value).__name__}")
        return cls(**data)

    def to_json(self):
        """The file's JSON object (the children and stage objects themselves, not copies)."""
        data = {"version": self.version}
        data.update((f.name, getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "version")
        if self.final is None:
            del data["final"]  # a search without a final stage writes the file it always wrote
        return data


# The JSON types each annotation of StateFile stands for.
_JSON_TYPES = {
    dict: dict, list: list, bool: bool, int: int, Optional[bool]: (bool, type(None)), Optional[dict]: (dict, type(None)),
}


class SearchState:
    """Everything needed to resume a search (a `StateFile`), read and written through its methods."""

    def __init__(self, path, config):
        self.path = path
        self.data = StateFile(config)

    @classmethod
    def load_or_create(cls, path, config, overwrite=False, records_path=None):
        """The saved state at `path` (if any, and not `overwrite`), else a new one.

        Args:
            path: The state file.
            config: The settings that define the search (`SearchConfig.identity_dict()`).
            overwrite: Start afresh whatever is saved.
            records_path: The JSON-lines records: when the state file is
                unreadable (truncated, partly copied, edited by hand), the
                finished children are taken from them instead.

        Raises:
            SearchConfigError: the saved search has other settings, or its
                state is unreadable and cannot be rebuilt.
        """
        state = cls(path, config)
        if not os.path.exists(path) or overwrite:
            return state
        try:
            with open(path) as f:
                saved = StateFile.from_json(json.load(f))
        except (ValueError, KeyError, TypeError) as exc:
            rebuilt = state._rebuild(records_path)
            if rebuilt is None:
                raise SearchConfigError(
                    f"the search state {path} is unreadable ({type(exc).__name__}); restore it from a backup, "
                    "or start afresh with --OVERWRITE=True (or a new --EXPERIMENT_NAME)"
                ) from None
            logger.warning(
                "the search state %s is unreadable (%s); rebuilt it from the %d records in %s",
                path, type(exc).__name__, len(rebuilt.data.children), records_path,
            )
            return rebuilt
        # Settings added since the state was written take the values those searches ran with.
        for key, value in CONFIG_ADDED.items():
            saved.config.setdefault(key, value)
        if _search_identity(saved.config) != _search_identity(config):
            raise SearchConfigError(_config_mismatch(saved.config, config))
        state.data = saved
        return state

    def _rebuild(self, records_path):
        """This state with the finished children of the JSON-lines records; None when they cannot be read.

        The beams are decided again: stage 1's is fixed, and a later stage's
        is ranked by the encoder, retrained on the same records with the same
        seed. Children already recorded are not trained again.
        """
        if not records_path or not os.path.exists(records_path):
            return None
        try:
            with open(records_path) as f:
                records = [json.loads(line) for line in f if line.strip()]
        except (OSError, ValueError):
            return None
        children = [r for r in records if isinstance(r, dict) and r.get("status") in (Status.OK, Status.FAILED)]
        if not children or any("sr_no" not in r or "stage" not in r or "child" not in r for r in children):
            return None
        self.data.children = children
        return self

    @property
    def resumed(self):
        return bool(self.data.children) or bool(self.data.beams)

    def save(self):
        write_atomic(self.path, json.dumps(self.data.to_json()))

    def stages(self):
        """The stages with a beam, in order."""
        return sorted(int(b) for b in self.data.beams)

    def stage(self, b):
        """The `StageRecord` of stage b."""
        key = str(b)
        return StageRecord(beam=self.beam(b), predicted=self.data.predicted.get(key),
                           spearman=self.data.spearman.get(key), encoder_steps=self.data.encoder_steps.get(key))

    def beam(self, b):
        beam = self.data.beams.get(str(b))
        return None if beam is None else [tuple(c) for c in beam]

    def set_beam(self, b, beam, predicted=None):
        self.data.beams[str(b)] = [list(c) for c in beam]
        if predicted is not None:
            self.data.predicted[str(b)] = [float(p) for p in predicted]

    def predicted(self, b):
        return self.data.predicted.get(str(b))

    def set_spearman(self, b, rho):
        """Records the held-out rank correlation of stage b's predictions (None: undefined)."""
        self.data.spearman[str(b)] = rho

    def set_encoder_steps(self, b, steps):
        """Records the encoder's gradient steps in all after its training on stages 1..b."""
        self.data.encoder_steps[str(b)] = steps

    def add_worker_time(self, b, slots, wall_seconds, busy_seconds):
        """Adds a run's training of stage b to its `worker_time` (see `StateFile`)."""
        time = self.data.worker_time.setdefault(str(b), {"slots": slots, "wall_seconds": 0.0, "busy_seconds": 0.0})
        time["slots"] = max(time["slots"], slots)
        time["wall_seconds"] = round(time["wall_seconds"] + wall_seconds, 2)
        time["busy_seconds"] = round(time["busy_seconds"] + busy_seconds, 2)

    def add(self, record):
        """Appends a finished child's `ChildRecord`; returns its JSON object.

        The children of a stage are kept in the order they finished (what
        `drop_trailing_failures` reads) until the stage is complete; then in beam
        order, so that a finished search's state is that of a straight run.
        """
        data = record.to_json()
        self.data.children.append(data)
        beam = self.beam(data["stage"])
        if beam is not None and len(self.records(stage=data["stage"])) >= len(beam):
            self.data.children.sort(key=_beam_order)
        return data

    def add_over_budget(self, record):
        self.data.over_budget.append(record.to_json())

    def over_budget(self, stage=None):
        """The candidates skipped for MAX_MUL_OPS (of `stage`), in the order the search met them."""
        return [r for r in self.data.over_budget if stage is None or r["stage"] == stage]

    def drop_over_budget(self, stage):
        """Forgets the candidates of `stage` skipped for MAX_MUL_OPS, before that stage is decided again."""
        self.data.over_budget = [r for r in self.data.over_budget if r["stage"] != stage]

    def drop_trailing_failures(self):
        """Forgets the failed children recorded after the last success, so a rerun retries them.

        A search stops after MAX_CONSECUTIVE_FAILURES failures in a row (in the
        order the children finished, which is the state's order within a stage
        in training); once the cause is fixed, rerunning trains those children again.
        """
        children = self.data.children
        dropped = 0
        while children and children[-1]["status"] == Status.FAILED:
            children.pop()
            dropped += 1
        return dropped

    def finished_children(self):
        """{child: its record} of every child recorded, trained or failed."""
        return {tuple(r["child"]): r for r in self.data.children}

    # The final stage (`pnas.search.Search.run_final`).
    def final_settings(self):
        """FINAL_TOP, FINAL_EPOCHS and FINAL_TRAIN_SIZE of a final stage that has begun; None before."""
        return None if self.data.final is None else self.data.final["settings"]

    def start_final(self, settings, beam):
        """Records the final stage's settings and its cells (children as lists of ints, best first)."""
        self.data.final = {"settings": dict(settings), "beam": [list(c) for c in beam], "children": []}

    def final_beam(self):
        return [tuple(c) for c in self.data.final["beam"]]

    def add_final(self, record, **fields):
        """Appends a final-stage training's `ChildRecord`, with `fields` added; returns its JSON object."""
        data = dict(record.to_json(), **fields)
        self.data.final["children"].append(data)
        return data

    def final_records(self):
        """The final stage's records in beam order (best proxy reward first); [] without a final stage."""
        if self.data.final is None:
            return []
        return sorted(self.data.final["children"], key=lambda r: r["sr_no"])

    def records(self, stage=None):
        """The child records (of `stage`), in beam order: stage by stage, each stage's by `sr_no`."""
        return sorted((r for r in self.data.children if stage is None or r["stage"] == stage), key=_beam_order)


def _beam_order(record):
    """A child record's place in a straight run: the search numbers children in beam order."""
    return record["sr_no"]


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
    beam order, up to the first child not recorded yet (side by side, later
    children may finish first: they are in the state and the JSON lines, and
    join this log once the children before them have); then, once the stage
    is done, the candidates skipped for MAX_MUL_OPS, in the order the search
    met them. Failed and skipped children show reward 0.0. So the file only
    grows as the search runs, as the original's did, and regenerating it
    from the state gives the same bytes. Everything else (global index,
    status, test accuracy, footprint) is in the JSON lines.
    """
    text = ARCHITECTURES_HEADER
    for b in state.stages():
        text += "---- B= " + str(b - 1) + " Architectures ---- \n"
        children = state.records(stage=b)
        complete = state.data.finished or len(children) >= len(state.beam(b))
        if not complete:
            children = _beam_prefix(children, state.beam(b))
        if complete:
            children = children + state.over_budget(stage=b)
        for t, record in enumerate(children):
            child = tuple(int(v) for v in record["child"])
            reward = 0.0 if record["status"] != Status.OK else float(record["reward"])
            text += (
                "\nSr. No: " + str(t + 1) + "\nReward: " + str(reward)
                + "\nArchitecture: " + str(state_space.parse(child))
                + "\nRepresentation String: " + '"' + state_space.representation_string(child) + '"' + "\n"
            )
        if complete:
            text += STAGE_FINISHED
    return text


def _beam_prefix(records, beam):
    """The `records` of the beam's first children, up to the first child with no record."""
    by_child = {tuple(r["child"]): r for r in records}
    prefix = []
    for child in beam:
        if child not in by_child:
            break
        prefix.append(by_child[child])
    return prefix


def write_logs(state, state_space, paths):
    """Saves the state, then regenerates the architectures log and the JSON-lines records from it."""
    state.save()
    write_atomic(paths.architectures, format_architectures(state, state_space))
    records = state.records() + state.over_budget()
    write_atomic(paths.records, "".join(json.dumps(r) + "\n" for r in records))
    if state.data.final is not None:
        write_atomic(paths.final_records, "".join(json.dumps(r) + "\n" for r in state.final_records()))


def write_scores(path, state_space, ranked):
    """Writes a stage's ranked candidates (`(child, predicted reward)`, best first) as CSV.

    A surrogate's estimate can leave [0, 1] (a ridge fit extrapolates); the
    file shows it clipped to the range of a reward, and `rank` keeps the
    surrogate's order. The records keep the estimate as it was.
    """
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(["rank", "predicted_reward", "architecture", "representation_string"])
    for rank, (child, score) in enumerate(ranked, start=1):
        clipped = min(max(float(score), 0.0), 1.0)
        writer.writerow([rank, f"{clipped:.6f}", state_space.parse(child), state_space.representation_string(child)])
    write_atomic(path, out.getvalue())
