"""Which settings reach a job as params: each setting is of one kind, declared once in its
schema as `x-kind` (none: result).
  result       can change an output: it reaches jobs as params, so changing it reruns exactly
               the jobs whose params it changes;
  operational  changes only how a job runs (concurrency, timeouts, retries, checkpoint cadence,
               failure thresholds): never a param, so changing it reruns nothing;
  target       names files (the task file, a training run): it reaches jobs through their paths
               and the tasks' spec hashes, never as a param.
Rules pass `result_settings(config, ...)` as params; a rule script adds what it needs of
`untracked_settings(snakemake.config, ...)`, which hands out no result setting.

Part of tracetune.runtime: what it decides reaches jobs as params, which Snakemake compares
itself, so no code fingerprint needs it."""

from __future__ import annotations

from tracetune.config import SECTIONS, config_schema
from tracetune.jsonio import InputError, read_jsonl

KINDS = ("result", "operational", "target")


def setting_schema(*path: str) -> dict:
    """The schema of the setting at `path` (("collect",), ("evaluate", "loss", "device"), ...)."""
    if path and path[0] in SECTIONS:
        schema, rest = config_schema(f"config.{path[0]}.schema.yaml"), path[1:]
    else:
        schema, rest = config_schema("config.schema.yaml"), path
    for key in rest:
        if key in schema.get("properties", {}):
            schema = schema["properties"][key]
        elif isinstance(schema.get("additionalProperties"), dict):
            schema = schema["additionalProperties"]
        else:
            raise KeyError(f"config.yaml: {'.'.join(path)}: no such setting")
    return schema


def setting_kind(*path: str) -> str:
    kind = setting_schema(*path).get("x-kind", "result")
    if kind not in KINDS:
        raise ValueError(f"schema of {'.'.join(path)}: x-kind: {kind!r} is not one of {', '.join(KINDS[1:])}")
    return kind


def setting_kinds() -> dict[str, str]:
    """The kind of every setting by dotted path ('*' is any key: evaluate.endpoints.*.timeout_s)."""
    kinds = {}

    def walk(schema: dict, path: tuple[str, ...]) -> None:
        subs = dict(schema.get("properties", {}))
        if isinstance(schema.get("additionalProperties"), dict):
            subs["*"] = schema["additionalProperties"]
        if not subs or "x-kind" in schema:
            kinds[".".join(path)] = setting_kind(*path)  # '*' finds additionalProperties
            return
        for key, sub in subs.items():
            walk(sub, (*path, key))

    for key, sub in config_schema("config.schema.yaml")["properties"].items():
        walk(sub, (key,))
    for section in SECTIONS:
        walk(config_schema(f"config.{section}.schema.yaml"), (section,))
    return kinds


_NOTHING = object()


def split_settings(value, *path: str) -> tuple:
    """(result part, untracked part) of the value of the setting at `path`: a mapping is split key
    by key (nested ones too, keys sorted so that their order in config.yaml never matters); an
    absent part is _NOTHING."""
    if path and setting_kind(*path) != "result":
        return _NOTHING, value
    if not isinstance(value, dict) or setting_schema(*path).get("type") != "object":
        return value, _NOTHING
    result, untracked = {}, {}
    for key, sub in sorted(value.items()):
        tracked, other = split_settings(sub, *path, key)
        if tracked is not _NOTHING:
            result[key] = tracked
        if other is not _NOTHING and other != {}:
            untracked[key] = other
    return result, untracked


def _setting(config: dict, path: tuple[str, ...]):
    value = config
    for key in path:
        value = value[key]
    return value


def result_settings(config: dict, *path: str):
    """The setting at `path` without its operational and target parts: what a rule passes as params."""
    result, _ = split_settings(_setting(config, path), *path)
    if result is _NOTHING:
        kind = setting_kind(*path)
        raise ValueError(f"config.yaml: {'.'.join(path)}: {'an' if kind == 'operational' else 'a'} {kind} setting, "
                         "never a param")
    return result


def untracked_settings(config: dict, *path: str):
    """The operational and target parts of the setting at `path`, which Snakemake does not track:
    what a rule script reads from snakemake.config beside its params."""
    _, untracked = split_settings(_setting(config, path), *path)
    if untracked is _NOTHING:
        raise ValueError(f"config.yaml: {'.'.join(path)}: a result setting: it reaches a job as a param")
    return untracked


def endpoint_path(config: dict, model: str | None = None) -> tuple[str, ...] | None:
    """Where the endpoint settings of a job are: evaluate.endpoints.{model}, else endpoint when it
    names a server (collection, and evaluating base there), else None (the workflow serves the model)."""
    if model is not None and model in config["evaluate"]["endpoints"]:
        return ("evaluate", "endpoints", model)
    if config["endpoint"]["base_url"] and model in (None, "base"):
        return ("endpoint",)
    return None


def kept_truncate(paths, configured: int) -> int:
    """The cut of tool results for a job writing traces to `paths`, passed to it as a param and
    used by it: the cut its existing traces were made with, as long as none of their tool results
    is longer than that cut or the configured one (the output is the same under both), else the
    configured cut. So a new `truncate` reruns only jobs whose output it changes, and a finished
    job's traces give back the param it ran with: a dry run right after plans nothing. (A job rerun
    for another reason may keep the old cut too; should one of its new results be longer than the
    configured cut, the next run cuts it there.) No traces yet, traces without their cut, or of
    several cuts: the configured one."""
    try:
        traces = [trace for path in paths for _, trace in read_jsonl(path)]
    except (OSError, InputError):
        return configured
    cuts = {trace.get("truncate") for trace in traces}
    if len(cuts) != 1 or not isinstance(kept := cuts.pop(), int):
        return configured
    lengths = [trace.get("longest_tool_result") for trace in traces]
    if not all(isinstance(n, int) for n in lengths) or max(lengths) > min(kept, configured):
        return configured
    return kept
