import os
import sys
from pathlib import Path

import pytest

# tests/fakes.py (the scripted endpoint) is shared by tests and bench/.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def bundled_model(request) -> Path:
    """The embedded default model as the workflow prepares it (bf16, tool template), built once
    per pytest cache (about 15 s the first time). TRACETUNE_TEST_BASE points at another copy."""
    if os.environ.get("TRACETUNE_TEST_BASE"):
        return Path(os.environ["TRACETUNE_TEST_BASE"])
    from tracetune.models import prepare_base_model

    out = Path(request.config.cache.mkdir("tracetune-models")) / "base"
    if not (out / "config.json").is_file():
        prepare_base_model("bundled:smollm2-135m", out)
    return out
