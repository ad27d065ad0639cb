"""A real third-party OpenAI-compatible server as the teacher: LLaMA-Factory's own `llamafactory-cli
api` serving the embedded model. It answers one request at a time, streams, and reports no usage
when streaming: the job completes every request anyway, pays each once, and marks estimated tokens."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("llamafactory", reason="needs the model extra")

from annotate import runner  # noqa: E402
from distillery.runtime import embedded_model_dir  # noqa: E402
from distillery.tasks import load_task  # noqa: E402
from distillery.teacher_config import load_job_config  # noqa: E402
from helpers import ingested_store  # noqa: E402

pytestmark = [pytest.mark.model, pytest.mark.slow]


@pytest.fixture(scope="module")
def llamafactory_api(embedded_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("lfapi")
    (root / "api.yaml").write_text(f"model_name_or_path: {embedded_model_dir(embedded_cache)}\ntemplate: qwen\n"
                                   "infer_backend: huggingface\n", encoding="utf-8")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "API_PORT": str(port), "API_HOST": "127.0.0.1", "DISABLE_VERSION_CHECK": "1"}
    log = (root / "api.log").open("wb")
    cli = Path(sys.executable).with_name("llamafactory-cli")  # installed beside this Python
    proc = subprocess.Popen([str(cli), "api", str(root / "api.yaml")], env=env, stdout=log,
                            stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"llamafactory-cli api exited: {(root / 'api.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        else:
            pytest.fail("llamafactory-cli api did not come up in 180 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_a_self_hosted_teacher_that_serves_one_at_a_time_completes_every_request(tmp_path, llamafactory_api):
    store = ingested_store(tmp_path, ["第一条 处理个人信息应当告知。", "食堂明天供应早餐。", "第三条 数据应当加密存储。"])
    task = load_task("relevance")
    # Three at once against a server that answers one at a time; a 20 s silence limit.
    config = load_job_config(None, {"teacher.provider": "openai", "teacher.base_url": llamafactory_api,
                                    "teacher.model": "smollm2", "teacher.max_tokens": 24, "teacher.temperature": 0,
                                    "teacher.concurrency": 3, "teacher.timeout_s": 20, "teacher.max_retries": 1})
    assert config.teacher.stream and config.teacher.key_problem() is None  # a base URL needs no key
    pending = runner.plan(store, task, config)
    stats = asyncio.run(runner.run_job(store, task, config))
    assert stats.stopped is None and stats.done == pending == 3
    assert stats.resent_after_timeout == 0 and stats.retries == 0
    records = [a for _, a in store.annotations()]
    assert all(a.status in ("ok", "invalid") for a in records)  # a 135M model may break the format: still answered
    calls = [c for a in records for c in store.calls(a.id)]
    assert calls and all(c.status == "ok" for c in calls)
    assert len({c.request_hash for c in calls}) == len(calls) == stats.calls_sent  # each request paid once
    # It streamed, and reported no usage when streaming: the tokens are estimates, marked as such.
    assert all(c.response["streamed"] and c.response.get("usage_estimated") for c in calls)
    assert all(c.prompt_tokens > 0 and c.completion_tokens > 0 for c in calls)
