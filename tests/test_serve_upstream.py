"""serve in front of an upstream OpenAI-compatible engine: the same ChatRest and /v1 answers from
a real third-party server (`llamafactory-cli api`, see conftest), and every upstream failure as a
clear envelope (with the Moonshot double, whose faults can be injected)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from werkzeug.serving import make_server

from distillery.errors import ConfigError
from doubles.moonshot import FakeMoonshot
from serve.app import create_app
from serve.config import ServeConfig

CHAT = "/algorithm/ChatRest"


@contextmanager
def front(upstream: str, **settings: Any) -> Iterator[httpx.Client]:
    app = create_app(ServeConfig.model_validate({"upstream": upstream, **settings}))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.server_port}", timeout=120) as client:
            yield client
    finally:
        server.shutdown()
        thread.join(10)
        app.extensions["distillery"].close()


def envelope_error(response: httpx.Response, status: int, message: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["sucess"] is False and body["code"] == str(status) and message in body["msg"], body
    assert "Traceback" not in response.text


@pytest.mark.model
@pytest.mark.slow
def test_chatrest_and_v1_answer_through_a_real_third_party_engine(llamafactory_api: str) -> None:
    with front(llamafactory_api, generation={"max_new_tokens": 12}) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["engine"] == "upstream"
        assert ready.json()["model"] == "gpt-3.5-turbo"  # the name llamafactory-cli api reports
        answer = client.post(CHAT, json={"prompt": "Say hello.", "history": [{"query": "Hi", "answer": "Hello!"}]})
        body = answer.json()
        assert answer.status_code == 200 and body["sucess"] is True and body["code"] == "200"
        assert body["data"]["answer"].strip() and body["data"]["usage"]["completion_tokens"] > 0
        v1 = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Say hi."}],
                                                        "max_tokens": 8})
        assert v1.status_code == 200 and v1.json()["choices"][0]["message"]["content"].strip()
        over = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100})
        assert over.status_code == 400 and "at most 12 new tokens" in over.json()["error"]["message"]  # the same limits
        metrics = client.get("/metrics").text
        assert 'distill_serve_requests_total{endpoint="/algorithm/ChatRest",status="200"}' in metrics


def test_an_upstream_that_ignores_stop_still_gives_the_conclusion_only() -> None:
    with FakeMoonshot(api_key=None) as upstream:  # answers "label####reason" whatever `stop` says
        with front(upstream.base_url) as client:
            short = client.post(CHAT, json={"prompt": "这段文字与个人信息相关吗？"}).json()["data"]
            full = client.post(CHAT, json={"prompt": "这段文字与个人信息相关吗？", "reasoning": True}).json()["data"]
        sent = [r["body"] for r in upstream.requests if r["path"].endswith("/chat/completions")]
    assert "####" not in short["answer"] and short["answer"] == full["conclusion"]
    assert "ignored stop '####'" in short["note"] and "note" not in full
    assert sent[0]["stop"] == ["####"] and "stop" not in sent[1]  # the early exit was asked for upstream


@pytest.mark.parametrize(("fault", "status", "message"), [
    ("context_overflow", 400, "the upstream answered 400: Invalid request: Your request exceeded model token limit"),
    ("429", 503, "retry shortly"),
    ("500", 502, "the upstream answered 500"),
    ("malformed", 502, "not a chat completion"),
])
def test_upstream_failures_are_clear_envelopes_never_a_500(fault: str, status: int, message: str) -> None:
    with FakeMoonshot(api_key=None) as upstream, front(upstream.base_url) as client:
        upstream.inject(fault)
        envelope_error(client.post(CHAT, json={"prompt": "hi"}), status, message)


def test_a_wrong_upstream_key_and_a_dead_upstream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTILL_SERVE_UPSTREAM_API_KEY", "sk-wrong")
    with FakeMoonshot(api_key="sk-right") as upstream, front(upstream.base_url) as client:
        # Its /models refuses the key too, so readiness says so; a request is a 503 envelope, not a 500.
        assert client.get("/readyz").status_code == 503
        envelope_error(client.post(CHAT, json={"prompt": "hi"}), 503, "the upstream is not ready")
    with FakeMoonshot(api_key=None) as upstream:
        url = upstream.base_url
    with front(url) as client:  # nothing listens there any more
        assert client.get("/readyz").status_code == 503
        envelope_error(client.post(CHAT, json={"prompt": "hi"}), 503, "not ready")


def test_upstream_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="upstream: the upstream engine holds the model"):
        ServeConfig(upstream="http://vllm:8000/v1", model="/models/x").check()
    with pytest.raises(ConfigError, match="is not an http"):
        ServeConfig(upstream="vllm:8000").check()


def _sdk(client: httpx.Client):
    import openai

    return openai.OpenAI(base_url=f"{client.base_url}/v1", api_key="unused", max_retries=0)


@pytest.mark.model
@pytest.mark.slow
def test_v1_streams_a_real_engines_answer_to_the_openai_sdk(llamafactory_api: str) -> None:
    with front(llamafactory_api, generation={"max_new_tokens": 16}) as client:
        assert client.get("/readyz").status_code == 200
        chunks = list(_sdk(client).chat.completions.create(
            model="any", messages=[{"role": "user", "content": "Say hello."}], max_tokens=16, stream=True,
            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() and len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # in pieces
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0  # usage last, as OpenAI sends it


def test_a_stream_is_cut_at_the_stop_string_an_upstream_ignores() -> None:
    with FakeMoonshot(api_key=None) as upstream:  # streams "label####reason" in 8-character pieces, whatever `stop`
        with front(upstream.base_url) as client:
            chunks = list(_sdk(client).chat.completions.create(
                model="any", messages=[{"role": "user", "content": "这段文字与个人信息相关吗？"}], stop=["####"],
                stream=True, stream_options={"include_usage": True}))
            whole = _sdk(client).chat.completions.create(
                model="any", messages=[{"role": "user", "content": "这段文字与个人信息相关吗？"}])
        sent = [r["body"] for r in upstream.requests if r["path"].endswith("/chat/completions")]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content.split("####")[0] and text
    assert sent[0]["stream"] is True and sent[0]["stop"] == ["####"]
    assert chunks[-1].usage.prompt_tokens > 0


def test_a_stream_that_breaks_upstream_ends_with_an_error_the_sdk_raises() -> None:
    import openai

    with FakeMoonshot(api_key=None) as upstream:
        upstream.inject("truncated")  # the upstream dies half way through its answer
        with front(upstream.base_url) as client:
            stream = _sdk(client).chat.completions.create(model="any", messages=[{"role": "user", "content": "hi"}],
                                                          stream=True)
            with pytest.raises(openai.APIError, match="broke off|failed mid-answer"):
                list(stream)
            assert client.get("/readyz").status_code == 200  # one broken answer is not a broken server


def test_a_caller_that_goes_away_stops_the_upstream_answer(caplog: pytest.LogCaptureFixture) -> None:
    with FakeMoonshot(api_key=None, latency_s=3.0) as upstream:  # 3 s spread over the answer's pieces
        with front(upstream.base_url) as client:
            started = time.monotonic()
            with client.stream("POST", "/v1/chat/completions", json={
                    "messages": [{"role": "user", "content": "这段文字与个人信息相关吗？"}], "stream": True}) as response:
                assert response.status_code == 200
                next(response.iter_lines())  # the first event, then hang up
            deadline = time.monotonic() + 5
            while "stream ended" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
    assert "finish=cancelled" in caplog.text and time.monotonic() - started < 6


def chatrest_events(client: httpx.Client, body: dict) -> list[dict]:
    with client.stream("POST", CHAT, json=body | {"stream": True}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        return [json.loads(line[len("data: "):]) for line in response.iter_lines() if line.startswith("data: ")]


def test_chatrest_streams_on_request_and_ends_with_the_envelope_a_whole_answer_gets() -> None:
    with FakeMoonshot(api_key=None) as upstream:  # streams "label####reason" in pieces, whatever `stop`
        with front(upstream.base_url) as client:
            for reasoning in (False, True):
                body = {"prompt": "这段文字与个人信息相关吗？", "reasoning": reasoning}
                whole = client.post(CHAT, json=body).json()
                events = chatrest_events(client, body)
                deltas = [e["data"]["delta"] for e in events[:-1]]
                assert events[-1]["sucess"] is True and events[-1]["data"]["answer"] == whole["data"]["answer"]
                assert "".join(deltas).strip() == whole["data"]["answer"]
                assert len(deltas) > 1 if reasoning else deltas  # the whole answer comes in 8-character pieces
                assert ("####" in whole["data"]["answer"]) is reasoning  # the early exit holds while streaming

            upstream.inject("truncated")  # the upstream dies half way through its answer
            events = chatrest_events(client, {"prompt": "hi", "reasoning": True})
    assert events[-1]["sucess"] is False and events[-1]["code"] == "502" and events[-1]["data"] is None
