"""RL throughput: a few GRPO steps of the grpo rule's code path (TRL GRPOTrainer, one fresh set of
MCP servers per rollout) on the demo's train tasks, timed by part.

    .venv/bin/python bench/rl_throughput.py [--base data/models/base] [--adapter data/adapters/lora]
                                            [--steps 3] [--group 4] [--tasks-per-step 2] [--micro-batch 1]

Prints rollouts per minute, seconds per optimizer step, peak memory, and the share of the wall time spent in
generation (the policy's `generate`), in tools (MCP calls, servers started per rollout included)
and in the rest (log-probabilities, loss, backward and optimizer: "training"). Without an adapter
the policy is a fresh LoRA on the base model (rl.init: base).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Timer:
    def __init__(self):
        self.seconds = 0.0

    def wrap(self, function):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
        return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=str(ROOT / "data/models/base"))
    parser.add_argument("--adapter", default=str(ROOT / "data/adapters/lora"))
    parser.add_argument("--tasks", default=str(ROOT / "tasks.yaml"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--tasks-per-step", type=int, default=2)
    parser.add_argument("--max-completion-length", type=int, default=384)
    parser.add_argument("--micro-batch", type=int, default=1, help="rl.micro_batch: rollouts per forward/backward")
    args = parser.parse_args()

    from trl import GRPOTrainer

    from tracetune import rl
    from tracetune.config import load_tasks
    from tracetune.models import bf16_native

    generation, tools = Timer(), Timer()
    GRPOTrainer._generate_single_turn = generation.wrap(GRPOTrainer._generate_single_turn)
    rl.TaskEnvironment.reset = tools.wrap(rl.TaskEnvironment.reset)  # the servers start here
    rl.TaskEnvironment._call = tools.wrap(rl.TaskEnvironment._call)
    adapter = args.adapter if Path(args.adapter, "adapter_config.json").is_file() else None
    settings = {"group_size": args.group, "tasks_per_step": args.tasks_per_step, "max_steps": args.steps,
                "max_completion_length": args.max_completion_length, "save_steps": 10_000,
                "micro_batch": args.micro_batch}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        summary = rl.run_rl(load_tasks(args.tasks), args.base, adapter, Path(tmp) / "adapter", Path(tmp) / "state",
                            settings)
        wall = time.perf_counter() - started
    train_wall = summary["wall_s"]
    rollouts = summary["steps"] * summary["rollouts_per_step"]
    rest = train_wall - generation.seconds - tools.seconds
    print(f"policy: {'SFT adapter ' + adapter if adapter else 'fresh LoRA on ' + args.base}; "
          f"cpu bf16 native: {bf16_native('cpu')}; device: {summary['device']}")
    print(f"{summary['steps']} steps × {summary['rollouts_per_step']} rollouts ({args.group} per prompt), "
          f"max {args.max_completion_length} completion tokens, {args.micro_batch} per forward/backward")
    print(f"rollouts per minute      {60 * rollouts / train_wall:8.1f}")
    print(f"seconds per step         {train_wall / summary['steps']:8.1f}")
    print(f"generation               {100 * generation.seconds / train_wall:7.0f} %")
    print(f"tools (servers, calls)   {100 * tools.seconds / train_wall:7.0f} %")
    print(f"training (the rest)      {100 * rest / train_wall:7.0f} %")
    print(f"mean reward: first step {summary['first_reward']}, last step {summary['final_reward']}")
    print(f"wall time with setup     {wall:8.1f} s")
    print(f"peak memory (RSS)        {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:8.2f} GiB")


if __name__ == "__main__":
    main()
