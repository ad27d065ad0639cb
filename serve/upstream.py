"""Serving through an upstream OpenAI-compatible engine (vLLM, SGLang, LMDeploy, llama.cpp, a
managed endpoint) instead of the in-process runtime: the same ChatRest and /v1 routes, envelopes,
limits, auth and metrics, with the model somewhere that scales past one process.

`UpstreamService` has the surface the routes use (`ModelService`'s): readiness follows the
upstream's `GET /models`; each request is one pooled `POST /chat/completions` with `stop` for the
early exit. Upstream failures become clear envelopes: its 4xx a 400 (or 502 when it refuses our
own key), overload a 503, silence past `timeout_s` a 504, anything else a 502 — never a 500.
An upstream that ignores `stop` still gives a conclusion only: the answer is cut here, and says so.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator

import httpx

from distillery.accounting import estimate_prompt_tokens, estimate_tokens
from distillery.runtime import Generation, GenerationConfig

from .config import ServeConfig
from .edge import ApiError
from .metrics import ModelSnapshot

log = logging.getLogger("serve")

_RECHECK_S = 5.0  # how stale a readiness answer may be


class UpstreamService:
    can_stream = True  # an upstream engine streams, whatever its batching

    def __init__(self, config: ServeConfig) -> None:
        assert config.upstream is not None
        self.config = config
        self.url = config.upstream.rstrip("/")
        key = config.upstream_key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        pool = config.batching.max_queue + config.batching.max_batch  # as many as gunicorn threads may send
        self._client = httpx.Client(headers=headers, timeout=config.timeout_s,
                                    limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool))
        self.model = config.upstream_model
        self.max_prompt_tokens = config.max_prompt_tokens
        self._state, self._error, self._checked = "loading", None, 0.0
        self._lock = threading.Lock()

    # -- life cycle and readiness ------------------------------------------------------------

    def start(self) -> None:
        threading.Thread(target=self._check, name="distillery-upstream-check", daemon=True).start()

    def close(self) -> None:
        self._client.close()

    def _check(self) -> None:
        """Ask the upstream which models it serves; ready when it answers and has ours."""
        try:
            response = self._client.get(f"{self.url}/models", timeout=5)
            response.raise_for_status()
            served = [str(m.get("id")) for m in response.json().get("data", []) if isinstance(m, dict)]
            if self.model is None and served:
                self.model = served[0]
            if self.model is None:
                state, error = "failed", f"{self.url}/models lists no model: set upstream_model"
            else:
                state, error = "ready", None
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            state, error = "failed", f"the upstream {self.url} is not answering: {type(exc).__name__}: {exc}"
        with self._lock:
            if state != self._state:
                log.info("upstream %s: %s%s", self.url, state, f" ({error})" if error else "")
            self._state, self._error, self._checked = state, error, time.monotonic()

    @property
    def state(self) -> str:
        if time.monotonic() - self._checked > _RECHECK_S:
            self._check()
        return self._state

    @property
    def error(self) -> str | None:
        return self._error

    def describe(self) -> dict[str, object]:
        info: dict[str, object] = {"ready": self.state == "ready", "state": self._state, "engine": "upstream",
                                   "upstream": self.url, "model": self.model,
                                   "max_new_tokens": self.config.generation.max_new_tokens}
        if self._error:
            info["error"] = self._error
        return info

    def snapshot(self) -> ModelSnapshot:
        return ModelSnapshot(ready=self._state == "ready", footprint_bytes=None, batcher=None)

    # -- requests ----------------------------------------------------------------------------

    def generation_config(self, *, max_new_tokens: int | None = None, temperature: float | None = None,
                          top_p: float | None = None, stop: list[str] | None = None,
                          seed: int | None = None) -> GenerationConfig:
        gen = self.config.generation
        if max_new_tokens is not None and max_new_tokens > gen.max_new_tokens:
            raise ApiError(400, f"at most {gen.max_new_tokens} new tokens per answer on this server "
                                f"(asked for {max_new_tokens})")
        return GenerationConfig(max_new_tokens=max_new_tokens or gen.max_new_tokens,
                                temperature=gen.temperature if temperature is None else temperature,
                                top_p=gen.top_p if top_p is None else top_p, stop=stop or [], seed=seed)

    def count_prompt_tokens(self, messages: list[dict]) -> int:
        """An estimate (the upstream's tokenizer is not here; it errs high for Chinese): a
        conversation far over the limit is refused here, one near it by the upstream."""
        if self.state != "ready":
            raise ApiError(503, f"the upstream is not ready: {self._error or 'still checking'}", kind="server_not_ready",
                           headers={"Retry-After": "5"})
        n = estimate_prompt_tokens(messages)
        if n > 2 * self.max_prompt_tokens:
            raise ApiError(400, f"the conversation is about {n} tokens; this server accepts at most "
                                f"{self.max_prompt_tokens}", kind="context_length_exceeded")
        return n

    def _body(self, messages: list[dict], config: GenerationConfig) -> dict[str, object]:
        body: dict[str, object] = {"model": self.model, "messages": messages, "max_tokens": config.max_new_tokens,
                                   "temperature": config.temperature, "top_p": config.top_p}
        if config.stop:
            body["stop"] = config.stop
        if config.seed is not None:
            body["seed"] = config.seed
        return body

    def _send(self, body: dict[str, object], *, started: float, rid: str, stream: bool) -> httpx.Response:
        """The upstream's response to one chat request (its head only, when streamed), or the
        ApiError that says why there is none."""
        left = self.config.timeout_s - (time.monotonic() - started)
        request = self._client.build_request("POST", f"{self.url}/chat/completions", json=body,
                                             headers={"X-Request-ID": rid}, timeout=max(0.1, left))
        try:
            response = self._client.send(request, stream=stream)
        except httpx.TimeoutException:
            raise ApiError(504, f"the upstream gave no answer within {self.config.timeout_s:g} s; retry later",
                           kind="timeout") from None
        except httpx.HTTPError as exc:
            self._state, self._checked = "failed", 0.0  # look again on the next request
            raise ApiError(503, f"the upstream {self.url} cannot be reached ({type(exc).__name__}); retry shortly",
                           kind="server_not_ready", headers={"Retry-After": "5"}) from None
        if response.status_code != 200:
            try:
                response.read()
            finally:
                response.close()
            raise _upstream_error(response)
        return response

    def stream(self, messages: list[dict], config: GenerationConfig, *, started: float, rid: str) -> UpstreamStream:
        """The answer as it is generated upstream. Errors before the first byte raise here (a normal
        error envelope); after it, iterating raises them (the route sends them as an SSE error)."""
        body = self._body(messages, config) | {"stream": True, "stream_options": {"include_usage": True}}
        response = self._send(body, started=started, rid=rid, stream=True)
        return UpstreamStream(response, config.stop, messages, deadline=started + self.config.timeout_s,
                              timeout_s=self.config.timeout_s)

    def generate(self, messages: list[dict], config: GenerationConfig, *, started: float, rid: str) -> Generation:
        response = self._send(self._body(messages, config), started=started, rid=rid, stream=False)
        try:
            data = response.json()
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
            usage = data.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError):
            raise ApiError(502, f"the upstream's answer is not a chat completion (request id {rid})",
                           kind="bad_gateway") from None
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        stop_string = None
        note = None
        # An upstream that ignores `stop` (some do) generated past it: cut here, and say so.
        for stop in config.stop:
            if stop in text:
                text, stop_string, finish = text.split(stop, 1)[0], stop, "stop"
                note = f"the upstream ignored stop {stop!r}: the answer was cut here, after it was generated"
                break
        return Generation(text=text, finish_reason=finish, stop_string=stop_string, note=note,
                          prompt_tokens=int(usage.get("prompt_tokens") or estimate_prompt_tokens(messages)),
                          completion_tokens=int(usage.get("completion_tokens") or estimate_tokens(text)))


class UpstreamStream:
    """Text deltas of one streamed upstream answer, cut at the first stop string even when the
    upstream ignores `stop` (a delta that may be the start of one is held back until it is known).
    Closing it (the caller went away, or the stop string came) closes the upstream connection,
    which is how an OpenAI-compatible engine learns to stop generating. `generation` has the
    totals once the iteration ends."""

    def __init__(self, response: httpx.Response, stops: list[str], messages: list[dict], *, deadline: float,
                 timeout_s: float) -> None:
        self._response = response
        self._stops = stops
        self._messages = messages
        self._deadline, self._timeout_s = deadline, timeout_s
        self.generation: Generation | None = None

    def close(self) -> None:
        self._response.close()

    def __iter__(self) -> Iterator[str]:
        held, sent = "", []
        finish, usage, note, stop_string = "stop", {}, None, None
        try:
            for payload in self._events():
                choice = (payload.get("choices") or [{}])[0] if isinstance(payload.get("choices"), list) else {}
                choice = choice if isinstance(choice, dict) else {}
                usage = payload.get("usage") or choice.get("usage") or usage  # OpenAI: last chunk; Moonshot: choice
                if choice.get("finish_reason"):
                    finish = "length" if choice["finish_reason"] == "length" else "stop"
                delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
                held += delta.get("content") or ""
                cut = min(((held.find(s), s) for s in self._stops if s in held), default=None)
                if cut is not None:  # the upstream ignored `stop`: end here, and say so
                    held, stop_string, finish = held[: cut[0]], cut[1], "stop"
                    note = f"the upstream ignored stop {cut[1]!r}: the answer was cut here, after it was generated"
                    break
                ready = len(held) - _stop_prefix(held, self._stops)
                if ready:
                    sent.append(held[:ready])
                    yield held[:ready]
                    held = held[ready:]
            if held:
                sent.append(held)
                yield held
        finally:
            self.close()
        text = "".join(sent)
        self.generation = Generation(
            text=text, finish_reason=finish, stop_string=stop_string, note=note,
            # Some engines (llamafactory-cli api) report no usage in a stream: estimated then.
            prompt_tokens=int(usage.get("prompt_tokens") or estimate_prompt_tokens(self._messages)),
            completion_tokens=int(usage.get("completion_tokens") or estimate_tokens(text)))

    def _events(self) -> Iterator[dict]:
        """The JSON payloads of the upstream's server-sent events, until [DONE]."""
        try:
            for line in self._response.iter_lines():
                if time.monotonic() > self._deadline:
                    raise ApiError(504, f"the upstream's answer took longer than {self._timeout_s:g} s", kind="timeout")
                if not line.startswith("data:"):
                    continue  # comments, keep-alives, event names
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    payload = json.loads(data)
                except ValueError:
                    raise ApiError(502, f"the upstream sent a piece that is not JSON: {data[:80]!r}",
                                   kind="bad_gateway") from None
                if isinstance(payload, dict) and "error" in payload:
                    detail = payload["error"]
                    message = detail.get("message") if isinstance(detail, dict) else detail
                    raise ApiError(502, f"the upstream failed mid-answer: {message}", kind="bad_gateway")
                if isinstance(payload, dict):
                    yield payload
        except httpx.TimeoutException:
            raise ApiError(504, f"the upstream went silent mid-answer for {self._timeout_s:g} s", kind="timeout") from None
        except httpx.HTTPError as exc:
            raise ApiError(502, f"the upstream's answer broke off ({type(exc).__name__})", kind="bad_gateway") from None


def _stop_prefix(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that could be the start of a stop string."""
    return max((n for s in stops for n in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:n])), default=0)


def _upstream_error(response: httpx.Response) -> ApiError:
    try:
        detail = response.json().get("error", {})
        message = detail.get("message") if isinstance(detail, dict) else str(detail)
    except (ValueError, AttributeError):
        message = None
    said = f"the upstream answered {response.status_code}: {message or response.text[:200]}"
    if response.status_code in (401, 403):
        return ApiError(502, f"{said} (this server's upstream key is wrong: check upstream_api_key_env)",
                        kind="bad_gateway")
    if response.status_code == 429 or response.status_code == 503:
        return ApiError(503, f"{said}; retry shortly", kind="server_busy",
                        headers={"Retry-After": response.headers.get("Retry-After", "1")})
    if 400 <= response.status_code < 500:
        return ApiError(400, said)
    return ApiError(502, said, kind="bad_gateway")
