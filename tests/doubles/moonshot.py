"""A local Moonshot-compatible server for tests, benchmarks and offline rehearsal.

Stdlib only, so it runs wherever the package does, on real sockets: the client under test goes
through its whole HTTP stack. It speaks Moonshot's error bodies, enforces an RPM window and a
model's context length, records every request, and injects faults on demand:

    with FakeMoonshot() as server:
        server.inject("429", "reset")          # the next two chat requests, in arrival order
        ... base_url=server.base_url ...
    # or put "[[FAULT:500]]" in a message: every request carrying it fails that way

Run it alone with `PYTHONPATH=tests python -m doubles.moonshot --port 8765 --latency 1 --rpm 200`.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import logging
import math
import re
import socket
import struct
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from distillery.accounting import estimate_tokens
from distillery.completions import chat_completion, model_list

__all__ = ["FAULTS", "FakeMoonshot", "estimate_tokens", "main", "truncate_tokens"]

_log = logging.getLogger(__name__)

Responder = Callable[[list[dict[str, Any]]], str]

# Model name -> context window in tokens; longer requests get Moonshot's 400.
DEFAULT_MODELS: dict[str, int] = {
    "moonshot-v1-8k": 8192,
    "moonshot-v1-32k": 32768,
    "moonshot-v1-128k": 131072,
    "kimi-k2-turbo-preview": 262144,
}

# Faults answered with an error instead of a completion: status, error type, message, headers.
# Moonshot's own wording where we know it, so message-based classification is exercised too.
_ERROR_FAULTS: dict[str, tuple[int, str, str, dict[str, str]]] = {
    "429": (429, "rate_limit_reached_error", "Your account request reached organization max RPM", {}),
    "429-retry-after": (
        429,
        "rate_limit_reached_error",
        "Your account request reached organization max RPM",
        {"Retry-After": "1"},
    ),
    "429-overloaded": (
        429,
        "engine_overloaded_error",
        "The engine is currently overloaded, please try again later",
        {},
    ),
    "429-quota": (
        429,
        "exceeded_current_quota_error",
        "Your account is suspended, please check your plan and billing details",
        {},
    ),
    "500": (500, "server_error", "Internal server error", {}),
    "503": (503, "server_error", "Service temporarily unavailable", {}),
    "content_filter": (400, "content_filter", "The request was rejected because it was considered high risk", {}),
    "context_overflow": (
        400,
        "invalid_request_error",
        "Invalid request: Your request exceeded model token limit: 8192",
        {},
    ),
}
# Faults that break the transport or the body, or bend an otherwise normal completion.
_OTHER_FAULTS = frozenset({"502", "slow", "reset", "truncated", "malformed", "no-choices", "bad-format", "length"})
FAULTS: frozenset[str] = frozenset(_ERROR_FAULTS) | _OTHER_FAULTS

_TRIGGER = re.compile(r"\[\[FAULT:([\w-]+)\]\]")
_BAD_FORMAT_TEXT = "I think it is relevant."
_CUT_TEXT = "经过分析，这段文字主要讨论了"  # stops mid-sentence, before any "####"


def _text(content: Any) -> str:
    """The text of a message's content (a string, or OpenAI-style content parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def truncate_tokens(text: str, max_tokens: int) -> tuple[str, bool]:
    """The longest prefix of `text` within `max_tokens` (by `estimate_tokens`), and whether it was cut."""
    if estimate_tokens(text) <= max_tokens:
        return text, False
    keep = bisect.bisect_right(range(len(text) + 1), max_tokens, key=lambda n: estimate_tokens(text[:n])) - 1
    return text[:keep], True


def _canonical(body: Any) -> bytes:
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # listen backlog: hundreds of clients may connect at once
    fake: FakeMoonshot

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up is part of the test, not a server error.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            _log.exception("fake server: error while handling %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real API
    # Headers and body go out in separate writes; with Nagle on, delayed ACKs add ~40 ms to each.
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self.server.fake._dispatch(self, "GET")

    def do_POST(self) -> None:
        self.server.fake._dispatch(self, "POST")

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("fake server: " + format, *args)


class FakeMoonshot:
    """A Moonshot-compatible HTTP server running in a background thread."""

    def __init__(
        self,
        port: int = 0,
        latency_s: float = 0.0,
        rpm: int | None = None,
        api_key: str | None = "sk-test",
        responder: Responder | None = None,
        *,
        labels: Sequence[str] = ("相关", "不相关"),
        slow_s: float = 3.0,
        window_s: float = 60.0,
        rpm_retry_after: bool = False,
        models: dict[str, int] | None = None,
        host: str = "127.0.0.1",
        keep_requests: bool = True,
    ) -> None:
        self.latency_s = latency_s
        self.rpm = rpm
        self.api_key = api_key
        self.labels = list(labels)
        self.responder: Responder = responder or self._default_responder
        self.slow_s = slow_s
        self.window_s = window_s  # shorter than 60 s only so tests can watch a window expire
        self.rpm_retry_after = rpm_retry_after
        self.models = dict(models or DEFAULT_MODELS)
        self.keep_requests = keep_requests  # off for long benchmark runs: the records hold every body
        self._lock = threading.Lock()
        self._faults: deque[str] = deque()
        self._requests: list[dict[str, Any]] = []
        self._window: deque[float] = deque()  # start times of accepted chat requests
        self._in_flight = 0
        self._max_in_flight = 0
        self._httpd = _Server((host, port), _Handler)
        self._httpd.fake = self
        self._thread: threading.Thread | None = None

    # lifecycle -------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> FakeMoonshot:
        # A short poll interval keeps stop() fast; the default 0.5 s adds up over a test suite.
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> FakeMoonshot:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # test controls -----------------------------------------------------------------------------

    def inject(self, *faults: str) -> None:
        """Queue faults; each incoming chat request (that passes auth) consumes the next one."""
        unknown = set(faults) - FAULTS
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {sorted(FAULTS)}")
        with self._lock:
            self._faults.extend(faults)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every request so far: time (time.monotonic()), method, path, body, status, fault."""
        with self._lock:
            return [dict(r) for r in self._requests]

    def chat_hashes(self) -> list[str]:
        """sha256 of each chat request's canonical JSON body, in arrival order."""
        return [
            hashlib.sha256(_canonical(r["body"])).hexdigest()
            for r in self.requests
            if r["path"].endswith("/chat/completions")
        ]

    @property
    def max_in_flight(self) -> int:
        """The most chat requests the server was handling at the same time."""
        with self._lock:
            return self._max_in_flight

    def _default_responder(self, messages: list[dict[str, Any]]) -> str:
        user = next((_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        pick = int.from_bytes(hashlib.sha256(user.encode("utf-8")).digest()[:4], "big")
        return f"{self.labels[pick % len(self.labels)]}####reasoning about: {user[:30]}"

    # request handling ----------------------------------------------------------------------------

    def _dispatch(self, h: _Handler, method: str) -> None:
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))  # keep-alive needs it read
        path = h.path.split("?", 1)[0].rstrip("/")
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        record: dict[str, Any] = {
            "time": time.monotonic(), "method": method, "path": path, "body": body, "status": None, "fault": None,
        }  # fmt: skip
        if self.keep_requests:
            with self._lock:
                self._requests.append(record)

        if self.api_key is not None and h.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._error(h, record, 401, "invalid_authentication_error", "Invalid Authentication")
        if method == "GET" and path == "/v1/models":
            return self._json(h, record, 200, model_list(self.models, owned_by="moonshot"))
        if method == "POST" and path == "/v1/tokenizers/estimate-token-count":
            if not isinstance(body, dict):
                return self._error(h, record, 400, "invalid_request_error", "Invalid request: body is not JSON")
            return self._json(h, record, 200, {"data": {"total_tokens": self._prompt_tokens(body)}})
        if method == "POST" and path == "/v1/chat/completions":
            with self._lock:
                self._in_flight += 1
                self._max_in_flight = max(self._max_in_flight, self._in_flight)
            try:
                return self._chat(h, record, body)
            finally:
                with self._lock:
                    self._in_flight -= 1
        return self._error(h, record, 404, "resource_not_found_error", f"Not found: {method} {path}")

    def _chat(self, h: _Handler, record: dict[str, Any], body: Any) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return self._error(
                h, record, 400, "invalid_request_error", "Invalid request: need a JSON body with messages"
            )
        messages: list[dict[str, Any]] = body["messages"]
        with self._lock:
            scripted = self._faults.popleft() if self._faults else None
        # Any message, latest first: a re-ask (answer + correction appended) still carries the
        # chunk's trigger, so a chunk made to fail keeps failing however it is asked.
        triggers = (_TRIGGER.search(_text(m.get("content"))) for m in reversed(messages) if isinstance(m, dict))
        trigger = next((t for t in triggers if t), None)
        fault = trigger.group(1) if trigger else scripted
        record["fault"] = fault
        if fault is not None and fault not in FAULTS:
            return self._error(h, record, 400, "invalid_request_error", f"unknown fault {fault!r}")

        if fault in _ERROR_FAULTS:
            status, etype, message, headers = _ERROR_FAULTS[fault]
            return self._error(h, record, status, etype, message, headers)
        if fault == "502":  # what a gateway in front of the API sends: HTML, not JSON
            return self._send(h, record, 502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html")
        if fault == "reset":
            return self._reset(h)
        if fault == "malformed":
            return self._send(h, record, 200, b'{"id": "chatcmpl-broken", "choices": [', "application/json")

        retry_after = self._admit()
        if retry_after is not None:
            headers = {"Retry-After": str(retry_after)} if self.rpm_retry_after else {}
            message = f"Your account request reached organization max RPM: {self.rpm}, please try again later"
            return self._error(h, record, 429, "rate_limit_reached_error", message, headers)
        model = body.get("model")
        if model not in self.models:
            return self._error(
                h, record, 404, "resource_not_found_error", f"Not found the model {model} or Permission denied"
            )
        prompt_tokens = self._prompt_tokens(body)
        max_tokens = int(body.get("max_tokens") or 1024)
        if prompt_tokens + max_tokens > self.models[model]:
            message = f"Invalid request: Your request exceeded model token limit: {self.models[model]}"
            return self._error(h, record, 400, "invalid_request_error", message)

        delay = self.latency_s + (self.slow_s if fault == "slow" else 0.0)
        if not body.get("stream"):
            time.sleep(delay)  # a streamed answer spends it between its pieces instead
        content, finish_reason = self.responder(messages), "stop"
        if fault == "bad-format":
            content = _BAD_FORMAT_TEXT
        elif fault == "length":
            content, finish_reason = _CUT_TEXT, "length"
        content, cut = truncate_tokens(content, max_tokens)
        if cut:
            finish_reason = "length"
        completion = chat_completion(id=f"chatcmpl-{uuid.uuid4().hex[:24]}", model=model, content=content,
                                     finish_reason=finish_reason, prompt_tokens=prompt_tokens,
                                     completion_tokens=estimate_tokens(content))
        if body.get("stream"):
            return self._stream(h, record, completion, delay, truncated=fault == "truncated")
        if fault == "no-choices":
            del completion["choices"]
        if fault == "truncated":
            return self._truncated(h, record, _canonical(completion))
        return self._json(h, record, 200, completion)

    def _stream(self, h: _Handler, record: dict[str, Any], completion: dict[str, Any], delay: float, *,
                truncated: bool) -> None:
        """Server-sent events as Moonshot sends them: a role delta, the content in pieces spread over
        `delay` (a slow teacher that is alive), then the finish reason with the usage inside the
        choice, then [DONE]; chunked transfer encoding on the kept-alive connection."""
        choice, content = completion["choices"][0], completion["choices"][0]["message"]["content"]
        base = {k: completion[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}

        def event(delta: dict[str, Any], finish: str | None = None, usage: dict[str, Any] | None = None) -> bytes:
            piece = {"index": 0, "delta": delta, "finish_reason": finish} | ({"usage": usage} if usage else {})
            return b"data: " + _canonical(base | {"choices": [piece]}) + b"\n\n"

        record["status"] = 200
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def send(data: bytes) -> None:
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            h.wfile.flush()

        pieces = [content[i : i + 8] for i in range(0, len(content), 8)] or [""]
        send(event({"role": "assistant", "content": ""}))
        for i, piece in enumerate(pieces):
            time.sleep(delay / len(pieces))
            send(event({"content": piece}))
            if truncated and i >= len(pieces) // 2:
                h.close_connection = True  # the server dies mid-answer: no finish, no [DONE]
                return
        send(event({}, choice["finish_reason"], completion["usage"]))
        send(b"data: [DONE]\n\n")
        h.wfile.write(b"0\r\n\r\n")

    def _admit(self) -> int | None:
        """Count a chat request against the sliding RPM window; seconds to wait if it is full."""
        if self.rpm is None:
            return None
        now = time.monotonic()
        with self._lock:
            while self._window and self._window[0] <= now - self.window_s:
                self._window.popleft()
            if len(self._window) >= self.rpm:  # rejected requests do not count, as with Moonshot
                return max(1, math.ceil(self._window[0] + self.window_s - now))
            self._window.append(now)
            return None

    @staticmethod
    def _prompt_tokens(body: dict[str, Any]) -> int:
        messages = body.get("messages") or []
        return sum(estimate_tokens(_text(m.get("content"))) for m in messages if isinstance(m, dict))

    # responses ---------------------------------------------------------------------------------

    def _send(
        self,
        h: _Handler,
        record: dict[str, Any],
        status: int,
        payload: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        record["status"] = status
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(payload)

    def _json(
        self, h: _Handler, record: dict[str, Any], status: int, data: Any, headers: dict[str, str] | None = None
    ) -> None:
        self._send(h, record, status, _canonical(data), "application/json; charset=utf-8", headers)

    def _error(
        self,
        h: _Handler,
        record: dict[str, Any],
        status: int,
        etype: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._json(h, record, status, {"error": {"type": etype, "message": message}}, headers)

    @staticmethod
    def _reset(h: _Handler) -> None:
        # SO_LINGER 0 turns close() into a TCP RST: the client sees "connection reset", no response.
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.close_connection = True
        h.rfile.close()  # the makefile() reader holds a reference that would delay the real close
        h.connection.close()

    @staticmethod
    def _truncated(h: _Handler, record: dict[str, Any], payload: bytes) -> None:
        # Promise the whole body, send half, hang up: a proxy or server dying mid-response.
        record["status"] = 200
        h.send_response(200)
        h.send_header("Content-Type", "application/json; charset=utf-8")
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload[: len(payload) // 2])
        h.close_connection = True


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m doubles.moonshot",
        description="Serve a local Moonshot-compatible API (for offline rehearsal and benchmarks) until Ctrl-C.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds each completion takes")
    parser.add_argument("--rpm", type=int, default=None, help="requests per sliding 60 s window; 429 beyond")
    parser.add_argument("--retry-after", action="store_true", help="send Retry-After with RPM 429s")
    parser.add_argument("--api-key", default="sk-test", help="the key clients must send ('' accepts any)")
    parser.add_argument(
        "--labels", default="相关,不相关", help="comma-separated labels the default responder picks from"
    )
    args = parser.parse_args(argv)
    server = FakeMoonshot(
        port=args.port,
        latency_s=args.latency,
        rpm=args.rpm,
        api_key=args.api_key or None,
        labels=args.labels.split(","),
        rpm_retry_after=args.retry_after,
        host=args.host,
        keep_requests=False,
    )
    with server:
        print(f"fake Moonshot API at {server.base_url} (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
