"""Serve a model on loopback with llama.cpp or `transformers serve`, and make sure it stops.

What is served decides the engine: a GGUF file (data/gguf/{model}.gguf, made from the model
directory by tracetune.gguf) runs under llama.cpp's `llama-server`; a model directory runs under
`transformers serve`. On a CPU llama.cpp is the fast one: it reuses the prompt prefix (system
turn and tool list) across the turns of a conversation, and generates in C++ rather than in a
Python loop (bench/serve_engines.py).

Two ways in:
- `served_model(path)`: a context manager (tests, one-off use) that starts the server, waits
  until the model answers, and kills the server's whole process group on exit, also on an
  exception or Ctrl-C.
- `shared_endpoint(path)`: what workflow jobs call. The first job that needs a model starts
  one server for it (under a file lock); every later job of the run reuses it. The server runs
  under a small supervisor (`python -m tracetune.runtime.serving`) that stops it when the Snakemake run
  that owns it ends (its pid is in $TRACETUNE_OWNER) and `stop_shared_servers()` (the workflow's
  onsuccess/onerror handlers) stops them all at the end of the run.

Part of tracetune.runtime: how and how long a model is served never changes what it answers
(sampling is set per request by the agent), so no job's fingerprint holds this module.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tracetune.gguf import is_gguf, llama_cpp_file
from tracetune.jsonio import InputError, write_json
from tracetune.models import check_model_dir

log = logging.getLogger(__name__)

OWNER_ENV = "TRACETUNE_OWNER"  # "host:pid" of the Snakemake run that owns shared servers
CPU_KV_CACHE_PAGES = 128  # of 256 tokens: 8 concurrent requests of 4k tokens (2 GiB in all for SmolLM2-135M)
# One request at a time, the prompt prefix kept between requests. On 2 cores this was the fastest
# (16 two-turn requests: 11 s, against 21-34 s with 8 slots, which each prefill the tool list on
# their own) and the only reproducible setting: with 8 slots the batch a request shares decides
# its numbers, and 1-2 of 8 greedy answers changed between two runs.
LLAMA_SLOTS = 1
LLAMA_SLOT_TOKENS = 8192  # context per request: a site page, the tool list and a few turns
STATE_DIR = Path(".snakemake/tracetune/serve")  # where shared servers are recorded
DEFAULT_TIMEOUT_S = 600.0  # a big model on a slow disk takes minutes to load


@dataclass(frozen=True)
class ServedModel:
    base_url: str  # e.g. http://127.0.0.1:41234/v1
    model: str  # the name to put in requests: the model directory as it was served


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_servable(path: str | os.PathLike) -> None:
    """A GGUF file, or a model directory."""
    if is_gguf(path):
        if not Path(path).is_file():
            raise InputError(f"{path}: no such GGUF file")
    else:
        check_model_dir(path)


def server_command(path: str, port: int, host: str, device: str) -> tuple[list[str], dict | None]:
    """The command (and environment) that serves `path` with the engine its kind calls for."""
    threads = str(cpu_server_threads())
    if is_gguf(path):
        return [str(llama_cpp_file("bin/llama-server")), "--model", path, "--alias", path,
                "--host", host, "--port", str(port), "--jinja",  # the model's own template, tools included
                "--threads", threads, "--threads-batch", threads,
                "--parallel", str(LLAMA_SLOTS), "--ctx-size", str(LLAMA_SLOTS * LLAMA_SLOT_TOKENS),
                "--reasoning-format", "none",  # <think> stays in the content: tracetune.parsing splits it
                "--no-webui"], None
    cmd = [sys.executable, "-m", "transformers.cli.transformers", "serve", path,
           "--host", host, "--port", str(port), "--device", device, "--log-level", "warning",
           "--continuous-batching"]  # 5x the tokens/s of one request at a time for the agent's concurrent runs
    if device != "cpu":
        return cmd, None
    # else its KV cache takes 60 % of the RAM, per server
    return cmd + ["--cb-num-blocks", str(CPU_KV_CACHE_PAGES)], os.environ | {"OMP_NUM_THREADS": threads}


def start_server(path: str, port: int, *, host: str = "127.0.0.1", device: str = "cpu",
                 log_file=None) -> subprocess.Popen:
    """The server of `path` in a session of its own, so stopping it can kill every process it made."""
    check_servable(path)
    cmd, env = server_command(path, port, host, device)
    log.info("starting: %s", " ".join(cmd))
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file or subprocess.DEVNULL,
                            stderr=subprocess.STDOUT if log_file else subprocess.DEVNULL,
                            start_new_session=True, env=env)


def cpu_server_threads() -> int:
    """OMP_NUM_THREADS when set, else half the usable cores. Evaluate serves the base and the
    tuned model side by side, and two servers whose OpenMP threads outnumber the cores wait on
    each other in every barrier: 3 tokens/s each instead of 184 on 2 cores."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return int(os.environ["OMP_NUM_THREADS"])
    return max(1, len(os.sched_getaffinity(0)) // 2)


def stop_process_group(pgid: int, grace_s: float = 10.0) -> None:
    """SIGTERM the whole group, then SIGKILL whatever is left after `grace_s`."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not _group_alive(pgid):
                return
            time.sleep(0.1)


def _exists(send_signal, target: int) -> bool:
    """Whether a process (os.kill) or process group (os.killpg) is there: signal 0 is only checked."""
    try:
        send_signal(target, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # there, but someone else's
        return True
    return True


def _group_alive(pgid: int) -> bool:
    if not _exists(os.killpg, pgid):
        return False
    # A zombie leader still counts as a member: reap our own children so it disappears.
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-pgid, os.WNOHANG)[0]:
            pass
    return _exists(os.killpg, pgid)


def stop_server(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    stop_process_group(proc.pid, grace_s)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _get(url: str, timeout_s: float = 5.0) -> int:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return response.status


def model_answers(base_url: str, model: str, timeout_s: float = 60.0) -> bool:
    """One token of a chat completion: the model is loaded and generating."""
    body = json.dumps({"model": model, "max_tokens": 1,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = urllib.request.Request(f"{base_url}/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return response.status == 200


def wait_until_ready(served: ServedModel, proc: subprocess.Popen | None = None,
                     timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Poll /health, then ask for one token; fail early if the server process died."""
    root = served.base_url.removesuffix("/v1")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server of {served.model} exited with status {proc.returncode} "
                               "before it was ready (see its log)")
        try:
            if _get(f"{root}/health") == 200 and model_answers(served.base_url, served.model):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{served.model} was not served at {served.base_url} within {timeout_s:.0f} s")


def check_makes_tool_calls(served: ServedModel) -> None:
    """llama.cpp reads tool calls out of the model's text with a parser it derives from the chat
    template; a template it cannot derive one from would answer every call as plain text."""
    with urllib.request.urlopen(served.base_url.removesuffix("/v1") + "/props", timeout=30) as response:
        caps = json.load(response).get("chat_template_caps", {})
    if not (caps.get("supports_tools") and caps.get("supports_tool_calls")):
        raise InputError(f"{served.model}: llama.cpp finds no tool calls in this model's chat template "
                         f"(chat_template_caps: {caps}); serve it with serve.engine: transformers")


@contextlib.contextmanager
def _serving(model_path: str, device: str, host: str, timeout_s: float, log_path):
    """(ServedModel, server process) while the block runs; the server's group is killed after."""
    port = free_port(host)
    served = ServedModel(f"http://{host}:{port}/v1", model_path)
    with contextlib.ExitStack() as stack:
        log_file = stack.enter_context(open(log_path, "ab")) if log_path else None
        proc = start_server(model_path, port, host=host, device=device, log_file=log_file)
        try:
            wait_until_ready(served, proc, timeout_s)
            if is_gguf(model_path):
                check_makes_tool_calls(served)
            log.info("serving %s at %s", model_path, served.base_url)
            yield served, proc
        finally:
            stop_server(proc)
            log.info("stopped the server of %s", model_path)


@contextlib.contextmanager
def served_model(model_path: str | os.PathLike, *, device: str = "cpu", host: str = "127.0.0.1",
                 timeout_s: float = DEFAULT_TIMEOUT_S, log_path: str | os.PathLike | None = None):
    """Serve `model_path` (a GGUF file or a model directory) on a free loopback port for the duration of the block."""
    with _serving(str(model_path), device, host, timeout_s, log_path) as (served, _):
        yield served


# --- one shared server per model and run (workflow jobs) ---------------------------------------

def owner_pid() -> int:
    """The pid whose end stops shared servers: the Snakemake run on this host, else this process."""
    host, _, pid = os.environ.get(OWNER_ENV, "").rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        return int(pid)
    return os.getpid()


def claim_shared_servers() -> None:
    """Called by the Snakefile (main process): servers started by its jobs end with this run."""
    os.environ.setdefault(OWNER_ENV, f"{socket.gethostname()}:{os.getpid()}")


def _state_file(model_path: str, state_dir: Path) -> Path:
    key = Path(model_path).resolve().as_posix().strip("/").replace("/", "__")
    return state_dir / socket.gethostname() / f"{key}.json"


def _pid_alive(pid: int) -> bool:
    return _exists(os.kill, pid)


def _healthy(state: dict) -> bool:
    if not _pid_alive(state["supervisor_pid"]):
        return False
    try:
        return _get(state["base_url"].removesuffix("/v1") + "/health") == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def shared_endpoint(model_path: str | os.PathLike, *, device: str = "detect",
                    timeout_s: float = DEFAULT_TIMEOUT_S, state_dir: str | os.PathLike = STATE_DIR) -> ServedModel:
    """The run's server of `model_path`, started by the first job that asks (the others wait on a
    lock, then reuse it)."""
    model_path = str(model_path)
    check_servable(model_path)
    state_file = _state_file(model_path, Path(state_dir))
    state_file.parent.mkdir(parents=True, exist_ok=True)
    with open(state_file.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = json.loads(state_file.read_text()) if state_file.exists() else None
        if state and state["owner_pid"] == owner_pid() and _healthy(state):
            return ServedModel(state["base_url"], state["model"])
        if state:  # left over from an earlier run, or dead: clear it away
            stop_process_group(state["supervisor_pid"])
            state_file.unlink()
        return _start_supervisor(model_path, state_file, device, timeout_s)


def _start_supervisor(model_path: str, state_file: Path, device: str, timeout_s: float) -> ServedModel:
    log_path = state_file.with_suffix(".log")
    cmd = [sys.executable, "-m", "tracetune.runtime.serving", model_path, "--state", str(state_file),
           "--device", device, "--timeout", str(timeout_s), "--watch-pid", str(owner_pid())]
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
    # The supervisor writes the state file once the model answers.
    deadline = time.monotonic() + timeout_s + 30
    while not state_file.exists():
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or [""]
            raise RuntimeError(f"serving {model_path} failed: {tail[0]} (log: {log_path})")
        if time.monotonic() > deadline:
            stop_process_group(proc.pid)
            raise TimeoutError(f"serving {model_path} timed out (log: {log_path})")
        time.sleep(0.5)
    state = json.loads(state_file.read_text())
    return ServedModel(state["base_url"], state["model"])


def stop_shared_servers(state_dir: str | os.PathLike = STATE_DIR) -> list[str]:
    """Stop every shared server this host recorded (the workflow's onsuccess/onerror)."""
    stopped = []
    for state_file in sorted((Path(state_dir) / socket.gethostname()).glob("*.json")):
        state = json.loads(state_file.read_text())
        for pgid in (state["supervisor_pid"], state["server_pid"]):
            stop_process_group(pgid)
        state_file.unlink(missing_ok=True)
        stopped.append(state["model"])
    return stopped


def _supervise(args) -> None:
    """Serve until the owner process is gone or we are told to stop; then stop the server."""
    def stop(signum, frame):
        raise SystemExit(0)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    if args.device == "detect":
        import torch

        args.device = "auto" if torch.cuda.is_available() else "cpu"
    state_file = Path(args.state)
    log_path = state_file.with_suffix(".server.log")
    with _serving(args.model_path, args.device, "127.0.0.1", args.timeout, log_path) as (served, proc):
        write_json(state_file, {"base_url": served.base_url, "model": served.model, "owner_pid": args.watch_pid,
                                "supervisor_pid": os.getpid(), "server_pid": proc.pid})
        try:
            while _pid_alive(args.watch_pid):
                time.sleep(1)
            log.info("owner %d ended: stopping", args.watch_pid)
        finally:
            state_file.unlink(missing_ok=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Serve a model directory until a watched process ends.")
    parser.add_argument("model_path", help="a GGUF file (llama.cpp) or a model directory (transformers serve)")
    parser.add_argument("--state", required=True, help="JSON file written once the model answers")
    parser.add_argument("--device", default="detect", help="'detect': the GPU if there is one, else cpu")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    parser.add_argument("--watch-pid", type=int, default=os.getppid())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    _supervise(parser.parse_args(argv))


if __name__ == "__main__":
    main()
