"""The continuous-batching engine on the real SmolLM2: greedy answers equal one-at-a-time, a short
request overtakes a long one started earlier, cancelled/disconnected/timed-out requests free their
slot, and `stream: true` through the real OpenAI SDK against the served app."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from contextlib import contextmanager
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="needs the model extra")

import httpx
import openai
from werkzeug.serving import make_server

from distillery.continuous import ContinuousEngine, StreamTimeout
from distillery.runtime import GenerationConfig, ModelRuntime
from serve.app import create_app
from serve.config import ServeConfig

pytestmark = [pytest.mark.model, pytest.mark.usefixtures("one_torch_thread")]

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2? Explain."}],
    [{"role": "user", "content": "Name three colors."}],
    [{"role": "system", "content": "You answer in one sentence."}, {"role": "user", "content": "Why is the sky blue?"}],
    [{"role": "user", "content": "Write the string 'relevant####because' three times."}],
]
LONG = [{"role": "user", "content": "Write a long story about a dragon."}]


@pytest.fixture(scope="module")
def engine(runtime: ModelRuntime) -> Iterator[ContinuousEngine]:
    eng = ContinuousEngine(runtime, max_batch=4, max_queue=8)
    yield eng
    eng.close()


def wait_until(check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def alone(runtime: ModelRuntime, messages: list[dict], config: GenerationConfig, prefix: str = "") -> Any:
    """The answer one-at-a-time, through the runtime's ordinary generate()."""
    return runtime.generate([messages], config, assistant_prefix=[prefix])[0]


def test_greedy_answers_equal_one_at_a_time(runtime: ModelRuntime, engine: ContinuousEngine) -> None:
    cases = [(m, GenerationConfig(max_new_tokens=24), "") for m in CONVERSATIONS]
    cases.append((CONVERSATIONS[3], GenerationConfig(max_new_tokens=24, stop=["####"]), ""))  # stop mid-answer
    cases.append((CONVERSATIONS[1], GenerationConfig(max_new_tokens=24, stop=["\n"]), "1."))  # with a prefix
    futures = [engine.submit(m, c, assistant_prefix=p) for m, c, p in cases]  # more than max_batch: some wait
    answers = [f.result(timeout=300) for f in futures]
    for (messages, config, prefix), got in zip(cases, answers):
        assert got == alone(runtime, messages, config, prefix)
    stopped = answers[4]
    assert stopped.stop_string == "####" and stopped.finish_reason == "stop" and "####" not in stopped.text
    assert answers[0].finish_reason == "length" and answers[0].completion_tokens == 24
    assert engine.stats.requests >= len(cases)
    wait_until(lambda: engine.active_rows() == 0)  # the stop-string rows were cancelled in the manager


def test_a_short_request_finishes_before_a_long_one_started_earlier(engine: ContinuousEngine) -> None:
    long = engine.stream(LONG, GenerationConfig(max_new_tokens=200))
    pieces = iter(long)
    next(pieces)  # the long answer is generating
    short = engine.submit(CONVERSATIONS[1], GenerationConfig(max_new_tokens=4))
    answer = short.result(timeout=120)
    assert answer.completion_tokens == 4
    assert long.generation is None and engine.active_rows() == 1  # still going when the short one is done
    long.close()
    wait_until(lambda: engine.active_rows() == 0)


def test_a_closed_stream_frees_its_slot(engine: ContinuousEngine) -> None:
    stream = engine.stream(LONG, GenerationConfig(max_new_tokens=200))
    pieces = iter(stream)
    next(pieces)
    assert engine.active_rows() == 1
    pieces.close()  # the consumer went away (GeneratorExit), as a disconnected HTTP client does
    wait_until(lambda: engine.active_rows() == 0, timeout=5)
    assert stream.generation is None and engine.stats.running == 0


def test_a_cancelled_or_timed_out_request_stops_generating(engine: ContinuousEngine) -> None:
    future = engine.submit(LONG, GenerationConfig(max_new_tokens=200))
    wait_until(lambda: engine.active_rows() == 1)
    assert future.cancel()  # a running request can still be cancelled: its row leaves the batch
    wait_until(lambda: engine.active_rows() == 0, timeout=5)
    with pytest.raises(CancelledError):
        future.result()

    stream = engine.stream(LONG, GenerationConfig(max_new_tokens=200), deadline=time.monotonic() + 1.0)
    with pytest.raises(StreamTimeout):
        for _ in stream:
            pass
    wait_until(lambda: engine.active_rows() == 0, timeout=5)


def test_streamed_deltas_add_up_to_the_answer(runtime: ModelRuntime, engine: ContinuousEngine) -> None:
    config = GenerationConfig(max_new_tokens=24, stop=["####"])
    stream = engine.stream(CONVERSATIONS[3], config)
    deltas = list(stream)
    expected = alone(runtime, CONVERSATIONS[3], config)
    assert len(deltas) > 1 and "".join(deltas) == expected.text and stream.generation == expected


def test_sampling_and_calls_run_beside_the_continuous_batch(runtime: ModelRuntime, engine: ContinuousEngine) -> None:
    # The manager switched the model to paged attention; the static path must still see a causal
    # model: scoring gives the same figures as before, and greedy generate() the same answer.
    messages = CONVERSATIONS[0]
    config = GenerationConfig(max_new_tokens=16)
    fresh = alone(runtime, messages, config)
    assert engine.call(lambda rt: rt.generate([messages], config)[0]).result(timeout=120) == fresh
    scores = engine.call(lambda rt: rt.score_continuations(messages, ["4", "banana"])).result(timeout=120)
    assert scores[0] > scores[1]
    sampled = engine.submit(messages, GenerationConfig(max_new_tokens=8, temperature=0.9, seed=3)).result(timeout=120)
    assert 0 < sampled.completion_tokens <= 8


SHOTS = [
    {"role": "system", "content": "You judge whether a text is about finance. Answer yes or no, then '####', "
                                  "then one or two sentences of reasoning."},
    {"role": "user", "content": "Is this text about finance? 'The central bank raised interest rates by half a point.'"},
    {"role": "assistant", "content": "yes####Interest rates and central banks are core finance topics."},
    {"role": "user", "content": "Is this text about finance? 'The cat slept on the warm windowsill all afternoon.'"},
    {"role": "assistant", "content": "no####A cat sleeping mentions no money, markets, banks or prices."},
]
TEXTS = ["Stock prices fell after the earnings report.", "The children built a sandcastle at the beach.",
         "The company issued bonds to raise capital.", "It rained all day and the river rose."]


def test_shared_prompt_prefixes_give_the_same_answers_as_one_at_a_time(runtime: ModelRuntime) -> None:
    # Rows that reuse another row's cached few-shot prefix join while others decode; transformers
    # 5.6 then under-counts their cache reads, and without distillery's correction rows attend to
    # stale mask columns (other requests' keys): here 1 answer in 16 changed, every time we ran it.
    work = []
    for i in range(16):
        messages = [*SHOTS, {"role": "user", "content": f"Is this text about finance? '{TEXTS[i % 4]}' (case {i})"}]
        full = i % 4 == 3
        work.append((messages, GenerationConfig(max_new_tokens=48 if full else 8, stop=[] if full else ["####"])))
    engine = ContinuousEngine(runtime, max_batch=8, max_queue=16, prefix_sharing=True)
    answers: dict[int, Any] = {}
    cursor = iter(range(len(work)))
    lock = threading.Lock()

    def client() -> None:  # closed loop: the next request as soon as the last is answered
        while True:
            with lock:
                i = next(cursor, None)
            if i is None:
                return
            answers[i] = engine.submit(*work[i]).result(timeout=300)

    try:
        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        shared = engine._manager.batch_processor.cache._total_prefix_length
    finally:
        engine.close()
    assert shared > 0  # prefixes were in fact reused
    changed = [i for i, (messages, config) in enumerate(work) if answers[i] != alone(runtime, messages, config)]
    assert changed == []


def test_rows_wait_for_kv_cache_and_a_request_that_never_fits_is_refused(runtime: ModelRuntime) -> None:
    config = GenerationConfig(max_new_tokens=16)
    need = len(runtime._encode(runtime.apply_chat_template(CONVERSATIONS[0]))) + config.max_new_tokens
    engine = ContinuousEngine(runtime, max_batch=4, max_queue=8, kv_cache_tokens=need + 8)  # room for one row
    try:
        futures = [engine.submit(CONVERSATIONS[0], config) for _ in range(3)]
        most = 0
        while not all(f.done() for f in futures):
            most = max(most, engine.stats.running)
            time.sleep(0.005)
        assert most == 1  # four slots, but the cache holds one row's prompt and answer at a time
        assert all(f.result() == alone(runtime, CONVERSATIONS[0], config) for f in futures)
        with pytest.raises(ValueError, match="kv_cache_tokens"):
            engine.submit(CONVERSATIONS[0], GenerationConfig(max_new_tokens=64))
    finally:
        engine.close()


@contextmanager
def served(runtime: ModelRuntime, **batching: Any) -> Iterator[tuple[str, Any]]:
    settings = {"generation": {"max_new_tokens": 48}, "batching": {"engine": "continuous", "max_batch": 4, **batching}}
    app = create_app(ServeConfig.model_validate(settings), runtime=runtime)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", app.extensions["distillery"]
    finally:
        server.shutdown()
        thread.join(10)
        app.extensions["distillery"].close()


def test_streaming_through_the_openai_sdk(runtime: ModelRuntime) -> None:
    question = CONVERSATIONS[3]
    with served(runtime) as (url, service):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        chunks = list(client.chat.completions.create(model="distillery", messages=question, stop=["####"],
                                                     max_tokens=24, stream=True,
                                                     stream_options={"include_usage": True}))
        whole = client.chat.completions.create(model="distillery", messages=question, stop=["####"], max_tokens=24)

        # A client that goes away mid-answer frees its slot.
        with httpx.Client(base_url=url, timeout=60) as http:
            body = {"messages": LONG, "max_tokens": 48, "stream": True}
            with http.stream("POST", "/v1/chat/completions", json=body) as response:
                lines = response.iter_lines()
                while "content" not in next(lines) or service.batcher.active_rows() == 0:
                    pass
        wait_until(lambda: service.batcher.active_rows() == 0, timeout=10)

    expected = alone(runtime, question, GenerationConfig(max_new_tokens=24, stop=["####"]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # it did stream
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == expected.completion_tokens
    assert usage.prompt_tokens == expected.prompt_tokens
