"""The held-out token loss of a model on the eval rows (data/dataset/eval.parquet) →
data/eval/{model}/loss.json: the mean loss over the rows' loss regions (tracetune.rows), the tokens
training learns. Its own module, so that a change to the agent evaluation does not rerun it."""

from __future__ import annotations

import logging
import math

from tracetune.jsonio import InputError, write_json
from tracetune.models import bf16_native, check_model_dir
from tracetune.rows import IGNORE, check_rows, region_loss, tokenize_for_loss

log = logging.getLogger(__name__)


def token_losses(model, tokenizer, row: dict, max_len: int) -> tuple[float, int]:
    """Summed cross-entropy and token count over the row's loss region (tracetune.rows: the
    tokens training learns, scored as training scores them), its first max_len tokens read."""
    import torch

    ids, labels = tokenize_for_loss(tokenizer, row["text"], [(row["loss_start"], row["loss_end"])])
    inputs = {"input_ids": torch.tensor([ids[:max_len]]), "labels": torch.tensor([labels[:max_len]])}
    with torch.no_grad():
        summed, _ = region_loss(model, inputs, num_items=1)
    return float(summed), int((inputs["labels"][0, 1:] != IGNORE).sum())


def heldout_loss(model_dir: str, parquet_path: str, *, max_rows: int | None = None,
                 device: str = "cpu", max_len: int = 4096) -> dict:
    """Mean token loss over the loss regions of the eval rows (batch 1, no padding)."""
    import polars as pl
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_model_dir(model_dir)
    rows = pl.read_parquet(parquet_path).to_dicts()
    rows = rows[:max_rows] if max_rows else rows
    check_rows(rows, str(parquet_path))
    if not rows:
        return {"loss": None, "rows": 0, "tokens": 0, "perplexity": None}
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        dtype = torch.bfloat16 if bf16_native(device) else torch.float32  # logits are scored in float32
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    except (OSError, ValueError) as e:
        raise InputError(f"{model_dir}: not a loadable model ({str(e).splitlines()[0]})") from None
    total, tokens = 0.0, 0
    for i, row in enumerate(rows):
        loss, n = token_losses(model, tokenizer, row, max_len)
        total, tokens = total + loss, tokens + n
        if (i + 1) % 20 == 0:
            log.info("held-out loss: %d/%d rows", i + 1, len(rows))
    mean_loss = total / tokens if tokens else None
    return {"loss": mean_loss, "rows": len(rows), "tokens": tokens,
            "perplexity": math.exp(mean_loss) if mean_loss is not None else None}


def heldout_loss_to_file(model_dir: str, parquet_path: str, out_path: str, **kwargs) -> dict:
    result = {"model_dir": str(model_dir)} | heldout_loss(model_dir, parquet_path, **kwargs)
    write_json(out_path, result)
    return result
