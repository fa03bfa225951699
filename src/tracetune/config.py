"""Load and validate tasks.yaml and config.yaml before anything runs.

Every problem is reported as one line naming the file, the item and the field."""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import jsonschema
import yaml

from tracetune.jsonio import InputError

YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: every collect job reads the task file

SCHEMAS = resources.files("tracetune") / "schemas"


def load_schema(name: str) -> dict:
    return yaml.safe_load((SCHEMAS / name).read_text())


@functools.cache
def config_schema(name: str) -> dict:
    """A config schema, read once per process (every job asks for its section's)."""
    return load_schema(name)


def _fill_defaults(validator_class):
    """A validator that also writes schema defaults into the instance (as Snakemake's validate does)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))  # never the schema's own list
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


DefaultFillingValidator = _fill_defaults(jsonschema.Draft202012Validator)


def _location(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _deepest(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """For oneOf/anyOf, report the branch that got furthest: its message names the real field."""
    best = error
    while best.context:
        best = max(best.context, key=lambda e: len(e.absolute_path))
        if not best.context:
            break
    return best if len(best.absolute_path) >= len(error.absolute_path) else error


def validate(instance, schema: dict, where: str, describe=_location) -> None:
    validator = DefaultFillingValidator(schema, format_checker=jsonschema.FormatChecker())
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    if error is not None:
        error = _deepest(error)
        raise InputError(f"{where}: {describe(list(error.absolute_path))}: {error.message}")


# --- config.yaml -------------------------------------------------------------------------------

SECTIONS = ("endpoint", "collect", "curate", "dataset", "hub", "train", "merge", "serve", "evaluate", "report", "rl", "rounds")


def load_config(config: dict, where: str = "config.yaml") -> dict:
    """Validate config in place (filling defaults) against the top-level and section schemas."""
    validate(config, load_schema("config.schema.yaml"), where)
    for section in SECTIONS:
        name = f"config.{section}.schema.yaml"
        if (SCHEMAS / name).is_file():
            config.setdefault(section, {})
            validate(config[section], load_schema(name), where, lambda p, s=section: _location([s, *p]))
    return config


def read_config(path: str | Path) -> dict:
    """The config file at `path`, validated with defaults filled (load_config); a missing or
    unreadable file is an InputError naming it."""
    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    return load_config(config or {}, str(path))


def section_settings(section: str, given: dict | None = None, where: str = "config.yaml") -> dict:
    """A config section as a stage uses it: `given` (or nothing) checked against the section's
    schema, with the schema's defaults filled in. The schemas are the one place defaults live."""
    settings = copy.deepcopy(dict(given or {}))
    validate(settings, config_schema(f"config.{section}.schema.yaml"), where, lambda p: _location([section, *p]))
    return settings


# --- tasks.yaml --------------------------------------------------------------------------------

@dataclass
class TaskFile:
    path: str
    servers: dict[str, dict]
    tasks: dict[str, dict] = field(default_factory=dict)  # id -> task, in file order
    system_prompt: str | None = None

    def ids(self, split: str | None = None) -> list[str]:
        return [i for i, t in self.tasks.items() if split is None or t["split"] == split]


def task_hash(task: dict, servers: dict, system_prompt: str | None, judged: bool = False) -> str:
    """Everything that decides what collecting a task produces: a change reruns that task. Its
    check is left out (curation judges it) unless `judged`: evaluation runs and judges at once."""
    task = task if judged else {k: v for k, v in task.items() if k != "check"}
    spec = {"task": task, "servers": {s: servers[s] for s in task["servers"]}, "system": system_prompt}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _describe_task_path(doc: dict):
    def describe(path) -> str:
        if len(path) >= 2 and path[0] == "tasks" and isinstance(path[1], int):
            tasks = doc.get("tasks") or []
            task_id = tasks[path[1]].get("id") if isinstance(tasks[path[1]], dict) else None
            label = f"task {task_id!r}" if task_id else f"task #{path[1] + 1}"
            return f"{label}: {_location(path[2:])}" if path[2:] else label
        return _location(path)

    return describe


# The kinds a task's check may use: the task file's grammar, judged by tracetune.checks (which
# collection does not import, so editing how a check is judged reruns no collection).
CHECK_KINDS = ("contains", "regex", "tool_called", "tool_attempted", "no_tool_call", "all", "any")


def _check_kinds(check: dict, where: str) -> None:
    for kind, spec in check.items():
        if kind not in CHECK_KINDS:
            raise InputError(f"{where}: unknown check kind {kind!r} (known: {', '.join(CHECK_KINDS)})")
        if kind in ("all", "any"):
            for sub in spec:
                _check_kinds(sub, where)


PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _fill(value, variables: dict, where: str):
    """Put a variant's values into every string of a task; a string that is only a placeholder
    takes the value's own type (so `quantity: "{n}"` becomes the number n)."""
    if isinstance(value, dict):
        return {k: _fill(v, variables, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, variables, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    for name in PLACEHOLDER.findall(value):
        if name not in variables:
            raise InputError(f"{where}: no value for {{{name}}} in this variant")
    whole = PLACEHOLDER.fullmatch(value)
    if whole:
        return variables[whole.group(1)]
    return PLACEHOLDER.sub(lambda m: str(variables[m.group(1)]), value)


def expand_variants(tasks: list, path: str) -> list:
    """A task with `vary: [{name: value, ...}, ...]` stands for one task per variant, its
    `{name}` placeholders filled in (the id too, so that each variant has its own)."""
    expanded = []
    for i, task in enumerate(tasks):
        if not isinstance(task, dict) or "vary" not in task:
            expanded.append(task)
            continue
        label = f"{path}: task {task.get('id', f'#{i + 1}')!r}"
        variants = task["vary"]
        if not isinstance(variants, list) or not variants:
            raise InputError(f"{label}: vary: expected a non-empty list of mappings")
        body = {k: v for k, v in task.items() if k != "vary"}
        for j, variables in enumerate(variants):
            where = f"{label}: vary[{j}]"
            if not isinstance(variables, dict) or not all(
                    isinstance(v, (str, int, float, bool)) for v in variables.values()):
                raise InputError(f"{where}: expected a mapping of names to plain values")
            expanded.append({k: _fill(v, variables, f"{where}: {k}") for k, v in body.items()})  # _fill copies
    return expanded


def load_tasks(path: str | Path) -> TaskFile:
    path = str(path)
    try:
        doc = yaml.load(Path(path).read_text(), Loader=YAML_LOADER)
    except FileNotFoundError:
        raise InputError(f"{path}: task file not found") from None
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path}: expected a mapping with 'servers' and 'tasks'")
    if isinstance(doc.get("tasks"), list):
        doc["tasks"] = expand_variants(doc["tasks"], path)
    # Semantic checks first where the schema's message would be vaguer.
    for i, task in enumerate(doc.get("tasks") or []):
        if isinstance(task, dict) and isinstance(task.get("check"), dict):
            _check_kinds(task["check"], f"{path}: task {task.get('id', f'#{i + 1}')!r}: check")
    validate(doc, load_schema("tasks.schema.yaml"), path, _describe_task_path(doc))
    taskfile = TaskFile(path, doc["servers"], system_prompt=doc.get("system_prompt"))
    for task in doc["tasks"]:
        where = f"{path}: task {task['id']!r}"
        if task["id"] in taskfile.tasks:
            raise InputError(f"{where}: id: duplicate task id")
        unknown = [s for s in task["servers"] if s not in doc["servers"]]
        if unknown:
            raise InputError(f"{where}: servers: unknown server {unknown[0]!r} (known: {', '.join(doc['servers'])})")
        if task["split"] == "eval" and "check" not in task:
            raise InputError(f"{where}: check: an eval task needs a check (it is how the task is scored)")
        if isinstance(task["prompt"], str):
            task["prompt"] = [task["prompt"]]
        answers = sum(1 for step in task.get("reference", []) if "answer" in step)
        if task.get("reference") and answers != len(task["prompt"]):
            raise InputError(
                f"{where}: reference: {answers} answer step(s) for {len(task['prompt'])} user turn(s); "
                "each user turn needs one answer step"
            )
        if task.get("reference") and "answer" not in task["reference"][-1]:
            raise InputError(f"{where}: reference: the plan must end with an answer step")
        taskfile.tasks[task["id"]] = task
    return taskfile


def checked_train_tasks(taskfile: TaskFile, wanted: list[str], section: str, single_turn: bool = False) -> list[dict]:
    """The train tasks a stage that learns from checks (rl, rounds) uses: the `wanted` ones (each
    must qualify), or every train task that has a check (and one user turn, where `single_turn`).
    Eval tasks never reach them."""
    needs = "a check and a single user turn" if single_turn else "a check"
    tasks = []
    for task_id in wanted or [t for t, task in taskfile.tasks.items() if task["split"] == "train"]:
        task = taskfile.tasks.get(task_id)
        where = f"config.yaml: {section}.tasks: {task_id!r}"
        if task is None:
            raise InputError(f"{where}: not a task of {taskfile.path}")
        if task["split"] != "train":
            raise InputError(f"{where}: an eval task never reaches training")
        if "check" in task and (len(task["prompt"]) == 1 or not single_turn):
            tasks.append(task)
        elif wanted:
            raise InputError(f"{where}: {section} needs {needs}")
    if not tasks:
        raise InputError(f"config.yaml: {section}: no train task has {needs}")
    return tasks


def required_tools(check: dict, field: str = "") -> list[tuple[str, str]]:
    """(field, tool) for every tool a check requires whatever else happens: named by tool_called
    or tool_attempted at its top or under `all` (under `any`, another branch may pass instead)."""
    found = []
    for kind, spec in check.items():
        if kind in ("tool_called", "tool_attempted"):
            found += [(f"{field}{kind}", tool) for tool in (spec if isinstance(spec, list) else [spec])]
        elif kind == "all":
            for i, sub in enumerate(spec):
                found += required_tools(sub, f"{field}all[{i}].")
    return found


def check_reference_tools(taskfile: TaskFile, server_tools: dict[str, list[str]]) -> None:
    """A task's tools allowlist and its reference steps name tools its servers really offer, and
    the steps keep to the allowlist. (Servers of tasks with neither are not listed: unchecked.)"""
    for task_id, task in taskfile.tasks.items():
        offered = {t for s in task["servers"] for t in server_tools.get(s, [])}
        if not all(s in server_tools for s in task["servers"]):
            continue
        unknown = [t for t in task.get("tools") or [] if t not in offered]
        if unknown:
            raise InputError(f"{taskfile.path}: task {task_id!r}: tools: {unknown[0]!r} is not a tool of "
                             f"server(s) {', '.join(task['servers'])}")
        for check_field, tool in required_tools(task.get("check") or {}):
            if tool not in offered:
                raise InputError(f"{taskfile.path}: task {task_id!r}: check.{check_field}: {tool!r} is not a tool of "
                                 f"server(s) {', '.join(task['servers'])}, so the check can never pass")
        allowed = set(task.get("tools") or offered)
        for i, step in enumerate(task.get("reference", [])):
            tool = step.get("tool")
            if tool is None:
                continue
            if tool not in offered:
                raise InputError(
                    f"{taskfile.path}: task {task_id!r}: reference[{i}].tool: "
                    f"{tool!r} is not a tool of server(s) {', '.join(task['servers'])}"
                )
            if tool not in allowed:
                raise InputError(
                    f"{taskfile.path}: task {task_id!r}: reference[{i}].tool: {tool!r} is not in the task's tools allowlist"
                )
