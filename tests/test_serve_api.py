"""The HTTP API on the real SmolLM2, through a real HTTP server (werkzeug's threaded WSGI server
on 127.0.0.1) and a real HTTP client (httpx).

The server runs in this process so the tests share the session's loaded model and can hold its
batcher still (overload, timeouts); test_serve_gunicorn.py runs the production server as its own
process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="needs the model extra")

import httpx
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.serving import make_server

from distillery.runtime import GenerationConfig, ModelRuntime, embedded_model_dir
from serve import service as service_module
from serve.app import create_app
from serve.chatrest import ChatRestRequest, Turn, to_messages
from serve.config import ServeConfig
from serve.service import ModelService

pytestmark = [pytest.mark.model, pytest.mark.usefixtures("one_torch_thread")]

CHAT = "/algorithm/ChatRest"
OPENAI = "/v1/chat/completions"
# Greedy SmolLM2 writes the separator early in its answer to this prompt, then goes on.
SEPARATOR_PROMPT = "Write the string 'relevant####because' three times."
MAX_NEW = 16
ENVELOPE_KEYS = ["sucess", "code", "msg", "data"]


class Served:
    def __init__(self, app: Any, client: httpx.Client) -> None:
        self.app = app
        self.client = client
        self.service: ModelService = app.extensions["distillery"]

    def chat(self, body: Any, **kwargs: Any) -> httpx.Response:
        return self.client.post(CHAT, json=body, **kwargs)


@contextmanager
def serving(runtime: ModelRuntime | None, settings: dict[str, Any] | None = None) -> Iterator[Served]:
    app = create_app(ServeConfig.model_validate(settings or {}), runtime=runtime)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.server_port}", timeout=120) as client:
            yield Served(app, client)
    finally:
        server.shutdown()
        thread.join(10)
        app.extensions["distillery"].close()


def wait_until(check: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def api(runtime: ModelRuntime) -> Iterator[Served]:
    settings = {"generation": {"max_new_tokens": MAX_NEW}, "max_prompt_tokens": 200, "max_body_bytes": 4096}
    with serving(runtime, settings) as served:
        yield served


def greedy(runtime: ModelRuntime, messages: list[dict], stop: list[str] | None = None) -> str:
    """What the model answers to exactly these messages, without the server."""
    return runtime.generate([messages], GenerationConfig(max_new_tokens=MAX_NEW, stop=stop or []))[0].text


def assert_envelope_error(response: httpx.Response, status: int, message: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ENVELOPE_KEYS
    assert body["sucess"] is False and body["code"] == str(status) and body["data"] is None
    assert message in body["msg"], body["msg"]
    assert "Traceback" not in response.text and "File \"" not in response.text


# -- answers ----------------------------------------------------------------------------------


def test_chatrest_answers_in_the_envelope_apps_parse(api: Served, runtime: ModelRuntime) -> None:
    response = api.chat({"prompt": "What color is the sky?", "unknown_field": "ignored"})
    assert response.status_code == 200
    body = response.json()
    assert list(body) == ENVELOPE_KEYS  # `sucess`, misspelled, as the apps read it
    assert (body["sucess"], body["code"], body["msg"]) == (True, "200", "解析成功")
    data = body["data"]
    assert data["query"] == "What color is the sky?"
    user = [{"role": "user", "content": "What color is the sky?"}]
    assert data["answer"] == greedy(runtime, user, ["####"]).strip() != ""
    assert data["usage"]["completion_tokens"] > 0 and data["finish_reason"] in ("stop", "length")
    assert response.headers["X-Request-ID"] == data["request_id"]


def test_history_becomes_alternating_user_and_assistant_turns(api: Served, runtime: ModelRuntime) -> None:
    history = [{"query": "My name is Ada.", "answer": "Nice to meet you, Ada."},
               {"query": "I like green tea.", "answer": "Green tea is lovely."}]
    request = ChatRestRequest.model_validate({"prompt": "What is my name?", "history": history})
    expected = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Nice to meet you, Ada."},
        {"role": "user", "content": "I like green tea."},
        {"role": "assistant", "content": "Green tea is lovely."},
        {"role": "user", "content": "What is my name?"},
    ]
    assert to_messages(request, None) == expected
    assert to_messages(request, "Be brief.")[0] == {"role": "system", "content": "Be brief."}
    one_turn = ChatRestRequest(prompt="hi", history=[Turn(query="q", answer="a")])
    assert [m["role"] for m in to_messages(one_turn, None)] == ["user", "assistant", "user"]

    data = api.chat({"prompt": "What is my name?", "history": history}).json()["data"]
    # Greedy: the served answer is the model's answer to exactly these turns, and nothing else.
    assert data["answer"] == greedy(runtime, expected, ["####"]).strip()
    assert data["usage"]["prompt_tokens"] == runtime.count_tokens(runtime.apply_chat_template(expected))


def test_answer_stops_at_the_separator_unless_reasoning_is_asked(api: Served) -> None:
    short = api.chat({"prompt": SEPARATOR_PROMPT}).json()["data"]
    full = api.chat({"prompt": SEPARATOR_PROMPT, "reasoning": True}).json()["data"]
    assert "####" in full["answer"]  # the premise: without the early exit the model writes past it
    conclusion, reasoning = (part.strip() for part in full["answer"].split("####", 1))
    assert (full["conclusion"], full["reasoning"]) == (conclusion, reasoning)
    assert short["answer"] == short["conclusion"] == conclusion and short["reasoning"] is None
    assert short["finish_reason"] == "stop"
    assert short["usage"]["completion_tokens"] < full["usage"]["completion_tokens"]  # it really stopped early


def test_openai_endpoint_honours_stop(api: Served) -> None:
    conclusion = api.chat({"prompt": SEPARATOR_PROMPT}).json()["data"]["answer"]
    body = {"model": "anything", "messages": [{"role": "user", "content": SEPARATOR_PROMPT}], "stop": "####",
            "max_tokens": MAX_NEW}
    response = api.client.post(OPENAI, json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["object"] == "chat.completion" and result["model"] == "distillery"
    choice = result["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "stop"
    assert choice["message"]["content"].strip() == conclusion
    usage = result["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # Text parts, as the OpenAI SDK may send them, are the same message.
    parts = {**body, "messages": [{"role": "user", "content": [{"type": "text", "text": SEPARATOR_PROMPT}]}]}
    assert api.client.post(OPENAI, json=parts).json()["choices"][0]["message"] == choice["message"]
    models = api.client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["distillery"]


def test_caller_request_ids_are_kept_when_plain_and_replaced_otherwise(api: Served) -> None:
    kept = api.client.get("/healthz", headers={"X-Request-ID": "app-42.retry-1"})
    assert kept.headers["X-Request-ID"] == "app-42.retry-1"
    replaced = api.client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert len(replaced.headers["X-Request-ID"]) == 32


# -- bad input: always the envelope, never a 500 or a stack trace ------------------------------

JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("method", "path", "request_args", "status", "message"),
    [
        ("POST", CHAT, {"content": b'{"prompt": "hi"', "headers": JSON}, 400, "not valid JSON"),
        ("POST", CHAT, {"content": b"", "headers": JSON}, 400, "the request body is empty"),
        ("POST", CHAT, {"content": b'{"prompt": "\xff"}', "headers": JSON}, 400, "not UTF-8"),
        ("POST", CHAT, {"json": ["hi"]}, 400, "must be a JSON object"),
        ("POST", CHAT, {"content": b"[" * 2000 + b"]" * 2000, "headers": JSON}, 400, "nests arrays or objects too deeply"),
        ("POST", CHAT, {"content": b'{"prompt": "\\ud800 hi"}', "headers": JSON}, 400, "lone surrogate"),
        ("POST", CHAT, {"json": {"history": []}}, 400, "'prompt' is required"),
        ("POST", CHAT, {"json": {"prompt": 42}}, 400, "'prompt' must be a string, not number"),
        ("POST", CHAT, {"json": {"prompt": None}}, 400, "'prompt' must be a string, not null"),
        ("POST", CHAT, {"json": {"prompt": " \n"}}, 400, "'prompt' is empty"),
        ("POST", CHAT, {"json": {"prompt": "hi", "history": {"query": "a", "answer": "b"}}}, 400,
         "'history' must be an array, not object"),
        ("POST", CHAT, {"json": {"prompt": "hi", "history": [["a", "b"]]}}, 400,
         "'history[0]' must be an object, not array"),
        ("POST", CHAT, {"json": {"prompt": "hi", "history": [{"query": "a"}]}}, 400, "'history[0].answer' is required"),
        ("POST", CHAT, {"json": {"prompt": "hi", "history": [{"query": "a", "answer": 1}]}}, 400,
         "'history[0].answer' must be a string, not number"),
        ("POST", CHAT, {"json": {"prompt": "hi", "reasoning": "yes"}}, 400, "'reasoning' must be true or false"),
        ("POST", CHAT, {"json": {"prompt": "hi", "stream": True}}, 400, "answers whole with the static batcher"),
        ("POST", CHAT, {"json": {"prompt": "word " * 300}}, 400, "this server accepts at most 200"),
        ("POST", CHAT, {"json": {"prompt": "x" * 5000}}, 413, "larger than 4096 bytes"),
        ("POST", CHAT, {"data": {"prompt": "hi"}}, 415, "Content-Type must be application/json"),
        ("POST", CHAT, {"content": b'{"prompt": "hi"}', "headers": {"Content-Type": "text/plain"}}, 415,
         "got text/plain"),
        ("GET", CHAT, {}, 405, "GET is not allowed on /algorithm/ChatRest; use POST"),
        ("POST", "/algorithm/chat", {"json": {"prompt": "hi"}}, 404, "no route POST /algorithm/chat"),
        ("GET", "/", {}, 404, "this server answers POST /algorithm/ChatRest"),
    ],
)
def test_bad_requests_get_a_clear_error_in_the_envelope(
    api: Served, method: str, path: str, request_args: dict[str, Any], status: int, message: str
) -> None:
    assert_envelope_error(api.client.request(method, path, **request_args), status, message)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": []}, "'messages': List should have at least 1 item"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "'messages[0].role'"),
        ({"messages": [{"role": "user", "content": 5}]}, "'messages[0].content': must be a string"),
        ({"messages": [{"role": "user", "content": "hi"}], "stream": True}, "this server's in-process model answers whole"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "only n=1"),
        ({"messages": [{"role": "user", "content": "hi"}], "stop": ["", "x"]}, "'stop': must be a non-empty string"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10_000}, f"at most {MAX_NEW} new tokens"),
        (b'{"messages": [{"role": "user", "content": "\\udc00"}]}', "lone surrogate"),
        (b"{" * 3000, "not valid JSON"),
        (b"[" * 1500 + b"]" * 1500, "too deeply"),
    ],
)
def test_openai_bad_requests_get_openai_errors(api: Served, body: dict[str, Any] | bytes, message: str) -> None:
    response = (api.client.post(OPENAI, content=body, headers=JSON) if isinstance(body, bytes)
                else api.client.post(OPENAI, json=body))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and message in error["message"], error


def test_an_internal_failure_is_a_500_envelope_with_a_request_id_and_no_traceback(
    api: Served, runtime: ModelRuntime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("CUDA error: device-side assert (simulated)")

    monkeypatch.setattr(runtime, "generate", broken)
    with caplog.at_level(logging.INFO, logger="serve"):
        response = api.chat({"prompt": "hi"})
    rid = response.headers["X-Request-ID"]
    assert_envelope_error(response, 500, f"generation failed (request id {rid})")
    assert "CUDA" not in response.text  # internals stay in the log
    assert any(r.exc_info and rid in r.getMessage() for r in caplog.records)


# -- auth and logs ----------------------------------------------------------------------------


def test_api_key_is_required_when_configured_and_never_logged(
    runtime: ModelRuntime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    key = "sk-test-Zq81vX"
    monkeypatch.setenv("TEST_SERVE_KEY", key)
    settings = {"api_key_env": "TEST_SERVE_KEY", "generation": {"max_new_tokens": 4}}
    with caplog.at_level(logging.DEBUG, logger="serve"), serving(runtime, settings) as served:
        missing = served.chat({"prompt": "hi"})
        wrong = served.chat({"prompt": "hi"}, headers={"Authorization": "Bearer sk-test-Zq81vY"})
        basic = served.chat({"prompt": "hi"}, headers={"Authorization": f"Basic {key}"})
        right = served.chat({"prompt": "hi"}, headers={"Authorization": f"Bearer {key}"})
        openai = served.client.post(OPENAI, json={"messages": [{"role": "user", "content": "hi"}]})
        probes = [served.client.get(p).status_code for p in ("/healthz", "/readyz", "/metrics")]
    for refused in (missing, wrong, basic):
        assert_envelope_error(refused, 401, "Authorization: Bearer <key>")
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert right.status_code == 200 and right.json()["sucess"] is True
    assert openai.status_code == 401 and openai.json()["error"]["type"] == "authentication_error"
    assert probes == [200, 200, 200]  # orchestrators and scrapers need no key
    assert "TEST_SERVE_KEY" in caplog.text and key not in caplog.text


def test_logs_carry_request_ids_and_timings_but_prompts_only_when_asked(
    runtime: ModelRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    prompt = "Name a purple elephant."
    for log_prompts in (False, True):
        caplog.clear()
        settings = {"log_prompts": log_prompts, "generation": {"max_new_tokens": 4}}
        with caplog.at_level(logging.INFO, logger="serve"), serving(runtime, settings) as served:
            response = served.chat({"prompt": prompt})
        rid = response.headers["X-Request-ID"]
        line = next(r.getMessage() for r in caplog.records if f"rid={rid}" in r.getMessage())
        assert "POST /algorithm/ChatRest status=200 ms=" in line and "completion_tokens=" in line
        assert (prompt in caplog.text) is log_prompts
        assert (response.json()["data"]["answer"] in line) is log_prompts


# -- load, overload, time limits ---------------------------------------------------------------


@contextmanager
def held(served: Served) -> Iterator[threading.Event]:
    """The model's worker thread kept busy until the yielded event is set (or the block ends)."""
    batcher = served.service.batcher
    assert batcher is not None
    busy, release = threading.Event(), threading.Event()
    batcher.call(lambda _: (busy.set(), release.wait(60)))
    assert busy.wait(30)
    try:
        yield release
    finally:
        release.set()


def test_overload_is_refused_with_503_in_the_envelope(runtime: ModelRuntime) -> None:
    settings = {"batching": {"max_batch": 1, "max_queue": 1}, "generation": {"max_new_tokens": 4}}
    with serving(runtime, settings) as served, ThreadPoolExecutor(1) as pool:
        with held(served) as release:
            queued = pool.submit(served.chat, {"prompt": "Hi"})
            wait_until(lambda: served.service.batcher.stats.waiting == 1)
            refused = served.chat({"prompt": "Hi"})
            release.set()
            answered = queued.result(timeout=120)
        with held(served):
            queued = pool.submit(served.chat, {"prompt": "Hi"})
            wait_until(lambda: served.service.batcher.stats.waiting == 1)
            busy_openai = served.client.post(OPENAI, json={"messages": [{"role": "user", "content": "Hi"}]})
        queued.result(timeout=120)
    assert_envelope_error(refused, 503, "the server is at capacity")
    assert refused.headers["Retry-After"] == "1"
    assert answered.status_code == 200  # what was queued is answered once the model is free
    assert busy_openai.status_code == 503 and busy_openai.json()["error"]["type"] == "server_busy"


def test_a_request_over_its_time_limit_gets_504_and_is_dropped_from_the_queue(runtime: ModelRuntime) -> None:
    settings = {"timeout_s": 1.0, "generation": {"max_new_tokens": 4}}
    with serving(runtime, settings) as served:
        with held(served):
            started = time.monotonic()
            late = served.chat({"prompt": "Hi"})
            waited = time.monotonic() - started
        assert_envelope_error(late, 504, "no answer within 1 s")
        assert 0.9 < waited < 10
        batcher = served.service.batcher
        batcher.call(lambda _: None).result(timeout=60)  # the worker has been through the queue
        assert batcher.stats.requests == 0  # the timed-out request never reached the model


def test_readiness_follows_the_background_load(runtime: ModelRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = threading.Event()

    def slow_load(*args: object, **kwargs: object) -> ModelRuntime:
        loaded.wait(60)
        return runtime

    monkeypatch.setattr(service_module.ModelRuntime, "load", slow_load)
    with serving(None, {"generation": {"max_new_tokens": 4}}) as served:
        assert served.client.get("/healthz").status_code == 200  # alive while loading
        loading = served.client.get("/readyz")
        assert loading.status_code == 503 and loading.json()["state"] == "loading"
        early = served.chat({"prompt": "Hi"})
        assert_envelope_error(early, 503, "still loading")
        assert early.headers["Retry-After"]
        loaded.set()
        wait_until(lambda: served.client.get("/readyz").status_code == 200, timeout=30)
        ready = served.client.get("/readyz").json()
        assert ready["state"] == "ready" and ready["footprint_bytes"] == runtime.footprint_bytes()
        assert served.chat({"prompt": "Hi"}).status_code == 200


def test_a_model_that_fails_to_load_says_why(tmp_path: Path) -> None:
    (tmp_path / "empty-model").mkdir()
    with serving(None, {"model": str(tmp_path / "empty-model")}) as served:
        wait_until(lambda: served.service.state != "loading", timeout=60)
        ready = served.client.get("/readyz")
        health = served.client.get("/healthz")
        answer = served.chat({"prompt": "Hi"})
    assert ready.status_code == 503 and ready.json()["state"] == "failed" and "empty-model" in ready.json()["error"]
    assert health.status_code == 503  # a liveness probe restarts a process that cannot serve
    assert_envelope_error(answer, 503, "the model is not available")


def test_metrics_count_requests_tokens_queue_and_batches(api: Served) -> None:
    api.chat({"prompt": "Hi"})
    api.chat({"prompt": 1})
    text = api.client.get("/metrics").text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("distill_serve_requests_total", endpoint=CHAT, status="200") >= 1
    assert value("distill_serve_requests_total", endpoint=CHAT, status="400") >= 1
    assert value("distill_serve_request_seconds_count", endpoint=CHAT) >= 2
    assert value("distill_serve_tokens_total", endpoint=CHAT, kind="completion") > 0
    assert value("distill_serve_model_ready") == 1 and value("distill_serve_queue_depth") == 0
    batches = value("distill_serve_batches_total")
    assert batches >= 1 and value("distill_serve_batch_size_count") == batches
    assert value("distill_serve_batch_size_bucket", le="+Inf") == batches
    assert value("process_resident_memory_bytes") > 0


# -- quantization -----------------------------------------------------------------------------


@pytest.mark.parametrize("quantization", ["int8", "int4"])
def test_quantized_model_loads_on_cpu_and_answers(
    quantization: str, embedded_cache: Path, runtime: ModelRuntime
) -> None:
    settings = {"model": str(embedded_model_dir(embedded_cache)), "quantization": quantization,
                "generation": {"max_new_tokens": 4}}
    with serving(None, settings) as served:
        wait_until(lambda: served.service.state != "loading")
        ready = served.client.get("/readyz").json()
        assert ready["state"] == "ready", ready
        assert ready["quantization"] == quantization
        assert ready["footprint_bytes"] < 0.5 * runtime.footprint_bytes()
        response = served.chat({"prompt": "What color is the sky?"})
    assert response.status_code == 200, response.text
    assert response.json()["data"]["answer"].strip()


def test_base_model_plus_lora_adapter_is_served(embedded_cache: Path, runtime: ModelRuntime, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    model_dir = embedded_model_dir(embedded_cache)
    # Random A and B (init_lora_weights=False): the adapter really changes the answers.
    lora = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(ModelRuntime.load(model_dir).model, lora).save_pretrained(tmp_path / "adapter")
    settings = {"model": str(model_dir), "adapter": str(tmp_path / "adapter"), "generation": {"max_new_tokens": 8}}
    prompt = "What color is the sky?"
    with serving(None, settings) as served:
        wait_until(lambda: served.service.state != "loading")
        ready = served.client.get("/readyz").json()
        answer = served.chat({"prompt": prompt}).json()["data"]["answer"]
    assert ready["state"] == "ready" and ready["adapter"] == str(tmp_path / "adapter")
    plain = runtime.generate([[{"role": "user", "content": prompt}]], GenerationConfig(max_new_tokens=8, stop=["####"]))
    assert answer != plain[0].text.strip()
