"""Merge: 16-bit safetensors that transformers loads with the same outputs as base + adapter, and
that llama.cpp (after GGUF export) and `transformers serve` answer with a structured tool call."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from train_fixtures import make_trace, render_rows  # noqa: E402

from tracetune.jsonio import InputError  # noqa: E402
from tracetune.merge import merge  # noqa: E402
from tracetune.train import train  # noqa: E402
from tracetune.gguf import export_gguf  # noqa: E402
from tracetune.runtime.serving import served_model  # noqa: E402



@pytest.fixture(scope="module")
def tokenizer(bundled_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_model)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_merged_model_matches_base_plus_adapter(tmp_path, tokenizer, dtype, tiny_base, tiny_adapter):
    import torch
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tiny = tiny_base
    out = merge(tiny_adapter, tiny, tmp_path / "merged", {"dtype": dtype})
    with safe_open(out / "model.safetensors", "pt") as weights:
        assert {str(weights.get_tensor(k).dtype) for k in weights.keys()} == {f"torch.{dtype}"}
        assert not any("lora" in k for k in weights.keys())
    merged_tok = AutoTokenizer.from_pretrained(out)
    assert merged_tok.chat_template == tokenizer.chat_template
    assert json.loads((out / "tokenizer_config.json").read_text())["response_template"]["start_anchor"]
    ids = torch.tensor([tokenizer("<|im_start|>user\nhello<|im_end|>")["input_ids"]])
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32),
                                          tiny_adapter).eval()
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        expected, got = reference(ids).logits, merged(ids).logits
    assert not torch.equal(expected, AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)(ids).logits)
    assert torch.allclose(expected, got, atol=0.05)


def test_missing_adapter_is_one_line(tmp_path, bundled_model):
    with pytest.raises(InputError, match="adapter: adapter_config.json missing"):
        merge(tmp_path / "nope", bundled_model, tmp_path / "out")


TOOL_TRACE = make_trace(3, turns=1, reasoning=False)


@pytest.fixture(scope="module")
def overfit_merged(tmp_path_factory, tokenizer, bundled_model) -> Path:
    """The bundled model overfit on one tool-calling turn and merged, once for both engines. Trained
    in float32 on every CPU kind: 12 steps in bf16 weights (AVX512-BF16 CPUs) leave the call
    malformed under transformers' greedy decoding ('{"name": "steel bolt" "arguments": ...'),
    and this test is about serving a merged model, not about bf16 training."""
    import polars as pl

    tmp = tmp_path_factory.mktemp("overfit")
    pl.DataFrame(render_rows(tokenizer, TOOL_TRACE)[:1]).write_parquet(tmp / "train.parquet")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("tracetune.models.bf16_native", lambda device: False)
        train(tmp / "train.parquet", bundled_model, tmp / "adapter",
              {"max_steps": 12, "learning_rate": 2e-3, "save_steps": 100}, checkpoint_dir=tmp / "ckpt")
    return merge(tmp / "adapter", bundled_model, tmp / "merged")


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["llama.cpp", "transformers"])
def test_served_merged_model_returns_a_structured_tool_call(engine, tmp_path, overfit_merged):
    """Serve the overfit merged model, ask the question it was trained on."""
    from openai import OpenAI

    trace, out = TOOL_TRACE, overfit_merged
    served_path = export_gguf(out, tmp_path / "merged.gguf") if engine == "llama.cpp" else out
    with served_model(served_path, log_path=tmp_path / "serve.log") as served:
        client = OpenAI(base_url=served.base_url, api_key="none", timeout=60, max_retries=0)
        reply = client.chat.completions.create(model=served.model, messages=trace["messages"][:1],
                                               tools=trace["tools"], temperature=0, max_tokens=40)
    calls = reply.choices[0].message.tool_calls
    assert calls, reply.choices[0].message
    expected = trace["messages"][1]["tool_calls"][0]["function"]
    assert calls[0].function.name == expected["name"]
    assert json.loads(calls[0].function.arguments) == json.loads(expected["arguments"])
