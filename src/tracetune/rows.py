"""The dataset row and its loss region: the contract between the dataset stage, which writes rows,
training, which learns the region, and the held-out loss, which scores it.

A row's `text` is the rendered conversation up to the end of its target turn, and
text[loss_start:loss_end] is that turn. A token belongs to the loss region when its characters
overlap the region, so a token that straddles loss_start (a BPE merge across the cut) is learned,
counted and scored alike.
"""

from __future__ import annotations

from tracetune.jsonio import InputError

COLUMNS = ("id", "trace_id", "text", "loss_start", "loss_end")
IGNORE = -100  # the label of a token outside the loss region (PyTorch's ignore_index)


def check_rows(rows: list[dict], where: str) -> None:
    """Every row has the columns and a loss region inside its text."""
    for column in COLUMNS:
        if rows and column not in rows[0]:
            raise InputError(f"{where}: column {column!r}: missing")
    for row in rows:
        if not 0 <= row["loss_start"] < row["loss_end"] <= len(row["text"]):
            raise InputError(f"{where}: row {row['id']}: loss_start/loss_end: not a span inside text")


def in_loss(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    """For each token (its character offsets), whether it overlaps a loss span."""
    return [any(start < span_end and end > span_start for span_start, span_end in spans)
            for start, end in offsets]


def tokenize_for_loss(tokenizer, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Token ids of `text` (no special tokens added) and labels: the id inside a loss span, else IGNORE."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    return ids, [i if inside else IGNORE for i, inside in zip(ids, in_loss(encoded["offset_mapping"], spans))]


def region_loss(model, inputs: dict, num_items=None):
    """Cross-entropy of the loss-region tokens (labels other than IGNORE), with the LM head run
    only at the positions that predict one: at the rest its logits (vocabulary-wide, 49k floats a
    position for SmolLM2) would teach nothing. Positions are kept where any row of the batch
    learns its next token (a packed or padding-free batch is one row: exact). The sum is divided
    by `num_items` (the Trainer's count over the accumulated batch) or by this batch's count, as
    the model's own loss is. Returns (loss, model outputs)."""
    import torch

    targets = inputs["labels"][:, 1:]
    keep = (targets != IGNORE).any(dim=0).nonzero().squeeze(-1)
    outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, logits_to_keep=keep)
    summed = torch.nn.functional.cross_entropy(outputs.logits.float().flatten(0, 1), targets[:, keep].flatten(),
                                               ignore_index=IGNORE, reduction="sum")
    count = num_items if num_items is not None else (targets != IGNORE).sum()
    return summed / count, outputs


def prefix_owners(rows: list[dict]) -> list[int]:
    """For each row, the index of the last row of the same trace and rendering whose text begins
    with its text, following consecutive rows (itself at worst). Rows of a trace whose template
    renders earlier turns as they were share one owner: one sequence holds them all."""
    owner = list(range(len(rows)))
    for i in range(len(rows) - 2, -1, -1):
        j = owner[i + 1]
        same = (rows[j]["trace_id"], rows[j].get("rendering") or 0) == (rows[i]["trace_id"], rows[i].get("rendering") or 0)
        if same and rows[j]["text"].startswith(rows[i]["text"]):
            owner[i] = j
    return owner
