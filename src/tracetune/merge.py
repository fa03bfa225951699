"""Fold a LoRA adapter into its base model: 16-bit safetensors plus the tokenizer (chat template and
response template included), a directory that transformers, `transformers serve` and vLLM load as is."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from tracetune.config import section_settings
from tracetune.jsonio import InputError, atomic_dir
from tracetune.models import check_model_dir

log = logging.getLogger(__name__)

def check_dir(path: Path, marker: str, what: str) -> Path:
    if not (path / marker).is_file():
        raise InputError(f"{path}: {what}: {marker} missing")
    return path


def merge(adapter_dir: str | os.PathLike, base_model: str | os.PathLike, out_dir: str | os.PathLike,
          config: dict | None = None) -> Path:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings = section_settings("merge", config)
    adapter_dir, base_model, out_dir = Path(adapter_dir), Path(base_model), Path(out_dir)
    check_dir(adapter_dir, "adapter_config.json", "adapter")
    check_model_dir(base_model, "base model")

    # Merge in float32 so the low-rank update is not rounded twice, then store 16-bit.
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    model = model.to(getattr(torch, settings["dtype"]))
    model.config.dtype = settings["dtype"]
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)

    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        keep_response_template(base_model, tmp)
    log.info("merged %s into %s (%s) → %s", adapter_dir, base_model, settings["dtype"], out_dir)
    return out_dir


def keep_response_template(base_model: Path, out_dir: Path) -> None:
    """`transformers serve` parses tool calls with the tokenizer's response_template: carry the base
    model's over should the tokenizer round trip have dropped it."""
    base_config = json.loads((base_model / "tokenizer_config.json").read_text()) \
        if (base_model / "tokenizer_config.json").is_file() else {}
    if "response_template" not in base_config:
        return
    path = out_dir / "tokenizer_config.json"
    merged_config = json.loads(path.read_text())
    if merged_config.get("response_template") != base_config["response_template"]:
        merged_config["response_template"] = base_config["response_template"]
        path.write_text(json.dumps(merged_config, indent=2, ensure_ascii=False) + "\n")
