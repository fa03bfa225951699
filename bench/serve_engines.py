"""CPU serving engines on the evaluation's own workload: llama.cpp (bf16 and q8_0 GGUF) against
`transformers serve` (continuous batching, the previous default), serving the same model.

Each engine answers the demo's eval prompts as the agent sends them: every tool of the shop
server listed, 8 conversations at a time, up to 64 new tokens, temperature 0; then each conversation
goes on with the call's result (a second turn over the same prefix). Prints wall time, new
tokens/s, mean latency per request and how many replies carried a tool call (structured, or
Hermes text that tracetune.parsing reads).

    .venv/bin/python bench/serve_engines.py [--model data/models/lora] [--prompts N]
                                            [--engines llama.cpp-bf16,llama.cpp-q8_0,transformers]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from openai import AsyncOpenAI

from tracetune.config import load_tasks
from tracetune.mcp_client import ToolBox
from tracetune.parsing import normalize_assistant
from tracetune.gguf import export_gguf
from tracetune.runtime.serving import served_model

ROOT = Path(__file__).resolve().parents[1]


async def shop_tools() -> list[dict]:
    taskfile = load_tasks(ROOT / "tasks.yaml")
    async with ToolBox({"shop": taskfile.servers["shop"]}) as box:
        return box.openai_tools(["shop"])


async def workload(served, prompts: list[str], tools: list[dict]) -> dict:
    client = AsyncOpenAI(base_url=served.base_url, api_key="none", timeout=1800, max_retries=0)
    limit = asyncio.Semaphore(8)
    latencies, tokens, calls = [], 0, 0

    async def turn(messages):
        nonlocal tokens
        async with limit:
            start = time.perf_counter()
            reply = await client.chat.completions.create(model=served.model, messages=messages, tools=tools,
                                                         max_tokens=64, temperature=0, seed=0)
            latencies.append(time.perf_counter() - start)
            tokens += reply.usage.completion_tokens
            return normalize_assistant(reply.choices[0].message.model_dump(), "call_")

    async def conversation(prompt):
        nonlocal calls
        messages = [{"role": "user", "content": prompt}]
        first = await turn(messages)
        calls += bool(first.get("tool_calls"))
        messages.append(first)
        for call in first.get("tool_calls", []):
            messages.append({"role": "tool", "tool_call_id": call["id"], "name": call["function"]["name"],
                             "content": '{"result": "ok"}'})
        if first.get("tool_calls"):
            await turn(messages)

    async with client:
        start = time.perf_counter()
        await asyncio.gather(*(conversation(p) for p in prompts))
        wall = time.perf_counter() - start
    return {"wall_s": round(wall, 1), "requests": len(latencies), "new_tokens_per_s": round(tokens / wall, 1),
            "mean_latency_s": round(statistics.mean(latencies), 2), "first_turns_with_a_call": f"{calls}/{len(prompts)}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "data/models/lora"), help="a model directory (the tuned one calls tools)")
    parser.add_argument("--engines", default="llama.cpp-bf16,llama.cpp-q8_0,transformers")
    parser.add_argument("--prompts", type=int, default=None, help="the first N eval prompts only")
    args = parser.parse_args()
    taskfile = load_tasks(ROOT / "tasks.yaml")
    prompts = [taskfile.tasks[t]["prompt"][0] for t in taskfile.ids("eval")][:args.prompts]
    tools = asyncio.run(shop_tools())
    print(f"{args.model}: {len(prompts)} eval prompts, {len(tools)} tools listed")
    with tempfile.TemporaryDirectory() as tmp:
        for engine in args.engines.split(","):
            path = args.model if engine == "transformers" else export_gguf(
                args.model, Path(tmp) / f"{engine}.gguf", engine.split("-", 1)[1])
            start = time.perf_counter()
            with served_model(path) as served:
                ready_s = time.perf_counter() - start
                result = asyncio.run(workload(served, prompts, tools))
            print(json.dumps({"engine": engine, "start_s": round(ready_s, 1)} | result))


if __name__ == "__main__":
    main()
