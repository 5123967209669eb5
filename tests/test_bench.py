"""`make bench` runs end to end (eager, one image per configuration) and writes its tables.

The timings themselves are not checked (a benchmark, not a timed test); the model-call counts are
deterministic for a seed, so they are."""

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "examples" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_rows(text: str, section: str) -> list[list[str]]:
    """The body rows of the markdown table under `section` (header and rule dropped)."""
    body = text[text.index(section) + len(section):].split("\n## ")[0]
    lines = [line for line in body.splitlines() if line.startswith("|") and not line.startswith("|---")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]


def test_bench_writes_both_tables(bench, tmp_path):
    out = tmp_path / "benchmarks.md"
    assert bench.main(["--no-compile", "--seeds", "1", "--prompt", "a big red circle on the left",
                       "--window", "4", "--out", str(out)]) == 0
    text = out.read_text()
    assert "Device: " in text and "torch " in text
    images = table_rows(text, "## Whole images")
    assert [(r[0], r[1], r[2]) for r in images] == [("ar", "-", "eager")] + [(m, "4", "eager") for m in
                                                                             ("sjd", "maximal", "gumbel")]
    ar = images[0]
    assert ar[3] == "73.0" and ar[4] == "1.00x" and ar[7] == "1.00x"  # 73 tokens, one call each
    for row in images[1:]:
        calls = float(row[3])
        assert 73 / 4 <= calls < 73  # a window of 4 commits 1-4 tokens per call
        assert row[4] == f"{73 / calls:.2f}x"
    forward = table_rows(text, "## The model call alone")
    assert [(r[0], r[1]) for r in forward] == [("1", "eager"), ("4", "eager")]
    assert forward[0][3] == "1.00x" and float(forward[1][2]) > 0
