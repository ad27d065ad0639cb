"""OpenAIChatClient against the fake Moonshot server over real HTTP: faults, retries, limits."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Iterator
from email.utils import formatdate
from typing import Any

import httpx
import pytest

from distillery.client import OpenAIChatClient, backoff_s, classify, retry_after_s
from distillery.ratelimit import Limits
from distillery.teacher import ChatRequest, ChatResult, TeacherError
from doubles.moonshot import FakeMoonshot

KEY = "sk-test"


@pytest.fixture
def server() -> Iterator[FakeMoonshot]:
    with FakeMoonshot(slow_s=1.0) as s:
        yield s


def request(text: str = "这段文字和问题相关吗？", **kw: Any) -> ChatRequest:
    return ChatRequest(model="moonshot-v1-8k", messages=[{"role": "user", "content": text}], **kw)


def client(server: FakeMoonshot, **kw: Any) -> OpenAIChatClient:
    options: dict[str, Any] = {
        "limits": Limits(concurrency=8), "backoff_base_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 5.0,
    }  # fmt: skip
    options.update(kw)
    api_key = options.pop("api_key", KEY)
    return OpenAIChatClient(server.base_url, api_key, **options)


def complete(server: FakeMoonshot, req: ChatRequest | None = None, **kw: Any) -> ChatResult:
    async def main() -> ChatResult:
        c = client(server, **kw)
        try:
            return await c.complete(req or request())
        finally:
            await c.aclose()

    return asyncio.run(main())


def failure(server: FakeMoonshot, req: ChatRequest | None = None, **kw: Any) -> TeacherError:
    with pytest.raises(TeacherError) as info:
        complete(server, req, **kw)
    return info.value


def test_success(server: FakeMoonshot) -> None:
    result = complete(server, request(max_tokens=64))
    assert result.content.split("####")[0] in ("相关", "不相关")
    assert result.finish_reason == "stop" and result.model == "moonshot-v1-8k"
    assert result.prompt_tokens > 0 and result.completion_tokens > 0
    assert result.raw["object"] == "chat.completion"
    assert result.attempts == 1 and 0 < result.latency_s < 1
    assert server.requests[0]["body"] == request(max_tokens=64).body()


def test_list_models(server: FakeMoonshot) -> None:
    async def main() -> list[str]:
        c = client(server)
        try:
            return await c.list_models()
        finally:
            await c.aclose()

    assert "moonshot-v1-8k" in asyncio.run(main())


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        ("429", "rate_limit"),
        ("429-overloaded", "rate_limit"),
        ("500", "server"),
        ("502", "server"),
        ("503", "server"),
        ("reset", "connection"),
        ("truncated", "connection"),
        ("malformed", "malformed"),
        ("no-choices", "malformed"),
    ],
)
def test_retryable_fault_then_success(server: FakeMoonshot, fault: str, kind: str) -> None:
    server.inject(fault)
    retried: list[TeacherError] = []
    result = complete(server, on_retry=retried.append)
    assert result.attempts == 2 and "####" in result.content
    assert [e.kind for e in retried] == [kind]
    hashes = server.chat_hashes()
    assert len(hashes) == 2 and hashes[0] == hashes[1]  # the very same request, sent again


def test_slow_answer_times_out_then_retries(server: FakeMoonshot) -> None:
    server.inject("slow")  # 1 s, against a 0.3 s client timeout
    retried: list[TeacherError] = []
    t0 = time.monotonic()
    result = complete(server, timeout_s=0.3, on_retry=retried.append)
    assert result.attempts == 2 and [e.kind for e in retried] == ["timeout"]
    assert 0.3 <= time.monotonic() - t0 < 1.0


def test_retry_after_is_honoured(server: FakeMoonshot) -> None:
    server.inject("429-retry-after")
    retried: list[TeacherError] = []
    t0 = time.monotonic()
    result = complete(server, on_retry=retried.append)
    assert time.monotonic() - t0 >= 1.0
    assert result.attempts == 2 and retried[0].retry_after_s == 1.0
    first, second = server.requests
    assert second["time"] - first["time"] >= 1.0


def test_a_429_makes_every_worker_back_off(server: FakeMoonshot) -> None:
    server.inject("429-retry-after")

    async def main() -> None:
        paused = asyncio.Event()
        c = client(server, on_retry=lambda err: paused.set())  # called once the limiter is paused
        try:
            first = asyncio.create_task(c.complete(request("first")))
            await paused.wait()
            others = [c.complete(request(f"other {i}")) for i in range(3)]
            await asyncio.gather(first, *others)
        finally:
            await c.aclose()

    asyncio.run(main())
    rejected_at = server.requests[0]["time"]
    assert len(server.requests) == 5
    assert all(r["time"] - rejected_at >= 1.0 for r in server.requests[1:])


def test_server_rpm_window_with_retry_after() -> None:
    with FakeMoonshot(rpm=2, window_s=1.0, rpm_retry_after=True) as s:
        retried: list[TeacherError] = []

        async def main() -> list[ChatResult]:
            c = client(s, on_retry=retried.append)
            try:
                return await asyncio.gather(*(c.complete(request(str(i))) for i in range(4)))
            finally:
                await c.aclose()

        results = asyncio.run(main())
    assert all("####" in r.content for r in results)
    assert retried and {e.kind for e in retried} == {"rate_limit"}


def test_quota_is_not_retried(server: FakeMoonshot) -> None:
    server.inject("429-quota")
    err = failure(server)
    assert err.kind == "quota" and err.fatal and not err.retryable
    assert err.attempts == 1 and len(server.requests) == 1


def test_auth_error_is_not_retried() -> None:
    with FakeMoonshot(api_key="sk-right") as s:
        err = failure(s, api_key="sk-wrong")
        assert err.kind == "auth" and err.status == 401 and err.fatal
        assert len(s.requests) == 1


@pytest.mark.parametrize(
    ("fault", "kind"), [("content_filter", "content_filter"), ("context_overflow", "context_overflow")]
)
def test_refusals_are_not_retried(server: FakeMoonshot, fault: str, kind: str) -> None:
    server.inject(fault)
    err = failure(server)
    assert err.kind == kind and err.status == 400 and err.attempts == 1
    assert len(server.requests) == 1


def test_real_context_overflow_and_unknown_model(server: FakeMoonshot) -> None:
    assert failure(server, request("长" * 9000)).kind == "context_overflow"
    assert (
        failure(server, ChatRequest(model="moonshot-v9", messages=[{"role": "user", "content": "x"}])).kind
        == "bad_request"
    )


def test_answers_that_break_the_contract_are_returned(server: FakeMoonshot) -> None:
    server.inject("bad-format", "length")
    assert complete(server).content == "I think it is relevant."
    cut = complete(server)
    assert cut.finish_reason == "length" and "####" not in cut.content
    assert complete(server, request(max_tokens=1)).finish_reason == "length"


def test_retries_run_out_with_capped_backoff(server: FakeMoonshot) -> None:
    retried: list[TeacherError] = []
    t0 = time.monotonic()
    err = failure(server, request("[[FAULT:500]]"), max_retries=5, backoff_max_s=0.02, on_retry=retried.append)
    assert time.monotonic() - t0 < 1.0  # uncapped, 0.01 * 2**4 alone would be 0.16 s
    assert err.kind == "server" and err.attempts == 6 and len(server.requests) == 6
    assert len(retried) == 5


def test_backoff_is_full_jitter_and_capped() -> None:
    samples = [backoff_s(n, 1.0, 60.0) for n in range(12) for _ in range(50)]
    assert all(0.0 <= s <= 60.0 for s in samples)
    assert max(backoff_s(0, 1.0, 60.0) for _ in range(200)) <= 1.0
    assert max(backoff_s(10, 1.0, 60.0) for _ in range(200)) > 30.0  # spread over the capped range


def test_connection_refused_is_retried_then_fails() -> None:
    with FakeMoonshot() as s:
        url = s.base_url
    err = failure_at(url, max_retries=1)
    assert err.kind == "connection" and err.attempts == 2


def failure_at(url: str, **kw: Any) -> TeacherError:
    async def main() -> None:
        c = OpenAIChatClient(url, KEY, limits=Limits(concurrency=1), backoff_base_s=0.01, **kw)
        try:
            await c.complete(request())
        finally:
            await c.aclose()

    with pytest.raises(TeacherError) as info:
        asyncio.run(main())
    return info.value


def test_concurrency_cap_seen_by_the_server() -> None:
    with FakeMoonshot(latency_s=0.1) as s:

        async def main() -> None:
            c = client(s, limits=Limits(concurrency=3))
            try:
                await asyncio.gather(*(c.complete(request(str(i))) for i in range(12)))
            finally:
                await c.aclose()

        asyncio.run(main())
        assert s.max_in_flight == 3


def test_high_concurrency_spreads_over_pools() -> None:
    with FakeMoonshot(latency_s=0.3) as s:

        async def main() -> list[ChatResult]:
            c = client(s, limits=Limits(concurrency=60))  # three httpx pools of 20
            try:
                return await asyncio.gather(*(c.complete(request(str(i))) for i in range(120)))
            finally:
                await c.aclose()

        results = asyncio.run(main())
        assert len(results) == 120 and all(r.attempts == 1 for r in results)
        assert s.max_in_flight == 60


def test_rpm_paces_the_starts_the_server_sees() -> None:
    with FakeMoonshot() as s:

        async def main() -> None:
            c = client(s, limits=Limits(concurrency=50, rpm=600))  # bucket of 10, then 9.8/s
            try:
                await asyncio.gather(*(c.complete(request(str(i))) for i in range(20)))
            finally:
                await c.aclose()

        asyncio.run(main())
        times = sorted(r["time"] for r in s.requests)
    assert times[-1] - times[0] >= 0.9  # ten from the bucket, ten more at ~0.1 s apart
    assert all(b - a > 0.05 for a, b in itertools.pairwise(times[10:]))  # ~0.1 s


def test_key_never_leaks(caplog: pytest.LogCaptureFixture) -> None:
    secret = "sk-SECRET-0123456789"
    caplog.set_level(logging.DEBUG)
    with FakeMoonshot(api_key=secret) as s:
        s.inject("500")
        ok = complete(s, api_key=secret)  # a retry is logged on the way
        assert ok.attempts == 2
        # The server echoes the model name in its 404; a model string carrying the key must not leak.
        echoed = failure(
            s, ChatRequest(model=f"m-{secret}", messages=[{"role": "user", "content": "x"}]), api_key=secret
        )
    with FakeMoonshot(api_key="sk-other") as s:
        denied = failure(s, api_key=secret)
    assert echoed.kind == "bad_request" and "***" in echoed.message
    assert denied.kind == "auth"
    for err in (echoed, denied):
        assert secret not in str(err) and secret not in repr(err) and secret not in err.message
        assert err.__cause__ is None or secret not in str(err.__cause__)
        assert err.__context__ is None or secret not in str(err.__context__)
    assert secret not in repr(OpenAIChatClient("http://127.0.0.1:1/v1", secret, limits=Limits(concurrency=1)))
    assert "retrying" in caplog.text and secret not in caplog.text


def test_retry_after_headers() -> None:
    now = 1_800_000_000.0
    assert retry_after_s({"Retry-After": "2"}, now) == 2.0
    assert retry_after_s({"retry-after": formatdate(now + 30, usegmt=True)}, now) == pytest.approx(30.0)
    assert retry_after_s({"retry-after-ms": "1500", "Retry-After": "2"}, now) == 1.5
    assert retry_after_s({"x-ratelimit-reset-requests": "6m0s"}, now) == 360.0
    assert retry_after_s({"x-ratelimit-reset-requests": "1s"}, now) == 1.0
    assert retry_after_s({"x-ratelimit-reset-requests": "20ms"}, now) == pytest.approx(0.02)
    assert retry_after_s({"X-RateLimit-Reset": "1.5"}, now) == 1.5
    assert retry_after_s({"X-RateLimit-Reset": str(int(now) + 7)}, now) == 7.0  # a Unix timestamp
    assert retry_after_s({"Retry-After": "soon"}, now) is None
    assert retry_after_s({}, now) is None
    assert retry_after_s(httpx.Headers({"RETRY-AFTER": "3"}), now) == 3.0


def _body(etype: str, message: str) -> bytes:
    return f'{{"error": {{"type": "{etype}", "message": "{message}"}}}}'.encode()


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (429, _body("rate_limit_reached_error", "max RPM"), "rate_limit"),
        (429, _body("engine_overloaded_error", "overloaded"), "rate_limit"),
        (429, _body("exceeded_current_quota_error", "suspended"), "quota"),
        (429, _body("", "Insufficient balance"), "quota"),
        (402, _body("", "Insufficient Balance"), "quota"),  # DeepSeek
        (401, _body("invalid_authentication_error", "Invalid Authentication"), "auth"),
        (403, _body("permission_denied_error", "denied"), "auth"),
        (400, _body("content_filter", "considered high risk"), "content_filter"),
        (400, _body("invalid_request_error", "the input was considered high risk"), "content_filter"),
        (
            400,
            b'{"code": "DataInspectionFailed", "message": "Input data may contain inappropriate content."}',
            "content_filter",
        ),
        (400, _body("data_inspection_failed", "Input data may contain inappropriate content."), "content_filter"),
        (400, _body("invalid_request_error", "Invalid request: Input token length too long"), "context_overflow"),
        (400, _body("invalid_request_error", "Your request exceeded model token limit: 8192"), "context_overflow"),
        (400, _body("invalid_request_error", "This model's maximum context length is 8192 tokens"), "context_overflow"),
        (400, _body("invalid_request_error", "temperature out of range"), "bad_request"),
        (404, b"not json", "bad_request"),
        (500, _body("server_error", "oops"), "server"),
        (504, b"<html>gateway timeout</html>", "server"),
    ],
)
def test_classify(status: int, body: bytes, kind: str) -> None:
    err = classify(status, body, {})
    assert err.kind == kind and err.status == status
    assert str(status) in err.message


def test_classify_keeps_the_servers_wait() -> None:
    assert classify(429, _body("rate_limit_reached_error", "x"), {"Retry-After": "4"}).retry_after_s == 4.0
    assert classify(503, b"", {"retry-after": "2"}).retry_after_s == 2.0


# -- streamed answers ------------------------------------------------------------------------------

LONG = "相关####" + "文本规定了个人信息处理者的告知义务和保存期限，直接涉及个人信息保护。" * 4


def test_a_slow_but_live_teacher_is_not_cut_off_when_streamed() -> None:
    with FakeMoonshot(latency_s=2.0, responder=lambda messages: LONG) as s:
        streamed = complete(s, timeout_s=0.5, stream=True, max_retries=0)  # 2 s in all, a piece every ~0.1 s
        cut = failure(s, timeout_s=0.5, stream=False, max_retries=0)  # the same answer, unstreamed
        bodies = [r["body"] for r in s.requests]
    assert streamed.content == LONG and streamed.finish_reason == "stop" and streamed.raw["streamed"] is True
    assert cut.kind == "timeout" and "no answer within 0.5s" in cut.message
    assert bodies[0]["stream"] is True and "stream" not in bodies[1]
    # The usage Moonshot puts inside the last choice is the usage recorded, not an estimate.
    assert streamed.prompt_tokens > 0 and streamed.completion_tokens > 0 and "usage_estimated" not in streamed.raw


def test_a_streamed_answer_equals_the_unstreamed_one_and_keeps_its_request_hash(server: FakeMoonshot) -> None:
    streamed, whole = complete(server, stream=True), complete(server, stream=False)
    assert (streamed.content, streamed.finish_reason, streamed.prompt_tokens, streamed.completion_tokens) == (
        whole.content, whole.finish_reason, whole.prompt_tokens, whole.completion_tokens)
    assert "stream" not in request().body()  # how the answer travels is not part of what was asked (the hash)


def test_a_stream_cut_off_mid_answer_is_retried(server: FakeMoonshot) -> None:
    server.inject("truncated")
    result = complete(server, stream=True, max_retries=2)
    assert result.attempts == 2 and "####" in result.content
    server.inject("truncated")
    err = failure(server, stream=True, max_retries=0)
    assert err.kind == "connection" and err.retryable  # the server hung up mid-answer


def test_a_server_that_ignores_stream_is_read_whole_and_missing_usage_is_estimated(server: FakeMoonshot) -> None:
    server.inject("malformed")
    err = failure(server, stream=True, max_retries=0)  # answered in one (broken) JSON piece, not as events
    assert err.kind == "malformed"

    def no_usage(messages: list[dict[str, Any]]) -> str:
        return "不相关####与个人信息无关。"

    with FakeMoonshot(responder=no_usage) as s:
        original = s._stream

        def without_usage(h: Any, record: Any, completion: dict[str, Any], delay: float, *, truncated: bool) -> None:
            completion["usage"] = None  # a self-hosted server that reports no usage when streaming
            original(h, record, completion, delay, truncated=truncated)

        s._stream = without_usage  # type: ignore[method-assign]
        result = complete(s, stream=True)
    assert result.raw["usage_estimated"] is True and result.prompt_tokens > 0 and result.completion_tokens > 0
