import sqlite3

from distillery.records import Annotation, Chunk, Document, LineageRecord, TaskVersion
from distillery.store import Store


def _doc(i: int) -> tuple[Document, list[Chunk]]:
    doc = Document(id=f"doc{i}", path=f"d{i}.txt", kind="txt", n_chars=10)
    chunks = [Chunk(id=f"{i:02d}{j:06x}" + "0" * 24, document_id=doc.id, seq=j, text=f"t{i}-{j}", char_start=0,
                    char_end=5, size=5) for j in range(3)]
    return doc, chunks


def test_wal_mode_and_idempotent_adds(tmp_path):
    store = Store.open(tmp_path)
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    doc, chunks = _doc(1)
    assert store.add_document(doc, chunks) == 3
    assert store.add_document(doc, chunks) == 0  # re-ingest adds nothing
    assert store.totals()["chunks"] == 3


def test_shards_partition_the_chunks(tmp_path):
    store = Store.open(tmp_path)
    for i in range(5):
        store.add_document(*_doc(i))
    parts = [set(store.chunk_ids(shard=(k, 3))) for k in range(3)]
    assert set().union(*parts) == set(store.chunk_ids())
    assert sum(map(len, parts)) == 15


def test_call_ledger_and_lineage_round_trip(tmp_path):
    store = Store.open(tmp_path / "a")
    doc, chunks = _doc(1)
    store.add_document(doc, chunks)
    store.put_task(TaskVersion(hash="h1", name="t", body="name: t"))
    ann = Annotation(id="a1", chunk_id=chunks[0].id, task_hash="h1", task_name="t", model="m")
    store.plan([ann])
    store.call_sent("req1", annotation_id="a1", provider="openai", base_url="u", model="m", request={"x": 1})
    assert store.answered_call("req1") is None  # sent but unanswered: must be sent again
    store.call_answered("req1", response={"id": 1}, content="相关####r", finish_reason="stop", prompt_tokens=3,
                        completion_tokens=4, cost=0.5, latency_s=0.1, attempts=1)
    assert store.answered_call("req1").content == "相关####r"
    assert store.spent() == 0.5
    ann.status, ann.conclusion, ann.reasoning = "ok", "相关", "r"
    store.save_annotation(ann)
    lines = [store.lineage(a).model_dump_json() for _, a in store.annotations(status="ok")]
    other = Store.open(tmp_path / "b")
    assert other.import_records(LineageRecord.model_validate_json(x) for x in lines) == 1
    assert other.import_records(LineageRecord.model_validate_json(x) for x in lines) == 0
    got = other.annotation("a1")
    assert got.answer == "相关####r" and other.document("doc1").path == "d1.txt"


def test_foreign_keys_are_enforced(tmp_path):
    store = Store.open(tmp_path)
    try:
        store.plan([Annotation(id="x", chunk_id="missing", task_hash="nope", task_name="t")])
    except sqlite3.IntegrityError:
        return
    raise AssertionError("an annotation of a missing chunk was accepted")
