"""README's Python blocks run exactly as written (from the repository root, as a user pastes them)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_has_python_blocks():
    assert BLOCKS, "README lost its Python examples"


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_python_block_runs(i):
    proc = subprocess.run([sys.executable, "-c", BLOCKS[i]], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"README block {i} failed:\n{BLOCKS[i]}\n{proc.stderr[-3000:]}"
