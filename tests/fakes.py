"""A scripted OpenAI-compatible chat endpoint on loopback, for tests and benchmarks.

The reply is a function of the conversation, so concurrent conversations do not interfere;
failures (500s, hangs) and a fixed latency can be injected."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def tool_then_answer(tool: str, arguments: dict, answer: str, as_text: bool = False):
    """Policy: call `tool` after a user turn, answer after the tool result."""

    def policy(messages: list[dict]) -> dict:
        if messages[-1]["role"] == "tool":
            return {"role": "assistant", "content": answer}
        if as_text:  # a server that does not parse tool calls or split reasoning
            call = json.dumps({"name": tool, "arguments": arguments})
            return {"role": "assistant", "content": f"<think>need {tool}</think><tool_call>{call}</tool_call>"}
        return {"role": "assistant", "content": "", "reasoning_content": f"need {tool}",
                "tool_calls": [{"id": f"c{len(messages)}", "type": "function",
                                "function": {"name": tool, "arguments": json.dumps(arguments)}}]}

    return policy


def first_tool_then_answer(arguments: dict, answer: str):
    """Policy (with sees_tools): call whichever tool is offered first, answer after its result."""

    def policy(messages: list[dict], tools: list[dict]) -> dict:
        return tool_then_answer(tools[0]["function"]["name"], arguments, answer)(messages)

    return policy


class FakeEndpoint:
    def __init__(self, policy, latency_s: float = 0.0, fail_first: int = 0, hang_first: int = 0, hang_s: float = 5,
                 sees_tools: bool = False):
        self.policy, self.latency_s, self.sees_tools = policy, latency_s, sees_tools
        self.fail_left, self.hang_left, self.hang_s = fail_first, hang_first, hang_s
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with endpoint.lock:
                    endpoint.requests.append(body)
                    fail = endpoint.fail_left > 0
                    endpoint.fail_left -= fail
                    hang = not fail and endpoint.hang_left > 0
                    endpoint.hang_left -= hang
                if hang:
                    time.sleep(endpoint.hang_s)
                time.sleep(endpoint.latency_s)
                if fail:
                    return self.reply(500, {"error": {"message": "injected failure"}})
                message = (endpoint.policy(body["messages"], body.get("tools") or []) if endpoint.sees_tools
                           else endpoint.policy(body["messages"]))
                self.reply(200, {
                    "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "message": message,
                                 "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                })

            def reply(self, status, obj):
                data = json.dumps(obj).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and went away

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def scripted_generation(call: dict, answer: str, done_when: str):
    """A stand-in for GRPOTrainer._generate_single_turn: whatever the weights, the policy calls
    `call` ({"name", "arguments"}) until a prompt holds `done_when` (its tool result), then answers,
    in the chat template's own tokens. The trainer then scores, masks and trains on these tokens
    as on sampled ones, so a test knows every rollout and its reward."""

    def generate(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        tokenizer = self.processing_class
        out = []
        for ids in prompt_ids:
            if done_when in tokenizer.decode(ids):
                text = f"{answer}<|im_end|>"
            else:
                text = f"<tool_call>\n{json.dumps(call)}\n</tool_call><|im_end|>"
            out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
        return out, None

    return generate
