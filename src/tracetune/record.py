"""Record a trace by hand (`tracetune record`): the agent runs as in collection, and a person
approves, edits or skips each tool call, then accepts, edits or continues the answer.

The loop and its Recorder are collection's (tracetune.agent.run_agent with a hook), so the trace
has every field of a collected one; it gets `source: recorded` and the id `{task}--rec{n}`, and is
appended to data/traces/recorded/{task}.jsonl, which curate reads beside the collected traces. A
new task (--prompt) joins the task file only with --save-task. Nothing is written before the
person accepts an answer: stopping, or Ctrl-C at any point, leaves every file as it was.

Plain input() and print(), so any terminal drives it (the tests use a pseudo-terminal)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import difflib
import itertools
import json
import re
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from tracetune.agent import Settings, run_agent
from tracetune.collect import task_toolbox
from tracetune.config import TaskFile, load_tasks, section_settings
from tracetune.jsonio import InputError, read_jsonl, write_jsonl, write_text
from tracetune.parsing import tool_call_problem, tool_schemas
from tracetune.report import pretty_arguments
from tracetune.runtime.endpoint import Endpoint, request_timeout, resolve_endpoint
from tracetune.trace import is_task_id, public_url, trace_header, trace_id, validate_trace

SHOWN_RESULT_CHARS = 800  # a long page would push the call being judged off the screen
CHECK_PROMPT = 'check (one line of YAML, e.g. {contains: "42"}; empty for none): '


class NothingSaved(Exception):
    """The recording ended without a trace to keep (stopped, or the model did not answer): one line."""


# --- what to record, checked before anything starts --------------------------------------------

@dataclass(frozen=True)
class Recording:
    taskfile: TaskFile
    task: dict
    new: bool  # a --prompt task, not (yet) in the task file
    save_task: bool
    endpoint: dict  # the endpoint section with the flags applied
    model_dir: str | None
    out_path: Path


def slug(text: str, limit: int = 48) -> str:
    """A task id from a prompt: its first words, lowercased, joined by '-'."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    out = ""
    for word in words:
        if len(out) + 1 + len(word) > limit:
            break
        out = f"{out}-{word}" if out else word
    return out or (words[0][:limit] if words else "recorded")


def names(value: str | None, flag: str) -> list[str]:
    """A comma-separated flag (--servers a,b) as a list."""
    items = [s.strip() for s in (value or "").split(",") if s.strip()]
    if value is not None and not items:
        raise InputError(f"{flag}: expected comma-separated names")
    return items


def existing_task(taskfile: TaskFile, task_id: str) -> dict:
    if task_id not in taskfile.tasks:
        close = difflib.get_close_matches(task_id, taskfile.tasks, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else " (a new one: --prompt and --servers)"
        raise InputError(f"{taskfile.path}: no task {task_id!r}{hint}")
    return taskfile.tasks[task_id]


def new_task(taskfile: TaskFile, prompts: list[str], servers: str | None, tools: str | None,
             task_id: str | None) -> dict:
    """A task from the flags, shaped as load_tasks would return it once saved (a training task)."""
    task_id = task_id or slug(prompts[0])
    if not is_task_id(task_id):
        raise InputError(f"--task-id {task_id!r}: use lowercase letters, digits, '.', '_' and '-'")
    if task_id in taskfile.tasks:
        raise InputError(f"{taskfile.path}: task {task_id!r} exists already (record it with `tracetune record "
                         f"{task_id}`, or name the new one with --task-id)")
    if any(not p.strip() for p in prompts):
        raise InputError("--prompt: empty")
    server_names = names(servers, "--servers")
    if not server_names:
        raise InputError("--servers: a new task needs the servers it uses (names of the task file's servers:)")
    unknown = [s for s in server_names if s not in taskfile.servers]
    if unknown:
        raise InputError(f"--servers: unknown server {unknown[0]!r} (known in {taskfile.path}: "
                         f"{', '.join(taskfile.servers)})")
    task = {"id": task_id, "split": "train", "prompt": list(prompts), "servers": server_names}
    if tools is not None:
        task["tools"] = names(tools, "--tools")
    return task


def existing_traces(path: Path) -> list[dict]:
    return [trace for _, trace in read_jsonl(path)] if path.is_file() else []


def plan(taskfile: TaskFile, endpoint: dict, out_dir: str | Path, *, task_id: str | None = None,
         prompts: list[str] | None = None, servers: str | None = None, tools: str | None = None,
         new_id: str | None = None, save_task: bool = False, model_dir: str | None = None) -> Recording:
    """Everything a recording needs, every bad input an InputError before a server starts."""
    if (task_id is None) == (not prompts):
        raise InputError("record: give a task id of the task file, or --prompt (and --servers) for a new task")
    if task_id is not None and (servers or tools or new_id or save_task):
        raise InputError("record: --servers, --tools, --task-id and --save-task describe a new task (--prompt)")
    task = existing_task(taskfile, task_id) if task_id else new_task(taskfile, prompts, servers, tools, new_id)
    endpoint = section_settings("endpoint", endpoint)
    if model_dir is not None:
        from tracetune.runtime.serving import check_servable

        check_servable(model_dir)
    elif resolve_endpoint(endpoint) is None:
        raise InputError("no endpoint: set endpoint.base_url in the config, or give --base-url or --model-dir")
    recording = Recording(taskfile, task, task_id is None, save_task, endpoint, model_dir,
                          Path(out_dir) / f"{task['id']}.jsonl")
    existing_traces(recording.out_path)  # a broken file stops here, not after the session
    if save_task:  # the task file must take the task before any work is done
        task_file_with(taskfile.path, task)
    return recording


# --- the task file ------------------------------------------------------------------------------

def saved_form(task: dict) -> dict:
    """The task as it is written in the task file: a lone user turn as a plain string."""
    prompt = task["prompt"]
    return task | {"prompt": prompt[0] if len(prompt) == 1 else prompt}


def _last_scalar(node: yaml.Node) -> yaml.Node:
    """The node that ends a block node: what the task's last line holds."""
    while isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and not node.flow_style and node.value:
        node = node.value[-1][1] if isinstance(node, yaml.MappingNode) else node.value[-1]
    return node


def with_task_appended(text: str, task: dict, where: str) -> str:
    """The task file's text with `task` as a block at the end of its `tasks:` list; everything
    else, comments included, is left as it was."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    tasks = next((v for k, v in root.value if k.value == "tasks"), None) if isinstance(root, yaml.MappingNode) else None
    if not isinstance(tasks, yaml.SequenceNode) or tasks.flow_style or not tasks.value:
        raise InputError(f"{where}: tasks: --save-task appends to a block list (`- id: …` lines); "
                         "this one is not, so add the task by hand")
    end = _last_scalar(tasks.value[-1]).end_mark.index
    if end == 0 or text[end - 1] != "\n":  # to the end of that line, past a comment on it
        newline = text.find("\n", end)
        end = len(text) if newline < 0 else newline + 1
    while text[:end].endswith("\n\n"):  # a block scalar's end takes in the blank lines after it
        end -= 1
    head = text[:end] if text[:end].endswith("\n") else text[:end] + "\n"
    block = yaml.safe_dump([saved_form(task)], sort_keys=False, allow_unicode=True, default_flow_style=None, width=100)
    indent = " " * tasks.start_mark.column  # the column of the list's dashes
    return head + "\n" + "".join(indent + line for line in block.splitlines(keepends=True)) + text[end:]


def checked_task_text(path: str, text: str) -> TaskFile:
    """The task file `text` would be, loaded from a temporary copy; an InputError names `path`."""
    with tempfile.TemporaryDirectory(prefix="tracetune-record-") as tmp:
        copy = Path(tmp) / Path(path).name
        copy.write_text(text, encoding="utf-8")
        try:
            return load_tasks(copy)
        except InputError as e:
            raise InputError(str(e).replace(str(copy), str(path))) from None


def task_file_with(path: str, task: dict) -> str:
    """The text of the task file at `path` with `task` added, checked to load."""
    text = with_task_appended(Path(path).read_text(encoding="utf-8"), task, path)
    checked_task_text(path, text)
    return text


def ask_check(path: str, task: dict) -> str:
    """The task file's text with the task and the check the person types (asked again while the
    task file would not load); without one, curation judges the task's traces by its other filters."""
    while True:
        line = ask(CHECK_PROMPT).strip()
        if not line:
            return task_file_with(path, task)
        try:
            check = yaml.safe_load(line)
        except yaml.YAMLError as e:
            print(f"  not YAML: {str(e).splitlines()[0]}")
            continue
        if not isinstance(check, dict):
            print('  a check is a mapping, e.g. {contains: "42"} or {tool_called: search_products}')
            continue
        try:
            return task_file_with(path, task | {"check": check})
        except InputError as e:
            print(f"  {e}")


# --- the person at the terminal -----------------------------------------------------------------

def ask(prompt: str) -> str:
    """input(), which Ctrl-C interrupts even inside the event loop: there asyncio.run's own SIGINT
    handler would only cancel the task at its next await, which a blocking input() never reaches."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return input(prompt)
    except EOFError:
        raise NothingSaved("input ended: nothing saved") from None
    finally:
        signal.signal(signal.SIGINT, previous)


def choose(prompt: str, letters: str) -> str:
    while True:
        answer = ask(prompt).strip().lower()[:1]
        if answer and answer in letters:
            return answer
        print(f"  type one of: {', '.join(letters)}")


def indented(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in text.splitlines() or [""])


def clipped(text: str, limit: int = SHOWN_RESULT_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit} more characters)"


def show_model_text(message: dict) -> None:
    if message.get("reasoning_content"):
        print(f"reasoning: {message['reasoning_content']}")
    if message.get("tool_calls") and (message.get("content") or "").strip():
        print(f"model: {message['content']}")


class Terminal:
    """The AgentHook of a recording: every tool call and the final answer go past the person."""

    def __init__(self, tools: list[dict]):
        self.schemas = tool_schemas(tools)

    def before_call(self, message: dict, call: dict) -> dict | str:
        if call is message["tool_calls"][0]:
            print()
            show_model_text(message)
        function = call["function"]
        print(f"tool call: {function['name']}")
        print(indented(pretty_arguments(function["arguments"])))
        problem = tool_call_problem(function, self.schemas)
        if problem is not None:
            print(f"  (invalid as it is: {problem.message})")
        while True:
            choice = choose("approve [a], edit arguments [e], skip with a message [s], stop [q]? ", "aesq")
            if choice == "a":
                return call
            if choice == "q":
                raise NothingSaved("stopped: nothing saved")
            if choice == "e" and (arguments := self.edited_arguments(function["name"])) is not None:
                return {**call, "function": {**function, "arguments": arguments}}
            if choice == "s" and (text := ask("message for the model (one line; empty to go back): ").strip()):
                return text

    def edited_arguments(self, tool: str) -> str | None:
        """Arguments typed as one line of JSON, asked again while the tool's schema rejects them;
        None (an empty line) goes back to the choice."""
        while True:
            text = ask("new arguments (JSON on one line; empty to go back): ").strip()
            if not text:
                return None
            problem = tool_call_problem({"name": tool, "arguments": text}, self.schemas)
            if problem is None:
                return json.dumps(json.loads(text), ensure_ascii=False)  # the agent's own spelling
            print(f"  invalid: {problem.message}")

    def after_call(self, call: dict, result: dict) -> None:
        print(f"result:\n{indented(clipped(result['content']))}")

    def after_answer(self, message: dict, next_turn: str | None) -> str | None:
        print()
        show_model_text(message)
        print(f"answer: {message['content'] or '(empty)'}")
        if next_turn is not None:
            print(f"\nuser: {next_turn}")
            return next_turn
        while True:
            choice = choose("accept [a], edit the answer [e], another user turn [u], stop [q]? ", "aeuq")
            if choice == "a":
                return None
            if choice == "q":
                raise NothingSaved("stopped: nothing saved")
            if choice == "e" and (text := ask("new answer (one line; empty to go back): ").strip()):
                message["content"] = text
                print(f"answer: {text}")
            if choice == "u" and (text := ask("user: ").strip()):
                return text


# --- the session --------------------------------------------------------------------------------

@contextlib.contextmanager
def model_endpoint(recording: Recording):
    """The endpoint to record with: a model directory or GGUF served for the session (stopped
    after it, also on Ctrl-C), else the configured server."""
    settings = recording.endpoint
    if recording.model_dir is None:
        yield resolve_endpoint(settings)
        return
    from tracetune.gguf import is_gguf
    from tracetune.runtime.serving import served_model

    device = "cpu"
    if not is_gguf(recording.model_dir):  # llama.cpp picks its own device; transformers serve is told
        import torch

        device = "auto" if torch.cuda.is_available() else "cpu"
    with served_model(recording.model_dir, device=device) as served:
        yield Endpoint(served.base_url, served.model, "", settings["timeout_s"], settings["max_retries"])


async def run_session(recording: Recording, endpoint: Endpoint, settings: Settings) -> dict:
    """One conversation through the person at the terminal, as an unnumbered trace."""
    task, taskfile = recording.task, recording.taskfile
    header = trace_header(task, taskfile, settings.truncate, endpoint.model, endpoint.base_url,
                          trace_id=trace_id(task["id"], "rec"), sample=0, source="recorded")
    async with endpoint.client() as client, contextlib.AsyncExitStack() as stack:
        client = client.with_options(timeout=await request_timeout(client, endpoint, settings))
        try:
            toolbox = await stack.enter_async_context(task_toolbox(task, taskfile, settings, header))
        except ValueError as e:  # the tools allowlist names a tool the servers lack
            raise InputError(f"task {task['id']!r}: {e}") from None
        print(f"tools: {', '.join(t['function']['name'] for t in header['tools'])}")
        print(f"\nuser: {task['prompt'][0]}")
        body = await run_agent(client, endpoint, toolbox, task, header["tools"], settings, 0,
                               taskfile.system_prompt, hook=Terminal(header["tools"]))
    return header | body


@contextlib.contextmanager
def uninterruptible():
    """Ctrl-C is ignored while the trace and the task file are written: both are, or neither."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def save(trace: dict, out_path: Path, task_path: str | None = None, task_text: str | None = None) -> dict:
    """Append the trace, numbered after the file's others, to `out_path` (the whole file rewritten
    atomically), and write the task file's new text when given."""
    traces = existing_traces(out_path)
    taken = {t.get("trace_id") for t in traces}
    n = next(n for n in itertools.count() if trace_id(trace["task_id"], f"rec{n}") not in taken)
    trace = trace | {"trace_id": trace_id(trace["task_id"], f"rec{n}"), "sample": n}
    validate_trace(trace, str(out_path))
    with uninterruptible():
        write_jsonl(out_path, [*traces, trace])
        if task_text is not None:
            write_text(task_path, task_text)
    return trace


def record(recording: Recording, settings: Settings) -> dict:
    """Run the session and save what the person accepted; returns the saved trace."""
    task = recording.task
    settings = dataclasses.replace(settings, concurrency=1)  # one conversation: the request timeout's sizing
    with model_endpoint(recording) as endpoint:
        print(f"recording {task['id']!r} with {endpoint.model} at {public_url(endpoint.base_url)} "
              f"(servers: {', '.join(task['servers'])})")
        trace = asyncio.run(run_session(recording, endpoint, settings))
    outcome = trace["outcome"]
    if outcome["status"] != "answered":
        why = outcome["error"] or f"{outcome['turns']} model turns"
        raise NothingSaved(f"the model did not finish ({outcome['status']}: {why}): nothing saved")
    task_text = ask_check(recording.taskfile.path, task) if recording.save_task else None
    trace = save(trace, recording.out_path, recording.taskfile.path, task_text)
    print(f"\nsaved {trace['trace_id']} to {recording.out_path}")
    if task_text is not None:
        print(f"added task {task['id']!r} to {recording.taskfile.path} (split: train)")
    elif recording.new:
        print(f"the task is not in {recording.taskfile.path} (--save-task adds it), so curation will not read this trace")
    return trace
