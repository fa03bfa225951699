"""One loss region for every stage: the tokens the dataset counts, training learns and the held-out
loss scores are the same, also where a token straddles the start of the target turn."""

import polars as pl
import pytest

from tracetune.rows import IGNORE, in_loss, prefix_owners, tokenize_for_loss


def test_a_token_is_in_the_region_when_it_overlaps_it():
    offsets = [(0, 3), (3, 6), (6, 9), (9, 12)]
    assert in_loss(offsets, [(4, 9)]) == [False, True, True, False]  # (3, 6) straddles the start
    assert in_loss(offsets, [(0, 3), (9, 12)]) == [True, False, False, True]
    assert in_loss(offsets, [(6, 6)]) == [False] * 4


def test_prefix_owners_follow_a_trace_and_its_rendering():
    rows = [{"trace_id": "a", "text": "x"}, {"trace_id": "a", "text": "xy"}, {"trace_id": "a", "text": "xyz"},
            {"trace_id": "a", "rendering": 1, "text": "xyzw"},  # another tool list: its own sequence
            {"trace_id": "b", "text": "q"}, {"trace_id": "b", "text": "r"}]  # not a prefix
    assert prefix_owners(rows) == [2, 2, 2, 3, 4, 5]


@pytest.fixture(scope="module")
def tokenizer(bundled_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_model)


def test_dataset_training_and_heldout_loss_take_the_same_tokens(tokenizer, bundled_model, tmp_path):
    from tracetune.dataset import Renderer, count_tokens
    from tracetune.heldout import heldout_loss
    from tracetune.train import build_sequences

    text = "<|im_start|>assistant\nThe widgets cost 12.50 dollars<|im_end|>"
    start = text.index("idgets")  # inside the token " widgets": the token straddles the start
    ids, labels = tokenize_for_loss(tokenizer, text, [(start, len(text))])
    pieces = tokenizer.convert_ids_to_tokens(ids)
    straddling = next(i for i, p in enumerate(pieces) if "widgets" in p)
    assert labels[straddling] == ids[straddling] and labels[straddling - 1] == IGNORE
    region = sum(label != IGNORE for label in labels)

    row = {"id": "t:0", "trace_id": "t", "turn": 0, "text": text, "loss_start": start, "loss_end": len(text)}
    renderer = Renderer(tokenizer, tokenizer.chat_template, "<|im_end|>")
    counted = [dict(row)]
    count_tokens(renderer, counted)
    assert counted[0]["n_loss_tokens"] == region
    _, counts = build_sequences([row], tokenizer, 4096)
    assert counts["loss_tokens"] == region
    pl.DataFrame([row]).write_parquet(tmp_path / "eval.parquet")
    scored = heldout_loss(str(bundled_model), str(tmp_path / "eval.parquet"))
    assert scored["tokens"] == region - (labels[0] != IGNORE)  # the first token has nothing before it to predict it
