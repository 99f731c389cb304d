"""bench/chaos.py with 3 kills: a search killed with SIGKILL and resumed gives the search run straight through."""

import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_search_killed_three_times_gives_the_straight_search(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "chaos.py"), "--kills", "3", "--keep", str(tmp_path / "chaos")],
        capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "chaos kills=3 children=5 identical=True", result.stdout
    assert [line.split(":")[0] for line in lines[:-1]] == ["kill 1", "kill 2", "kill 3"]
    # With the seed's draws, the first kill lands inside a write (its temporary file existed).
    assert "inside the write of" in lines[0]
    # The killed search's folder holds the same architectures log as the straight one.
    log = pathlib.Path("architectures", "chaos.txt")
    assert (tmp_path / "chaos" / "killed" / log).read_bytes() == (tmp_path / "chaos" / "straight" / log).read_bytes()
