"""How a job reaches its model: the endpoint (a configured server, or the run's shared server of
a model the workflow serves), its client with retries, and a request timeout sized from the
server's measured speed. Part of tracetune.runtime: the timeouts and retries decide whether a
request finishes, never what it answers."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from tracetune.config import section_settings

log = logging.getLogger(__name__)


PROBE_TIMEOUT_S = 120.0  # the probe runs alone: a server that takes longer for 16 tokens is not working
PROBE_TOKENS = 16


class EndpointError(RuntimeError):
    """The model server does not answer at all: one line, before any task runs."""


_ENDPOINT = section_settings("endpoint")  # the schema's defaults


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    model: str
    api_key_env: str = _ENDPOINT["api_key_env"]
    timeout_s: float | None = _ENDPOINT["timeout_s"]  # per request; None: sized from the server's measured speed
    max_retries: int = _ENDPOINT["max_retries"]

    def client(self) -> "openai.AsyncOpenAI":  # noqa: F821 (imported inside: collection starts light)
        # The openai client retries 429, 5xx, connection errors and timeouts with backoff.
        import openai  # here, not at the top: reference-only collect jobs (most) never load it

        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=key or "EMPTY",
                                  timeout=self.timeout_s or PROBE_TIMEOUT_S, max_retries=self.max_retries)


def sized_timeout(seconds_per_token: float, max_tokens: int, concurrency: int) -> float:
    """A request's timeout from the server's speed: `concurrency` requests share the server, each
    may generate `max_tokens` after reading a prompt of up to 4k tokens (counted as 400 generated
    ones: prefill is some ten times faster per token), with a margin of 3. A run that is only slow
    finishes; a hung request still ends."""
    return max(30.0, 3 * concurrency * (max_tokens + 400) * seconds_per_token)


async def probe(client: "openai.AsyncOpenAI", endpoint: Endpoint) -> float:  # noqa: F821
    """Seconds per generated token of one short request, sent once; a server that does not
    answer is an EndpointError naming it (the openai client would retry for minutes)."""
    import openai

    started = time.perf_counter()
    try:
        response = await client.with_options(max_retries=0, timeout=PROBE_TIMEOUT_S).chat.completions.create(
            model=endpoint.model, messages=[{"role": "user", "content": "Count from one to twenty in words."}],
            max_tokens=PROBE_TOKENS, temperature=0)
    except openai.APIError as e:
        raise EndpointError(f"{endpoint.base_url}: the model server does not answer "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    tokens = (response.usage.completion_tokens if response.usage else 0) or PROBE_TOKENS
    return (time.perf_counter() - started) / tokens


async def request_timeout(client: "openai.AsyncOpenAI", endpoint: Endpoint, settings: "Settings") -> float:  # noqa: F821
    """The configured timeout, else one sized from a probe of the server."""
    if endpoint.timeout_s:
        return endpoint.timeout_s
    timeout = sized_timeout(await probe(client, endpoint), settings.max_tokens, settings.concurrency)
    log.info("%s: %.0f s per request (sized from the server's speed)", endpoint.base_url, timeout)
    return timeout


def resolve_endpoint(endpoint_config: dict, served_models=()) -> Endpoint | None:
    """The configured endpoint, or the run's shared server of the model the job declared as input
    (a GGUF file or a model directory)."""
    settings = section_settings("endpoint", endpoint_config)
    if settings["base_url"]:
        return Endpoint(settings["base_url"], settings["model"] or "default", settings["api_key_env"],
                        settings["timeout_s"], settings["max_retries"])
    served = [served_models] if isinstance(served_models, str) else list(served_models)
    if not served:
        return None
    from tracetune.runtime.serving import shared_endpoint

    served = shared_endpoint(served[0])
    return Endpoint(served.base_url, served.model, "", settings["timeout_s"], settings["max_retries"])
