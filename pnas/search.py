"""The progressive search loop: decide (expand + rank), run (train), record.

- Decide: the beam of each stage, all 1-block cells, then the encoder's top
  K of the expanded beam within the op budget (`Search.decide`).
- Run: a `pnas.runners.Runner` trains the beam's children and yields each
  outcome as it finishes; every backend gives child number n the same seed.
- Record: `pnas.records` appends each outcome to the search state as it
  comes and regenerates the logs from it (in beam order), atomically.
"""

import logging
import os
import time

import keras

from mnist.files import copy_atomic
from pnas import footprint, report
from pnas.encoder import StateSpace, new_surrogate, surrogate_class
from pnas.model import model_fn
from pnas.paths import ExperimentPaths
from pnas.records import ALREADY_FINISHED, ChildRecord, SearchConfigError, SearchState, Status, write_logs, write_scores
from pnas.runners import ChildJob, make_runner

__all__ = ["Search", "SearchAborted", "SearchConfigError", "SearchPaths", "estimate_eta", "top_k"]

logger = logging.getLogger(__name__)


class SearchAborted(RuntimeError):
    """The search cannot go on: too many children failed in a row, or none fits MAX_MUL_OPS."""


# The name the search's callers have known its paths by.
SearchPaths = ExperimentPaths


def _seed(base, *parts):
    """A deterministic seed per step, so that resumed runs draw the same numbers."""
    seed = int(base)
    for part in parts:
        seed = (seed * 1000003 + int(part)) % (2**31 - 1)
    return seed


class Search:
    """Progressive NAS over binary cells.

    Args:
        config: `pnas.config.SearchConfig`.
        dataset: `[x_train, y_train, x_val, y_val, x_test, y_test]`.
        paths: `pnas.paths.ExperimentPaths`.
        runner: The `pnas.runners.Runner` that trains the children (default:
            the one `config.runner` names); the search closes it when done.
        state: The `pnas.records.SearchState` to run (default: the saved one,
            or a new one; with `config.overwrite` the old search's outputs are
            first removed, `ExperimentPaths.discard`). Resuming one removes the
            temporary files that killed writes left (`ExperimentPaths.remove_leftover_temporaries`):
            the caller makes sure no other process runs this experiment (train.py holds its lock).
        train_fn: Trains a child in place of a runner, in this process:
            `train_fn(job: ChildJob) -> result dict` (e.g. a lookup in a
            table of rewards, `pnas.space_table.table_train_fn`).
        plots: Redraw the plots after every stage.
        final_encoder: Train the encoder on the last stage too, so that the
            saved encoder has seen every child. A simulation that needs only
            the children the search trains skips it (`pnas.space_table`).
        final_dataset: `final_dataset() -> dataset` of the final stage
            (`config.final`), e.g. more training images than the search's
            (default: the search's dataset).
    """

    def __init__(self, config, dataset, paths, runner=None, train_fn=None, plots=True, final_encoder=True,
                 state=None, final_dataset=None):
        self.config = config
        self.paths = paths
        self.train_fn = train_fn
        self.final_dataset = final_dataset or (lambda: dataset)
        self.state_space = StateSpace(
            config.max_blocks, list(config.operators), config.input_lookback_depth, config.input_lookforward_depth,
        )
        if state is None:
            if config.overwrite:
                paths.discard()
            state = SearchState.load_or_create(
                paths.state, config.identity_dict(), overwrite=config.overwrite, records_path=paths.records,
            )
        self.state = state
        if state.resumed:
            # Writes killed before their os.replace (a kill, a crash) left their temporary files.
            for path in paths.remove_leftover_temporaries():
                logger.info("Removed %s, left by an interrupted write", path)
        self.runner = runner if runner is not None else make_runner(config, dataset, paths, train_fn)
        self.plots = plots
        self.final_encoder = final_encoder
        self.consecutive_failures = 0
        self.start_time = time.time()
        self._costs = {}
        self._stage_clock = {}  # b -> when this run started stage b, its children finished since, seconds
        self._stage_sizes = None

    # ----------------------------------------------------------------- decide
    def _new_encoder(self, tensorboard_dir=None):
        return new_surrogate(self.state_space, tensorboard_dir=tensorboard_dir, **self.config.encoder.encoder_kwargs())

    def _adopt_earlier_encoder(self):
        """With RESTORE_CONTROLLER, a fresh search starts from an earlier run's encoder.

        The weights are copied into this search's state folder, so a resumed
        run starts from the same weights even after they were overwritten.
        """
        if self.state.resumed or not self.config.encoder.restore:
            return
        self.state.data.encoder_restored = False
        encoder = self._new_encoder()
        if not encoder.has_weights(self.paths.encoder_weights):
            return
        try:
            encoder.load_weights(self.paths.encoder_weights)
        except Exception as exc:  # e.g. saved with other operators or CONTROLLER_CELLS
            print(
                f"Warning: RESTORE_CONTROLLER: {', '.join(encoder.weight_files(self.paths.encoder_weights))} "
                "does not fit these settings "
                f"({type(exc).__name__}); the encoder starts untrained."
            )
            return
        os.makedirs(os.path.dirname(self.paths.stage_encoder_weights(0)), exist_ok=True)
        sources = encoder.weight_files(self.paths.encoder_weights)
        for source, target in zip(sources, encoder.weight_files(self.paths.stage_encoder_weights(0))):
            copy_atomic(source, target)
        self.state.data.encoder_restored = True
        print(f"Restored the encoder from {', '.join(sources)}")

    def train_encoder(self, b):
        """Trains the encoder on stages 1..b, continuing from its stage b-1 weights.

        The weights are saved per stage (for resume) and copied to the
        search's encoder (`weights/{EXPERIMENT_NAME}/`, which RESTORE_CONTROLLER
        starts a later search from).
        """
        if surrogate_class(self.config.encoder.surrogate).keras_model:
            # Start it in a cleared session. (A NumPy surrogate skips this: a
            # full garbage collection would only cost time.)
            keras.backend.clear_session(free_memory=True)
        keras.utils.set_random_seed(_seed(self.config.seed, 1, b))
        encoder = self._new_encoder(tensorboard_dir=self.paths.encoder_log_dir(b))
        if b > 1 or self.state.data.encoder_restored:
            encoder.load_weights(self.paths.stage_encoder_weights(b - 1))
        seen = [r for r in self.state.records() if r["stage"] <= b]
        steps_before = encoder.steps
        loss = encoder.fit([tuple(r["child"]) for r in seen], [r["reward"] for r in seen])
        encoder.save_weights(self.paths.stage_encoder_weights(b))
        for source, target in zip(encoder.weight_files(self.paths.stage_encoder_weights(b)),
                                  encoder.weight_files(self.paths.encoder_weights)):
            copy_atomic(source, target)
        # Cumulative: the steps behind the ranking of stage b + 1 (shown in the summary).
        self.state.set_encoder_steps(b, encoder.steps)
        logger.info("Encoder trained on %d children, loss %.5f", len(seen), loss)
        if encoder.steps is None:
            how = "a closed-form ridge fit"
        else:
            how = f"{encoder.steps - steps_before} gradient steps ({encoder.steps} in all)"
        print(f"{report.surrogate_title(self.config.encoder.surrogate)} trained on {len(seen)} children after b = {b}: "
              f"{how}, loss {loss:.5f}")
        return encoder

    def cost(self, child):
        """The child's mul_ops and footprint (binary and 32-bit MACs, OPs): built, not trained; cached."""
        key = tuple(child)
        if key not in self._costs:
            # Only counted, never traced: no full garbage collection per child.
            keras.backend.clear_session(free_memory=False)
            model, mul_ops = model_fn(self.state_space.parse(child), **self.config.child.model_kwargs())
            self._costs[key] = {"mul_ops": mul_ops, "footprint": footprint.summary(model)}
        return self._costs[key]

    def mul_ops(self, child):
        """The child's mul_ops (the original's count, budgeted by MAX_MUL_OPS)."""
        return self.cost(child)["mul_ops"]

    def _budgets(self):
        """[(setting name, budget, the child's cost under it)] of the op budgets that are set."""
        budgets = [("MAX_MUL_OPS", self.config.max_mul_ops, lambda cost: cost["mul_ops"]),
                   ("MAX_OPS", self.config.max_ops, lambda cost: cost["footprint"]["ops"])]
        return [(name, budget, of) for name, budget, of in budgets if budget is not None]

    def _budget_text(self):
        return " and ".join(f"{name}={budget}" for name, budget, _ in self._budgets())

    def within_budget(self, b, child):
        """False (and recorded as over budget, with its costs) when the child exceeds MAX_MUL_OPS or MAX_OPS."""
        budgets = self._budgets()
        if not budgets:
            return True
        cost = self.cost(child)
        if all(of(cost) <= budget for _, budget, of in budgets):
            return True
        self.state.add_over_budget(self._record(b, child, Status.OVER_BUDGET, mul_ops=cost["mul_ops"],
                                                result={"footprint": cost["footprint"]}))
        return False

    def decide(self, b):
        """The beam of stage b: all 1-block cells, else the encoder's top K_.

        Children above MAX_MUL_OPS or MAX_OPS are recorded as over budget and skipped;
        the next ones in rank order take their place.
        """
        beam = self.state.beam(b)
        if beam is not None:
            return beam
        self.state.drop_over_budget(b)
        if b == 1:
            beam, predicted = [c for c in self.state_space.initial_children() if self.within_budget(1, c)], None
        else:
            encoder = self.train_encoder(b - 1)
            parents = [tuple(r["child"]) for r in self.state.records(stage=b - 1)]
            ranked = encoder.rank(self.state_space.expand(parents))
            write_scores(self.paths.scores(b), self.state_space, ranked)
            beam, predicted = top_k(ranked, self.config.encoder.k, accept=lambda child: self.within_budget(b, child))
        if self._budgets():
            skipped = len(self.state.over_budget(stage=b))
            print(f"b = {b}: {skipped} candidates over {self._budget_text()} skipped")
        self.state.set_beam(b, beam, predicted)
        write_logs(self.state, self.state_space, self.paths)
        return beam

    # -------------------------------------------------------------------- run
    def jobs(self, b, beam):
        """The `ChildJob`s of the children of `beam` not yet recorded.

        A child's number (and so its seed) is its place in stage b's beam,
        counted on from the children of the earlier stages: the same in a
        straight run and in a resumed one, whichever children of the stage
        finished before a kill.
        """
        done = self.state.finished_children()
        first = len([r for r in self.state.records() if r["stage"] < b]) + 1
        stage_beam = self.state.beam(b) or list(beam)
        return [
            ChildJob(sr_no, b, tuple(child), tuple(self.state_space.parse(child)), _seed(self.config.seed, 2, sr_no))
            for sr_no, child in ((first + stage_beam.index(tuple(child)), child) for child in beam)
            if tuple(child) not in done
        ]

    # ----------------------------------------------------------------- record
    def _record(self, b, child, status, **fields):
        return ChildRecord(
            stage=b, child=tuple(child), architecture=self.state_space.parse(child),
            representation_string=self.state_space.representation_string(child), status=status, **fields,
        )

    def record(self, outcome):
        """Appends a child's outcome to the state and the logs; returns its JSON record."""
        job = outcome.job
        b, beam, predicted = job.stage, self.state.beam(job.stage), self.state.predicted(job.stage)
        fields = {}
        if predicted is not None:
            fields["predicted_reward"] = predicted[beam.index(job.child)]
            fields["encoder_steps"] = self.state.stage(b - 1).encoder_steps
        if outcome.ok:
            record = self._record(b, job.child, Status.OK, sr_no=job.sr_no, result=outcome.result, **fields)
        else:
            record = self._record(
                b, job.child, Status.FAILED, sr_no=job.sr_no, error=outcome.error, trace=outcome.trace, **fields
            )
        data = self.state.add(record)
        write_logs(self.state, self.state_space, self.paths)
        return data

    def _finish(self, outcome):
        """Records an outcome and prints it; aborts after too many failures in a row."""
        record = self.record(outcome)
        number = f"#{record['sr_no']} " if self.runner.parallel > 1 else ""
        if not outcome.ok:
            self.consecutive_failures += 1
            print(f"  {number}FAILED: {record['error']}")
            if self.consecutive_failures >= self.config.max_consecutive_failures:
                raise SearchAborted(
                    f"{self.consecutive_failures} children failed in a row (last: {record['error']}); "
                    "fix the cause and rerun the same command to retry them and resume"
                )
            return
        self.consecutive_failures = 0
        print(
            f"  {number}reward {record['reward']:.4f}, "
            f"test {report.accuracy(record['test_accuracy'])}, "
            f"{report.cost_text(record)}, "
            f"{record['footprint']['packed_kib']:.1f} KiB packed, "
            f"{record['seconds']:.1f}s"
        )

    def _no_candidate_within_budget(self, b):
        """Ends the search at stage b, whose candidates all exceed the op budget; at b = 1 it cannot start."""
        if b == 1:
            over = self.state.over_budget(stage=1)
            cheapest = ", ".join(
                f"{name}: the cheapest has {min(of(r) for r in over)}"
                for name, _, of in self._budgets()
            )
            raise SearchAborted(
                f"no 1-block child is within {self._budget_text()} ({cheapest}); "
                f"rerun with a larger {' or '.join(name for name, _, _ in self._budgets())} and --OVERWRITE=True"
            )
        print(f"---- B= {b}: no candidate within {self._budget_text()}; the search ends at b = {b - 1} ----")

    # ------------------------------------------------------------------- loop
    def _progress(self, b, i, n_beam, sr_no, total):
        now = time.time()
        elapsed = now - self.start_time
        self._stage_clock.setdefault(b, {"start": now, "done": 0, "seconds": 0.0})
        if self._stage_sizes is None:
            self._stage_sizes = self.state_space.stage_sizes(self.config.encoder.k)
        remaining = {later: self._stage_sizes[later - 1] for later in range(b + 1, self.config.max_blocks + 1)}
        remaining[b] = n_beam - len(self.state.records(stage=b))
        per_child = {stage: c["seconds"] / c["done"] for stage, c in self._stage_clock.items() if c["done"]}
        eta = estimate_eta(per_child, remaining)
        best = max((r["reward"] for r in self.state.records() if r["status"] == Status.OK), default=None)
        return (
            f"[b {b}/{self.config.max_blocks} | child {i}/{n_beam} | #{sr_no} of ~{total} | elapsed {report.hms(elapsed)} | "
            f"ETA {report.hms(eta) if eta is not None else '?'} | best {'-' if best is None else f'{best:.4f}'}]"
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
            self.state.set_spearman(b, rho)
            n = sum(r.get("predicted_reward") is not None and r["status"] == Status.OK for r in records)
            shown = "undefined" if rho is None else f"{rho:.3f}"
            steps = self.state.stage(b - 1).encoder_steps
            if steps is not None:
                after = f", ranked after {steps} gradient steps"
            else:
                after = ", ranked by a closed-form ridge fit" if self.config.encoder.surrogate == "ridge" else ""
            print(f"{report.surrogate_title(self.config.encoder.surrogate)} Spearman rank correlation at b = {b}: "
                  f"{shown} (held out: {n} children "
                  f"predicted before they trained{after})")
        write_logs(self.state, self.state_space, self.paths)
        if not self.plots:
            return
        try:
            report.plot_all(self.state.records() + self.state.over_budget(), self.paths.exp_log_dir)
        except Exception as exc:  # plots are a convenience; never stop a search for them
            logger.warning("Could not draw the plots: %s", exc)

    def run(self):
        """Runs (or resumes) the search; returns the finished child records."""
        try:
            return self._run()
        finally:
            self.runner.close()

    def run_stage(self, b, beam, total):
        """Trains the beam's children not yet recorded, recording each as it finishes."""
        first_start = []
        # Side by side, children start costliest first, not in beam order: the line
        # counts the stage's children started so far (those of an earlier run included).
        started_count = [len(self.state.records(stage=b))]

        def started(job):
            first_start[:] = first_start or [time.time()]
            started_count[0] += 1
            print(f"{self._progress(b, started_count[0], len(beam), job.sr_no, total)} {list(job.actions)}")

        busy = 0.0
        for outcome in self.runner.run(self.jobs(b, beam), on_start=started):
            self._tick(b)
            busy += outcome.result.get("seconds", 0.0) if outcome.ok else 0.0
            self._finish(outcome)
        if first_start:
            # How well the children kept the workers busy (the summary's idle fraction).
            self.state.add_worker_time(b, self.runner.parallel, time.time() - first_start[0], busy)
            write_logs(self.state, self.state_space, self.paths)

    def _run(self):
        if self.state.data.finished:
            print(ALREADY_FINISHED)
            return self.state.records()
        total = sum(self.state_space.stage_sizes(self.config.encoder.k)) + self.config.final.top
        self._adopt_earlier_encoder()
        retried = self.state.drop_trailing_failures()
        if retried:
            print(f"Retrying the {retried} children that failed last.")
            write_logs(self.state, self.state_space, self.paths)
        done = self.state.finished_children()
        if done:
            print(f"Resuming: {len(done)} children already trained.")
        last_stage = self.config.max_blocks
        for b in range(1, self.config.max_blocks + 1):
            beam = self.decide(b)
            if not beam:
                # Nothing to train, so nothing for the next stage to expand.
                self._no_candidate_within_budget(b)
                last_stage = b - 1
                break
            print(f"---- B= {b}: {len(beam)} children ----")
            self.run_stage(b, beam, total)
            self.end_stage(b)
        # Final encoder training, so the saved encoder has seen every stage.
        # (A search that ended early at b trained it on stages < b in decide(b).)
        # A final stage that has begun comes after it: it is not trained again.
        if not self.state.data.finished:
            if last_stage == self.config.max_blocks and self.final_encoder and self.state.final_settings() is None:
                self.train_encoder(self.config.max_blocks)
            self.run_final()
            self.state.data.finished = True
            write_logs(self.state, self.state_space, self.paths)
        return self.state.records()

    # ------------------------------------------------------------ final stage
    def final_beam(self):
        """The cells the final stage retrains: the `config.final.top` best by reward, ties to the earlier child."""
        trained = [r for r in self.state.records() if r["status"] == Status.OK]
        ranked = sorted(trained, key=lambda r: (-r["reward"], r["sr_no"]))
        return [tuple(r["child"]) for r in ranked[:self.config.final.top]]

    def run_final(self):
        """The final stage: retrains the search's best cells for longer, and names the best of them its pick.

        One short (proxy) training per cell is a noisy reward: the best cells
        of a stage lie within their own seed-to-seed differences. As NAS
        papers do, the `FINAL_TOP` best are trained again, each for
        `FINAL_EPOCHS` on `FINAL_TRAIN_SIZE` images with a seed of its own,
        and the best validation accuracy of those picks the cell. They are
        children like any other: seeded, recorded as they finish, resumed.
        The test images choose nothing.
        """
        final = self.config.final
        if final.top <= 0:
            return
        saved = self.state.final_settings()
        if saved is None:
            beam = self.final_beam()
            if not beam:
                print("---- Final stage: no trained child to retrain ----")
                return
            self.state.start_final(final.as_dict(), beam)
            write_logs(self.state, self.state_space, self.paths)
        elif saved != final.as_dict():
            fix = " ".join(f"--{name}={value!r}" for name, value in saved.items())
            raise SearchConfigError(
                f"the final stage of this search began with other settings ({saved}); resume it with {fix}"
            )
        beam = self.state.final_beam()
        done = {tuple(r["child"]) for r in self.state.final_records()}
        first = len(self.state.records()) + 1
        proxy = {tuple(r["child"]): r for r in self.state.records()}
        jobs = [
            ChildJob(sr_no, self.config.max_blocks + 1, child, tuple(self.state_space.parse(child)),
                     _seed(self.config.seed, 3, sr_no))
            for sr_no, child in enumerate(beam, start=first) if child not in done
        ]
        size = "all" if final.train_size is None else f"{final.train_size:,}"
        epochs = self.config.final_epochs
        print(f"---- Final stage: the {len(beam)} best cells retrained, {epochs} epoch"
              f"{'s' * (epochs != 1)} on {size} training images each ----")
        if jobs:
            self.runner.close()  # its workers hold the search's dataset
            self.runner = make_runner(self.config.for_final(), self.final_dataset(), self.paths, self.train_fn)
            started = [len(done)]

            def on_start(job):
                started[0] += 1
                print(f"[final | child {started[0]}/{len(beam)} | #{job.sr_no} | elapsed "
                      f"{report.hms(time.time() - self.start_time)}] {list(job.actions)}")

            for outcome in self.runner.run(jobs, on_start=on_start):
                self.record_final(outcome, proxy[outcome.job.child])
        pick = report.final_pick(self.state.final_records())
        if pick is not None:
            print(f"Final pick: #{pick['sr_no']} {pick['architecture']}, validation accuracy {pick['reward']:.4f} "
                  f"after {epochs} epoch{'s' * (epochs != 1)} (search reward {pick['proxy_reward']:.4f})")

    def record_final(self, outcome, searched):
        """Records a final-stage training and prints its reward line."""
        job = outcome.job
        if outcome.ok:
            record = self._record("final", job.child, Status.OK, sr_no=job.sr_no, result=outcome.result)
        else:
            record = self._record("final", job.child, Status.FAILED, sr_no=job.sr_no, error=outcome.error,
                                  trace=outcome.trace)
        data = self.state.add_final(record, retrains=searched["sr_no"], proxy_reward=searched["reward"])
        write_logs(self.state, self.state_space, self.paths)
        number = f"#{job.sr_no} "
        if not outcome.ok:
            print(f"  {number}FAILED: {data['error']}")
            return
        print(f"  {number}reward {data['reward']:.4f} (search reward {searched['reward']:.4f}), "
              f"test {report.accuracy(data['test_accuracy'])}, {report.cost_text(data)}, {data['seconds']:.1f}s")


def top_k(ranked, k, accept=None):
    """The beam: the first `k` of `ranked` (`(child, score)`, best first) that `accept` allows.

    Returns:
        `(children, their scores)`; `k` None keeps every accepted child.
    """
    beam, scores = [], []
    for child, score in ranked:
        if k is not None and len(beam) >= k:
            break
        if accept is None or accept(child):
            beam.append(child)
            scores.append(score)
    return beam, scores


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

