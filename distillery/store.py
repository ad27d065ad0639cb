"""The workspace store: one SQLite file (WAL) that every stage reads and writes.

Why SQLite: transactional, serverless, survives kill -9, and a crashed job can resume
exactly where it stopped. Every write that records something paid for (a teacher's
answer) commits before the caller moves on. JSONL is the exchange format, never the state.

This is the only module that writes SQL. The schema carries a version (`PRAGMA user_version`)
and opening a store applies the forward migrations it lacks, each in its own transaction, so a
workspace made by an older release opens and is upgraded in place.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

from pydantic import BaseModel

from . import near_dup
from .errors import DistilleryError
from .near_dup import NewChunk, Placement
from .records import (
    Annotation,
    Call,
    Chunk,
    Document,
    Flag,
    Judgement,
    LineageRecord,
    Review,
    Sample,
    SampleItem,
    TaskVersion,
    text_key,
    utcnow,
)
from .workspace import Workspace


class Claim(NamedTuple):
    outcome: Literal["claimed", "answered", "held"]
    call: Call | None  # the stored answer ("answered") or the holder's row ("held")


class Duplicates(NamedTuple):
    """Chunks linked to a stored chunk instead of being annotated, and their characters."""

    exact: int  # the same text (whitespace aside)
    exact_chars: int
    near: int  # nearly the same text (near_dup: Jaccard at or above the ingest's threshold)
    near_chars: int


class StoreError(DistilleryError):
    """A store this release cannot open; the message says why and what to do."""


# Version 1: the schema every workspace had before versions were recorded (user_version 0); its
# statements are idempotent, so an unversioned workspace of that shape migrates by running them.
SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY, path TEXT NOT NULL, kind TEXT NOT NULL, encoding TEXT,
    n_chars INTEGER NOT NULL, n_pages INTEGER, meta TEXT NOT NULL, created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id TEXT PRIMARY KEY, document_id TEXT NOT NULL REFERENCES documents(id), seq INTEGER NOT NULL,
    text TEXT NOT NULL, char_start INTEGER NOT NULL, char_end INTEGER NOT NULL,
    page_start INTEGER, page_end INTEGER, size INTEGER NOT NULL, created_at TEXT NOT NULL,
    shard_key INTEGER NOT NULL  -- int of the id's first 8 hex digits: splits jobs across keys
);
CREATE INDEX IF NOT EXISTS chunks_document ON chunks(document_id, seq);
CREATE TABLE IF NOT EXISTS tasks (
    hash TEXT PRIMARY KEY, name TEXT NOT NULL, body TEXT NOT NULL, created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS annotations (
    id TEXT PRIMARY KEY, chunk_id TEXT NOT NULL REFERENCES chunks(id),
    task_hash TEXT NOT NULL REFERENCES tasks(hash), task_name TEXT NOT NULL,
    step TEXT NOT NULL, parent_id TEXT REFERENCES annotations(id), item_index INTEGER NOT NULL,
    input TEXT, status TEXT NOT NULL, conclusion TEXT, reasoning TEXT, raw_text TEXT, error TEXT,
    provider TEXT, model TEXT, params TEXT NOT NULL, request_hash TEXT, attempts INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, cost REAL NOT NULL,
    latency_s REAL NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS annotations_task_status ON annotations(task_hash, status);
CREATE INDEX IF NOT EXISTS annotations_chunk ON annotations(chunk_id);
-- One row per distinct paid request (hash of messages + model + params). Written as 'sent'
-- before the request leaves, as 'ok' with the raw answer the moment it arrives.
CREATE TABLE IF NOT EXISTS calls (
    request_hash TEXT PRIMARY KEY, annotation_id TEXT NOT NULL, provider TEXT NOT NULL,
    base_url TEXT, model TEXT NOT NULL, request TEXT NOT NULL, status TEXT NOT NULL,
    error_kind TEXT, error TEXT, response TEXT, content TEXT, finish_reason TEXT,
    prompt_tokens INTEGER, completion_tokens INTEGER, cost REAL, latency_s REAL,
    attempts INTEGER, sent_at TEXT NOT NULL, done_at TEXT
);
CREATE INDEX IF NOT EXISTS calls_annotation ON calls(annotation_id);
-- qc: what the automatic checks found (recomputed by each check run; records are never deleted).
CREATE TABLE IF NOT EXISTS flags (
    annotation_id TEXT NOT NULL REFERENCES annotations(id), kind TEXT NOT NULL, detail TEXT NOT NULL,
    related_id TEXT, score REAL, created_at TEXT NOT NULL, PRIMARY KEY (annotation_id, kind)
);
CREATE INDEX IF NOT EXISTS flags_kind ON flags(kind);
-- qc: LLM-as-judge scores; the judge's raw answers are in calls (request_hash).
CREATE TABLE IF NOT EXISTS judgements (
    annotation_id TEXT NOT NULL REFERENCES annotations(id), model TEXT NOT NULL, score INTEGER,
    reason TEXT NOT NULL, request_hash TEXT, created_at TEXT NOT NULL, PRIMARY KEY (annotation_id, model)
);
-- qc: a drawn sample, the lot it was drawn from (a snapshot), and its items in review order.
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, tasks TEXT NOT NULL, spec TEXT NOT NULL,
    plan TEXT NOT NULL, lot_size INTEGER NOT NULL, size INTEGER NOT NULL, created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sample_lot (
    sample_id INTEGER NOT NULL REFERENCES samples(id), annotation_id TEXT NOT NULL REFERENCES annotations(id),
    PRIMARY KEY (sample_id, annotation_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sample_items (
    sample_id INTEGER NOT NULL REFERENCES samples(id), position INTEGER NOT NULL,
    annotation_id TEXT NOT NULL REFERENCES annotations(id), stratum TEXT NOT NULL,
    PRIMARY KEY (sample_id, position), UNIQUE (sample_id, annotation_id)
);
-- qc: every verdict as given, append-only (a changed mind is a new row; the latest wins).
CREATE TABLE IF NOT EXISTS reviews (
    id INTEGER PRIMARY KEY AUTOINCREMENT, sample_id INTEGER REFERENCES samples(id),
    annotation_id TEXT NOT NULL REFERENCES annotations(id), reviewer TEXT NOT NULL, verdict TEXT NOT NULL,
    reason TEXT, note TEXT, conclusion TEXT, reasoning TEXT, original_conclusion TEXT, original_reasoning TEXT,
    source TEXT NOT NULL, created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reviews_annotation ON reviews(annotation_id);
CREATE INDEX IF NOT EXISTS reviews_sample_reviewer ON reviews(sample_id, reviewer);
"""

# Version 2: who holds a call that is out ('sent'), so two runs on one workspace never send the
# same request twice: "host:pid:token" of the ledger that claimed it.
SCHEMA_V2 = """
ALTER TABLE calls ADD COLUMN claimed_by TEXT;
"""

# Version 3: privacy placeholders. A personal datum found in text bound for an external teacher
# (distillery.privacy) is sent as `[KIND_n]`; n is its number here, assigned once per workspace, so
# every job masks it alike. Only this file holds the values: nothing exported reads this table.
SCHEMA_V3 = """
CREATE TABLE IF NOT EXISTS privacy_placeholders (
    kind TEXT NOT NULL, value TEXT NOT NULL, n INTEGER NOT NULL, created_at TEXT NOT NULL,
    PRIMARY KEY (kind, value), UNIQUE (kind, n)
) WITHOUT ROWID;
"""

# Version 4: chunk-level dedup. A chunk whose text (records.text_key) is already stored, or nearly
# (distillery.near_dup), links to that chunk and is never sent to the teacher. chunk_bands is the
# persistent LSH index of the chunks that can be linked to: each band key's first few members, with
# their signatures, so a new chunk's candidates are read by key and screened without a join. Older
# chunks are keyed and indexed when the store is opened (Store._key_old_chunks).
SCHEMA_V4 = """
ALTER TABLE chunks ADD COLUMN text_key TEXT;
ALTER TABLE chunks ADD COLUMN duplicate_of TEXT REFERENCES chunks(id);
ALTER TABLE chunks ADD COLUMN duplicate_similarity REAL;  -- Jaccard with duplicate_of; 1.0: the same text
CREATE INDEX IF NOT EXISTS chunks_text_key ON chunks(text_key);
CREATE TABLE IF NOT EXISTS chunk_bands (
    band_key INTEGER NOT NULL, chunk_id TEXT NOT NULL REFERENCES chunks(id), signature BLOB NOT NULL,
    PRIMARY KEY (band_key, chunk_id)
) WITHOUT ROWID;
"""

# Version 5: generated records (records.Origin). A record grown from approved ones (augmented,
# paraphrased, a new instruction, a teacher's correction) lives beside the annotated ones, so qc
# checks, samples, reviews and exports it alike; it points at its origin's chunk, so it goes to the
# origin document's split. `text`/`instruction`: what the student reads when it is not the chunk and
# the task's instruction; `derivation`: JSON of what it came from and how.
SCHEMA_V5 = """
ALTER TABLE annotations ADD COLUMN origin TEXT;
ALTER TABLE annotations ADD COLUMN instruction TEXT;
ALTER TABLE annotations ADD COLUMN text TEXT;
ALTER TABLE annotations ADD COLUMN derivation TEXT NOT NULL DEFAULT '{}';
CREATE INDEX IF NOT EXISTS annotations_origin ON annotations(origin, task_name);
"""

# MIGRATIONS[i] takes a store from version i to i + 1. Append; never edit a released one.
MIGRATIONS: tuple[str, ...] = (SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5)
SCHEMA_VERSION = len(MIGRATIONS)

M = TypeVar("M", bound=BaseModel)

_JSON_COLUMNS = {"meta", "params", "request", "response", "derivation"}


def _row_to(model: type[BaseModel], row: sqlite3.Row) -> Any:
    data = {k: row[k] for k in row.keys() if k in model.model_fields}
    for key in _JSON_COLUMNS & data.keys():
        if data[key] is not None:
            data[key] = json.loads(data[key])
    return model(**data)


def _columns(obj: BaseModel) -> dict[str, Any]:
    data = obj.model_dump()
    for key in _JSON_COLUMNS & data.keys():
        data[key] = json.dumps(data[key], ensure_ascii=False, sort_keys=True)
    return data


def _refuse_an_empty_leftover(path: Path) -> None:
    """SQLite would take a 0-byte file for a new database and fill it in: a truncated store would
    silently become an empty workspace. A 0-byte file only counts as new while it is being created."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return
    if info.st_size == 0 and time.time() - info.st_mtime > 10:
        raise StoreError(f"{path} is empty (0 bytes): not a workspace store (a copy or a disk that failed part-way?). "
                         "Restore it from a backup, or delete it to start a new workspace here")


def _statements(script: str) -> list[str]:
    """A migration script's statements one by one (executescript would commit on its own)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return [s for s in statements if s]


def _insert_sql(table: str, columns: Iterable[str], verb: str = "INSERT OR IGNORE") -> str:
    cols = list(columns)
    return f"{verb} INTO {table} ({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)})"


class Store:
    """The one way any stage touches workspace state."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _refuse_an_empty_leftover(self.path)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode loses nothing on a process crash (kill -9), only on power loss.
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
            self.db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except StoreError:
            self.db.close()
            raise
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise StoreError(f"{self.path} is not a distillery store, or it is damaged ({exc}). Nothing was changed. "
                             f"Restore it from a backup; `sqlite3 {self.path} .recover` may save what is left; or move "
                             "it away to start a new workspace here") from exc
        except BaseException:
            self.db.close()
            raise

    def _migrate(self) -> None:
        version = self.version()
        self._migrate_to(version)
        if version < 4:
            self._key_old_chunks()

    def _key_old_chunks(self) -> None:
        """Chunks stored before version 4 get their text keys, signatures and duplicate links, oldest
        first, near duplicates at the default threshold: as if ingested again in their order."""
        with self.transaction() as db:
            while rows := db.execute("SELECT id, text FROM chunks WHERE text_key IS NULL ORDER BY rowid LIMIT 1000").fetchall():
                batch = [NewChunk(row["id"], row["text"], text_key(row["text"])) for row in rows]
                placements = self._place(db, batch, near_dup.DEFAULT_THRESHOLD)
                db.executemany("UPDATE chunks SET text_key = ?, duplicate_of = ?, duplicate_similarity = ? WHERE id = ?",
                               ((c.text_key, p.duplicate_of, p.similarity, c.id) for c, p in zip(batch, placements)))
                self._index(db, zip((c.id for c in batch), placements))

    @staticmethod
    def _place(db: sqlite3.Connection, chunks: list[NewChunk], threshold: float) -> list[Placement]:
        """near_dup.place over this store: what each chunk duplicates, in order."""
        def buckets(keys: Collection[int]) -> list[tuple[int, str, bytes]]:
            rows = db.cursor()
            rows.row_factory = None  # plain tuples: hundreds of rows per document
            return rows.execute("SELECT band_key, chunk_id, signature FROM chunk_bands"
                                " WHERE band_key IN (SELECT value FROM json_each(?))", (json.dumps(list(keys)),)).fetchall()

        def texts(ids: Collection[str]) -> dict[str, str]:
            rows = db.execute("SELECT id, text FROM chunks WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(list(ids)),))
            return {row["id"]: row["text"] for row in rows}

        same_text = Store._first_with_keys(db, [c.text_key for c in chunks])
        return near_dup.place(chunks, threshold=threshold, same_text=same_text, buckets=buckets, texts=texts)

    @staticmethod
    def _index(db: sqlite3.Connection, placed: Iterable[tuple[str, Placement]]) -> None:
        """Add chunks to the band index, under the band keys they were placed with."""
        db.executemany("INSERT OR IGNORE INTO chunk_bands (band_key, chunk_id, signature) VALUES (?, ?, ?)",
                       ((key, chunk_id, p.signature) for chunk_id, p in placed for key in p.bands))

    @staticmethod
    def _first_with_keys(db: sqlite3.Connection, keys: list[str]) -> dict[str, str]:
        """The first stored (non-duplicate) chunk of each of these text keys."""
        rows = db.execute(
            "SELECT text_key, id FROM chunks WHERE text_key IN (SELECT value FROM json_each(?)) AND duplicate_of IS NULL"
            " ORDER BY rowid DESC",
            (json.dumps(keys),),
        )
        return {row["text_key"]: row["id"] for row in rows}  # in descending order, so the first one wins

    def _migrate_to(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {version}, newer than this distillery knows "
                             f"({SCHEMA_VERSION}): upgrade distillery to open it")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            # One transaction per step: a crash mid-migration leaves the previous version intact.
            # BEGIN IMMEDIATE also serialises two processes opening an old store at once.
            self.db.execute("BEGIN IMMEDIATE")
            try:
                if self.version() < target:  # another process may have just done it
                    for statement in _statements(MIGRATIONS[target - 1]):
                        self.db.execute(statement)
                    self.db.execute(f"PRAGMA user_version = {target}")
            except sqlite3.DatabaseError as exc:
                self.db.execute("ROLLBACK")
                raise StoreError(f"{self.path}: upgrading the store to schema version {target} failed ({exc}); it is "
                                 f"left as it was, at version {target - 1}") from exc
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def version(self) -> int:
        """The schema version of this store's file."""
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    @classmethod
    def open(cls, workspace: str | Path) -> Store:
        return cls(Workspace(workspace).db)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- documents and chunks -------------------------------------------------------------

    def add_document(self, doc: Document, chunks: list[Chunk], *, near_duplicate: float = near_dup.DEFAULT_THRESHOLD) -> int:
        """Store a document with its chunks in one transaction; returns chunks newly added."""
        return self.add_documents([(doc, chunks)], near_duplicate=near_duplicate)

    def add_documents(self, docs: Sequence[tuple[Document, list[Chunk]]], *,
                      near_duplicate: float = near_dup.DEFAULT_THRESHOLD) -> int:
        """Store documents with their chunks in one transaction; returns chunks newly added. A chunk
        whose text is that of a stored or earlier chunk, or nearly (shingle Jaccard at or above
        `near_duplicate`; 1.0: the same text only), is linked to it and will not be annotated.
        (Many documents a transaction: the band index's inserts land on random pages, and a commit
        writes each page it touched once.)"""
        with self.transaction() as db:
            db.executemany(_insert_sql("documents", Document.model_fields), (_columns(doc) for doc, _ in docs))
            chunks = [chunk for _, doc_chunks in docs for chunk in doc_chunks]
            new = [NewChunk(chunk.id, chunk.text, chunk.text_key or text_key(chunk.text)) for chunk in chunks]
            added: list[tuple[str, Placement]] = []
            for chunk, key, placed in zip(chunks, new, self._place(db, new, near_duplicate)):
                row = _columns(chunk) | {"shard_key": int(chunk.id[:8], 16), "text_key": key.text_key,
                                         "duplicate_of": placed.duplicate_of, "duplicate_similarity": placed.similarity}
                if db.execute(_insert_sql("chunks", row), row).rowcount:
                    added.append((chunk.id, placed))
            self._index(db, added)
        return len(added)

    def document(self, document_id: str) -> Document | None:
        row = self.db.execute("SELECT * FROM documents WHERE id = ?", (document_id,)).fetchone()
        return _row_to(Document, row) if row else None

    def documents(self) -> Iterator[Document]:
        for row in self.db.execute("SELECT * FROM documents ORDER BY path"):
            yield _row_to(Document, row)

    def duplicate_chunks(self, document_ids: Collection[str] | None = None) -> Duplicates:
        """Chunks (of these documents) that repeat text stored before them, exactly or nearly: linked,
        not annotated again."""
        sql = ("SELECT c.text_key = t.text_key AS exact, COUNT(*) AS n, SUM(LENGTH(c.text)) AS chars FROM chunks c"
               " JOIN chunks t ON t.id = c.duplicate_of")
        args: tuple[str, ...] = ()
        if document_ids is not None:
            sql += " WHERE c.document_id IN (SELECT value FROM json_each(?))"
            args = (json.dumps(list(document_ids)),)
        found = {row["exact"]: (row["n"], row["chars"]) for row in self.db.execute(sql + " GROUP BY exact", args)}
        return Duplicates(*found.get(1, (0, 0)), *found.get(0, (0, 0)))

    def chunk(self, chunk_id: str) -> Chunk | None:
        row = self.db.execute("SELECT * FROM chunks WHERE id = ?", (chunk_id,)).fetchone()
        return _row_to(Chunk, row) if row else None

    def chunk_ids(self, *, shard: tuple[int, int] | None = None, limit: int | None = None) -> Iterator[str]:
        """Chunk ids in document order; `shard=(i, n)` keeps the i-th of n disjoint parts."""
        # A duplicate's text is annotated through the chunk it links to: never planned itself.
        sql = "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id WHERE c.duplicate_of IS NULL"
        args: list[Any] = []
        if shard:
            sql += " AND c.shard_key % ? = ?"
            args += [shard[1], shard[0]]
        sql += " ORDER BY d.path, c.seq"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        for row in self.db.execute(sql, args):
            yield row[0]

    # -- tasks ------------------------------------------------------------------------------

    def put_task(self, task: TaskVersion) -> None:
        self.db.execute(_insert_sql("tasks", TaskVersion.model_fields), _columns(task))

    def task(self, task_hash: str) -> TaskVersion | None:
        row = self.db.execute("SELECT * FROM tasks WHERE hash = ?", (task_hash,)).fetchone()
        return _row_to(TaskVersion, row) if row else None

    # -- annotations ------------------------------------------------------------------------

    def plan(self, annotations: Iterable[Annotation]) -> int:
        """Insert pending annotations; ones that exist already are left alone. Returns new rows."""
        sql = _insert_sql("annotations", Annotation.model_fields)
        added = 0
        with self.transaction() as db:
            for ann in annotations:
                added += db.execute(sql, _columns(ann)).rowcount
        return added

    def save_annotation(self, ann: Annotation) -> None:
        ann.updated_at = utcnow()
        self.db.execute(_insert_sql("annotations", Annotation.model_fields, "INSERT OR REPLACE"), _columns(ann))

    def annotation(self, annotation_id: str) -> Annotation | None:
        row = self.db.execute("SELECT * FROM annotations WHERE id = ?", (annotation_id,)).fetchone()
        return _row_to(Annotation, row) if row else None

    def annotations(
        self,
        *,
        task_name: str | None = None,
        task_hash: str | None = None,
        status: str | Iterable[str] | None = None,
        step: str | None = None,
        after_rowid: int = 0,
        limit: int | None = None,
        chunk_ids: Iterable[str] | None = None,
        origin: str | None = None,
        generated: bool | None = None,
    ) -> Iterator[tuple[int, Annotation]]:
        """(rowid, annotation) in insertion order, filtered (`generated`: only records a generator made,
        or, False, only annotated ones); streams, never loads all rows."""
        where, args = ["rowid > ?"], [after_rowid]
        if generated is not None:
            where.append("origin IS NOT NULL" if generated else "origin IS NULL")
        for col, val in (("task_name", task_name), ("task_hash", task_hash), ("step", step), ("origin", origin)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            args += statuses
        if chunk_ids is not None:
            ids = list(chunk_ids)
            where.append(f"chunk_id IN ({', '.join('?' * len(ids))})")
            args += ids
        sql = f"SELECT rowid AS _rowid, * FROM annotations WHERE {' AND '.join(where)} ORDER BY rowid"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        for row in self.db.execute(sql, args).fetchall() if limit is not None else self.db.execute(sql, args):
            yield row["_rowid"], _row_to(Annotation, row)

    # -- jobs: which chunks a run covers --------------------------------------------------------

    def select_job_chunks(self, *, shard: tuple[int, int] | None = None, limit: int | None = None) -> int:
        """Fill this connection's job_chunks table: the chunks a run may work on. Returns how many."""
        self.db.execute("CREATE TEMP TABLE IF NOT EXISTS job_chunks (chunk_id TEXT PRIMARY KEY)")
        with self.transaction() as db:
            db.execute("DELETE FROM job_chunks")
            db.executemany("INSERT INTO job_chunks VALUES (?)", ((cid,) for cid in self.chunk_ids(shard=shard, limit=limit)))
        return self.db.execute("SELECT COUNT(*) FROM job_chunks").fetchone()[0]

    def job_chunks_without(self, *, task_hash: str, model: str, step: str) -> Iterator[str]:
        """Job chunks that have no `step` annotation for this task version and teacher model yet."""
        for row in self.db.execute(
            "SELECT chunk_id FROM job_chunks j WHERE NOT EXISTS (SELECT 1 FROM annotations a"
            " WHERE a.chunk_id = j.chunk_id AND a.task_hash = ? AND a.model = ? AND a.step = ? AND a.origin IS NULL)",
            (task_hash, model, step),
        ).fetchall():
            yield row[0]

    def reset_job(self, *, task_hash: str, model: str, statuses: Iterable[str]) -> int:
        """Make the job's records in `statuses` pending again (their last answer stays in calls)."""
        marks = list(statuses)
        if not marks:
            return 0
        return self.db.execute(
            f"UPDATE annotations SET status = 'pending' WHERE task_hash = ? AND model = ? AND origin IS NULL"
            f" AND status IN ({', '.join('?' * len(marks))})"
            " AND chunk_id IN (SELECT chunk_id FROM job_chunks)",
            (task_hash, model, *marks),
        ).rowcount

    def job_pending(self, *, task_hash: str, model: str, after_rowid: int = 0, limit: int = 256,
                    statuses: Collection[str] = ("pending",)) -> list[tuple[int, Annotation]]:
        """The next page of the job's pending annotations (or those in `statuses`), in insertion order."""
        marks = list(statuses)
        rows = self.db.execute(
            "SELECT rowid AS _rowid, * FROM annotations WHERE rowid > ? AND task_hash = ? AND model = ? AND origin IS NULL"
            f" AND status IN ({', '.join('?' * len(marks))}) AND chunk_id IN (SELECT chunk_id FROM job_chunks)"
            " ORDER BY rowid LIMIT ?",
            (after_rowid, task_hash, model, *marks, limit),
        ).fetchall()
        return [(r["_rowid"], _row_to(Annotation, r)) for r in rows]

    def job_count(self, *, task_hash: str, model: str, status: str = "pending") -> int:
        return self.db.execute(
            "SELECT COUNT(*) FROM annotations WHERE task_hash = ? AND model = ? AND status = ? AND origin IS NULL"
            " AND chunk_id IN (SELECT chunk_id FROM job_chunks)",
            (task_hash, model, status),
        ).fetchone()[0]

    def counts(self, *, task_name: str | None = None) -> dict[str, dict[str, Any]]:
        """Per status: records, tokens and cost (the job summary and `status` read this)."""
        sql = (
            "SELECT status, COUNT(*) AS n, SUM(prompt_tokens) AS pt, SUM(completion_tokens) AS ct,"
            " SUM(cost) AS cost FROM annotations"
        )
        args: list[Any] = []
        if task_name:
            sql += " WHERE task_name = ?"
            args.append(task_name)
        sql += " GROUP BY status"
        return {
            r["status"]: {"records": r["n"], "prompt_tokens": r["pt"] or 0, "completion_tokens": r["ct"] or 0, "cost": r["cost"] or 0.0}
            for r in self.db.execute(sql, args)
        }

    def task_names(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT task_name FROM annotations ORDER BY task_name")]

    def totals(self) -> dict[str, int]:
        row = self.db.execute(
            "SELECT (SELECT COUNT(*) FROM documents) AS documents, (SELECT COUNT(*) FROM chunks) AS chunks,"
            " (SELECT COUNT(*) FROM annotations) AS annotations, (SELECT COUNT(*) FROM calls) AS calls"
        ).fetchone()
        return dict(row)

    def spent(self) -> float:
        """Money spent on answered calls, across all jobs in this workspace."""
        return self.db.execute("SELECT COALESCE(SUM(cost), 0) FROM calls WHERE status = 'ok'").fetchone()[0]

    # -- calls: the never-pay-twice ledger -------------------------------------------------

    def answered_call(self, request_hash: str) -> Call | None:
        row = self.db.execute("SELECT * FROM calls WHERE request_hash = ? AND status = 'ok'", (request_hash,)).fetchone()
        return _row_to(Call, row) if row else None

    def claim_call(
        self,
        request_hash: str,
        *,
        owner: str,
        holder_alive: Callable[[str, str], bool],
        annotation_id: str,
        provider: str,
        base_url: str | None,
        model: str,
        request: dict[str, Any],
    ) -> Claim:
        """Atomically take the right to send a request, before it leaves: "claimed" (ours now,
        written as 'sent'), "answered" (someone stored its answer: reuse it), or "held" (another
        live run has it out; `holder_alive(claimed_by, sent_at)` decides who is alive). A call left
        'sent' by a dead run, or failed, is taken over."""
        with self.transaction() as db:
            row = db.execute("SELECT * FROM calls WHERE request_hash = ?", (request_hash,)).fetchone()
            if row is not None and row["status"] == "ok":
                return Claim("answered", _row_to(Call, row))
            if (row is not None and row["status"] == "sent" and row["claimed_by"] not in (None, owner)
                    and holder_alive(row["claimed_by"], row["sent_at"])):
                return Claim("held", _row_to(Call, row))
            db.execute(
                "INSERT INTO calls (request_hash, annotation_id, provider, base_url, model, request, status, sent_at,"
                " claimed_by) VALUES (?, ?, ?, ?, ?, ?, 'sent', ?, ?)"
                " ON CONFLICT(request_hash) DO UPDATE SET status = 'sent', sent_at = excluded.sent_at,"
                " claimed_by = excluded.claimed_by, error_kind = NULL, error = NULL",
                (request_hash, annotation_id, provider, base_url, model, json.dumps(request, ensure_ascii=False),
                 utcnow(), owner),
            )
        return Claim("claimed", None)

    def call_answered(
        self,
        request_hash: str,
        *,
        response: dict[str, Any],
        content: str,
        finish_reason: str | None,
        prompt_tokens: int,
        completion_tokens: int,
        cost: float,
        latency_s: float,
        attempts: int,
    ) -> None:
        self.db.execute(
            "UPDATE calls SET status = 'ok', response = ?, content = ?, finish_reason = ?, prompt_tokens = ?,"
            " completion_tokens = ?, cost = ?, latency_s = ?, attempts = ?, done_at = ? WHERE request_hash = ?",
            (
                json.dumps(response, ensure_ascii=False),
                content,
                finish_reason,
                prompt_tokens,
                completion_tokens,
                cost,
                latency_s,
                attempts,
                utcnow(),
                request_hash,
            ),
        )

    def call_failed(self, request_hash: str, *, kind: str, error: str, attempts: int) -> None:
        self.db.execute(
            "UPDATE calls SET status = 'error', error_kind = ?, error = ?, attempts = ?, done_at = ? WHERE request_hash = ?",
            (kind, error, attempts, utcnow(), request_hash),
        )

    def calls(self, annotation_id: str) -> list[Call]:
        rows = self.db.execute("SELECT * FROM calls WHERE annotation_id = ? ORDER BY sent_at", (annotation_id,))
        return [_row_to(Call, r) for r in rows]

    # -- privacy placeholders ------------------------------------------------------------------

    def placeholder_numbers(self, values: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """The workspace-wide number of each (kind, value); a new value gets the next number of its
        kind, in the order given. Atomic: two runs on one workspace agree on every number."""
        wanted = list(dict.fromkeys(values))
        sql = ("SELECT kind, value, n FROM privacy_placeholders WHERE (kind, value) IN"
               " (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?))")
        arg = (json.dumps(wanted, ensure_ascii=False),)
        numbers = {(r["kind"], r["value"]): r["n"] for r in self.db.execute(sql, arg)}
        if len(numbers) < len(wanted):
            with self.transaction() as db:
                for kind, value in wanted:
                    db.execute(
                        "INSERT OR IGNORE INTO privacy_placeholders (kind, value, n, created_at)"
                        " SELECT ?, ?, COALESCE(MAX(n), 0) + 1, ? FROM privacy_placeholders WHERE kind = ?",
                        (kind, value, utcnow(), kind),
                    )
                numbers = {(r["kind"], r["value"]): r["n"] for r in db.execute(sql, arg)}
        return numbers

    # -- JSONL exchange ---------------------------------------------------------------------

    def lineage(self, ann: Annotation) -> LineageRecord:
        chunk = self.chunk(ann.chunk_id)
        task = self.task(ann.task_hash)
        assert chunk is not None and task is not None  # foreign keys guarantee both
        doc = self.document(chunk.document_id)
        assert doc is not None
        return LineageRecord(annotation=ann, chunk=chunk, document=doc, task=task)

    def import_records(self, records: Iterable[LineageRecord]) -> int:
        """Merge exported lines into this store; annotations already here are kept. Returns new ones."""
        added = 0
        with self.transaction() as db:
            for rec in records:
                db.execute(_insert_sql("documents", Document.model_fields), _columns(rec.document))
                row = _columns(rec.chunk) | {"shard_key": int(rec.chunk.id[:8], 16)}
                db.execute(_insert_sql("chunks", row), row)
                db.execute(_insert_sql("tasks", TaskVersion.model_fields), _columns(rec.task))
                added += db.execute(_insert_sql("annotations", Annotation.model_fields), _columns(rec.annotation)).rowcount
        return added

    # -- qc: flags, judgements, samples, reviews ----------------------------------------------
    # Id lists travel as one JSON array (json_each): no limit on how many, one statement.

    def annotation_count(self, *, task_names: Collection[str], steps: Collection[str], statuses: Collection[str]) -> int:
        return self.db.execute(
            "SELECT COUNT(*) FROM annotations WHERE task_name IN (SELECT value FROM json_each(?))"
            " AND step IN (SELECT value FROM json_each(?)) AND status IN (SELECT value FROM json_each(?))",
            (json.dumps(list(task_names)), json.dumps(list(steps)), json.dumps(list(statuses))),
        ).fetchone()[0]

    def origin_count(self, origin: str) -> int:
        """How many records of this origin (records.Origin) the store holds, whatever their state."""
        return self.db.execute("SELECT COUNT(*) FROM annotations WHERE origin = ?", (origin,)).fetchone()[0]

    def replace_flags(self, flags: Iterable[Flag], *, task_names: Collection[str], kinds: Collection[str]) -> int:
        """Swap in a check run's findings: the `kinds` flags of the tasks' records, in one transaction."""
        with self.transaction() as db:
            db.execute(
                "DELETE FROM flags WHERE kind IN (SELECT value FROM json_each(?)) AND annotation_id IN"
                " (SELECT id FROM annotations WHERE task_name IN (SELECT value FROM json_each(?)))",
                (json.dumps(list(kinds)), json.dumps(list(task_names))),
            )
            sql = _insert_sql("flags", Flag.model_fields, "INSERT OR REPLACE")
            return sum(db.execute(sql, flag.model_dump()).rowcount for flag in flags)

    def flags(self, *, task_names: Collection[str] | None = None) -> dict[str, list[Flag]]:
        """Flags by record id, of the given tasks' records (all when None)."""
        return self._by_annotation("flags", Flag, "kind", task_names)

    def put_judgements(self, judgements: Iterable[Judgement]) -> None:
        sql = _insert_sql("judgements", Judgement.model_fields, "INSERT OR REPLACE")
        with self.transaction() as db:
            for j in judgements:
                db.execute(sql, j.model_dump())

    def judgements(self, *, task_names: Collection[str] | None = None) -> dict[str, list[Judgement]]:
        return self._by_annotation("judgements", Judgement, "created_at", task_names)

    def _by_annotation(self, table: str, model: type[M], order: str, task_names: Collection[str] | None) -> dict[str, list[M]]:
        """Rows of a per-record table grouped by record id, of the given tasks' records (all when None)."""
        sql, args = f"SELECT t.* FROM {table} t", []
        if task_names is not None:
            sql += " JOIN annotations a ON a.id = t.annotation_id WHERE a.task_name IN (SELECT value FROM json_each(?))"
            args.append(json.dumps(list(task_names)))
        out: dict[str, list[M]] = {}
        for row in self.db.execute(f"{sql} ORDER BY t.annotation_id, t.{order}", args):
            out.setdefault(row["annotation_id"], []).append(_row_to(model, row))
        return out

    def create_sample(self, sample: Sample, *, lot: Iterable[str], items: Iterable[tuple[str, str]]) -> Sample:
        """Store a sample with its lot snapshot and its (annotation id, stratum) items in review order."""
        data = sample.model_dump(exclude={"id"})
        for key in ("tasks", "spec", "plan"):
            data[key] = json.dumps(data[key], ensure_ascii=False, sort_keys=True)
        with self.transaction() as db:
            sample_id = db.execute(_insert_sql("samples", data, "INSERT"), data).lastrowid
            db.executemany("INSERT INTO sample_lot VALUES (?, ?)", ((sample_id, a) for a in lot))
            db.executemany(
                "INSERT INTO sample_items VALUES (?, ?, ?, ?)",
                ((sample_id, pos, a, stratum) for pos, (a, stratum) in enumerate(items, 1)),
            )
        return sample.model_copy(update={"id": sample_id})

    def _sample(self, row: sqlite3.Row) -> Sample:
        data = dict(row)
        for key in ("tasks", "spec", "plan"):
            data[key] = json.loads(data[key])
        return Sample(**data)

    def sample(self, name: str) -> Sample | None:
        row = self.db.execute("SELECT * FROM samples WHERE name = ?", (name,)).fetchone()
        return self._sample(row) if row else None

    def samples(self) -> list[Sample]:
        return [self._sample(r) for r in self.db.execute("SELECT * FROM samples ORDER BY id")]

    def sample_items(self, sample_id: int) -> list[SampleItem]:
        rows = self.db.execute("SELECT * FROM sample_items WHERE sample_id = ? ORDER BY position", (sample_id,))
        return [_row_to(SampleItem, r) for r in rows]

    def sample_lot(self, sample_id: int) -> list[str]:
        rows = self.db.execute("SELECT annotation_id FROM sample_lot WHERE sample_id = ? ORDER BY annotation_id", (sample_id,))
        return [r[0] for r in rows]

    def add_review(self, review: Review) -> Review:
        """Record one verdict; committed before this returns (the store runs in autocommit)."""
        data = review.model_dump(exclude={"id"})
        review_id = self.db.execute(_insert_sql("reviews", data, "INSERT"), data).lastrowid
        return review.model_copy(update={"id": review_id})

    def add_reviews(self, reviews: Iterable[Review]) -> int:
        """Record many verdicts all or nothing (a spreadsheet import). Returns how many."""
        added = 0
        with self.transaction() as db:
            for review in reviews:
                data = review.model_dump(exclude={"id"})
                db.execute(_insert_sql("reviews", data, "INSERT"), data)
                added += 1
        return added

    def reviews(
        self,
        *,
        sample_id: int | None = None,
        reviewer: str | None = None,
        annotation_ids: Collection[str] | None = None,
    ) -> list[Review]:
        """Verdicts in the order given (oldest first), filtered."""
        where, args = ["1 = 1"], []
        if sample_id is not None:
            where.append("sample_id = ?")
            args.append(sample_id)
        if reviewer is not None:
            where.append("reviewer = ?")
            args.append(reviewer)
        if annotation_ids is not None:
            where.append("annotation_id IN (SELECT value FROM json_each(?))")
            args.append(json.dumps(list(annotation_ids)))
        rows = self.db.execute(f"SELECT * FROM reviews WHERE {' AND '.join(where)} ORDER BY id", args)
        return [_row_to(Review, r) for r in rows]
