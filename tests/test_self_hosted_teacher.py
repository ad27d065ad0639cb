"""A real third-party OpenAI-compatible server as the teacher: LLaMA-Factory's own `llamafactory-cli
api` serving the embedded model. It answers one request at a time, streams, and reports no usage
when streaming: the job completes every request anyway, pays each once, and marks estimated tokens."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

pytest.importorskip("llamafactory", reason="needs the model extra")

from annotate import runner  # noqa: E402
from distillery.tasks import load_task  # noqa: E402
from distillery.teacher_config import load_job_config  # noqa: E402
from helpers import ingested_store  # noqa: E402

pytestmark = [pytest.mark.model, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_a_self_hosted_teacher_that_serves_one_at_a_time_completes_every_request(tmp_path, llamafactory_api):
    store = ingested_store(tmp_path, ["第一条 处理个人信息应当告知。", "食堂明天供应早餐。", "第三条 数据应当加密存储。"])
    task = load_task("relevance")
    # The shipped self-hosted config, pointed at this server; three at once against a server that
    # answers one at a time, with a 20 s silence limit.
    config = load_job_config(EXAMPLES / "self-hosted.yaml", {
        "teacher.base_url": llamafactory_api, "teacher.model": "smollm2", "teacher.max_tokens": 24,
        "teacher.temperature": 0, "teacher.concurrency": 3, "teacher.timeout_s": 20, "teacher.max_retries": 1})
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
