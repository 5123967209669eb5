"""docs/guide.md stays true: its Python blocks run as written, and every code link names a function
that is still at the linked line range (``make guide`` rewrites them; examples/guide_figures.py)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "guide.md"
BLOCKS = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)


def test_guide_has_python_blocks():
    assert len(BLOCKS) >= 4, "the guide lost its Python examples"


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_guide_python_block_runs(i):
    proc = subprocess.run([sys.executable, "-c", BLOCKS[i]], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"guide block {i} failed:\n{BLOCKS[i]}\n{proc.stderr[-3000:]}"


def test_guide_links_point_at_their_functions():
    proc = subprocess.run([sys.executable, "examples/guide_figures.py", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, f"stale or broken links in docs/guide.md (run `make guide`):\n{proc.stderr}"


def test_guide_figures_exist():
    for name in re.findall(r"\]\((guide/[\w.]+\.png)\)", GUIDE.read_text()):
        assert (GUIDE.parent / name).is_file(), f"docs/{name} is missing: run `make guide`"
