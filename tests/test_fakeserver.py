"""The fake Moonshot server, spoken to over real sockets with plain httpx and raw TCP."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from doubles.moonshot import FAULTS, FakeMoonshot, estimate_tokens, main, truncate_tokens

KEY = "sk-test"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def server() -> Iterator[FakeMoonshot]:
    with FakeMoonshot(slow_s=0.3) as s:
        yield s


def chat_body(text: str = "这段文字和问题相关吗？", **extra: Any) -> dict[str, Any]:
    return {
        "model": "moonshot-v1-8k",
        "messages": [{"role": "system", "content": "你是标注员"}, {"role": "user", "content": text}],
        **extra,
    }


def post(server: FakeMoonshot, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{server.base_url}/chat/completions", json=body, headers=AUTH if headers is None else headers)


def test_chat_completion_shape_and_default_responder(server: FakeMoonshot) -> None:
    r = post(server, chat_body())
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "chat.completion" and data["model"] == "moonshot-v1-8k"
    assert data["id"].startswith("chatcmpl-") and isinstance(data["created"], int)
    (choice,) = data["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    label, reasoning = choice["message"]["content"].split("####")
    assert label in ("相关", "不相关")
    assert reasoning == "reasoning about: 这段文字和问题相关吗？"
    usage = data["usage"]
    assert usage["prompt_tokens"] == estimate_tokens("你是标注员") + estimate_tokens("这段文字和问题相关吗？")
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert post(server, chat_body()).json()["choices"][0]["message"]["content"] == choice["message"]["content"]


def test_labels_and_custom_responder() -> None:
    with FakeMoonshot(labels=["A"]) as s:
        assert post(s, chat_body("x")).json()["choices"][0]["message"]["content"].startswith("A####")
    with FakeMoonshot(responder=lambda messages: f"{len(messages)} messages") as s:
        assert post(s, chat_body()).json()["choices"][0]["message"]["content"] == "2 messages"


def test_max_tokens_truncates_with_finish_reason_length(server: FakeMoonshot) -> None:
    choice = post(server, chat_body(max_tokens=2)).json()["choices"][0]
    assert choice["finish_reason"] == "length"
    assert estimate_tokens(choice["message"]["content"]) <= 2
    assert truncate_tokens("abcdefgh相关", 2) == ("abcdefgh", True)
    assert truncate_tokens("abcdefgh相关", 4) == ("abcdefgh相关", False)


def test_models_tokenizer_and_unknown_paths(server: FakeMoonshot) -> None:
    models = httpx.get(f"{server.base_url}/models", headers=AUTH).json()
    assert "moonshot-v1-8k" in [m["id"] for m in models["data"]]
    r = httpx.post(f"{server.base_url}/tokenizers/estimate-token-count", json=chat_body(), headers=AUTH)
    assert r.json()["data"]["total_tokens"] == post(server, chat_body()).json()["usage"]["prompt_tokens"]
    assert httpx.get(f"{server.base_url}/nothing", headers=AUTH).status_code == 404
    r = post(server, {**chat_body(), "model": "moonshot-v9"})
    assert r.status_code == 404 and r.json()["error"]["type"] == "resource_not_found_error"


def test_context_length_is_enforced(server: FakeMoonshot) -> None:
    r = post(server, chat_body("长" * 8000, max_tokens=1024))
    assert r.status_code == 400
    assert r.json()["error"] == {
        "type": "invalid_request_error",
        "message": "Invalid request: Your request exceeded model token limit: 8192",
    }


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sk-wrong"}])
def test_auth(server: FakeMoonshot, headers: dict[str, str]) -> None:
    r = post(server, chat_body(), headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "invalid_authentication_error"
    assert httpx.get(f"{server.base_url}/models", headers=headers).status_code == 401


def test_sliding_window_rpm() -> None:
    with FakeMoonshot(rpm=2, window_s=0.5, rpm_retry_after=True) as s:
        statuses = [post(s, chat_body(str(i))).status_code for i in range(3)]
        assert statuses == [200, 200, 429]
        r = post(s, chat_body("again"))
        assert r.json()["error"]["type"] == "rate_limit_reached_error"
        assert r.headers["Retry-After"] == "1"
        time.sleep(0.55)  # the window slides past the first two
        assert post(s, chat_body("later")).status_code == 200
    with FakeMoonshot(rpm=1) as s:
        post(s, chat_body())
        r = post(s, chat_body())
        assert r.status_code == 429 and "Retry-After" not in r.headers


def test_scripted_faults_in_arrival_order(server: FakeMoonshot) -> None:
    server.inject("500", "429-retry-after", "429-quota", "content_filter", "context_overflow", "503", "429-overloaded")
    seen = [post(server, chat_body(str(i))) for i in range(8)]
    assert [r.status_code for r in seen] == [500, 429, 429, 400, 400, 503, 429, 200]
    assert seen[1].headers["Retry-After"] == "1"
    types = [r.json().get("error", {}).get("type") for r in seen]
    assert types[:7] == [
        "server_error", "rate_limit_reached_error", "exceeded_current_quota_error", "content_filter",
        "invalid_request_error", "server_error", "engine_overloaded_error",
    ]  # fmt: skip
    assert "high risk" in seen[3].json()["error"]["message"]
    assert [r["fault"] for r in server.requests] == ["500", "429-retry-after", "429-quota", "content_filter",
                                                     "context_overflow", "503", "429-overloaded", None]  # fmt: skip
    with pytest.raises(ValueError, match="unknown faults"):
        server.inject("teapot")


def test_trigger_applies_to_every_request_carrying_it(server: FakeMoonshot) -> None:
    for _ in range(3):
        assert post(server, chat_body("chunk 7 [[FAULT:502]]")).status_code == 502
    assert post(server, chat_body("chunk 8")).status_code == 200
    reask = chat_body("chunk 9 [[FAULT:bad-format]]")
    reask["messages"] += [
        {"role": "assistant", "content": "相关"},
        {"role": "user", "content": "Use conclusion####reasons."},
    ]
    assert "####" not in post(server, reask).json()["choices"][0]["message"]["content"]


def test_body_faults(server: FakeMoonshot) -> None:
    server.inject("malformed", "no-choices", "bad-format", "length")
    r = post(server, chat_body())
    assert r.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        r.json()
    r = post(server, chat_body())
    assert "choices" not in r.json() and "usage" in r.json()
    choice = post(server, chat_body()).json()["choices"][0]
    assert choice["finish_reason"] == "stop" and "####" not in choice["message"]["content"]
    choice = post(server, chat_body()).json()["choices"][0]
    assert choice["finish_reason"] == "length" and "####" not in choice["message"]["content"]


def test_slow(server: FakeMoonshot) -> None:
    server.inject("slow")
    t0 = time.monotonic()
    assert post(server, chat_body()).status_code == 200
    assert time.monotonic() - t0 >= 0.3


def _raw_chat(server: FakeMoonshot) -> socket.socket:
    payload = json.dumps(chat_body()).encode()
    host, port = server.base_url.split("//")[1].split("/")[0].split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
    sock.sendall(f"{head}Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_reset_sends_tcp_rst(server: FakeMoonshot) -> None:
    server.inject("reset")
    with _raw_chat(server) as sock, pytest.raises(ConnectionResetError):
        _read_all(sock)
    assert server.requests[-1]["status"] is None


def test_truncated_promises_more_than_it_sends(server: FakeMoonshot) -> None:
    server.inject("truncated")
    with _raw_chat(server) as sock:
        raw = _read_all(sock)  # ends with the server closing
    head, _, body = raw.partition(b"\r\n\r\n")
    length = int(
        next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(b":")[1]
    )
    assert head.startswith(b"HTTP/1.1 200") and 0 < len(body) < length
    with pytest.raises(httpx.RemoteProtocolError):
        server.inject("truncated")
        post(server, chat_body())


def test_records_and_canonical_hashes(server: FakeMoonshot) -> None:
    bodies = [chat_body("一"), chat_body("二"), chat_body("一")]
    for body in bodies:
        post(server, body)
    canonical = [json.dumps(b, sort_keys=True, ensure_ascii=False, separators=(",", ":")) for b in bodies]
    assert server.chat_hashes() == [hashlib.sha256(c.encode()).hexdigest() for c in canonical]
    first = server.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["method"] == "POST"
    assert first["body"] == bodies[0] and first["status"] == 200 and first["fault"] is None
    assert first["time"] <= server.requests[1]["time"]


def test_two_hundred_concurrent_clients() -> None:
    async def blast(url: str) -> list[int]:
        pool = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(limits=pool, headers=AUTH, timeout=30) as client:
            rs = await asyncio.gather(
                *(client.post(f"{url}/chat/completions", json=chat_body(str(i))) for i in range(200))
            )
        return [r.status_code for r in rs]

    with FakeMoonshot(latency_s=0.3) as s:
        assert asyncio.run(blast(s.base_url)) == [200] * 200
        assert s.max_in_flight >= 100  # they really were served side by side


def test_fault_names_and_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert {"429", "429-retry-after", "429-quota", "500", "502", "503", "slow", "reset", "truncated", "malformed",
            "no-choices", "content_filter", "context_overflow", "bad-format", "length"} <= FAULTS  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "--rpm" in capsys.readouterr().out


def test_recording_can_be_turned_off_for_long_runs() -> None:
    with FakeMoonshot(keep_requests=False) as s:
        assert post(s, chat_body()).status_code == 200
        assert s.requests == [] and s.chat_hashes() == []
