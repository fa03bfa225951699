"""Unroll curated traces into one training row per assistant turn, rendered with the base
model's chat template, with the loss region (the target turn) marked and checked.

For the assistant message at index i of a trace, the row's
- `prompt` is the template's rendering of messages[:i] with the generation prompt,
- `text` is the rendering of messages[:i+1] cut right after the target turn's end-of-turn token,
- `completion` = text[len(prompt):]: reasoning, content, tool calls and end-of-turn token.
Rendering each row on its own (not slicing one rendering of the whole trace) is what makes
templates such as Qwen3's, which drop reasoning from earlier turns, train every turn's reasoning
as the turn looks at the end of its history. Every row is verified; a template that cannot render
a row correctly is an error naming the trace and the turn.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from transformers import AutoTokenizer
from transformers.utils.chat_template_utils import (_alias_reasoning_fields, _compile_jinja_template,
                                                    _plain_template_data, _render_with_assistant_indices)

from tracetune.jsonio import InputError, atomic_path, read_jsonl, write_json, write_text
from tracetune.rows import in_loss, prefix_owners
from tracetune.toolsets import ToolRendering, distractor_pool, tool_lists

log = logging.getLogger(__name__)

SPLITS = ("train", "eval")
SCHEMA = pa.schema([
    ("id", pa.string()), ("trace_id", pa.string()), ("task_id", pa.string()), ("split", pa.string()),
    ("turn", pa.int32()), ("rendering", pa.int32()), ("messages", pa.string()), ("tools", pa.string()),
    ("prompt", pa.string()), ("completion", pa.string()), ("text", pa.string()),
    ("loss_start", pa.int32()), ("loss_end", pa.int32()), ("n_tokens", pa.int32()), ("n_loss_tokens", pa.int32()),
])
TRACES_PER_BATCH = 256  # traces rendered and tokenised together; also bounds memory


class RenderError(InputError):
    """A row the chat template cannot render correctly."""


# --- rendering ----------------------------------------------------------------------------------

@dataclass
class Renderer:
    tokenizer: object
    chat_template: str
    end_of_turn: str
    # Tokens the tokenizer adds around a text by itself (e.g. a BOS), counted as TRL counts them.
    added_tokens: int = 0
    # When the end-of-turn marker is one special token, the tokenizer splits on it before anything
    # else, so a text cut right after it tokenises as a prefix of any longer text it begins.
    prefix_tokenisation: bool = False
    has_generation_markers: bool = field(init=False)

    def __post_init__(self):
        self.has_generation_markers = "generation" in self.chat_template and "endgeneration" in self.chat_template

    @classmethod
    def load(cls, model_dir: str | Path, chat_template: str | None = None, end_of_turn: str | None = None):
        """The tokenizer of `model_dir`; `chat_template` (template text) replaces its own template,
        e.g. TRL's offline qwen3.jinja as a stand-in for a Qwen3 model."""
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        template = chat_template or tokenizer.chat_template
        if not isinstance(template, str) or not template:
            raise InputError(f"{model_dir}: tokenizer has no chat template")
        end_of_turn = end_of_turn or tokenizer.eos_token
        added = len(tokenizer("x")["input_ids"]) - len(tokenizer("x", add_special_tokens=False)["input_ids"])
        eot_ids = tokenizer(end_of_turn, add_special_tokens=False)["input_ids"]
        special = end_of_turn in tokenizer.all_special_tokens or end_of_turn in tokenizer.get_added_vocab()
        return cls(tokenizer, template, end_of_turn, added, special and len(eot_ids) == 1)

    def render(self, messages: list[dict], tools: list | None, add_generation_prompt: bool) -> tuple[str, list]:
        """What `tokenizer.apply_chat_template(..., tokenize=False)` returns (the tests compare the
        two), plus the generation spans; `messages` and `tools` must come from `template_data`.
        Calling the compiled template directly spares copying the whole history for every row."""
        template = _compile_jinja_template(self.chat_template)
        kwargs = dict(messages=messages, tools=tools or None, documents=None,
                      add_generation_prompt=add_generation_prompt)
        if self.has_generation_markers and not add_generation_prompt:
            return _render_with_assistant_indices(compiled_template=template, **kwargs)
        return template.render(**kwargs), []


def template_data(messages: list[dict], tools: list[dict] | None) -> tuple[list[dict], list[dict] | None]:
    """Messages and tools as transformers hands them to a template: plain JSON data (the
    sandbox's rule) with reasoning under every name templates read. Done once per rendering."""
    return _alias_reasoning_fields(_plain_template_data(messages)), _plain_template_data(tools) or None


def assistant_indices(trace: dict) -> list[int]:
    return [i for i, m in enumerate(trace["messages"]) if m["role"] == "assistant"]


def _check_turn(renderer: Renderer, message: dict, completion: str, where: str) -> None:
    """The loss region must hold the whole target turn: reasoning, content, calls, end of turn."""
    reasoning = (message.get("reasoning_content") or "").strip()
    if reasoning and reasoning not in completion:
        raise RenderError(f"{where}: reasoning_content: the template does not render the turn's reasoning in it")
    content = (message.get("content") or "").strip()
    if content and content not in completion:
        raise RenderError(f"{where}: content: not rendered in the turn's loss region")
    for call in message.get("tool_calls") or []:
        if call["function"]["name"] not in completion:
            raise RenderError(f"{where}: tool_calls: call {call['id']!r} not rendered in the turn's loss region")
    if not completion.endswith(renderer.end_of_turn):
        raise RenderError(f"{where}: the loss region does not end with {renderer.end_of_turn!r}")


def render_turn(renderer: Renderer, trace: dict, data: tuple, index: int, turn: int) -> tuple[str, str]:
    """(prompt, text) for the assistant message at `index` (the trace's `turn`-th assistant turn)."""
    where = f"trace {trace['trace_id']!r}: turn {turn} (messages[{index}])"
    messages, tools = data
    if not any(m["role"] == "user" for m in messages[:index]):
        raise RenderError(f"{where}: role: an assistant turn needs a user message before it")
    try:
        prompt, _ = renderer.render(messages[:index], tools, add_generation_prompt=True)
        full, spans = renderer.render(messages[:index + 1], tools, add_generation_prompt=False)
    except Exception as e:  # jinja errors raised by the template itself (raise_exception)
        raise RenderError(f"{where}: the chat template failed: {e}") from None
    if not full.startswith(prompt):
        raise RenderError(f"{where}: the prompt rendering is not a prefix of the rendering with the turn "
                          f"(they differ from character {_common_prefix(prompt, full)})")
    cut = full.find(renderer.end_of_turn, len(prompt))
    if cut < 0:
        raise RenderError(f"{where}: no end-of-turn {renderer.end_of_turn!r} after the prompt")
    end = cut + len(renderer.end_of_turn)
    if full[end:].strip():
        raise RenderError(f"{where}: text after the turn's end-of-turn token: {full[end:end + 40]!r}")
    if spans and not (end - len(renderer.end_of_turn) <= spans[-1][1] <= end):
        raise RenderError(f"{where}: the template's generation region ends at {spans[-1][1]}, the turn at {end}")
    text = full[:end]
    _check_turn(renderer, messages[index], text[len(prompt):], where)
    return prompt, text


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# --- unrolling ----------------------------------------------------------------------------------

def unroll_trace(renderer: Renderer, trace: dict, split: str, tools: list[dict] | None = None,
                 rendering: int = 0) -> list[dict]:
    """One row per assistant turn, rendered with `tools` (default: the trace's own), tokens not
    yet counted. Renderings after the first get their number in the row id."""
    tools = trace.get("tools") or [] if tools is None else tools
    tools_json = json.dumps(tools, ensure_ascii=False)
    suffix = f"@{rendering}" if rendering else ""
    rows = []
    data = template_data(trace["messages"], tools)
    for turn, index in enumerate(assistant_indices(trace)):
        prompt, text = render_turn(renderer, trace, data, index, turn)
        rows.append({
            "id": f"{trace['trace_id']}:{turn}{suffix}", "trace_id": trace["trace_id"], "task_id": trace["task_id"],
            "split": split, "turn": turn, "rendering": rendering,
            "messages": json.dumps(trace["messages"][:index + 1], ensure_ascii=False), "tools": tools_json,
            "prompt": prompt, "completion": text[len(prompt):], "text": text,
            "loss_start": len(prompt), "loss_end": len(text),
        })
    return rows


def unroll_renderings(renderer: Renderer, trace: dict, split: str, opts: ToolRendering,
                      pool: dict[str, dict]) -> list[dict]:
    """The trace's rows under each of its tool lists: `opts.renderings` for training, one for eval."""
    count = opts.renderings if split == "train" else 1
    return [row for r, tools in enumerate(tool_lists(trace, opts, pool, count))
            for row in unroll_trace(renderer, trace, split, tools, r)]


def count_tokens(renderer: Renderer, rows: list[dict]) -> None:
    """Set n_tokens (as TRL tokenises `text`) and n_loss_tokens (tracetune.rows' loss region),
    with batched fast tokenisation: once per trace where the template keeps prefixes."""
    owner = prefix_owners(rows) if renderer.prefix_tokenisation else list(range(len(rows)))
    targets = sorted(set(owner))
    encoded = renderer.tokenizer([rows[j]["text"] for j in targets], add_special_tokens=False,
                                 return_offsets_mapping=True, return_attention_mask=False)
    offsets_of = dict(zip(targets, encoded["offset_mapping"]))
    for row, j in zip(rows, owner):
        offsets = offsets_of[j]
        ends = [end for _, end in offsets]
        n_tokens = bisect.bisect_right(ends, row["loss_end"])
        if not n_tokens or ends[n_tokens - 1] != row["loss_end"]:
            raise RenderError(f"trace {row['trace_id']!r}: turn {row['turn']}: the text does not end on a token boundary")
        before = bisect.bisect_right(ends, row["loss_start"])  # tokens that end before the region
        row["n_tokens"] = n_tokens + renderer.added_tokens
        row["n_loss_tokens"] = sum(in_loss(offsets[before:n_tokens], [(row["loss_start"], row["loss_end"])]))


# --- the build ----------------------------------------------------------------------------------

def read_curated(paths: Iterable[str | Path], splits: dict[str, str]) -> Iterator[tuple[str, dict]]:
    """(split, trace) for every curated trace, tasks in id order, then files and traces in the order
    given. A file holds one task's traces and is named after it (a task may have several files:
    its curated traces and a round's kept samples)."""
    by_task = defaultdict(list)
    for path in paths:
        by_task[Path(path).name.removesuffix(".jsonl")].append(path)
    for task_id in sorted(by_task):
        for path in by_task[task_id]:
            if task_id not in splits:
                raise InputError(f"{path}: task {task_id!r} is not in the task file")
            for lineno, trace in read_jsonl(path):
                if trace.get("task_id") != task_id:
                    raise InputError(f"{path}:{lineno}: task_id: {trace.get('task_id')!r}, expected {task_id!r}")
                yield splits[task_id], trace


def _batches(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class SplitStats:
    rows: int = 0
    traces: set = field(default_factory=set)
    tasks: Counter = field(default_factory=Counter)
    tokens: int = 0
    loss_tokens: int = 0
    longest: int = 0
    dropped_too_long: list = field(default_factory=list)

    def summary(self) -> dict:
        return {"rows": self.rows, "traces": len(self.traces), "tasks": dict(sorted(self.tasks.items())),
                "tokens": self.tokens, "loss_tokens": self.loss_tokens, "longest_row_tokens": self.longest,
                "dropped_too_long": len(self.dropped_too_long), "dropped_too_long_ids": self.dropped_too_long}


def build_rows(renderer: Renderer, traces: list[tuple[str, dict]], max_seq_len: int,
               stats: dict[str, SplitStats], opts: ToolRendering, pool: dict[str, dict]) -> dict[str, list[dict]]:
    """Render and count one batch of traces; rows over max_seq_len are dropped and counted."""
    rows = [row for split, trace in traces for row in unroll_renderings(renderer, trace, split, opts, pool)]
    count_tokens(renderer, rows)
    kept = defaultdict(list)
    for row in rows:
        split_stats = stats[row["split"]]
        if row["n_tokens"] > max_seq_len:
            split_stats.dropped_too_long.append(row["id"])
            continue
        kept[row["split"]].append(row)
        split_stats.rows += 1
        split_stats.traces.add(row["trace_id"])
        split_stats.tasks[row["task_id"]] += 1
        split_stats.tokens += row["n_tokens"]
        split_stats.loss_tokens += row["n_loss_tokens"]
        split_stats.longest = max(split_stats.longest, row["n_tokens"])
    return kept


def write_parquet_splits(renderer: Renderer, traces: Iterable[tuple[str, dict]], out_paths: dict[str, str],
                         max_seq_len: int, opts: ToolRendering, pool: dict[str, dict]) -> dict[str, SplitStats]:
    """Stream traces into one Parquet file per split (rows in input order; no timestamps, so the
    same inputs give the same bytes). Files replace the old ones only when all succeeded."""
    stats = {split: SplitStats() for split in SPLITS}
    with atomic_path(out_paths["train"]) as train_tmp, atomic_path(out_paths["eval"]) as eval_tmp:
        writers = {split: pq.ParquetWriter(tmp, SCHEMA, compression="zstd")
                   for split, tmp in (("train", train_tmp), ("eval", eval_tmp))}
        try:
            for batch in _batches(traces, TRACES_PER_BATCH):
                for split, rows in build_rows(renderer, batch, max_seq_len, stats, opts, pool).items():
                    writers[split].write_table(pa.Table.from_pylist(rows, schema=SCHEMA))
        finally:
            for writer in writers.values():
                writer.close()
    return stats


def checked_for_leakage(traces: Iterable[tuple[str, dict]], sources: Counter) -> Iterator[tuple[str, dict]]:
    """Pass traces through, stopping the build if a task or trace shows up in both splits;
    count the traces' sources for the card on the way."""
    seen: dict[str, str] = {}
    for split, trace in traces:
        for key in (trace["task_id"], trace["trace_id"]):
            if seen.setdefault(key, split) != split:
                raise InputError(f"{key!r} is in both the train and the eval split")
        sources[f"{trace.get('source') or 'unknown'}" + (f" ({trace['model']})" if trace.get("model") else "")] += 1
        yield split, trace


def tool_rendering_note(opts: dict) -> str:
    offered = ("every tool of the task's servers" if opts["tool_list"] == "servers"
               else "the tools offered during collection")
    extras = [f"{opts['distractors']} distractor tool(s) of other servers" if opts["distractors"] else "",
              "in a shuffled order" if opts["shuffle"] else "", f"seed {opts['seed']}"]
    return (f"Each row offers {offered}, " + ", ".join(e for e in extras if e) +
            f"; every training trace is rendered {opts['renderings']} time(s), each with its own tool list "
            "(column `rendering`).")


def dataset_card(report: dict) -> str:
    splits = report["splits"]
    lines = [
        "---",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - {split: train, path: train.parquet}",
        "  - {split: eval, path: eval.parquet}",
        "tags: [tool-use, agent, mcp, sft, tracetune]",
        "---",
        "",
        "# tracetune dataset",
        "",
        "Agent traces collected against MCP tool servers, curated (checks passed, valid tool calls, "
        "duplicates dropped) and unrolled: one row per assistant turn, rendered with the base "
        f"model's chat template (base model: `{report['base_model']}`).",
        "",
        tool_rendering_note(report["tool_rendering"]),
        "",
        "Only the target turn is trained: `completion` (= `text[loss_start:loss_end]`) holds its "
        "reasoning, content, tool calls and end-of-turn token; `prompt` is the history before it "
        "with the generation prompt. `messages` and `tools` are JSON strings of the same turn.",
        "",
        "| split | rows | traces | tasks | tokens | loss tokens | dropped (too long) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for split in SPLITS:
        s = splits[split]
        lines.append(f"| {split} | {s['rows']} | {s['traces']} | {len(s['tasks'])} | {s['tokens']} | "
                     f"{s['loss_tokens']} | {s['dropped_too_long']} |")
    lines += ["", f"Rows longer than {report['max_seq_len']} tokens are dropped, never truncated.", "",
              "## Sources", ""]
    lines += [f"- {source}: {n} traces" for source, n in report["sources"].items()] or ["- (none)"]
    lines += ["", "## Tasks", "", "| task | split | rows |", "| --- | --- | --- |"]
    for split in SPLITS:
        lines += [f"| {task} | {split} | {n} |" for task, n in splits[split]["tasks"].items()]
    return "\n".join(lines) + "\n"


def build_dataset(curated_paths: list[str], splits: dict[str, str], model_dir: str, *, train_path: str,
                  eval_path: str, card_path: str, report_path: str, max_seq_len: int,
                  tool_rendering: ToolRendering = ToolRendering(), base_model: str = "",
                  chat_template: str | None = None) -> dict:
    """Curated traces → train/eval Parquet, dataset card and report."""
    renderer = Renderer.load(model_dir, chat_template)
    # Distractors come from every server's tools: a first pass reads them (only when asked for).
    pool = distractor_pool(t for _, t in read_curated(curated_paths, splits)) if tool_rendering.distractors else {}
    sources: Counter = Counter()
    traces = checked_for_leakage(read_curated(curated_paths, splits), sources)  # streamed: memory stays flat
    stats = write_parquet_splits(renderer, traces, {"train": train_path, "eval": eval_path}, max_seq_len,
                                 tool_rendering, pool)
    report = {"base_model": base_model or str(model_dir), "max_seq_len": max_seq_len,
              "tool_rendering": dataclasses.asdict(tool_rendering),
              "end_of_turn": renderer.end_of_turn, "sources": dict(sorted(sources.items())),
              "splits": {split: stats[split].summary() for split in SPLITS}}
    write_text(card_path, dataset_card(report))
    write_json(report_path, report)
    log.info("dataset: %s", {s: report["splits"][s]["rows"] for s in SPLITS})
    return report
