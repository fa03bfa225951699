"""Preparing the base model: the bundled GGUF becomes a bf16 model with a tool-aware template."""

import json

import pytest

from tracetune.jsonio import InputError
from tracetune.models import load_tokenizer, prepare_base_model


@pytest.fixture(scope="session")
def base_dir(bundled_model):
    return bundled_model


TOOLS = [{"type": "function", "function": {
    "name": "get_price", "description": "Price of an item",
    "parameters": {"type": "object", "properties": {"item": {"type": "string"}}, "required": ["item"]}}}]


def test_bundled_model_is_saved_with_tool_templates(base_dir):
    config = json.loads((base_dir / "config.json").read_text())
    assert config["dtype"] == "bfloat16" or config.get("torch_dtype") == "bfloat16"
    assert (base_dir / "model.safetensors").is_file()
    assert json.loads((base_dir / "tracetune_base.json").read_text()) == {"base_model": "bundled:smollm2-135m"}
    assert not [p for p in base_dir.parent.iterdir() if p.name.startswith(".base.")]  # no temp dir left


def test_template_renders_a_tool_conversation(base_dir):
    tokenizer = load_tokenizer(base_dir)
    messages = [
        {"role": "user", "content": "How much is the blue widget?"},
        {"role": "assistant", "content": "", "reasoning_content": "I should look it up.",
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "get_price", "arguments": '{"item": "blue widget"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "name": "get_price", "content": "12.50"},
        {"role": "assistant", "content": "It costs $12.50."},
    ]
    text = tokenizer.apply_chat_template(messages, tools=TOOLS, tokenize=False)
    system = text.split("<|im_end|>")[0]  # tools listed in the system turn, compact but whole
    assert '{"name":"get_price","description":"Price of an item","parameters":{' in system
    assert '<tool_call>\n{"name": "get_price", "arguments": {"item": "blue widget"}}\n</tool_call>' in text
    assert "<tool_response>\n12.50\n</tool_response>" in text
    assert "<think>\nI should look it up.\n</think>" in text
    assert text.rstrip().endswith("It costs $12.50.<|im_end|>")


def test_response_template_parses_a_hermes_tool_call(base_dir):
    tokenizer = load_tokenizer(base_dir)
    generated = ('<tool_call>\n{"name": "get_price", "arguments": {"item": "red widget"}}\n</tool_call><|im_end|>')
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Price of the red widget?"}],
                                           tools=TOOLS, tokenize=False, add_generation_prompt=True)
    parsed = tokenizer.parse_response(generated, prefix=prompt)
    call = parsed["tool_calls"][0]
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_price"
    assert call["function"]["arguments"] == {"item": "red widget"}


@pytest.mark.parametrize("generated, name, arguments", [
    ('<tool_call>\n{"name": "get_price", "arguments": {"item": "red"}\n</tool_call><|im_end|>', "get_price", '{"item": "red"'),
    ('<tool_call>\n{"name": "get_price", "arguments": {"item": "re', "get_price", '{"item": "re'),
])
def test_malformed_tool_call_json_is_passed_through_not_raised(base_dir, generated, name, arguments):
    """A small model's broken call must reach the agent (which answers it with a tool error):
    a parser that raises makes `transformers serve` answer 500 for the whole turn."""
    parsed = load_tokenizer(base_dir).parse_response(generated, prefix="<|im_start|>assistant\n")
    assert parsed["tool_calls"][0]["function"] == {"name": name, "arguments": arguments}


@pytest.mark.parametrize("base_model, expected", [
    ("/no/such/model", "does not exist"),
    ("bundled:nope", "unknown bundled model"),
])
def test_bad_base_model_is_one_line(tmp_path, base_model, expected):
    with pytest.raises(InputError, match=expected) as err:
        prepare_base_model(base_model, tmp_path / "out")
    assert "\n" not in str(err.value) and "base_model" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="not a model directory"):
        prepare_base_model(str(tmp_path), tmp_path / "out")
    with pytest.raises(InputError, match="not a model directory"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("device, native, dtype, flags", [
    ("cuda", True, "bfloat16", {"bf16": True, "fp16": False}),
    ("cuda", False, "float32", {"bf16": False, "fp16": True}),  # pre-Ampere: float32 weights, fp16 autocast
    ("cpu", True, "bfloat16", {"bf16": True, "fp16": False}),
    ("cpu", False, "float32", {"bf16": False, "fp16": False}),
])
def test_one_precision_rule_for_the_weights_and_the_trainers_flags(monkeypatch, device, native, dtype, flags):
    """SFT (backends.sft_config) and RL (GRPOConfig) take their flags from mixed_precision, and
    both load weights with weights_dtype: bf16 weights never meet a trainer told not to use bf16."""
    import torch

    import tracetune.models as models

    monkeypatch.setattr(models, "bf16_native", lambda d: native)
    assert models.weights_dtype(device) == getattr(torch, dtype)
    assert models.mixed_precision(device) == flags


def test_sft_uses_the_one_precision_rule(monkeypatch, tmp_path):
    import tracetune.models as models
    from tracetune.backends import sft_config
    from tracetune.config import section_settings

    monkeypatch.setattr(models, "bf16_native", lambda d: False)
    config = sft_config(tmp_path, section_settings("train"), "cpu")
    assert (config.bf16, config.fp16) == (False, False)
