"""Everything checked before any job runs: config.yaml, the task file, the tools of the servers
its reference plans use, the rendering options and the base model. A bad input stops the run with
one line that names the file, the item and the field; nothing is built or touched first."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tracetune.benchmarks import check_benchmarks_installed
from tracetune.config import TaskFile, check_reference_tools, load_config, load_tasks
from tracetune.evaluate import eval_task_ids
from tracetune.jsonio import InputError, write_json
from tracetune.models import BUNDLED_PREFIX, bundled_gguf, check_base_model, check_target_modules, module_names
from tracetune.toolsets import ToolRendering, check_task_options


def check_inputs(config: dict, cache_dir: str | Path, where: str = "config.yaml") -> TaskFile:
    """Validate `config` in place (defaults filled in) and the task file it names; return the tasks."""
    # The cheap checks first: reading files. Then what starts servers, then what imports torch.
    load_config(config, where)
    check_benchmarks_installed(config["evaluate"]["benchmarks"], where)
    taskfile = load_tasks(config["tasks"])
    check_base_model(config["base_model"])
    models = config["evaluate"]["models"]
    if models:
        eval_task_ids(taskfile)
        if config["report"]["baseline"] not in models:
            raise InputError(f"{where}: report.baseline: {config['report']['baseline']!r} is not one of "
                             f"evaluate.models ({', '.join(models)})")
    server_tools = cached_server_tools(taskfile, cache_dir)
    check_reference_tools(taskfile, server_tools)
    check_task_options(ToolRendering.from_config(config["dataset"]), taskfile, server_tools, where)
    names = cached_module_names(config["base_model"], cache_dir)
    if names is not None:
        check_target_modules(config["train"]["target_modules"], names, config["base_model"])
    return taskfile


def cached_server_tools(taskfile: TaskFile, cache_dir: str | Path) -> dict[str, list[str]]:
    """Tool names of the servers that a task names tools of (a reference plan, a tools allowlist),
    listed from the live servers once and cached by server spec (the demo servers' code is hashed
    in too, so editing them re-lists)."""
    from tracetune.mcp_client import list_server_tools  # here: the MCP SDK loads only on a cache miss

    used = sorted({s for t in taskfile.tasks.values() if t.get("reference") or t.get("tools") for s in t["servers"]})
    servers = {name: taskfile.servers[name] for name in used}
    if not servers:
        return {}
    code = "".join(p.read_text() for p in sorted((Path(__file__).parent / "servers").glob("*.py")))

    def listed() -> dict[str, list[str]]:
        try:
            return list_server_tools(servers)
        except Exception as e:
            raise InputError(f"{taskfile.path}: servers: could not list tools ({type(e).__name__}: {e})") from None

    return _cached(Path(cache_dir) / "server-tools", json.dumps(servers, sort_keys=True) + code, listed)


def cached_module_names(base_model: str, cache_dir: str | Path) -> set[str] | None:
    """The base model's module names (tracetune.models.module_names), found once per model config
    and cached (torch loads only then); None for a hub id, whose config is not here before download."""
    if base_model.startswith(BUNDLED_PREFIX):
        gguf = bundled_gguf(base_model[len(BUNDLED_PREFIX):])
        identity = f"{gguf}:{gguf.stat().st_size}"
    elif (Path(base_model).expanduser() / "config.json").is_file():
        identity = (Path(base_model).expanduser() / "config.json").read_text()
    else:
        return None
    model = base_model if base_model.startswith(BUNDLED_PREFIX) else Path(base_model).expanduser()
    return set(_cached(Path(cache_dir) / "module-names", f"{base_model}\n{identity}",
                       lambda: sorted(module_names(model))))


def _cached(prefix: Path, identity: str, compute):
    """compute(), kept as JSON in {prefix}-{hash of identity}.json: computed once per identity."""
    cache = prefix.with_name(f"{prefix.name}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.json")
    if cache.is_file():
        return json.loads(cache.read_text())
    value = compute()
    write_json(cache, value)
    return value
