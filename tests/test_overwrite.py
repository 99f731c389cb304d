"""--OVERWRITE=True starts from a clean slate, and what a search leaves a user to read.

Two tiny searches under one name (2 operators, 200 training images, 1 epoch,
SURROGATE=ridge, set with bare words): B=2, then B=1 with OVERWRITE.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

import train

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NAME = "try1"
TINY = [
    "--operators=['3x3 bconv', '3x3 maxpool']", "--K_=2", "--MAX_EPOCHS=1", "--TRAIN_SIZE=200", "--NUM_CELLS=1",
    "--NUM_CELL_FILTERS=[4]", "--DENSE_LAYERS=[10]", "--VERBOSE=0",
    # Text settings as bare words.
    "--RUNNER=inline", "--SURROGATE=ridge", f"--EXPERIMENT_NAME={NAME}", "--FINAL_TOP=0",
]


def _train(cwd, *args):
    env = dict(os.environ, MNIST_DATA_DIR=str(REPO_ROOT / "data" / "mnist"), MNIST_MIRRORS="http://127.0.0.1:9/",
               PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1500)


def _files(root):
    """{relative path: (inode, mtime)} of every file under root: a rewritten file is a new one."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            stat = os.stat(path)
            found[os.path.relpath(path, root)] = (stat.st_ino, stat.st_mtime_ns)
    return found


@pytest.mark.slow
def test_overwrite_leaves_no_file_of_the_old_search_but_the_encoder_restore_controller_adopts(tmp_path):
    if not (REPO_ROOT / "data" / "mnist").exists():
        pytest.skip("MNIST is not available")
    first = _train(tmp_path, *TINY, "--B=2")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    before = _files(tmp_path)
    # What the issue found left behind: the scores, TensorBoard folders and stage encoders of b = 2.
    for path in ("scores/try1/scores_2.csv", "logs/try1/encoder/after_b2.ridge.json", "weights/try1/child.weights.h5"):
        assert path in before, path
    assert any(p.startswith("logs/try1/child_0005/") for p in before)
    # The summary's counts agree with the finishing line; settings.json holds the settings only.
    assert "Search finished: 5 children trained or failed" in first.stdout
    assert "5 children: 5 trained, 0 failed\n" in first.stdout
    settings = json.loads((tmp_path / "logs" / NAME / "settings.json").read_text())
    assert set(settings) == set(train.SETTINGS)
    assert json.loads((tmp_path / "logs" / NAME / "retrain_args.json").read_text()) == [
        "--EXPERIMENT_NAME=try1", "--B=2", "--NUM_CELLS=1", '--NUM_CELL_FILTERS="[4]"', '--DENSE_LAYERS="[10]"',
        "--operators=\"['3x3 bconv', '3x3 maxpool']\"",
    ]

    # Another search under the name is refused before any data is loaded (no shapes printed).
    refused = _train(tmp_path, *TINY, "--B=1")
    assert refused.returncode == 2 and "B=2 (now 1)" in refused.stderr
    assert "shape" not in refused.stdout
    assert _files(tmp_path) == before

    # Two children side by side (where children train does not define a search): each epoch line names its child.
    others = [a for a in TINY if not a.startswith(("--RUNNER=", "--VERBOSE="))]  # a name given twice is refused
    second = _train(tmp_path, *others, "--B=1", "--OVERWRITE=True", "--RUNNER=processes", "--PARALLEL_CHILDREN=2",
                    "--VERBOSE=2")
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert "OVERWRITE: removed the" in second.stdout
    # The old encoder was kept for RESTORE_CONTROLLER, which tried it (a B=2 ridge does not fit a B=1 space).
    assert "Warning: RESTORE_CONTROLLER: ./weights/try1/encoder.ridge.json does not fit these settings" in second.stdout
    after = _files(tmp_path)
    survivors = sorted(p for p in before if after.get(p) == before[p])
    assert set(survivors) <= {"weights/try1/encoder.ridge.json"}, survivors
    assert not any(p.startswith(("scores/try1/scores_2", "logs/try1/child_0004", "logs/try1/child_0005",
                                 "logs/try1/encoder/after_b2", "logs/try1/encoder/b2")) for p in after)
    records = [json.loads(line) for line in (tmp_path / "architectures" / f"{NAME}.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records] == [1, 1, 1]
    epoch_lines = [line for line in second.stdout.splitlines() if " epoch 1/1 - " in line]
    assert sorted(line.split()[0] for line in epoch_lines) == ["#1", "#2", "#3"], second.stdout[-3000:]
    assert all("val_accuracy: " in line for line in epoch_lines)


def test_discard_removes_the_search_outputs_and_keeps_the_encoder_and_what_others_wrote(tmp_path):
    from pnas.search import SearchPaths

    paths = SearchPaths(NAME, root=str(tmp_path))
    search_files = [
        "architectures/try1.txt", "architectures/try1.jsonl", "architectures/try1.jsonl.tmp123",
        "scores/try1/scores_2.csv", "logs/try1/search_state.json", "logs/try1/settings.json",
        "logs/try1/retrain_args.json", "logs/try1/summary.txt", "logs/try1/rewards.png",
        "logs/try1/predicted_vs_actual.png", "logs/try1/pareto.png", "logs/try1/child_0005/train/events.out",
        "logs/try1/encoder/after_b2.ridge.json", "logs/try1/encoder/b2/train/events.out",
        "weights/try1/child.weights.h5", "weights/try1/child1.weights.h5",
    ]
    kept = [
        "weights/try1/encoder.weights.h5", "weights/try1/encoder.units.json", "weights/try1/encoder.ridge.json",
        # train.py -ta's outputs, another search's, and files the search does not write.
        "weights/try1/best.weights.h5", "weights/try1/model.keras", "weights/try1/model.bnn.npz",
        "logs/try1/best/train/events.out", "logs/try1/train_architecture_settings.json",
        "architectures/try10.txt", "logs/try10/search_state.json", "logs/try1/notes.txt",
    ]
    for name in search_files + kept:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    removed = paths.discard()
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == sorted(kept)
    assert len(removed) == 15  # 2 logs and a temporary file, the scores folder, 9 under logs/try1/, 2 weights
    assert paths.discard() == []
