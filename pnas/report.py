"""Plots and a summary of a search, from its JSON-lines records alone.

    python -m pnas.report EXPERIMENT_NAME [--root DIR]

Reads `architectures/{EXPERIMENT_NAME}.jsonl` and writes, under
`logs/{EXPERIMENT_NAME}/`: rewards.png (reward of every child by stage, with
the best so far), predicted_vs_actual.png (the encoder's prediction against
the reward, per stage), pareto.png (reward against OPs with the Pareto front)
and summary.txt.

A child's cost is its OPs, as the binary-network papers count it (Bi-Real Net's
FLOPs + BOPs / 64): its 32-bit MACs plus its binary MACs / 64 (the record's
`footprint.ops`, `pnas.footprint.count_ops`). Binary MACs are Larq's:
multiply-accumulates with a binary input and a binary weight
(`footprint.binary_macs`); every other MAC is a 32-bit one (`footprint.float_macs`),
e.g. a binary convolution of a real-valued input (docs/cell-space.md). The
record's `mul_ops` is the original's count: every MAC of a layer with binary
weights, whatever its input (docs/differences.md).
"""

import argparse
import json
import math
import os
import sys

import numpy as np

from pnas.paths import ExperimentPaths
from pnas.records import Status


def load_records(path):
    """The child records of a search, in training order."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def spearman(predicted, actual):
    """Spearman rank correlation; None when it is undefined (< 2 points or a constant)."""
    from scipy.stats import spearmanr

    if len(predicted) < 2 or len(set(predicted)) < 2 or len(set(actual)) < 2:
        return None
    return float(spearmanr(predicted, actual).statistic)


def stage_spearman(records):
    """{stage: Spearman of predicted vs actual reward} for stages with predictions."""
    result = {}
    for stage in sorted({r["stage"] for r in records}):
        pairs = [
            (r["predicted_reward"], r["reward"])
            for r in records
            if r["stage"] == stage and r.get("predicted_reward") is not None and r["status"] == Status.OK
        ]
        if pairs:
            result[stage] = spearman([p for p, _ in pairs], [a for _, a in pairs])
    return result


def binary_macs(record):
    """A trained child's binary MACs (binary inputs and weights, Larq's count); None where not measured.

    (A search simulated from a table of rewards, `pnas.space_table`, has no footprint.)
    """
    return record.get("footprint", {}).get("binary_macs")


def float_macs(record):
    """A trained child's 32-bit MACs (every MAC that is not binary); None where not measured."""
    return record.get("footprint", {}).get("float_macs")


def ops(record):
    """A child's OPs (32-bit MACs + binary MACs / 64, Bi-Real Net's count); None where not measured."""
    return record.get("footprint", {}).get("ops")


def cost_text(record):
    """'binary MACs B, 32-bit MACs F, OPs O' of a record ('-' for a figure not measured)."""
    shown = ["-" if value is None else value for value in (binary_macs(record), float_macs(record), ops(record))]
    return f"binary MACs {shown[0]}, 32-bit MACs {shown[1]}, OPs {shown[2]}"


def pareto_front(records):
    """Records not dominated in (higher reward, fewer OPs), by OPs."""
    front, best = [], -math.inf
    measured = [r for r in records if ops(r) is not None]
    for r in sorted(measured, key=lambda r: (ops(r), -r["reward"])):
        if r["reward"] > best:
            front.append(r)
            best = r["reward"]
    return front


def accuracy(value):
    """An accuracy with 4 decimals, or '-' for one not measured (TEST_CHILDREN=False)."""
    return "-" if value is None else f"{value:.4f}"


def hms(seconds):
    """Seconds as `h:mm:ss`."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _trained(records):
    return [r for r in records if r["status"] == Status.OK]


def _save(fig, out_dir, name):
    """Writes `fig` as out_dir/name, closes it and returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(records, out_dir):
    """Writes the three PNG plots; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    trained = _trained(records)
    stages = sorted({r["stage"] for r in records})
    colors = {b: plt.cm.viridis(i / max(1, len(stages) - 1)) for i, b in enumerate(stages)}
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4))
    for b in stages:
        rs = [r for r in trained if r["stage"] == b]
        ax.scatter([r["sr_no"] for r in rs], [r["reward"] for r in rs], s=14, color=colors[b], label=f"b = {b}")
    if trained:
        best = np.maximum.accumulate([r["reward"] for r in trained])
        ax.step([r["sr_no"] for r in trained], best, where="post", color="black", lw=1, label="best so far")
    ax.set_xlabel("child (training order)")
    ax.set_ylabel("reward (best validation accuracy)")
    ax.set_title("Reward of every child")
    ax.legend(loc="lower right", fontsize=8)
    paths.append(_save(fig, out_dir, "rewards.png"))

    fig, ax = plt.subplots(figsize=(5, 5))
    rho = stage_spearman(records)
    for b in stages:
        rs = [r for r in trained if r["stage"] == b and r.get("predicted_reward") is not None]
        if rs:
            label = f"b = {b}, Spearman {rho[b]:.2f}" if rho.get(b) is not None else f"b = {b}"
            ax.scatter([r["predicted_reward"] for r in rs], [r["reward"] for r in rs], s=14, color=colors[b], label=label)
    ax.set_xlabel("predicted reward (encoder)")
    ax.set_ylabel("actual reward")
    ax.set_title("Encoder prediction against reward")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    paths.append(_save(fig, out_dir, "predicted_vs_actual.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    for b in stages:
        rs = [r for r in trained if r["stage"] == b and ops(r) is not None]
        ax.scatter([ops(r) for r in rs], [r["reward"] for r in rs], s=14, color=colors[b], label=f"b = {b}")
    front = pareto_front(trained)
    if front:
        ax.step([ops(r) for r in front], [r["reward"] for r in front], where="post", color="red", lw=1)
        ax.scatter([ops(r) for r in front], [r["reward"] for r in front], s=40, facecolors="none",
                   edgecolors="red", label="Pareto front")
    # A cell of pooling and identities alone can cost 0 OPs: a log axis then needs a linear part at 0.
    costs = [ops(r) for r in trained if ops(r) is not None]
    if costs and min(costs) <= 0:
        ax.set_xscale("symlog", linthresh=1)
    elif costs:
        ax.set_xscale("log")
    ax.set_xlabel("OPs per image (32-bit MACs + binary MACs / 64)")
    ax.set_ylabel("reward")
    ax.set_title("Accuracy against cost")
    ax.legend(loc="lower right", fontsize=8)
    paths.append(_save(fig, out_dir, "pareto.png"))
    return paths


# What ranked the candidates, by the SURROGATE setting, for the summary.
SURROGATE_NAMES = {
    "lstm": "the LSTM encoder (SURROGATE='lstm')",
    "ridge": "a ridge regression on operand counts (SURROGATE='ridge')",
}


def idle_line(worker_time):
    """The summary's line on how busy the workers were, from the state's `worker_time`; None without it.

    A worker is idle while it has no child to train: a stage's last children
    running on fewer workers than there are, worker starts, the search's own
    work between children.
    """
    if not worker_time:
        return None
    stages = sorted(worker_time.items(), key=lambda item: int(item[0]))
    capacity = {b: t["slots"] * t["wall_seconds"] for b, t in stages}
    idle = {b: 1 - t["busy_seconds"] / capacity[b] if capacity[b] > 0 else 0.0 for b, t in stages}
    total = sum(capacity.values())
    overall = 1 - sum(t["busy_seconds"] for _, t in stages) / total if total > 0 else 0.0
    slots = max(t["slots"] for _, t in stages)
    per_stage = ", ".join(f"b = {b} {max(0.0, value):.0%}" for b, value in idle.items())
    return (f"Workers: {slots} side by side, idle {max(0.0, overall):.0%} of the time they had children to train "
            f"({per_stage})")


def final_text(final_records):
    """The final stage's table and its pick (lines), or [] without a final stage."""
    if not final_records:
        return []
    pick = final_pick(final_records)
    lines = [f"Final stage: the {len(final_records)} best cells retrained "
             f"(picked by validation accuracy; the test column chooses nothing):",
             f"{'#':>4} {'retrains':>8} {'search':>7} {'final':>7} {'test':>7} {'OPs':>10} {'packed KiB':>10}  architecture"]
    for r in final_records:
        ok = r["status"] == Status.OK
        reward = f"{r['reward']:7.4f}" if ok else f"{'failed':>7}"
        packed = r.get("footprint", {}).get("packed_kib", float("nan"))
        mark = " <- pick" if pick is not None and r["sr_no"] == pick["sr_no"] else ""
        cost = ops(r) if ok else None
        lines.append(f"{r['sr_no']:>4} {'#' + str(r['retrains']):>8} {r['proxy_reward']:7.4f} {reward} "
                     f"{accuracy(r.get('test_accuracy')) if ok else '-':>7} {'-' if cost is None else cost:>10} "
                     f"{packed:>10.2f}  {r['architecture']}{mark}")
    return lines


def final_pick(final_records):
    """The final stage's pick: the best validation reward of its trainings, ties to the better search reward."""
    trained = [r for r in final_records if r["status"] == Status.OK]
    return min(trained, key=lambda r: (-r["reward"], -r["proxy_reward"], r["sr_no"])) if trained else None


def surrogate_title(surrogate):
    """What the output calls the surrogate of SURROGATE `surrogate`: 'Encoder' (the LSTM, the original's name) or 'Ridge'."""
    return "Ridge" if surrogate == "ridge" else "Encoder"


def summary_text(records, top=5, retrain_args=(), surrogate=None, worker_time=None, final_records=()):
    """The top architectures, the predictor quality and the command to retrain the best.

    Args:
        records: The child records.
        top: How many architectures to list.
        retrain_args: `--NAME=value` arguments the retrain command repeats
            (the search's overrides that shape a child).
        surrogate: The search's SURROGATE setting, named in the summary
            (None: not named, e.g. for records without their settings).
        worker_time: The search state's `worker_time`, for the workers' idle
            fraction (None: no such line).
        final_records: The final stage's records (`pnas.search.Search.run_final`):
            its table, and its pick is the one to retrain.
    """
    trained = _trained(records)
    failed = sum(r["status"] == Status.FAILED for r in records)
    skipped = sum(r["status"] == Status.OVER_BUDGET for r in records)
    lines = [f"{len(trained) + failed} children: {len(trained)} trained, {failed} failed"
             + (f"; {skipped} candidate{'s' * (skipped != 1)} over the op budget (MAX_MUL_OPS, MAX_OPS) skipped"
                if skipped else "")]
    if surrogate is not None and any(r["stage"] > 1 for r in records):
        lines.append(f"Candidates ranked by {SURROGATE_NAMES.get(surrogate, repr(surrogate))}")
    idle = idle_line(worker_time)
    if idle:
        lines.append(idle)
    rho = stage_spearman(records)
    for b, value in rho.items():
        if value is not None:
            steps = [r["encoder_steps"] for r in records if r["stage"] == b and r.get("encoder_steps") is not None]
            after = f" (ranked after {steps[0]} encoder gradient steps)" if steps else ""
            lines.append(f"{surrogate_title(surrogate)} Spearman rank correlation at b = {b}: {value:.3f}{after}")
    if not trained:
        return "\n".join(lines) + "\n"
    lines.append(f"Top {min(top, len(trained))} architectures:")
    lines.append(f"{'#':>4} {'reward':>7} {'test':>7} {'bin. MACs':>10} {'32b MACs':>10} {'OPs':>10} {'packed KiB':>10}"
                 "  architecture")
    ranked = sorted(trained, key=lambda r: -r["reward"])[:top]
    for r in ranked:
        packed = r.get("footprint", {}).get("packed_kib", float("nan"))
        costs = " ".join(f"{'-' if value is None else value:>10}" for value in (binary_macs(r), float_macs(r), ops(r)))
        lines.append(f"{r['sr_no']:>4} {r['reward']:7.4f} {accuracy(r['test_accuracy']):>7} {costs} "
                     f"{packed:>10.2f}  {r['architecture']}")
    best = ranked[0]
    final = final_text(list(final_records))
    if final:
        lines += final
        best = final_pick(final_records) or best
    lines.append("Retrain the final pick:" if final else "Retrain the best:")
    extra = "".join(f" {arg}" for arg in retrain_args)
    lines.append(f'python train.py -ta True{extra} --REPRESENTATION_STRING="{best["representation_string"]}"')
    return "\n".join(lines) + "\n"


def report(exp_name, root="."):
    """Regenerates the plots and summary.txt of a search; returns the summary text."""
    paths = ExperimentPaths(exp_name, root)
    records = load_records(paths.records)
    settings = {}
    if os.path.exists(paths.settings):
        with open(paths.settings) as f:
            settings = json.load(f)
    retrain = settings.get("RETRAIN_ARGS", [])  # searches saved before retrain_args.json
    if os.path.exists(paths.retrain_args):
        with open(paths.retrain_args) as f:
            retrain = json.load(f)
    worker_time = None
    if os.path.exists(paths.state):
        with open(paths.state) as f:
            worker_time = json.load(f).get("worker_time")
    final_records = load_records(paths.final_records) if os.path.exists(paths.final_records) else []
    plot_all(records, paths.exp_log_dir)
    text = summary_text(records, retrain_args=retrain, surrogate=settings.get("SURROGATE"), worker_time=worker_time,
                        final_records=final_records)
    with open(paths.summary, "w") as f:
        f.write(text)
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pnas.report", description="Plots and summary of a search, from its records.")
    parser.add_argument("experiment_name")
    parser.add_argument("--root", default=".", help="folder holding architectures/ and logs/")
    args = parser.parse_args(argv)
    paths = ExperimentPaths(args.experiment_name, args.root)
    if not os.path.exists(paths.records):
        print(f"error: no records at {paths.records}; run the search first or pass --root", file=sys.stderr)
        return 2
    print(report(args.experiment_name, args.root), end="")
    print(f"Plots written to {paths.exp_log_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
