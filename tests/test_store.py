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
    claim = store.claim_call("req1", owner="h:1:t", holder_alive=lambda owner, sent_at: True, annotation_id="a1",
                             provider="openai", base_url="u", model="m", request={"x": 1})
    assert claim.outcome == "claimed"
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


def test_a_workspace_from_before_schema_versions_opens_and_migrates(tmp_path):
    from distillery.store import SCHEMA_V1, SCHEMA_VERSION

    # What every release before versioning left behind: the v1 tables, user_version 0, data in them.
    db = sqlite3.connect(tmp_path / "distillery.db")
    db.executescript(SCHEMA_V1)
    db.execute("INSERT INTO documents VALUES ('doc0', 'old.txt', 'txt', 'utf-8', 3, NULL, '{}', 'then')")
    db.commit()
    assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    db.close()
    store = Store.open(tmp_path)
    assert store.version() == SCHEMA_VERSION >= 1
    assert store.document("doc0").path == "old.txt"
    store.add_document(*_doc(1))  # and it works as a new one does
    store.close()
    assert Store.open(tmp_path).version() == SCHEMA_VERSION  # opening again changes nothing


def test_a_store_from_a_newer_release_is_refused_untouched(tmp_path):
    from distillery.errors import DistilleryError
    from distillery.store import SCHEMA_VERSION

    Store.open(tmp_path).close()
    db = sqlite3.connect(tmp_path / "distillery.db")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    try:
        Store.open(tmp_path)
    except DistilleryError as exc:
        assert "newer than this distillery knows" in str(exc) and "upgrade distillery" in str(exc)
    else:
        raise AssertionError("a store from a newer release was opened")
    db = sqlite3.connect(tmp_path / "distillery.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1


def test_a_failed_migration_leaves_the_previous_version(tmp_path, monkeypatch):
    from distillery import store as store_module
    from distillery.errors import DistilleryError

    Store.open(tmp_path).close()
    broken = (*store_module.MIGRATIONS, "CREATE TABLE extra (x INTEGER);\nINSERT INTO nowhere VALUES (1);\n")
    monkeypatch.setattr(store_module, "MIGRATIONS", broken)
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", len(broken))
    try:
        Store.open(tmp_path)
    except DistilleryError as exc:
        current = len(broken) - 1
        assert f"upgrading the store to schema version {current + 1} failed" in str(exc) and f"at version {current}" in str(exc)
    else:
        raise AssertionError("the broken migration did not fail")
    monkeypatch.undo()
    store = Store.open(tmp_path)
    assert store.version() == len(store_module.MIGRATIONS)
    tables = {r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "extra" not in tables  # the half-done step was rolled back


def test_a_damaged_or_emptied_store_is_refused_in_one_line_and_left_alone(tmp_path):
    import os
    import time

    from click.testing import CliRunner

    from annotate.cli import main as annotate_cli
    from distillery.errors import DistilleryError
    from qc.cli import main as qc_cli

    db = tmp_path / "distillery.db"
    db.write_bytes(b"this is not a database" * 100)
    for cli, args in ((annotate_cli, ["status"]), (qc_cli, ["report"])):
        result = CliRunner().invoke(cli, ["-w", str(tmp_path), *args])
        assert result.exit_code == 1 and "is not a distillery store, or it is damaged" in result.output
        assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert db.read_bytes() == b"this is not a database" * 100
    db.write_bytes(b"")
    old = time.time() - 60
    os.utime(db, (old, old))
    try:
        Store.open(tmp_path)
    except DistilleryError as exc:
        assert "empty (0 bytes)" in str(exc)
    else:
        raise AssertionError("a 0-byte store became a new workspace")
    assert db.stat().st_size == 0
