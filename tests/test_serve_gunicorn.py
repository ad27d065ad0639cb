"""The production server as users start it: `python -m serve gunicorn` (gunicorn, one gthread
worker holding SmolLM2) in its own process on 127.0.0.1, driven by concurrent HTTP clients."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
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
