"""CPU serving throughput, one server alone and two side by side (as evaluate runs the base and
the tuned model), with the threads the workflow gives each server and with every core each.

Each server answers 8 concurrent chat requests of up to 64 new tokens, after a warm-up round.

    .venv/bin/python bench/serve_side_by_side.py [--model data/models/base]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from pathlib import Path

from openai import AsyncOpenAI

from tracetune.runtime.serving import cpu_server_threads, served_model

ROOT = Path(__file__).resolve().parents[1]


async def tokens_per_s(served) -> float:
    client = AsyncOpenAI(base_url=served.base_url, api_key="none", timeout=600, max_retries=0)

    async def one(i: int) -> int:
        reply = await client.chat.completions.create(
            model=served.model, messages=[{"role": "user", "content": f"Tell me about item {i}."}],
            max_tokens=64, temperature=0)
        return reply.usage.completion_tokens

    async with client:
        await asyncio.gather(*(one(i) for i in range(8)))
        start = time.perf_counter()
        tokens = sum(await asyncio.gather(*(one(i) for i in range(8))))
        return tokens / (time.perf_counter() - start)


def run(model: str, servers: int, threads: int) -> list[float]:
    os.environ["OMP_NUM_THREADS"] = str(threads)  # start_server passes it on
    with contextlib.ExitStack() as stack:
        served = [stack.enter_context(served_model(model)) for _ in range(servers)]

        async def all_at_once():
            return await asyncio.gather(*(tokens_per_s(s) for s in served))

        return asyncio.run(all_at_once())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(ROOT / "data/models/base"), help="a prepared model directory")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    os.environ.pop("OMP_NUM_THREADS", None)
    chosen = cpu_server_threads()
    print(f"{cores} usable cores; the workflow gives each CPU server {chosen} thread(s)")
    for threads, label in ((chosen, "workflow"), (cores, "every core")):
        alone = run(args.model, 1, threads)[0]
        pair = run(args.model, 2, threads)
        print(f"{label:>10} ({threads} thread(s)/server): alone {alone:6.0f} tok/s; side by side "
              f"{' + '.join(f'{x:.0f}' for x in pair)} = {sum(pair):.0f} tok/s ({sum(pair) / alone:.2f}x alone)")


if __name__ == "__main__":
    main()
