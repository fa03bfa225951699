import hashlib
import os
import sys
from pathlib import Path

import pytest

# tests/fakes.py (the scripted endpoint) is shared by tests and bench/.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def bundled_model(request, tmp_path_factory) -> Path:
    """The embedded default model as the workflow prepares it (bf16, tool template), built once
    per pytest cache (about 15 s the first time). TRACETUNE_TEST_BASE points at another copy."""
    if os.environ.get("TRACETUNE_TEST_BASE"):
        return Path(os.environ["TRACETUNE_TEST_BASE"])
    import tracetune.models
    from tracetune.models import prepare_base_model

    # Keyed by the code and templates that make it, so a changed template is never served stale.
    package = Path(tracetune.models.__file__).parent
    sources = [package / "models.py", *sorted((package / "templates").glob("*"))]
    key = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:12]
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    out = (Path(cache.mkdir("tracetune-models")) if cache else tmp_path_factory.mktemp("models")) / f"base-{key}"
    if not (out / "config.json").is_file():
        prepare_base_model("bundled:smollm2-135m", out)
    return out


@pytest.fixture(scope="session")
def bundled_gguf_model(bundled_model) -> Path:
    """The prepared embedded model converted for llama.cpp (bf16 GGUF), next to its directory."""
    from tracetune.serve import export_gguf

    out = bundled_model.with_name(bundled_model.name + ".gguf")
    if not out.is_file():
        export_gguf(bundled_model, out)
    return out


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, for the tests that drive a browser. Skipped where it is missing, but in
    CI, which installs it first (scripts/install-system-deps.sh), missing is a failure."""
    path = "/usr/bin/chromium"
    if not Path(path).exists():
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed, although CI runs scripts/install-system-deps.sh first")
        pytest.skip("chromium is not installed (scripts/install-system-deps.sh)")
    return path
