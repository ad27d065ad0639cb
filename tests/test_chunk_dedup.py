"""The same text is paid for once: repeated chunks link to the first, near duplicates (a changed date) link to the
chunk they copy, re-issued documents pay for what changed."""

from __future__ import annotations

import asyncio
import hashlib
import random
import sqlite3

import pytest
from click.testing import CliRunner

from annotate import runner
from annotate.cli import main
from annotate.ingest import ChunkingConfig, ingest
from distillery import near_dup
from distillery.store import Duplicates, Store
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
    assert store.duplicate_chunks() == Duplicates(exact=1, exact_chars=len(copies[0].text), near=0, near_chars=0)
    assert copies[0].duplicate_similarity == 1.0
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
    linked = store.duplicate_chunks()
    assert linked.exact + linked.near == v2_chunks - second.calls_sent


def test_an_old_store_gets_keys_and_links_when_opened(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, preface in (("a.txt", "甲部门负责组织实施数据分类分级保护工作。"), ("b.txt", "乙部门应当定期评估个人信息出境的风险。")):
        (docs / name).write_text(f"{preface}\n\n{BOILERPLATE}", encoding="utf-8")
    store = Store.open(tmp_path / "ws")
    ingest(store, [docs], config=ChunkingConfig(max_size=50, overlap=0))
    store.close()
    _make_version_3(tmp_path / "ws")
    store = Store.open(tmp_path / "ws")
    assert store.duplicate_chunks() == Duplicates(exact=1, exact_chars=len(BOILERPLATE), near=0, near_chars=0)
    assert len(list(store.chunk_ids())) == 3


def _make_version_3(workspace) -> None:
    """Make the store a version-3 one, as written before chunk keys and the near-duplicate index existed."""
    db = sqlite3.connect(workspace / "distillery.db")
    db.executescript("DROP TABLE chunk_bands; DROP INDEX chunks_text_key; ALTER TABLE chunks DROP COLUMN text_key;"
                     "ALTER TABLE chunks DROP COLUMN duplicate_of; ALTER TABLE chunks DROP COLUMN duplicate_similarity;"
                     # and what version 5 added (generated records)
                     "DROP INDEX annotations_origin; ALTER TABLE annotations DROP COLUMN origin;"
                     "ALTER TABLE annotations DROP COLUMN instruction; ALTER TABLE annotations DROP COLUMN text;"
                     "ALTER TABLE annotations DROP COLUMN derivation;"
                     "PRAGMA user_version = 3;")  # fmt: skip
    db.close()


# -- near duplicates ------------------------------------------------------------------------------

DATED = "本办法自{}起施行，由信息安全管理部门负责解释。"
NEW_SENTENCE = "市场监督管理部门可以委托第三方机构，每季度抽查电梯维护保养记录一次。"  # words the regulation never uses


def _sentences(seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    return [_zh_sentence(rng) for _ in range(10)] + [DATED.format("2023年3月1日")]


def _shingle_jaccard(a: str, b: str) -> float:
    """Jaccard of the 5-character shingle sets, whitespace dropped: computed here from the strings themselves."""
    a, b = "".join(a.split()), "".join(b.split())
    sa, sb = ({t[i : i + 5] for i in range(len(t) - 4)} for t in (a, b))
    return len(sa & sb) / len(sa | sb)


def _chunk_texts(store: Store) -> dict[str, tuple[str, str | None, float | None]]:
    """File name -> (its one chunk's text, duplicate_of's file name, similarity)."""
    rows = store.db.execute(
        "SELECT d.path, c.text, c.duplicate_similarity, (SELECT d2.path FROM chunks c2 JOIN documents d2"
        " ON d2.id = c2.document_id WHERE c2.id = c.duplicate_of) AS of FROM chunks c JOIN documents d ON d.id = c.document_id"
    ).fetchall()
    return {r["path"].rsplit("/", 1)[-1]: (r["text"], r["of"] and r["of"].rsplit("/", 1)[-1], r["duplicate_similarity"])
            for r in rows}


def test_a_chunk_with_a_changed_date_is_linked_and_never_sent_one_with_a_new_sentence_is_sent(tmp_path, key):
    sentences = _sentences()
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "v1.txt").write_text("".join(sentences), encoding="utf-8")
    redated = sentences[:-1] + [DATED.format("2024年10月15日")]
    (docs / "v2.txt").write_text("".join(redated), encoding="utf-8")
    rewritten = sentences[:4] + [NEW_SENTENCE] + sentences[5:]  # one sentence of eleven in new words
    (docs / "v3.txt").write_text("".join(rewritten), encoding="utf-8")
    store = Store.open(tmp_path / "ws")
    config = ChunkingConfig(max_size=800, overlap=0)  # each file is one chunk
    first = ingest(store, [docs / "v1.txt"], config=config)
    report = ingest(store, [docs / "v2.txt", docs / "v3.txt"], config=config)
    chunks = _chunk_texts(store)
    assert first.chunks_new == 1 and report.chunks_new == 2
    v1, v2, v3 = chunks["v1.txt"][0], chunks["v2.txt"][0], chunks["v3.txt"][0]
    assert 0.9 <= _shingle_jaccard(v1, v2) < 1 and _shingle_jaccard(v1, v3) < 0.9
    assert chunks["v2.txt"][1:] == ("v1.txt", pytest.approx(_shingle_jaccard(v1, v2)))
    assert chunks["v3.txt"][1:] == (None, None)
    assert (report.chunks_near_duplicate, report.chars_near_duplicate, report.chunks_exact_duplicate) == (1, len(v2), 0)
    with FakeMoonshot(api_key=key) as server:
        stats = _job(store, server.base_url)
        sent = ["".join(r["body"]["messages"][-1]["content"].split()) for r in server.requests if r["body"]]
    assert stats.calls_sent == 2
    assert any("2023年3月1日" in m and NEW_SENTENCE not in m for m in sent)  # v1
    assert any(NEW_SENTENCE in m for m in sent)  # v3
    assert not any("2024年10月15日" in m for m in sent)  # v2: annotated through v1


def test_a_new_sentence_in_a_long_chunk_is_sent_however_similar_the_rest(tmp_path):
    rng = random.Random(5)
    sentences = [_zh_sentence(rng) for _ in range(26)]
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "v1.txt").write_text("".join(sentences), encoding="utf-8")
    (docs / "v2.txt").write_text("".join(sentences[:13] + [NEW_SENTENCE] + sentences[13:]), encoding="utf-8")
    store = Store.open(tmp_path / "ws")
    report = ingest(store, [docs], config=ChunkingConfig(max_size=2000, overlap=0))  # one chunk each
    chunks = _chunk_texts(store)
    assert _shingle_jaccard(chunks["v1.txt"][0], chunks["v2.txt"][0]) >= 0.9  # Jaccard alone would link it
    assert report.chunks_near_duplicate == 0 and chunks["v2.txt"][1] is None  # a 34-character passage is new


def test_near_duplicate_one_links_the_same_text_only(tmp_path):
    sentences = _sentences()
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("".join(sentences), encoding="utf-8")
    (docs / "b.txt").write_text("".join(sentences[:-1] + [DATED.format("2023年4月1日")]), encoding="utf-8")
    (docs / "c.txt").write_text("\n".join(sentences), encoding="utf-8")  # the same text, wrapped
    store = Store.open(tmp_path / "ws")
    report = ingest(store, [docs], config=ChunkingConfig(max_size=800, overlap=0, near_duplicate=1.0))
    assert (report.chunks_exact_duplicate, report.chunks_near_duplicate) == (1, 0)
    assert _chunk_texts(store)["b.txt"][1] is None


def test_the_index_persists_across_ingests_and_is_what_finds_candidates(tmp_path):
    sentences = _sentences()
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("".join(sentences), encoding="utf-8")
    others = [_sentences(seed) for seed in range(10, 30)]  # unrelated regulations in the same words
    for i, other in enumerate(others):
        (docs / f"other{i:02d}.txt").write_text("".join(other), encoding="utf-8")
    config = ChunkingConfig(max_size=800, overlap=0)
    with Store.open(tmp_path / "ws") as store:
        ingest(store, [docs], config=config)
        assert store.duplicate_chunks() == Duplicates(0, 0, 0, 0)
        indexed = store.db.execute("SELECT COUNT(DISTINCT chunk_id) FROM chunk_bands").fetchone()[0]
        assert indexed == 21
    later = tmp_path / "later"
    later.mkdir()
    (later / "a2.txt").write_text("".join(sentences[:-1] + [DATED.format("2025年1月1日")]), encoding="utf-8")
    with Store.open(tmp_path / "ws") as store:  # a new connection, as a later `ingest` command opens
        ingest(store, [later / "a2.txt"], config=config)
        assert _chunk_texts(store)["a2.txt"][1] == "a.txt"
        # Candidates come from the stored band index only: without a's bands nothing finds it.
        a_id = store.db.execute("SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id"
                                " WHERE d.path LIKE '%/a.txt'").fetchone()[0]
        store.db.execute("DELETE FROM chunk_bands WHERE chunk_id = ?", (a_id,))
    (later / "a3.txt").write_text("".join(sentences[:-1] + [DATED.format("2026年2月2日")]), encoding="utf-8")
    with Store.open(tmp_path / "ws") as store:
        ingest(store, [later / "a3.txt"], config=config)
        assert _chunk_texts(store)["a3.txt"][1] is None


def test_templated_text_keeps_every_bucket_bounded_and_links_nothing(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    lines = ["第{n}条 个人信息处理者在处理个人信息前，应当以显著方式告知处理目的和处理方式。",
             "The committee reviewed clause {n} and asked for a plain-language summary by Friday."]  # fmt: skip
    for i in range(40):
        tag = hashlib.sha256(str(i).encode()).hexdigest()[:8]  # every line differs from every other file's by 8+ characters
        (docs / f"t{i:02d}.txt").write_text("\n".join(lines[j % 2].format(n=f"{tag}-{j}") for j in range(30)), encoding="utf-8")
    store = Store.open(tmp_path / "ws")
    report = ingest(store, [docs], config=ChunkingConfig(max_size=400, overlap=0))
    assert report.chunks_new > 100 and report.chunks_near_duplicate == report.chunks_exact_duplicate == 0
    biggest = store.db.execute("SELECT MAX(n) FROM (SELECT COUNT(*) AS n FROM chunk_bands GROUP BY band_key)").fetchone()[0]
    assert biggest == near_dup.BUCKET_CAP  # templates fill buckets; each keeps its first members only


def test_an_old_store_gets_its_near_duplicates_linked_and_indexed_when_opened(tmp_path):
    sentences = _sentences()
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("".join(sentences), encoding="utf-8")
    (docs / "b.txt").write_text("".join(sentences[:-1] + [DATED.format("2023年5月1日")]), encoding="utf-8")
    with Store.open(tmp_path / "ws") as store:
        ingest(store, [docs], config=ChunkingConfig(max_size=800, overlap=0, near_duplicate=1.0))  # as before near links
    _make_version_3(tmp_path / "ws")
    with Store.open(tmp_path / "ws") as store:
        chunks = _chunk_texts(store)
        assert chunks["b.txt"][1:] == ("a.txt", pytest.approx(_shingle_jaccard(chunks["a.txt"][0], chunks["b.txt"][0])))
        assert store.duplicate_chunks() == Duplicates(0, 0, 1, len(chunks["b.txt"][0]))
    later = tmp_path / "later"
    later.mkdir()
    (later / "c.txt").write_text("".join(sentences[:-1] + [DATED.format("2023年6月1日")]), encoding="utf-8")
    with Store.open(tmp_path / "ws") as store:
        ingest(store, [later], config=ChunkingConfig(max_size=800, overlap=0))
        assert _chunk_texts(store)["c.txt"][1] == "a.txt"  # found through the index the upgrade built


def test_ingest_and_status_say_what_was_linked(tmp_path):
    sentences = _sentences()
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("".join(sentences), encoding="utf-8")
    (docs / "b.txt").write_text("".join(sentences[:-1] + [DATED.format("2023年7月1日")]), encoding="utf-8")
    (docs / "c.txt").write_text("\n".join(sentences), encoding="utf-8")  # the same text, wrapped
    ws = str(tmp_path / "ws")
    refused = CliRunner().invoke(main, ["-w", ws, "ingest", str(docs), "--near-duplicate", "0.5"])
    assert refused.exit_code == 2 and "0.8" in refused.output
    result = CliRunner().invoke(main, ["-w", ws, "ingest", str(docs), "--near-duplicate", "0.85"])
    assert result.exit_code == 0, result.output
    rows = {cells[1].strip(): cells[2].strip() for line in result.output.splitlines() if len(cells := line.split("│")) == 4}
    with Store.open(ws) as store:
        chunks = _chunk_texts(store)
    assert rows["the same text as a stored chunk (linked, not sent)"] == f"1 ({len(chunks['c.txt'][0]):,} chars)"
    assert rows["nearly the same, similarity >= 0.85 (linked, not sent)"] == f"1 ({len(chunks['b.txt'][0]):,} chars)"
    status = CliRunner().invoke(main, ["-w", ws, "status"])
    assert status.exit_code == 0, status.output
    assert (f"never sent to the teacher: 2 (1 the same text, {len(chunks['c.txt'][0]):,} chars; 1 nearly the same, "
            f"{len(chunks['b.txt'][0]):,} chars)") in status.output
