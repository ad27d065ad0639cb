"""The core's shared helpers, each with the one semantics every stage relies on: config overrides,
JSONL in and out, the workspace layout, and the call ledger against a real HTTP teacher."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import BaseModel

from distillery.accounting import Price
from distillery.config import load_config, parse_sets, validate
from distillery.errors import ConfigError, DistilleryError
from distillery.jsonl import read_jsonl, write_jsonl
from distillery.ledger import HOST, CallHeld, JobStopped, Ledger, holder_alive
from distillery.records import Annotation, Chunk, Document, TaskVersion
from distillery.store import Store
from distillery.teacher import ChatRequest
from distillery.teacher_config import TeacherConfig, build_teacher
from distillery.workspace import Workspace, default_workspace
from doubles.moonshot import FakeMoonshot


class Row(BaseModel):
    name: str
    n: int = 0


def test_set_values_keep_their_types_and_bad_pairs_are_named() -> None:
    assert parse_sets(["a=1", "b=2e-4", "c=true", "d=text", "e=", "f.g=[1, 2]"]) == {
        "a": 1, "b": 2e-4, "c": True, "d": "text", "e": "", "f.g": [1, 2]}
    with pytest.raises(ConfigError, match="--var 'topic' is not KEY=VALUE"):
        parse_sets(["topic"], option="--var")
    with pytest.raises(ConfigError, match="--set '=1' is not KEY=VALUE"):
        parse_sets(["=1"])


def test_config_files_and_overrides_name_the_file_and_the_field(tmp_path: Path) -> None:
    class Section(BaseModel):
        rate: float = 1.0
        inner: Row = Row(name="x")

    path = tmp_path / "c.yaml"
    path.write_text("rate: 2.5\ninner: {name: y}\n", encoding="utf-8")
    assert load_config(Section, path, {"inner.n": 3}) == Section(rate=2.5, inner=Row(name="y", n=3))
    with pytest.raises(ConfigError, match=r"c.yaml: field 'inner.n': Input should be a valid integer"):
        load_config(Section, path, {"inner.n": "many"})
    with pytest.raises(ConfigError, match=r"nope.yaml: no such config file"):
        load_config(Section, tmp_path / "nope.yaml")
    path.write_text("- a list\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="c.yaml: expected a mapping"):
        load_config(Section, path)
    with pytest.raises(ConfigError, match=r"^field 'qc.rate'"):
        validate(Section, {"rate": "fast"}, None, section="qc")


def test_jsonl_round_trip_names_a_bad_line_and_writes_all_or_nothing(tmp_path: Path) -> None:
    path = tmp_path / "out" / "rows.jsonl"
    assert write_jsonl(path, [Row(name="一"), Row(name="二", n=2)]) == 2
    assert "一" in path.read_text(encoding="utf-8")  # readable, not \\u-escaped
    assert [r for _, r in read_jsonl(path, Row)] == [Row(name="一"), Row(name="二", n=2)]

    def broken():
        yield Row(name="kept?")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_jsonl(path, broken())
    assert len(read_jsonl(path, Row)) == 2 and list(path.parent.iterdir()) == [path]  # old file intact, no temp left
    path.write_text('{"name": "a"}\n\n{"n": 1}\n', encoding="utf-8")
    with pytest.raises(DistilleryError, match=r"rows.jsonl line 3: not a Row: field 'name': Field required"):
        read_jsonl(path, Row)
    path.write_text('{"name": "a"\n', encoding="utf-8")
    with pytest.raises(DistilleryError, match=r"line 1: not JSON"):
        read_jsonl(path, Row)


def test_the_workspace_layout_is_one_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = Workspace(tmp_path)
    assert ws.db == tmp_path / "distillery.db" and not ws.exists()
    Store.open(tmp_path).close()
    assert ws.exists()
    assert ws.approved == tmp_path / "exports" / "approved.jsonl" and ws.run("r") == tmp_path / "finetune" / "runs" / "r"
    monkeypatch.setenv("DISTILLERY_WORKSPACE", str(tmp_path / "elsewhere"))
    assert default_workspace() == tmp_path / "elsewhere"
    monkeypatch.delenv("DISTILLERY_WORKSPACE")
    assert default_workspace() == Path("workspace")


def _store_with_record(tmp_path: Path) -> Store:
    store = Store.open(tmp_path)
    store.add_document(Document(id="d", path="d.txt", kind="txt", n_chars=2),
                       [Chunk(id="c" * 32, document_id="d", seq=0, text="文本", char_start=0, char_end=2, size=2)])
    store.put_task(TaskVersion(hash="h", name="t", body="name: t"))
    store.plan([Annotation(id="a", chunk_id="c" * 32, task_hash="h", task_name="t", model="moonshot-v1-8k")])
    return store


def _ledger(store: Store, server: FakeMoonshot, budget: float | None = None) -> Ledger:
    teacher = build_teacher(TeacherConfig(provider="openai", base_url=server.base_url, api_key_env="FAKE_MOONSHOT_KEY",
                                          max_retries=0))
    return Ledger(store, teacher, model="moonshot-v1-8k", base_url=server.base_url,
                  price=Price(input_per_million=1000.0, output_per_million=1000.0), budget=budget)


def request(text: str) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], model="moonshot-v1-8k")


def test_the_ledger_pays_once_across_ledgers_and_stops_at_the_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_MOONSHOT_KEY", "sk-test")
    store = _store_with_record(tmp_path)
    with FakeMoonshot() as server:
        first = _ledger(store, server)
        answer = asyncio.run(first.call("a", request("判断一下")))
        assert not answer.reused and first.stats.calls_sent == 1 and first.stats.cost > 0
        # Another ledger on the same store (a re-run, or qc's judge) finds the answer: not paid again.
        second = _ledger(store, server)
        again = asyncio.run(second.call("a", request("判断一下")))
        assert again.reused and again.result.content == answer.result.content and second.stats.calls_sent == 0
        assert len(server.chat_hashes()) == 1
        (call,) = store.calls("a")
        assert call.status == "ok" and call.request["messages"][0]["content"] == "判断一下"
        # The budget counts what the workspace spent before this ledger existed.
        capped = _ledger(store, server, budget=store.spent())
        with pytest.raises(JobStopped, match="budget of .* reached"):
            asyncio.run(capped.call("a", request("另一个问题")))
        assert len(server.chat_hashes()) == 1  # nothing sent
        server.inject("429-quota")
        with pytest.raises(JobStopped, match="out of quota/balance.*run the same command again"):
            asyncio.run(_ledger(store, server).call("a", request("第三个")))
        assert {c.status for c in store.calls("a")} == {"ok", "error"}


def test_the_budget_holds_with_many_requests_in_flight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each request reserves its worst case before it leaves: with 8 at once and room for 3, the
    spend stops within the budget (checking only what was spent let all 8 go out)."""
    monkeypatch.setenv("FAKE_MOONSHOT_KEY", "sk-test")
    store = _store_with_record(tmp_path)
    long_answer = "相关####" + "理由" * 200  # cut at max_tokens: every answer costs its worst case
    with FakeMoonshot(latency_s=0.3, responder=lambda messages: long_answer) as server:
        requests = [ChatRequest(messages=[{"role": "user", "content": f"问题{i}"}], model="moonshot-v1-8k", max_tokens=40)
                    for i in range(8)]
        probe = _ledger(store, server)
        worst = probe._worst_case(requests[0])
        ledger = _ledger(store, server, budget=3.5 * worst)

        async def all_of_them() -> list[object]:
            return await asyncio.gather(*(ledger.call("a", r) for r in requests), return_exceptions=True)

        outcomes = asyncio.run(all_of_them())
        paid = [o for o in outcomes if not isinstance(o, BaseException)]
        stopped = [o for o in outcomes if isinstance(o, JobStopped)]
        assert len(paid) == 3 and len(stopped) == 5 and len(server.chat_hashes()) == 3
        assert 0 < store.spent() <= 3.5 * worst
        assert ledger.stats.calls_cancelled == 5 and "budget" in str(stopped[0])


def test_a_stop_cancels_what_waits_behind_the_rate_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_MOONSHOT_KEY", "sk-test")
    store = _store_with_record(tmp_path)
    with FakeMoonshot(latency_s=0.5) as server:
        teacher = build_teacher(TeacherConfig(provider="openai", base_url=server.base_url,
                                              api_key_env="FAKE_MOONSHOT_KEY", concurrency=2, max_retries=0))
        ledger = Ledger(store, teacher, model="moonshot-v1-8k", base_url=server.base_url,
                        price=Price(input_per_million=1.0, output_per_million=1.0))

        async def stop_soon() -> list[object]:
            calls = [asyncio.create_task(ledger.call("a", request(f"第{i}个"))) for i in range(10)]
            await asyncio.sleep(0.2)  # two are on the wire, eight wait for a slot
            ledger.halt("stopped on request")
            return await asyncio.gather(*calls, return_exceptions=True)

        outcomes = asyncio.run(stop_soon())
    answered = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(answered) == 2 and len(server.chat_hashes()) == 2  # the two in flight finished and were stored
    assert all(isinstance(o, JobStopped) for o in outcomes if isinstance(o, BaseException))
    assert sum(c.status == "ok" for c in store.calls("a")) == 2


def test_two_runs_at_once_never_send_the_same_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second ledger (another process, here a second claim owner) skips a call the first has out."""
    monkeypatch.setenv("FAKE_MOONSHOT_KEY", "sk-test")
    store = _store_with_record(tmp_path)
    with FakeMoonshot(latency_s=0.5) as server:
        first = _ledger(store, server)
        second = _ledger(Store.open(tmp_path), server)

        async def both() -> tuple[object, object]:
            a = asyncio.create_task(first.call("a", request("同一个请求")))
            await asyncio.sleep(0.1)  # the first has claimed it and is waiting for the answer
            b = await asyncio.gather(second.call("a", request("同一个请求")), return_exceptions=True)
            return await a, b[0]

        answer, held = asyncio.run(both())
        assert isinstance(held, CallHeld) and first.owner in str(held)
        assert len(server.chat_hashes()) == 1
        # Once it is answered, the other run reuses it; and a dead run's claim is taken over.
        assert asyncio.run(second.call("a", request("同一个请求"))).reused
        first.close()
        store.claim_call("dead", owner=f"{HOST}:999999:gone", holder_alive=lambda o, t: False, annotation_id="a",
                         provider="openai", base_url=None, model="m", request={})
        takeover = store.claim_call("dead", owner=second.owner, annotation_id="a", provider="openai", base_url=None,
                                    model="m", request={}, holder_alive=lambda o, t: holder_alive(o, t, lease_s=60))
        assert takeover.outcome == "claimed"
        assert not holder_alive(f"{HOST}:999999:gone", "2026-01-01T00:00:00+00:00", lease_s=60)
        assert holder_alive(first.owner.replace(HOST, "elsewhere"), datetime.now(timezone.utc).isoformat(), lease_s=60)
