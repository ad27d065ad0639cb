"""The same text is paid for once: repeated chunks link to the first, re-issued documents pay for what changed."""

from __future__ import annotations

import asyncio
import random
import sqlite3

import pytest

from annotate import runner
from annotate.ingest import ChunkingConfig, ingest
from distillery.store import Store
from distillery.tasks import load_task
from doubles.corpus import _zh_sentence
from doubles.moonshot import FakeMoonshot
from helpers import openai_config

KEY = "sk-test-dedup"
BOILERPLATE = "本文件为公司内部资料，未经书面许可不得复制、转发或者以任何形式向第三方披露。如有疑问请联系法务部。"


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("FAKE_MOONSHOT_KEY", KEY)
    return KEY


def _job(store: Store, base_url: str):
    task = load_task("relevance")
    config = openai_config(base_url, model="moonshot-v1-8k", concurrency=4)
    runner.plan(store, task, config)
    return asyncio.run(runner.run_job(store, task, config))


def _regulation(rng: random.Random, paragraphs: int = 80) -> list[list[str]]:
    return [[_zh_sentence(rng) for _ in range(rng.randint(2, 5))] for _ in range(paragraphs)]


def _write(path, paragraphs: list[list[str]]) -> None:
    path.write_text("\n".join("".join(p) for p in paragraphs), encoding="utf-8")


def test_a_repeated_chunk_links_to_the_first_and_is_annotated_once(tmp_path, key):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("甲部门负责组织实施数据分类分级保护工作。\n\n" + BOILERPLATE, encoding="utf-8")
    (docs / "b.txt").write_text("乙部门应当定期评估个人信息出境的风险。\n\n" + "  ".join(BOILERPLATE.split("，")), encoding="utf-8")
    (docs / "c.txt").write_text(BOILERPLATE.replace("。", "。\n", 1), encoding="utf-8")  # wrapped differently: the same text
    store = Store.open(tmp_path / "ws")
    report = ingest(store, [docs], config=ChunkingConfig(max_size=50, overlap=0))
    chunks = [store.chunk(cid) for cid in store.db.execute("SELECT id FROM chunks ORDER BY rowid").fetchall() for cid in cid]
    first = next(c for c in chunks if c.text == BOILERPLATE)
    copies = [c for c in chunks if c.duplicate_of]
    assert [c.duplicate_of for c in copies] == [first.id]  # c.txt's copy; b.txt's (commas dropped) differs
    assert store.duplicate_chunks() == (1, len(copies[0].text))
    assert report.chunks_new == len(chunks)
    with FakeMoonshot(api_key=key) as server:
        stats = _job(store, server.base_url)
        sent = [r["body"]["messages"][-1]["content"] for r in server.requests if r["body"]]
    assert stats.calls_sent == len(chunks) - 1
    assert sum(BOILERPLATE in "".join(m.split()) for m in sent) == 1


def test_a_reissued_regulation_pays_only_for_the_chunks_that_changed(tmp_path, key):
    rng = random.Random(11)
    original = _regulation(rng)
    reissued = [list(p) for p in original]
    reissued[17].insert(1, "数据处理者应当在三十日内完成整改，并将整改情况书面报告主管部门。")  # one sentence added
    docs = tmp_path / "docs"
    docs.mkdir()
    _write(docs / "v1.txt", original)
    store = Store.open(tmp_path / "ws")
    config = ChunkingConfig(max_size=800, overlap=80)
    ingest(store, [docs / "v1.txt"], config=config)
    with FakeMoonshot(api_key=key) as server:
        first = _job(store, server.base_url)
        _write(docs / "v2.txt", reissued)
        ingest(store, [docs / "v2.txt"], config=config)
        second = _job(store, server.base_url)
    v2_chunks = store.db.execute(
        "SELECT COUNT(*) FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.path LIKE '%v2.txt'"
    ).fetchone()[0]
    assert first.calls_sent > 10 and v2_chunks > 10
    # Only the chunk holding the new sentence (and the one whose overlap repeats it) is new text.
    assert 1 <= second.calls_sent <= 3, (second.calls_sent, v2_chunks)
    assert store.duplicate_chunks()[0] == v2_chunks - second.calls_sent


def test_an_old_store_gets_keys_and_links_when_opened(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("a.txt", "b.txt"):
        (docs / name).write_text(f"{name} 的前言，说明本规程的适用范围和目的。\n\n{BOILERPLATE}", encoding="utf-8")
    store = Store.open(tmp_path / "ws")
    ingest(store, [docs], config=ChunkingConfig(max_size=50, overlap=0))
    store.close()
    # Make it a version-3 store, as written before chunk keys existed.
    db = sqlite3.connect(tmp_path / "ws" / "distillery.db")
    db.executescript("DROP INDEX chunks_text_key; ALTER TABLE chunks DROP COLUMN text_key;"
                     "ALTER TABLE chunks DROP COLUMN duplicate_of; PRAGMA user_version = 3;")  # fmt: skip
    db.close()
    store = Store.open(tmp_path / "ws")
    assert store.duplicate_chunks() == (1, len(BOILERPLATE))
    assert len(list(store.chunk_ids())) == 3
