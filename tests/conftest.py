import hashlib
import os
import re
import sys
from pathlib import Path

import pytest

# tests/fakes.py (the scripted endpoint) is shared by tests and bench/.
sys.path.insert(0, str(Path(__file__).parent))


def pytest_configure(config):
    """A tier (`-m` expression) that names an unknown marker is an error, not an empty run."""
    expression = config.getoption("markexpr")
    if not expression:
        return
    known = {line.split(":", 1)[0].split("(", 1)[0].strip() for line in config.getini("markers")}
    unknown = sorted(set(re.findall(r"[A-Za-z_]\w*", expression)) - {"and", "or", "not"} - known)
    if unknown:
        raise pytest.UsageError(f"-m {expression!r}: unknown marker {', '.join(map(repr, unknown))}; "
                                f"the markers are {', '.join(sorted(known))} (pyproject.toml)")


@pytest.fixture(scope="session", autouse=True)
def shared_preflight_cache(tmp_path_factory):
    """One preflight cache (listed server tools, model module names) for every workflow copy a
    test runs, in this process and in its snakemake subprocesses: each copy would otherwise start
    the MCP servers and import torch again. Its entries are keyed by what they are read from."""
    path = tmp_path_factory.mktemp("preflight")
    previous = os.environ.get("TRACETUNE_PREFLIGHT_CACHE")
    os.environ["TRACETUNE_PREFLIGHT_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("TRACETUNE_PREFLIGHT_CACHE", None)
    else:
        os.environ["TRACETUNE_PREFLIGHT_CACHE"] = previous


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
    from tracetune.gguf import export_gguf

    out = bundled_model.with_name(bundled_model.name + ".gguf")
    if not out.is_file():
        export_gguf(bundled_model, out)
    return out


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, bundled_model) -> Path:
    """A random 2-layer Llama with the embedded model's tokenizer and template
    (train_fixtures.tiny_model), made once per run for every test that only reads it."""
    from train_fixtures import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny") / "base", bundled_model)


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory, tiny_base, bundled_model) -> Path:
    """A LoRA adapter trained two steps on tiny_base (one trace's rows), once per run."""
    from train_fixtures import write_dataset
    from transformers import AutoTokenizer

    from tracetune.train import train

    tmp = tmp_path_factory.mktemp("tiny-adapter")
    write_dataset(tmp / "train.parquet", AutoTokenizer.from_pretrained(bundled_model), n_traces=1)
    train(tmp / "train.parquet", tiny_base, tmp / "adapter", {"max_steps": 2, "learning_rate": 5e-3},
          checkpoint_dir=tmp / "ckpt")
    return tmp / "adapter"


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
