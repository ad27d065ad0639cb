"""The teacher over HTTP: Kimi (Moonshot) or any OpenAI-compatible chat-completions API.

Keep-alive httpx connection pools, paced by `distillery.ratelimit`; every failure is classified
into a `TeacherError` kind, and the retryable kinds are retried with full-jitter exponential
backoff that honours whatever wait the server asks for.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from .accounting import estimate_prompt_tokens
from .accounting import estimate_tokens as _estimate_text
from .completions import chat_completion
from .ratelimit import Limits, RateLimiter
from .teacher import ChatRequest, ChatResult, Gate, TeacherError

_log = logging.getLogger(__name__)

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# Header values above this are Unix timestamps (some providers send the reset moment, not a delay).
_EPOCH_THRESHOLD = 1e9
# Connections per httpx client. httpcore's pool rescans all its connections, once per idle one, on
# every request event (O(n^2)); past ~50 connections that CPU cost caps throughput (measured on 2
# cores against a local server at 200 concurrency: one pool ~30-50 req/s, pools of 25 ~3-6x that).
# So a high concurrency is spread over several small clients.
POOL_SIZE = 25


def backoff_s(retry: int, base: float, cap: float) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**retry)], so that workers that failed
    together do not come back together."""
    return random.uniform(0.0, min(cap, base * 2.0 ** min(retry, 64)))  # 2.0**1024 overflows


def _seconds(value: str, now: float) -> float | None:
    """A wait from a header value: seconds, a duration like "6m0s"/"20ms", an epoch, or an HTTP date."""
    value = value.strip()
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        return number - now if number > _EPOCH_THRESHOLD else number
    parts = _DURATION.findall(value)
    if parts and "".join(n + u for n, u in parts) == value:
        return sum(float(n) * _UNIT_S[u] for n, u in parts)
    try:
        return parsedate_to_datetime(value).timestamp() - now
    except (TypeError, ValueError, IndexError):
        return None


def retry_after_s(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """How long the server asked us to wait, from the first of the usual headers it sent."""
    now = time.time() if now is None else now
    headers = {k.lower(): v for k, v in headers.items()}
    if "retry-after-ms" in headers:  # OpenAI's, more precise than retry-after
        try:
            return max(0.0, float(headers["retry-after-ms"]) / 1000.0)
        except ValueError:
            pass
    for name in ("retry-after", "x-ratelimit-reset-requests", "x-ratelimit-reset"):
        if name in headers:
            seconds = _seconds(headers[name], now)
            if seconds is not None:
                return max(0.0, seconds)
    return None


def classify(status: int, body: bytes, headers: Mapping[str, str]) -> TeacherError:
    """The TeacherError for a non-2xx response (Moonshot, DeepSeek, DashScope, OpenAI bodies)."""
    etype = message = ""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error") if isinstance(data.get("error"), dict) else data  # DashScope native: top level
        etype = str(err.get("type") or err.get("code") or "")
        message = str(err.get("message") or "")
    if not message:
        message = body[:200].decode("utf-8", "replace").strip()
    text = f"{etype} {message}".lower()
    squashed = text.replace("_", "")
    summary = f"HTTP {status} {etype}: {message}"[:500]
    wait = retry_after_s(headers)

    if status == 429:
        if etype == "exceeded_current_quota_error" or any(w in text for w in ("quota", "balance", "insufficient")):
            return TeacherError("quota", summary, status=status)
        return TeacherError("rate_limit", summary, status=status, retry_after_s=wait)
    if status in (401, 403):
        return TeacherError("auth", summary, status=status)
    if status == 402:  # DeepSeek: insufficient balance
        return TeacherError("quota", summary, status=status)
    if status == 408:
        return TeacherError("timeout", summary, status=status, retry_after_s=wait)
    if status >= 500:
        return TeacherError("server", summary, status=status, retry_after_s=wait)
    if any(w in squashed for w in ("contentfilter", "high risk", "datainspectionfailed", "contentpolicyviolation")):
        return TeacherError("content_filter", summary, status=status)
    if any(w in text for w in ("token length too long", "exceeded model token limit", "context length")) or (
        "contextlengthexceeded" in squashed
    ):
        return TeacherError("context_overflow", summary, status=status)
    return TeacherError("bad_request", summary, status=status)


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both
        snippet = response.content[:120].decode("utf-8", "replace")
        raise TeacherError("malformed", f"2xx body is not JSON: {snippet!r}", status=response.status_code) from exc
    if not isinstance(data, dict):
        raise TeacherError("malformed", "2xx body is not a JSON object", status=response.status_code)
    return data


async def _assemble(response: httpx.Response, body: dict[str, Any]) -> dict[str, Any]:
    """The pieces of a server-sent-events answer, joined into one chat.completion. Usage comes
    in the last chunk (OpenAI) or inside its choice (Moonshot); a server that reports none gets
    an estimate, marked `usage_estimated`."""
    parts: list[str] = []
    first: dict[str, Any] = {}
    finish: str | None = None
    usage: dict[str, Any] | None = None
    done = False
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue  # comments, keep-alives, event names
        payload = line[5:].strip()
        if payload == "[DONE]":
            done = True
            break
        try:
            chunk = json.loads(payload)
        except ValueError as exc:
            raise TeacherError("malformed", f"a streamed piece is not JSON: {payload[:120]!r}", status=200) from exc
        if not isinstance(chunk, dict):
            continue
        if "error" in chunk:  # some servers report a failure mid-stream
            raise classify(500, json.dumps(chunk).encode(), httpx.Headers())
        first = first or chunk
        usage = chunk.get("usage") if isinstance(chunk.get("usage"), dict) else usage
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            if isinstance(delta.get("content"), str):
                parts.append(delta["content"])
            finish = choice.get("finish_reason") or finish
            usage = choice.get("usage") if isinstance(choice.get("usage"), dict) else usage
    if not done and finish is None:
        raise TeacherError("connection", "the stream ended before the answer did (no finish, no [DONE])")
    content = "".join(parts)
    estimated = usage is None
    if usage is None:
        prompt = estimate_prompt_tokens(body.get("messages") or [])
        usage = {"prompt_tokens": prompt, "completion_tokens": _estimate_text(content)}
    data = chat_completion(id=str(first.get("id") or "stream"), model=str(first.get("model") or body.get("model")),
                           content=content, finish_reason=finish, created=first.get("created"),
                           prompt_tokens=int(usage.get("prompt_tokens") or 0),
                           completion_tokens=int(usage.get("completion_tokens") or 0))
    data["streamed"] = True
    if estimated:
        data["usage_estimated"] = True
    return data


def _check_chat(data: dict[str, Any]) -> None:
    choices = data.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict) or not isinstance(message.get("content"), str):
        raise TeacherError("malformed", "2xx answer without choices[0].message.content", status=200)


def _check_models(data: dict[str, Any]) -> None:
    if not isinstance(data.get("data"), list):
        raise TeacherError("malformed", "2xx answer without a data list", status=200)


def _default_estimate(request: ChatRequest) -> int:
    # Prompt text plus the most the model may write: providers budget TPM on both.
    return estimate_prompt_tokens(request.messages) + request.max_tokens


class OpenAIChatClient:
    """`Teacher` over the OpenAI chat-completions protocol; Moonshot's errors and limits first."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        limits: Limits,
        max_retries: int = 6,
        timeout_s: float = 120,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60,
        on_retry: Callable[[TeacherError], None] | None = None,
        estimate_tokens: Callable[[ChatRequest], int] | None = None,
        stream: bool = False,
        deadline_s: float = 1800,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key or None
        self.limits = limits
        self._max_retries = max_retries
        # Unstreamed: the whole exchange must end within timeout_s. Streamed: timeout_s is the
        # longest silence between two pieces, and deadline_s bounds the whole answer.
        self._timeout_s = timeout_s
        self._stream = stream
        self._deadline_s = deadline_s
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._on_retry = on_retry
        self._estimate = estimate_tokens or _default_estimate
        self._limiter = RateLimiter(limits)
        headers = {"User-Agent": "distillery/0.1"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        # The limiter caps requests in flight at `concurrency`, the sum of the pools' sizes, and each
        # attempt takes a pool with a free connection: no request ever queues inside httpx.
        # Keep-alive saves a TCP+TLS handshake per request.
        n_pools = math.ceil(limits.concurrency / POOL_SIZE)
        sizes = [limits.concurrency // n_pools + (i < limits.concurrency % n_pools) for i in range(n_pools)]
        tls = httpx.create_ssl_context()  # loading the CA bundle once, not once per pool
        self._pools = [
            httpx.AsyncClient(
                headers=headers,
                limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
                timeout=httpx.Timeout(timeout_s),
                verify=tls,
            )
            for size in sizes
        ]
        self._free = sizes  # free connections per pool

    def __repr__(self) -> str:
        key = "set" if self._api_key else "none"
        return f"OpenAIChatClient(base_url={self.base_url!r}, key={key}, limits={self.limits!r})"

    async def complete(self, request: ChatRequest, *, gate: Gate | None = None) -> ChatResult:
        estimated = self._estimate(request)
        # Streamed, a slow but live teacher is not cut off. `stream` is how the answer travels,
        # not what is asked: it stays out of the request's hash (ChatRequest.body()).
        body = request.body() | ({"stream": True} if self._stream else {})
        data, latency, attempts = await self._call("POST", "/chat/completions", body, estimated, _check_chat, gate)
        choice = data["choices"][0]
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        return ChatResult(
            content=choice["message"]["content"],
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            model=data.get("model"),
            raw=data,
            latency_s=latency,
            attempts=attempts,
        )

    async def list_models(self) -> list[str]:
        data, _, _ = await self._call("GET", "/models", None, 0, _check_models)
        return [str(m["id"]) for m in data["data"] if isinstance(m, dict) and "id" in m]

    async def probe(self) -> TeacherError | None:
        """GET /models once, no retries: a teacher that cannot be reached, or refuses the key, fails
        every request, so a job should not start. Other answers (some servers have no /models) pass."""
        try:
            async with asyncio.timeout(min(self._timeout_s, 30)):
                await self._attempt("GET", "/models", None)
        except TeacherError as exc:
            if exc.kind in ("connection", "timeout") or exc.fatal:
                return self._redact(exc)
        except TimeoutError:
            return TeacherError("timeout", f"{self.base_url} did not answer within 30 s")
        return None

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        estimated: int,
        check: Callable[[dict[str, Any]], None],
        gate: Gate | None = None,
    ) -> tuple[dict[str, Any], float, int]:
        """One logical request: paced attempts, retried with backoff; (data, latency, attempts)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                data, latency = await self._paced(method, path, body, estimated, check, gate)
                return data, latency, attempt
            except TeacherError as exc:
                err = self._redact(exc)
            # Raised out here, not in the handler: a redacted copy must not carry the original
            # (key and all) along as its __context__.
            err.attempts = attempt
            if not err.retryable or attempt > self._max_retries:
                raise err
            delay = backoff_s(attempt - 1, self._backoff_base_s, self._backoff_max_s)
            if err.retry_after_s is not None:
                delay = max(delay, err.retry_after_s)
            if err.kind == "rate_limit":
                # The limit is the account's, not this request's: every worker holds off.
                self._limiter.pause(err.retry_after_s if err.retry_after_s is not None else self._backoff_base_s)
            if self._on_retry is not None:
                self._on_retry(err)
            _log.info("%s %s attempt %d failed (%s); retrying in %.2fs", method, path, attempt, err, delay)
            await asyncio.sleep(delay)  # outside the limiter: a waiting retry holds no slot

    async def _paced(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        estimated: int,
        check: Callable[[dict[str, Any]], None],
        gate: Gate | None = None,
    ) -> tuple[dict[str, Any], float]:
        """One attempt under the limiter, settling its token estimate; returns (data, latency)."""
        async with self._limiter.slot(estimated):
            if gate is not None:
                try:
                    gate()  # the last moment to cancel: nothing has left yet
                except BaseException:
                    self._limiter.settle(estimated, 0)
                    raise
            started = time.monotonic()
            try:
                data = await self._attempt(method, path, body)
                check(data)
            except TeacherError as err:
                if err.status is not None and 400 <= err.status < 500:
                    self._limiter.settle(estimated, 0)  # refused before any generation
                raise
            latency = time.monotonic() - started
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        actual = usage.get("total_tokens")
        self._limiter.settle(estimated, actual if isinstance(actual, int) else estimated)
        return data, latency

    async def _attempt(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        """One HTTP exchange; any failure comes out as a TeacherError."""
        streamed = bool(body and body.get("stream"))
        limit = self._deadline_s if streamed else self._timeout_s
        try:
            # Besides httpx's per-read timeout, a deadline for the whole exchange: a server that
            # trickles keep-alive bytes (DeepSeek under load) would otherwise never time out.
            async with asyncio.timeout(limit):
                if streamed:
                    return await self._streamed(path, body)
                response = await self._request(method, path, body)
        except (httpx.TimeoutException, TimeoutError) as exc:
            what = (f"no piece of the answer for {self._timeout_s:g}s" if isinstance(exc, httpx.TimeoutException)
                    else f"no complete answer within {limit:g}s") if streamed else f"no answer within {limit:g}s"
            raise TeacherError("timeout", f"{what} ({type(exc).__name__})") from exc
        except httpx.DecodingError as exc:
            raise TeacherError("malformed", f"undecodable body: {exc}", status=200) from exc
        except httpx.TransportError as exc:
            raise TeacherError("connection", f"{type(exc).__name__}: {exc or 'connection lost'}") from exc
        if not response.is_success:
            raise classify(response.status_code, response.content, response.headers)
        return _json_object(response)

    async def _streamed(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A streamed completion read to its end and put back together as a chat.completion.
        A server that ignores `stream` and answers in one piece is read as such."""
        try:
            with self._pool() as pool:
                async with pool.stream("POST", self.base_url + path, json=body) as response:
                    if not response.is_success:
                        await response.aread()
                        raise classify(response.status_code, response.content, response.headers)
                    if "text/event-stream" not in response.headers.get("content-type", ""):
                        await response.aread()
                        return _json_object(response)
                    return await _assemble(response, body)
        except httpx.DecodingError as exc:
            raise TeacherError("malformed", f"undecodable body: {exc}", status=200) from exc
        except httpx.TransportError as exc:
            if isinstance(exc, httpx.TimeoutException):
                raise
            raise TeacherError("connection", f"{type(exc).__name__}: {exc or 'connection lost'}") from exc

    async def _request(self, method: str, path: str, body: dict[str, Any] | None) -> httpx.Response:
        with self._pool() as pool:
            return await pool.request(method, self.base_url + path, json=body)

    @contextmanager
    def _pool(self) -> Iterator[httpx.AsyncClient]:
        """The least busy connection pool, counted busy while the caller holds it."""
        index = max(range(len(self._pools)), key=self._free.__getitem__)
        self._free[index] -= 1
        try:
            yield self._pools[index]
        finally:
            self._free[index] += 1

    def _redact(self, err: TeacherError) -> TeacherError:
        """The same error with the API key blanked out, should a server or proxy echo it back."""
        if not self._api_key or self._api_key not in err.message:
            return err
        return TeacherError(
            err.kind,
            err.message.replace(self._api_key, "***"),
            status=err.status,
            retry_after_s=err.retry_after_s,
            attempts=err.attempts,
        )
