"""unsloth's FastLanguageModel (CUDA only): imported only when the backend resolves to unsloth."""

from __future__ import annotations

from pathlib import Path


def load_lora_model(base_model: Path, settings: dict):
    import torch
    from unsloth import FastLanguageModel

    model, _tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(base_model), max_seq_length=settings["max_seq_len"], dtype=None,
        load_in_4bit=settings["load_in_4bit"])
    model = FastLanguageModel.get_peft_model(
        model, r=settings["lora_r"], lora_alpha=settings["lora_alpha"], lora_dropout=settings["lora_dropout"],
        target_modules=list(settings["target_modules"]), bias="none", use_rslora=settings["use_rslora"],
        use_gradient_checkpointing="unsloth" if settings["gradient_checkpointing"] else False,
        random_state=settings["seed"])
    return model, "cuda" if torch.cuda.is_available() else "cpu"  # unsloth can fall back to the CPU
