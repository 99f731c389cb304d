"""What a search run by train.py tells its user: progress lines, summary, plots, the retrain command.

A real tiny search (2 operators, B=2, K_=2, 200 MNIST images), then its retrain
command at VERBOSE 0 and 2.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import concurrent.futures  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from conftest import PLOTS, TRAIN, assert_ok as _ok, is_png, read_jsonl as _jsonl, run_command as _run  # noqa: E402

# Every test here reads the output of train.py runs.
pytestmark = pytest.mark.slow

OPS = ["3x3 bconv", "3x3 maxpool"]


NAME = "insight"
CLI_TINY = [
    f"--operators={OPS!r}", "--B=2", "--K_=2", "--MAX_EPOCHS=1", "--TRAIN_SIZE=200", "--NUM_CELLS=1",
    "--NUM_CELL_FILTERS=[4]", "--DENSE_LAYERS=[10]", "--RNN_TRAINING_EPOCHS=2", f"--EXPERIMENT_NAME={NAME}",
    "--FINAL_TOP=0",
]
PROGRESS = re.compile(
    r"^\[b (\d)/2 \| child (\d+)/(\d+) \| #(\d+) of ~5 \| elapsed \d+:\d\d:\d\d \| "
    r"ETA (\?|\d+:\d\d:\d\d) \| best (-|\d\.\d{4})\] (\[.*\])$",
    flags=re.M,
)


@pytest.fixture(scope="module")
def cli_search(mnist_dir, tmp_path_factory):
    """A tiny search run by train.py (VERBOSE=0), then its retrain command at VERBOSE 0 and 2."""
    folder = tmp_path_factory.mktemp("cli")
    search = _ok(_run([sys.executable, str(TRAIN), *CLI_TINY, "--VERBOSE=0"], folder))
    command = [line for line in search.stdout.splitlines() if line.startswith("python train.py -ta True")]
    assert len(command) == 1, search.stdout[-3000:]
    argv = shlex.split(command[0])
    assert argv[:2] == ["python", "train.py"]
    retrain = [sys.executable, str(TRAIN), *argv[2:], "--NUM_EPOCHS=1", "--TRAIN_SIZE=200"]
    verbose_folder = tmp_path_factory.mktemp("cli_verbose")
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        quiet = pool.submit(_run, [*retrain, "--VERBOSE=0"], folder)
        loud = pool.submit(_run, [*retrain, "--VERBOSE=2"], verbose_folder)
        return folder, search, command[0], quiet.result(), loud.result()


def test_search_prints_progress_for_every_child(cli_search):
    folder, search, _, _, _ = cli_search
    records = _jsonl(folder / "architectures" / f"{NAME}.jsonl")
    assert len(records) == 5
    progress = PROGRESS.findall(search.stdout)
    assert [(int(b), int(i), int(n), int(sr)) for b, i, n, sr, *_ in progress] == [
        (1, 1, 3, 1), (1, 2, 3, 2), (1, 3, 3, 3), (2, 1, 2, 4), (2, 2, 2, 5)
    ]
    assert "b 1/2" in search.stdout and "b 2/2" in search.stdout
    etas = [eta for *_, eta, _, _ in progress]
    assert etas[0] == "?" and all(eta != "?" for eta in etas[1:])
    bests = [best for *_, best, _ in progress]
    assert bests[0] == "-"
    for k, best in enumerate(bests[1:], start=1):
        assert best == f"{max(r['reward'] for r in records[:k]):.4f}"
    assert [arch for *_, arch in progress] == [str(r["architecture"]) for r in records]
    # Each child's line: its binary MACs, 32-bit MACs and OPs, as its record has them.
    for r in records:
        f = r["footprint"]
        assert f["ops"] == round(f["float_macs"] + f["binary_macs"] / 64)
        assert f"binary MACs {f['binary_macs']}, 32-bit MACs {f['float_macs']}, OPs {f['ops']}, " in search.stdout
    assert "Encoder Spearman rank correlation at b = 2: " in search.stdout


def test_search_ends_with_the_summary_and_the_plots(cli_search):
    folder, search, command, _, _ = cli_search
    records = _jsonl(folder / "architectures" / f"{NAME}.jsonl")
    summary = (folder / "logs" / NAME / "summary.txt").read_text()
    assert summary in search.stdout
    assert "Top 5 architectures:" in summary
    best = max(records, key=lambda r: r["reward"])
    assert command in summary
    assert command.endswith(f'--REPRESENTATION_STRING="{best["representation_string"]}"')
    assert f"--EXPERIMENT_NAME={NAME}" in command and '--NUM_CELL_FILTERS="[4]"' in command
    for name in PLOTS:
        assert is_png(folder / "logs" / NAME / name), name


def test_the_printed_retrain_command_runs(cli_search):
    _, _, _, quiet, loud = cli_search
    best_line = "Training architecture "
    _ok(quiet)
    _ok(loud)
    assert best_line in quiet.stdout
    assert re.search(r"^Best validation accuracy 0\.\d{4} at epoch 1$", quiet.stdout, flags=re.M)
    total = re.search(r"^total +\d+ +\d+ +(\d+) +(\d+)$", quiet.stdout, flags=re.M)  # the footprint table
    assert total
    # One figure per name: the binary MACs line repeats the table's 1-bit MACs; mul_ops is their sum with
    # the 32-bit ones (every MAC of a binary-weight layer, the original's count).
    binary, floating = int(total[1]), int(total[2])
    assert (f"Binary MACs (binary inputs and weights, as Larq counts) {binary}, 32-bit MACs {floating}, "
            f"mul_ops {binary + floating}, ") in quiet.stdout
    assert f"OPs {round(floating + binary / 64)} = 32-bit MACs {floating} + 1-bit MACs {binary} / 64" in quiet.stdout
    assert len(re.findall(r"\dx smaller", quiet.stdout)) == 1  # one compression ratio: the packed file's


def test_verbose_sets_the_keras_epoch_lines(cli_search):
    _, search, _, quiet, loud = cli_search
    assert "val_accuracy" not in search.stdout
    assert "val_accuracy" not in quiet.stdout
    # -ta trains an epoch per fit call (it resumes by epoch): one line of ours per epoch, as side by side.
    assert re.search(r"^  epoch \d+/\d+ - \d+s - .*loss: .* - val_accuracy: \d\.\d{4}$", loud.stdout, flags=re.M)
