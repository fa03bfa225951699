"""transformers + PEFT LoRA model: the CPU path (and a GPU fallback when unsloth is absent)."""

from __future__ import annotations

from pathlib import Path


def lora_config(settings: dict):
    from peft import LoraConfig

    return LoraConfig(r=settings["lora_r"], lora_alpha=settings["lora_alpha"], lora_dropout=settings["lora_dropout"],
                      use_rslora=settings["use_rslora"], target_modules=list(settings["target_modules"]),
                      bias="none", task_type="CAUSAL_LM")


def load_lora_model(base_model: Path, settings: dict, adapter: Path | None = None):
    """The base model with a fresh LoRA of `settings`' shape, or with `adapter` made trainable
    again (RL continuing an SFT run); and the device it is on."""
    import torch
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from tracetune.models import weights_dtype

    cuda = torch.cuda.is_available()
    kwargs = {"dtype": weights_dtype("cuda" if cuda else "cpu")}
    if cuda and settings["load_in_4bit"]:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=kwargs["dtype"])
    model = AutoModelForCausalLM.from_pretrained(base_model, **kwargs)
    if cuda:
        model.to("cuda")
    device = "cuda" if cuda else "cpu"
    if adapter is not None:
        return PeftModel.from_pretrained(model, adapter, is_trainable=True), device
    torch.manual_seed(settings["seed"])  # LoRA A matrices are initialised at random
    return get_peft_model(model, lora_config(settings)), device
