"""Serving a model with llama.cpp (a GGUF) or `transformers serve` (a directory): it answers,
accepts stored traces, renders the prompt training rendered, and leaves no process behind."""

import json
import os
import socket
import subprocess
import sys
import time

import openai
import psutil
import pytest

from test_models import TOOLS
from tracetune.jsonio import InputError
from tracetune.runtime.serving import OWNER_ENV, cpu_server_threads, served_model, shared_endpoint, stop_shared_servers


def servers_of(model_path) -> list[psutil.Process]:
    """Live servers (llama-server, `transformers serve`) and our supervisors serving `model_path`."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if str(model_path) in cmdline and proc.pid != os.getpid():
            if proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


@pytest.fixture(scope="module")
def base_dir(bundled_model):
    return bundled_model


@pytest.fixture(scope="module")
def shared(base_dir, tmp_path_factory):
    """One shared server for the module, started the way workflow jobs start it."""
    state_dir = tmp_path_factory.mktemp("serve-state")
    served = shared_endpoint(base_dir, state_dir=state_dir, timeout_s=300)
    yield served, state_dir
    stop_shared_servers(state_dir)


@pytest.fixture(scope="module")
def shared_gguf(bundled_gguf_model, tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("serve-state-gguf")
    served = shared_endpoint(bundled_gguf_model, state_dir=state_dir, timeout_s=300)
    yield served, state_dir
    stop_shared_servers(state_dir)


# A stored trace with reasoning, a tool call and its result, ending in an answer.
CONVERSATION = [
    {"role": "system", "content": "You are a shop assistant."},
    {"role": "user", "content": "How much is the blue widget?"},
    {"role": "assistant", "content": "", "reasoning_content": "Look up the price.",
     "tool_calls": [{"id": "call_1_0", "type": "function",
                     "function": {"name": "get_price", "arguments": '{"item": "blue widget"}'}}]},
    {"role": "tool", "tool_call_id": "call_1_0", "name": "get_price", "content": "12.50"},
    {"role": "assistant", "content": "The blue widget costs $12.50.", "reasoning_content": "Answer."},
]
ENGINES = pytest.mark.parametrize("server", ["shared_gguf", "shared"])  # llama.cpp, transformers serve


@pytest.mark.slow  # serves the embedded model
@ENGINES
def test_chat_completion_through_openai(server, request):
    served, _ = request.getfixturevalue(server)
    client = openai.OpenAI(base_url=served.base_url, api_key="unused")
    assert [m.id for m in client.models.list().data] == [served.model]
    reply = client.chat.completions.create(model=served.model, max_tokens=8,
                                           messages=[{"role": "user", "content": "Say hello."}])
    assert reply.choices[0].message.content


@pytest.mark.slow  # serves the embedded model
@ENGINES
def test_stored_trace_is_replayed_unchanged(server, request):
    """All but the last assistant turn of a raw trace, as stored, is a valid request."""
    served, _ = request.getfixturevalue(server)
    trace = json.loads(json.dumps({"tools": TOOLS, "messages": CONVERSATION}))  # as read back from JSONL
    body = {"model": served.model, "max_tokens": 8, "tools": trace["tools"], "messages": trace["messages"][:-1]}
    client = openai.OpenAI(base_url=served.base_url, api_key="unused")
    response = client.chat.completions.with_raw_response.create(**body)
    assert response.http_response.status_code == 200
    assert response.parse().choices[0].message.role == "assistant"


@pytest.mark.slow  # serves the embedded model
def test_llama_cpp_renders_the_prompt_training_rendered(shared_gguf, bundled_model):
    """llama.cpp renders the chat template with its own Jinja engine: for a conversation with
    reasoning, tool calls and tool results it must build, byte for byte, the prompt that the
    tokenizer's template (the one the dataset and training use) builds."""
    import urllib.request

    from transformers import AutoTokenizer

    served, _ = shared_gguf
    messages = CONVERSATION + [{"role": "user", "content": "Thanks! Ünïcödé too?"}]
    body = json.dumps({"messages": messages, "tools": TOOLS}).encode()
    url = served.base_url.removesuffix("/v1") + "/apply-template"
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        served_prompt = json.load(response)["prompt"]
    tokenizer = AutoTokenizer.from_pretrained(bundled_model)
    assert served_prompt == tokenizer.apply_chat_template(messages, tools=TOOLS, tokenize=False,
                                                          add_generation_prompt=True)


@pytest.mark.slow  # serves the embedded model
def test_cpu_server_keeps_a_bounded_kv_cache(shared, base_dir):  # `shared` starts the server
    """Continuous batching sizes its KV cache to 60 % of the RAM on CPU unless told: two evaluate jobs
    serving at once then get OOM-killed."""
    server = next(p for p in servers_of(base_dir) if "tracetune.runtime.serving" not in p.info["cmdline"])
    assert server.memory_info().rss < 4 * 2**30


@pytest.mark.slow  # serves the embedded model
def test_cpu_server_takes_half_the_cores(shared, base_dir):
    """Two CPU servers side by side (evaluate's base and tuned model) must not outnumber the
    cores with OpenMP threads, or each slows down some 70 times (bench/serve_side_by_side.py)."""
    server = next(p for p in servers_of(base_dir) if "tracetune.runtime.serving" not in p.info["cmdline"])
    assert server.environ()["OMP_NUM_THREADS"] == str(cpu_server_threads())


def test_cpu_server_threads_follow_the_cores_unless_told(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert cpu_server_threads() == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert cpu_server_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_server_threads() == 3


@pytest.mark.slow  # serves the embedded model
def test_shared_server_is_started_once(shared, base_dir):
    served, state_dir = shared
    again = shared_endpoint(base_dir, state_dir=state_dir)
    assert again == served
    assert len([p for p in servers_of(base_dir) if "tracetune.runtime.serving" in p.info["cmdline"]]) == 1


@pytest.mark.slow  # serves the embedded model
def test_supervisor_stops_when_its_owner_ends(bundled_gguf_model, tmp_path):
    """A run killed outright (no onerror handler) still takes its server with it."""
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    env = os.environ | {OWNER_ENV: f"{socket.gethostname()}:{owner.pid}"}
    # Link the model under another name so that this server is told apart from the shared one.
    model = tmp_path / "model.gguf"
    model.symlink_to(bundled_gguf_model)
    code = ("import sys; from tracetune.runtime.serving import shared_endpoint; "
            f"print(shared_endpoint({str(model)!r}, state_dir={str(tmp_path / 'state')!r}).base_url)")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300)
    assert servers_of(model)
    owner.kill()
    owner.wait()
    deadline = time.monotonic() + 30
    while servers_of(model) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not servers_of(model)
    assert not list((tmp_path / "state").glob("*/*.json"))  # its state is cleared too


@pytest.mark.slow  # serves the embedded model
def test_served_model_stops_on_error(bundled_gguf_model, tmp_path):
    model = tmp_path / "model.gguf"
    model.symlink_to(bundled_gguf_model)
    with pytest.raises(KeyboardInterrupt):
        with served_model(model, timeout_s=300) as served:
            assert served.model == str(model) and servers_of(model)
            raise KeyboardInterrupt
    assert not servers_of(model)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(InputError, match="not a model directory"):
        with served_model(tmp_path):
            pass
    with pytest.raises(InputError, match="not a model directory"):
        shared_endpoint(tmp_path / "missing", state_dir=tmp_path)
    with pytest.raises(InputError, match="no such GGUF file"):
        shared_endpoint(tmp_path / "missing.gguf", state_dir=tmp_path)


@pytest.mark.slow  # serves the embedded model
def test_a_template_without_tool_calls_is_refused_before_any_request(bundled_model, tmp_path):
    """A model whose template cannot make tool calls is one line when its server starts."""
    import shutil

    from tracetune.gguf import export_gguf

    model = tmp_path / "plain"
    shutil.copytree(bundled_model, model)
    (model / "chat_template.jinja").write_text(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(InputError, match="finds no tool calls in this model's chat template"):
        with served_model(export_gguf(model, tmp_path / "plain.gguf"), timeout_s=120):
            pass
