"""Small unrolled datasets in the dataset stage's row format, rendered with a real chat template,
for the training and merge tests and the throughput benchmark."""

from __future__ import annotations

import json
import random

TOOLS = [{"type": "function", "function": {
    "name": "get_price", "description": "Price of an item in the shop.",
    "parameters": {"type": "object", "properties": {"item": {"type": "string"}}, "required": ["item"]}}}]

ITEMS = ["blue widget", "red gadget", "green gizmo", "steel bolt", "oak plank", "glass jar", "brass key",
         "paper fan", "wool hat", "clay pot"]


def make_trace(i: int, turns: int = 2, reasoning: bool = True, filler: int = 0) -> dict:
    """A trace: user asks for prices of `turns` items; the assistant calls get_price for each, then answers."""
    rng = random.Random(i)
    items = rng.sample(ITEMS, turns)
    messages = [{"role": "user", "content": "How much do " + " and ".join(items) + " cost?" + " Please." * filler}]
    prices = []
    for k, item in enumerate(items):
        call_id = f"call_{i}_{k}"
        price = f"{rng.randint(1, 99)}.{rng.randint(0, 99):02d}"
        prices.append(price)
        messages.append({"role": "assistant", "content": "",
                         "reasoning_content": f"I need the price of the {item}." if reasoning else None,
                         "tool_calls": [{"id": call_id, "type": "function", "function": {
                             "name": "get_price", "arguments": json.dumps({"item": item})}}]})
        messages.append({"role": "tool", "tool_call_id": call_id, "name": "get_price",
                         "content": json.dumps({"item": item, "price": price}) + " (in stock)" * filler})
    answer = "; ".join(f"the {item} costs ${p}" for item, p in zip(items, prices))
    messages.append({"role": "assistant", "content": answer[0].upper() + answer[1:] + ".",
                     "reasoning_content": "I have all prices." if reasoning else None})
    return {"trace_id": f"task-{i}--ref", "task_id": f"task-{i}", "messages": messages, "tools": TOOLS}


def render_rows(tokenizer, trace: dict, chat_template: str | None = None) -> list[dict]:
    """One row per assistant turn: text = rendering up to the end of that turn, loss on that turn."""
    rows = []
    messages, tools = trace["messages"], trace["tools"]
    for turn, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:turn], tools=tools, tokenize=False,
                                               add_generation_prompt=True, chat_template=chat_template)
        full = tokenizer.apply_chat_template(messages[:turn + 1], tools=tools, tokenize=False,
                                             chat_template=chat_template)
        end = full.rindex("<|im_end|>") + len("<|im_end|>")
        text = full[:end]
        assert text.startswith(prompt), "template does not extend the generation prompt"
        rows.append({"id": f"{trace['trace_id']}#{turn}", "trace_id": trace["trace_id"], "task_id": trace["task_id"],
                     "split": "train", "turn": turn, "messages": json.dumps(messages[:turn + 1]),
                     "tools": json.dumps(tools), "prompt": prompt, "completion": text[len(prompt):], "text": text,
                     "loss_start": len(prompt), "loss_end": end,
                     "n_tokens": len(tokenizer(text, add_special_tokens=False)["input_ids"]), "n_loss_tokens": 0})
    return rows


def write_dataset(path, tokenizer, n_traces: int = 4, turns: int = 2, chat_template: str | None = None,
                  filler: int = 0, split: str = "train") -> list[dict]:
    import polars as pl

    rows = [row for i in range(n_traces)
            for row in render_rows(tokenizer, make_trace(i, turns, filler=filler), chat_template)]
    for row in rows:
        row["split"] = split
    pl.DataFrame(rows).write_parquet(path)
    return rows


def tiny_model(path, base, layers: int = 2, hidden: int = 64):
    """A random Llama with the bundled tokenizer and template: fast enough for per-commit tests."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(base)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
