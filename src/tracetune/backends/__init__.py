"""The two training backends behind one call. Both run TRL's SFTTrainer on pre-tokenised examples
(input_ids + labels, -100 outside the target turns); they differ in how the LoRA model is built:
PEFT on any device, unsloth's FastLanguageModel on CUDA. unsloth is imported only in its branch,
so the CPU path never touches it."""

from __future__ import annotations

import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)


def run_trainer(backend: str, examples: list[dict], tokenizer, base_model: Path, checkpoint_dir: Path,
                settings: dict, resume_from: str | None) -> dict:
    if backend == "unsloth":
        from tracetune.backends.unsloth_lora import load_lora_model
    else:
        from tracetune.backends.peft_lora import load_lora_model
    model, device = load_lora_model(base_model, settings)
    return fit(model, device, examples, tokenizer, checkpoint_dir, settings, resume_from)


def sft_config(checkpoint_dir: Path, settings: dict, device: str):
    from trl import SFTConfig

    from tracetune.models import mixed_precision

    cuda = device == "cuda"
    batched = settings["batch_size"] > 1
    padding_free = batched and settings["padding_free"]
    packing = batched and settings["packing"]
    return SFTConfig(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=settings["batch_size"],
        gradient_accumulation_steps=settings["grad_accum"],
        learning_rate=settings["learning_rate"],
        lr_scheduler_type=settings["lr_scheduler"],
        warmup_steps=settings["warmup_steps"],
        num_train_epochs=settings["epochs"],
        max_steps=settings["max_steps"],
        weight_decay=settings["weight_decay"],
        max_grad_norm=settings["max_grad_norm"],
        optim="adamw_8bit" if cuda else "adamw_torch",
        **mixed_precision(device),
        use_cpu=not cuda,
        seed=settings["seed"],
        data_seed=settings["seed"],
        logging_steps=1,
        save_strategy="steps",
        save_steps=settings["save_steps"],
        save_total_limit=settings["save_total_limit"],
        report_to="none",  # TensorBoard events are written from the log history, resume-proof
        disable_tqdm=True,
        gradient_checkpointing=settings["gradient_checkpointing"],
        include_num_input_tokens_seen="all",  # "non_padding" would skip <|im_end|> (the pad token)
        # Sequences are already cut to max_seq_len by build_sequences; packing needs the bound.
        max_length=settings["max_seq_len"] if (packing or not padding_free) else None,
        padding_free=padding_free,
        packing=packing,
        packing_strategy="bfd",
        dataset_num_proc=None,
    )


def _cpu_trainer_class():
    from trl import SFTTrainer

    from tracetune.rows import region_loss

    class CpuSFTTrainer(SFTTrainer):
        """Off Triton devices TRL's fused LM head scores every position in float32 chunks, half of a CPU step;
        here the LM head runs only where the loss is (tracetune.rows.region_loss), the same loss."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = region_loss(model, inputs, num_items_in_batch)
            return (loss, outputs) if return_outputs else loss

    return CpuSFTTrainer


def fit(model, device: str, examples: list[dict], tokenizer, checkpoint_dir: Path, settings: dict,
        resume_from: str | None) -> dict:
    import time

    from datasets import Dataset
    from trl import SFTTrainer

    dataset = Dataset.from_list([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])
    trainer_class = SFTTrainer if device == "cuda" else _cpu_trainer_class()
    trainer = trainer_class(model=model, args=sft_config(checkpoint_dir, settings, device),
                            train_dataset=dataset, processing_class=tokenizer)
    resumed_step = int(re.search(r"(\d+)$", resume_from).group(1)) if resume_from else 0
    tokens_before = 0
    if resume_from:
        import json

        tokens_before = json.loads((Path(resume_from) / "trainer_state.json").read_text()).get(
            "num_input_tokens_seen", 0)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_from)
    train_s = time.perf_counter() - started
    trainable, total = trainer.model.get_nb_trainable_parameters()
    history = trainer.state.log_history
    losses = [entry["loss"] for entry in history if "loss" in entry]
    return {
        "model": trainer.model,
        "device": device,
        "trainable_params": trainable,
        "total_params": total,
        "global_step": trainer.state.global_step,
        "resumed_from_step": resumed_step,
        "tokens_trained": trainer.state.num_input_tokens_seen - tokens_before,
        "train_s": train_s,
        "log_history": history,
        "final_loss": losses[-1] if losses else None,
    }
