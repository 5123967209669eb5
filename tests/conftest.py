import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Derandomized in CI (and by default) so a run is reproducible; HYPOTHESIS_PROFILE=explore searches anew.
settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("explore", deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ORACLES = Path(__file__).resolve().parents[1].parent / "shared" / "oracles"


@pytest.fixture
def oracles() -> Path:
    """The upstream golden fixtures (../shared/oracles beside the clone); skip where absent."""
    if not ORACLES.is_dir():
        pytest.skip(f"upstream oracle fixtures not found at {ORACLES} (they live in ../shared beside the clone)")
    return ORACLES


def edited_copy(folder: Path, dst: Path, change) -> Path:
    """A copy of the weights folder `folder` at `dst` whose config.json `change(config)` edited in place:
    how the load tests make a folder that contradicts itself."""
    shutil.copytree(folder, dst)
    config = json.loads((dst / "config.json").read_text())
    change(config)
    (dst / "config.json").write_text(json.dumps(config))
    return dst
