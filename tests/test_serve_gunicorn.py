"""The production server as users start it: `python -m serve gunicorn` (gunicorn, one gthread
worker holding SmolLM2) in its own process on 127.0.0.1, driven by concurrent HTTP clients."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

pytest.importorskip("torch", reason="needs the model extra")

from serve.process import ServerProcess

pytestmark = [pytest.mark.model, pytest.mark.slow]

KEY = "sk-gunicorn-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROMPTS = [
    "What color is the sky?",
    "Name a fruit.",
    "Say hello in French.",
    "What is 2 + 2?",
    "Give me a synonym for happy.",
    "Why do cats purr?",
    "Write a haiku about rain.",
    "What is the capital of Japan?",
    "什么是碳排放？",
    "请用一句话介绍北京。",
    "List three colors.",
    "How many legs does a spider have?",
    "Explain gravity in one sentence.",
    "What do bees make?",
    "Translate 'thank you' to Spanish.",
    "Is the sun a star? Answer yes or no, then explain why in detail.",
]


@pytest.fixture(scope="module")
def server(embedded_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # One torch thread: the server shares two cores with this process's client threads. A long
    # time limit: this is about correct answers, and a loaded CI box may be slow to give them.
    args = ["--torch-threads", "1", "--max-new-tokens", "8", "--timeout-s", "300"]
    env = {"DISTILLERY_CACHE": str(embedded_cache), "DISTILL_SERVE_API_KEY": KEY}
    with ServerProcess(args, env=env, log=tmp_path_factory.mktemp("gunicorn") / "server.log") as server:
        yield server


def ask(client: httpx.Client, prompt: str) -> str:
    response = client.post("/algorithm/ChatRest", json={"prompt": prompt}, headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["sucess"] is True and body["code"] == "200"
    return body["data"]["answer"]


def batch_counts(client: httpx.Client) -> tuple[float, float]:
    """(generate calls, requests they carried) from /metrics."""
    text = client.get("/metrics").text
    calls = float(re.search(r"^distill_serve_batch_size_count (\S+)$", text, re.M).group(1))
    carried = float(re.search(r"^distill_serve_batch_size_sum (\S+)$", text, re.M).group(1))
    return calls, carried


def test_16_concurrent_clients_get_exactly_the_answers_served_one_at_a_time(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=120) as client:
        sequential = [ask(client, p) for p in PROMPTS]
        calls_before, carried_before = batch_counts(client)

    start = threading.Barrier(len(PROMPTS))

    def one_client(prompt: str) -> str:
        with httpx.Client(base_url=server.url, timeout=120) as client:  # its own connection
            start.wait()
            return ask(client, prompt)

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        concurrent = list(pool.map(one_client, PROMPTS))
    assert concurrent == sequential  # greedy: batching changes nothing in what is answered

    with httpx.Client(base_url=server.url, timeout=30) as client:
        calls, carried = batch_counts(client)
    assert carried - carried_before == len(PROMPTS)
    assert calls - calls_before < len(PROMPTS)  # they really shared generate calls


def test_the_log_has_request_ids_and_no_prompt_text(server: ServerProcess) -> None:
    text = server.log.read_text()
    assert re.search(r"rid=[0-9a-f]{32} POST /algorithm/ChatRest status=200 ms=\d", text)
    assert "Why do cats purr" not in text and KEY not in text


def test_sigterm_lets_the_request_in_flight_finish_then_exits(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=120) as client, ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(ask, client, "Write a haiku about rain.")
        time.sleep(0.5)  # let it reach the model
        server.proc.send_signal(signal.SIGTERM)
        assert in_flight.result(timeout=120).strip()
    assert server.proc.wait(60) == 0  # a clean exit, not a kill


@pytest.fixture(scope="module")
def continuous(embedded_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = ["--torch-threads", "1", "--engine", "continuous", "--max-new-tokens", "24", "--timeout-s", "300"]
    env = {"DISTILLERY_CACHE": str(embedded_cache), "DISTILL_SERVE_API_KEY": KEY}
    with ServerProcess(args, env=env, log=tmp_path_factory.mktemp("continuous") / "server.log") as server:
        yield server


def chatrest_events(client: httpx.Client, body: dict) -> list[dict]:
    """The envelopes of a streamed ChatRest answer, one per server-sent event."""
    with client.stream("POST", "/algorithm/ChatRest", json=body | {"stream": True}, headers=AUTH) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        return [json.loads(line[len("data: "):]) for line in response.iter_lines() if line.startswith("data: ")]


def test_the_continuous_engine_streams_through_gunicorn_to_the_openai_sdk_and_chatrest(
        continuous: ServerProcess) -> None:
    question = [{"role": "user", "content": "Write the string 'relevant####because' three times."}]
    client = openai.OpenAI(base_url=f"{continuous.url}/v1", api_key=KEY, max_retries=0, timeout=120)
    whole = client.chat.completions.create(model="distillery", messages=question, stop=["####"], max_tokens=24)
    chunks = list(client.chat.completions.create(model="distillery", messages=question, stop=["####"], max_tokens=24,
                                                 stream=True, stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces) == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens

    with httpx.Client(base_url=continuous.url, timeout=120) as http:
        body = {"prompt": "Is the sun a star? Answer yes or no, then explain why in detail.", "reasoning": True}
        plain = http.post("/algorithm/ChatRest", json=body, headers=AUTH).json()["data"]
        events = chatrest_events(http, body)
    assert all(e["sucess"] is True and e["code"] == "200" for e in events)
    deltas, last = [e["data"]["delta"] for e in events[:-1]], events[-1]["data"]
    assert len(deltas) > 1 and "".join(deltas).strip() == last["answer"] == plain["answer"]
    assert last["finish_reason"] == plain["finish_reason"] and last["usage"] == plain["usage"]


def test_concurrent_clients_of_the_continuous_engine_get_the_answers_served_one_at_a_time(
        continuous: ServerProcess) -> None:
    prompts = PROMPTS[:8]
    with httpx.Client(base_url=continuous.url, timeout=120) as client:
        sequential = [ask(client, p) for p in prompts]

    def one_client(prompt: str) -> str:
        with httpx.Client(base_url=continuous.url, timeout=120) as client:
            return ask(client, prompt)

    with ThreadPoolExecutor(len(prompts)) as pool:
        assert list(pool.map(one_client, prompts)) == sequential
