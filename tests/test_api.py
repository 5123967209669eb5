"""The Python API's boundary (tests/api_cases.py), run as a user runs the library: without the
jaxtyping import hook that the rest of the suite installs, whose TypeCheckError would otherwise
pre-empt the library's own ValueErrors."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_bad_api_argument_gets_a_value_error_naming_it():
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests/api_cases.py", "-q", "-o", "addopts=",
                           "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) >= 58, proc.stdout[-2000:]
