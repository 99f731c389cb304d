"""The shipped models: every file under models/ is named in docs/results.md, at most 100 KiB, and
scores on MNIST's 10,000 test images, run by the NumPy engine, what docs/results.md says it does;
each has its card kept in bench/results/model_cards.json.
"""

import pathlib
import re

import numpy as np
import pytest

from binarized.packed import PackedModel

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODELS = sorted((ROOT / "models").glob("*.bnn.npz"))
RESULTS = (ROOT / "docs" / "results.md").read_text()


def _idx(path, header):
    """An IDX file's bytes after its header, read here, not by the package's loader."""
    return np.frombuffer(path.read_bytes(), np.uint8, offset=header)


def _section(path):
    """The card of a model in docs/results.md."""
    return RESULTS.split(f"### `models/{path.name}`")[1].split("###")[0]


def test_there_are_models_and_each_is_named_in_the_model_card():
    assert MODELS, "models/ holds no .bnn.npz"
    for path in MODELS:
        assert f"models/{path.name}" in RESULTS
        assert path.stat().st_size <= 100 * 1024


@pytest.mark.slow
@pytest.mark.parametrize("path", MODELS, ids=[p.name for p in MODELS])
def test_each_model_scores_what_the_card_says(path, mnist_dir):
    images = _idx(mnist_dir / "t10k-images-idx3-ubyte", 16).reshape(10_000, 28, 28, 1).astype(np.float32)
    images = images / np.float32(127.5) - 1
    labels = _idx(mnist_dir / "t10k-labels-idx1-ubyte", 8)
    assert labels.shape == (10_000,)
    accuracy = float(np.mean(PackedModel.load(path).predict(images).argmax(axis=1) == labels))
    stated = re.search(r"packed engine (0\.\d{4})", _section(path)).group(1)
    assert f"{accuracy:.4f}" == stated


def test_every_shipped_model_has_a_kept_card_that_the_model_card_prints(tmp_path, capsys):
    import json
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import model_card
    finally:
        sys.path.remove(str(ROOT / "bench"))
    cards_path = ROOT / "bench" / "results" / "model_cards.json"
    cards = {c["name"]: c for c in json.loads(cards_path.read_text())}
    for path in MODELS:
        name = path.name.removesuffix(".bnn.npz")
        assert f"packed engine {cards[name]['engine_accuracy']:.4f}" in _section(path)
    # With no run given it prints and plots the kept cards, and leaves the file as it was.
    before = cards_path.read_bytes()
    assert model_card.main(["--cards", str(cards_path), "--plot", str(tmp_path / "plot.png")]) == 0
    printed = capsys.readouterr().out
    assert all(f"### `models/{path.name}`" in printed for path in MODELS)
    assert (tmp_path / "plot.png").stat().st_size > 0
    assert cards_path.read_bytes() == before
    with pytest.raises(SystemExit):
        model_card.main(["run.log", "--cards", str(cards_path), "--plot", str(tmp_path / "plot.png")])
    assert "is not NAME=LOG" in capsys.readouterr().err
