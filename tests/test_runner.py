"""The annotation job against a real local HTTP server that speaks Moonshot's protocol."""

import asyncio
import json

import pytest

from annotate import runner
from distillery.tasks import load_task
from distillery.teacher_config import load_job_config
from doubles.moonshot import FakeMoonshot
from helpers import ZH, ingested_store, openai_config

KEY = "sk-test-SECRET-4242"


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("FAKE_MOONSHOT_KEY", KEY)
    return KEY


def run(store, task, config, **kw):
    runner.plan(store, task, config, **{k: kw.pop(k) for k in ("limit", "shard", "retry") if k in kw})
    return asyncio.run(runner.run_job(store, task, config, **kw))


def test_job_annotates_every_chunk_with_cost_and_lineage(tmp_path, key):
    store = ingested_store(tmp_path)
    task = load_task("relevance")
    with FakeMoonshot(api_key=key) as server:
        config = openai_config(server.base_url, model="moonshot-v1-8k", concurrency=4)
        stats = run(store, task, config)
    assert stats.by_status == {"ok": len(ZH)} and stats.calls_sent == len(ZH)
    anns = [a for _, a in store.annotations()]
    assert {a.conclusion for a in anns} <= {"相关", "不相关"}
    for a in anns:
        assert a.provider == "openai" and a.model == "moonshot-v1-8k" and a.task_hash == task.hash
        assert a.prompt_tokens > 0 and a.completion_tokens > 0
        # moonshot-v1-8k default prices: 2 / 10 CNY per million tokens
        assert a.cost == pytest.approx((a.prompt_tokens * 2 + a.completion_tokens * 10) / 1e6)
        lineage = store.lineage(a)
        assert lineage.document.path.endswith(".txt") and lineage.chunk.text in ZH and "relevance" in lineage.task.body
    assert stats.cost == pytest.approx(sum(a.cost for a in anns))


def test_rerun_pays_nothing_and_retry_reuses_stored_answers(tmp_path, key):
    store = ingested_store(tmp_path)
    task = load_task("relevance")
    with FakeMoonshot(api_key=key) as server:
        config = openai_config(server.base_url)
        run(store, task, config)
        first = len(server.chat_hashes())
        stats = run(store, task, config)
        assert stats.done == 0 and len(server.chat_hashes()) == first
        stats = run(store, task, config, retry=("ok",))  # redo: the same requests are answered from the store
        assert stats.done == len(ZH) and stats.calls_reused == len(ZH) and stats.calls_sent == 0
        assert len(server.chat_hashes()) == first


def test_refusals_overflow_and_broken_format_are_recorded_not_fatal(tmp_path, key):
    texts = [ZH[0], "[[FAULT:content_filter]] 敏感内容", "[[FAULT:context_overflow]] 很长的文本", "[[FAULT:bad-format]] 格式", ZH[1]]
    store = ingested_store(tmp_path, texts)
    task = load_task("relevance")
    with FakeMoonshot(api_key=key) as server:
        stats = run(store, task, openai_config(server.base_url))
    by_text = {store.chunk(a.chunk_id).text: a for _, a in store.annotations()}
    assert by_text[texts[1]].status == "refused" and "content_filter" in by_text[texts[1]].error
    overflow = by_text[texts[2]]
    assert overflow.status == "too_long" and "doc002.txt" in overflow.error  # names the chunk's file
    broken = by_text[texts[3]]
    assert broken.status == "invalid" and broken.raw_text == "I think it is relevant."
    assert broken.attempts == task.spec.contract.max_reasks + 1 and "####" in broken.error
    assert by_text[texts[0]].status == by_text[texts[4]].status == "ok"
    assert stats.reasks == task.spec.contract.max_reasks
    # the broken record can be re-run later; its calls are all in the ledger with raw answers
    assert len(store.calls(broken.id)) == broken.attempts


def test_reask_states_the_error_and_recovers(tmp_path, key):
    store = ingested_store(tmp_path, ZH[:1])
    task = load_task("relevance")
    with FakeMoonshot(api_key=key) as server:
        server.inject("bad-format")
        run(store, task, openai_config(server.base_url))
        second = server.requests[-1]["body"]["messages"]
    (_, ann), = store.annotations()
    assert ann.status == "ok" and ann.attempts == 2
    assert second[-2] == {"role": "assistant", "content": "I think it is relevant."}
    assert "####" in second[-1]["content"] and "不符合格式" in second[-1]["content"]


def test_transient_faults_are_retried_and_counted(tmp_path, key):
    store = ingested_store(tmp_path, ZH[:2])
    with FakeMoonshot(api_key=key) as server:
        server.inject("429", "500", "reset", "truncated", "malformed")
        config = openai_config(server.base_url, concurrency=1, max_retries=6)
        config.teacher.timeout_s = 5
        stats = run(store, load_task("relevance"), config)
    assert stats.by_status == {"ok": 2} and stats.retries == 5


def test_quota_stops_cleanly_and_resume_finishes_without_repeats(tmp_path, key):
    store = ingested_store(tmp_path)
    task = load_task("relevance")
    with FakeMoonshot(api_key=key) as server:
        config = openai_config(server.base_url, concurrency=1)
        run(store, task, config, limit=1)  # one record answered, then the account runs dry
        answered = set(server.chat_hashes())
        server.inject("429-quota")
        stats = run(store, task, config)
        assert stats.stopped and "top it up" in stats.stopped
        assert len(server.chat_hashes()) == len(answered) + 1  # quota is never retried
        stats = run(store, task, config)  # after the top-up
        assert stats.stopped is None
        later = server.chat_hashes()[len(answered) + 1 :]
        assert not answered & set(later)
    assert {a.status for _, a in store.annotations()} == {"ok"} and store.totals()["annotations"] == len(ZH)


def test_auth_error_stops_the_job(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_MOONSHOT_KEY", "sk-wrong")
    store = ingested_store(tmp_path)
    with FakeMoonshot(api_key=KEY) as server:
        stats = run(store, load_task("relevance"), openai_config(server.base_url, concurrency=1))
        assert len(server.chat_hashes()) == 0  # the key was refused by the probe, before any paid request
    assert stats.stopped and "key" in stats.stopped
    assert {a.status for _, a in store.annotations()} == {"pending"}


def test_budget_cap_stops_then_resumes(tmp_path, key):
    store = ingested_store(tmp_path)
    task = load_task("relevance")
    with FakeMoonshot(api_key=key) as server:
        config = openai_config(server.base_url, concurrency=1)
        config.budget = 1e-9  # less than one answer costs: nothing may be sent
        stats = run(store, task, config)
        assert stats.stopped and "budget" in stats.stopped and stats.done == 0
        assert server.chat_hashes() == [] and store.spent() == 0
        config.budget = 10.0
        stats = run(store, task, config)
        assert stats.stopped is None and stats.done == len(ZH)


def test_two_step_qa_fans_out_answers_linked_to_questions(tmp_path, key):
    def responder(messages):
        user = messages[-1]["content"]
        if "## 问题" in user:
            question = user.rsplit("## 问题", 1)[1].strip()
            return f"答案：{question[:6]}####依据原文。"
        return "处理者应告知什么？\n罚款是多少？\n处理者应告知什么？####覆盖两个条款。"

    store = ingested_store(tmp_path, ZH[:2])
    task = load_task("qa")
    with FakeMoonshot(api_key=key, responder=responder) as server:
        stats = run(store, task, openai_config(server.base_url))
    parents = [a for _, a in store.annotations(step="questions")]
    answers = [a for _, a in store.annotations(step="answer")]
    assert len(parents) == 2 and len(answers) == 4 and stats.done == 6  # duplicate question dropped
    for ans in answers:
        parent = store.annotation(ans.parent_id)
        assert parent.chunk_id == ans.chunk_id and ans.input in parent.conclusion and ans.status == "ok"


def test_shards_split_the_job_without_overlap(tmp_path, key):
    store = ingested_store(tmp_path)
    task = load_task("relevance")
    with FakeMoonshot(api_key=key) as server:
        config = openai_config(server.base_url)
        done = [run(store, task, config, shard=(i, 2)).done for i in range(2)]
    assert sum(done) == len(ZH) and store.totals()["annotations"] == len(ZH)


def test_the_api_key_never_reaches_the_database_or_exports(tmp_path, key, caplog):
    store = ingested_store(tmp_path)
    with FakeMoonshot(api_key=key) as server:
        server.inject("429", "500")
        run(store, load_task("relevance"), openai_config(server.base_url))
    store.close()
    for f in (tmp_path / "ws").iterdir():
        assert KEY.encode() not in f.read_bytes(), f
    assert KEY not in caplog.text


def test_config_file_errors_name_the_field(tmp_path):
    bad = tmp_path / "job.yaml"
    bad.write_text("teacher:\n  rpm: -3\n  colour: blue\n")
    with pytest.raises(ValueError, match=r"job\.yaml.*teacher\.rpm.*teacher\.colour"):
        load_job_config(bad)
    bad.write_text("teacher:\n  tier: tier9\n")
    with pytest.raises(ValueError, match="tier9"):
        load_job_config(bad).teacher.limits()
    assert json.loads(load_job_config(None).model_dump_json())["teacher"]["api_key_env"] == "MOONSHOT_API_KEY"


def test_retry_invalid_asks_again_and_counts_each_answer_once(tmp_path, key):
    store = ingested_store(tmp_path, ZH[:1])
    task = load_task("relevance")
    answers = task.spec.contract.max_reasks + 1
    with FakeMoonshot(api_key=key) as server:
        server.inject(*["bad-format"] * answers)  # the whole first run gets broken answers
        run(store, task, openai_config(server.base_url))
        (_, broken), = store.annotations()
        assert broken.status == "invalid" and broken.attempts == answers
        stats = run(store, task, openai_config(server.base_url), retry=("invalid",))
        assert len(server.chat_hashes()) == answers + 1  # the stored answers replayed free, then one new re-ask
    (_, fixed), = store.annotations()
    assert fixed.status == "ok" and fixed.attempts == answers + 1
    assert stats.calls_reused == answers and stats.calls_sent == 1
    calls = store.calls(fixed.id)
    assert len(calls) == answers + 1 and "####" in calls[-1].request["messages"][-1]["content"]  # the error stated
    # Tokens and cost of the record are its calls', each counted once.
    assert fixed.prompt_tokens == sum(c.prompt_tokens for c in calls)
    assert fixed.cost == pytest.approx(sum(c.cost for c in calls))


def test_a_named_key_variable_that_is_unset_is_an_error_not_the_local_model(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from annotate.cli import main

    monkeypatch.delenv("MY_TEACHER_KEY", raising=False)
    monkeypatch.delenv("MOONSHOT_API_KEY", raising=False)
    named = load_job_config(None, {"teacher.api_key_env": "MY_TEACHER_KEY"}).teacher
    assert named.resolved_provider() == "openai" and "MY_TEACHER_KEY" in named.key_problem()
    assert load_job_config(None).teacher.resolved_provider() == "local"  # only the bare default falls back
    store = ingested_store(tmp_path)
    store.close()
    result = CliRunner().invoke(main, ["-w", str(tmp_path / "ws"), "run", "--api-key-env", "MY_TEACHER_KEY"])
    assert result.exit_code == 1 and "set MY_TEACHER_KEY" in result.output


@pytest.mark.parametrize("args", [["--tier", "tier9"], ["--tier", "tier9", "--dry-run"]])
def test_an_unknown_tier_is_one_line_naming_the_tiers(tmp_path, args):
    from click.testing import CliRunner

    from annotate.cli import main

    ingested_store(tmp_path).close()
    result = CliRunner().invoke(main, ["-w", str(tmp_path / "ws"), "run", *args])
    assert result.exit_code == 1 and "unknown tier 'tier9'" in result.output and "tier5" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_an_unreachable_teacher_stops_before_the_job_and_the_run_fails(tmp_path, monkeypatch):
    import socket
    import time as clock

    from click.testing import CliRunner

    from annotate.cli import main

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    ingested_store(tmp_path).close()
    monkeypatch.setenv("FAKE_MOONSHOT_KEY", "sk-x")
    started = clock.monotonic()
    result = CliRunner().invoke(main, ["-w", str(tmp_path / "ws"), "run", "--base-url", dead,
                                       "--api-key-env", "FAKE_MOONSHOT_KEY"])
    assert clock.monotonic() - started < 10  # not 7 retries per record
    assert result.exit_code == 1 and "cannot reach the teacher" in result.output


def test_a_teacher_that_goes_down_mid_job_stops_it_and_failed_records_fail_the_run(tmp_path, key):
    store = ingested_store(tmp_path, [f"第{i}条 个人信息。" for i in range(12)])
    task = load_task("relevance")
    with FakeMoonshot(api_key=key) as server:
        config = openai_config(server.base_url, concurrency=1, max_retries=0)
        server.inject("reset", "reset", "reset", "reset")  # after the probe: every request is cut off
        stats = run(store, task, config)
    assert stats.stopped and "no answer to 3 requests in a row" in stats.stopped
    assert len(server.chat_hashes()) == 3  # then nothing more was sent
    # Two records failed; the third request's stopped the job and its record waits, with the rest.
    assert stats.by_status == {"failed": 2}
    assert sum(a.status == "pending" for _, a in store.annotations()) == 10


def test_timeouts_are_counted_and_the_summary_says_what_to_change(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from annotate.cli import main

    ingested_store(tmp_path, ZH[:2]).close()
    monkeypatch.setenv("FAKE_MOONSHOT_KEY", "sk-t")
    with FakeMoonshot(api_key="sk-t", slow_s=1.5) as server:
        server.inject("slow")  # the first answer takes 1.5 s: past a 0.5 s limit, unstreamed
        result = CliRunner().invoke(main, ["-w", str(tmp_path / "ws"), "run", "--base-url", server.base_url,
                                           "--api-key-env", "FAKE_MOONSHOT_KEY", "--no-stream", "--timeout", "0.5",
                                           "--concurrency", "1"])
    flat = " ".join(result.output.split())
    assert result.exit_code == 0, flat
    assert "sent again after a timeout (may be charged twice) │ 1" in flat
    assert "raise --timeout, keep --stream on" in flat


def test_a_dry_run_estimate_writes_nothing_and_counts_what_plan_would(tmp_path, key):
    store = ingested_store(tmp_path)
    task, qa = load_task("relevance"), load_task("qa")
    answers = task.spec.contract.max_reasks + 1
    with FakeMoonshot(api_key=key) as server:
        config = openai_config(server.base_url, concurrency=1)
        server.inject(*["bad-format"] * answers)  # the first record never keeps the format: invalid
        run(store, task, config, limit=2)
    assert sorted(a.status for _, a in store.annotations()) == ["invalid", "ok"]

    def snapshot():
        return [a.model_dump() for _, a in store.annotations()], store.totals()

    before = snapshot()
    est = runner.estimate(store, task, config, retry=("invalid",))
    assert snapshot() == before  # nothing planned, nothing reset to pending
    assert est.pending == est.records == 1 + len(ZH) - 2  # the invalid record and the chunks never planned
    assert est.prompt_tokens > 0 and est.cost > 0
    qa_est = runner.estimate(store, qa, config)
    assert qa_est.pending == len(ZH) and qa_est.records == len(ZH) * (1 + qa.spec.max_questions)
    assert "fan-out" in qa_est.note and snapshot() == before and store.task(qa.hash) is None
    # What the dry run said is what planning does: then the same job, read from the stored records.
    assert runner.plan(store, task, config, retry=("invalid",)) == est.pending
    assert runner.estimate(store, task, config) == est
