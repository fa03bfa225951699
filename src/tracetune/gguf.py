"""GGUF files for llama.cpp: a model directory converted by llama.cpp's own converter (the gguf
rule, data/gguf/{model}.gguf), and where this environment's llama.cpp install keeps its files
(installed by scripts/install-llama-cpp.sh)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tracetune.jsonio import InputError, atomic_path
from tracetune.models import check_model_dir

log = logging.getLogger(__name__)


def is_gguf(path: str | os.PathLike) -> bool:
    return str(path).endswith(".gguf")


def llama_cpp_file(relative: str) -> Path:
    """A file of the llama.cpp install in this environment (bin/llama-server, share/llama.cpp/…)."""
    path = Path(sys.prefix) / relative
    if relative.startswith("bin/") and not path.exists() and shutil.which(path.name):
        path = Path(shutil.which(path.name))
    if not path.exists():
        raise InputError(f"{path}: llama.cpp is not installed here (`make install` builds it; "
                         "or set serve.engine: transformers)")
    return path


def export_gguf(model_dir: str | os.PathLike, out_path: str | os.PathLike, outtype: str = "bf16") -> Path:
    """Convert a model directory (weights, tokenizer, chat template) to one GGUF file with
    llama.cpp's own converter, atomically."""
    check_model_dir(model_dir)
    share = llama_cpp_file("share/llama.cpp")
    with atomic_path(out_path) as tmp:
        env = os.environ | {"PYTHONPATH": str(share / "gguf-py"),  # the gguf package the converter was written for
                            "TQDM_DISABLE": "1"}
        cmd = [sys.executable, str(share / "convert_hf_to_gguf.py"), str(model_dir), "--outfile", str(tmp),
               "--outtype", outtype]
        done = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        log.info("convert_hf_to_gguf.py:\n%s", done.stdout)
        if done.returncode != 0:
            last = (done.stdout.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"{model_dir}: GGUF conversion failed: {last}")
    return Path(out_path)
