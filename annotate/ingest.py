"""Ingest: files -> documents -> chunks in the store. One bad file never sinks the batch, but
the report says the batch is partial (`IngestReport.require_complete`)."""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from distillery import near_dup
from distillery.errors import DistilleryError
from distillery.records import Chunk, Document
from distillery.store import Store

from .archives import ZipArchive, is_zip
from .chunking import chunk_document, chunk_id
from .readers import ReadError, SourceDoc, UnpackLimits, iter_files, read_file_report

# Documents are stored this many chunks a transaction: a commit writes every page it touched, and the
# near-duplicate index's inserts land on random pages, so per-document commits would write each
# such page once a document. A stopped ingest loses at most this much work: running it again skips
# what is stored.
CHUNKS_PER_COMMIT = 1000


class ChunkingConfig(BaseModel):
    max_size: int = Field(800, ge=16)
    overlap: int = Field(80, ge=0)
    unit: Literal["chars", "tokens"] = "chars"
    tokenizer: str | None = None  # model dir whose tokenizer measures "tokens"; None => embedded model
    # A chunk this similar to a stored one (Jaccard of 5-character shingles, and no passage of over
    # near_dup.MAX_EDIT characters changed) is linked to it and not annotated; 1.0: the same text only.
    near_duplicate: float = Field(near_dup.DEFAULT_THRESHOLD, ge=near_dup.MIN_THRESHOLD, le=1.0)


class FileFailure(BaseModel):
    path: str
    reason: str


class PartialIngest(DistilleryError):
    """Some files could not be read; the others are ingested."""


class IngestReport(BaseModel):
    files: int = 0  # files read or tried; each member of a .zip counts as one
    documents_new: int = 0
    documents_seen: int = 0  # already in the store from an earlier ingest
    chunks_new: int = 0
    # Of those, linked to a stored chunk and never sent: the same text, or nearly (near_duplicate).
    chunks_exact_duplicate: int = 0
    chars_exact_duplicate: int = 0
    chunks_near_duplicate: int = 0
    chars_near_duplicate: int = 0
    failures: list[FileFailure] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)

    def require_complete(self, accept: str) -> None:
        """Raise PartialIngest when any file failed; `accept` says how to go on without them."""
        if not self.failures:
            return
        named = ", ".join(f.path for f in self.failures[:3])
        if len(self.failures) > 3:
            named += f" and {len(self.failures) - 3} more"
        raise PartialIngest(
            f"{len(self.failures)} of {self.files} files failed ({named}; each reason is above), the rest is ingested. "
            "Fix or remove them and run the same command again (what is ingested already is skipped), "
            f"or go on without them: {accept}"
        )


def length_function(config: ChunkingConfig) -> Callable[[str], int]:
    if config.unit == "chars":
        return len
    from transformers import AutoTokenizer  # the model extra; only needed for token units

    from distillery.runtime import embedded_model_dir

    tokenizer = AutoTokenizer.from_pretrained(config.tokenizer or embedded_model_dir())
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


def document_id(source: SourceDoc) -> str:
    # Content, not path: the same file ingested twice (or under a new name) is one document.
    # A jsonl/csv row is a record of its file (its other fields are its meta): the same text on
    # two rows is two documents, each with its own fields. The path is resolved, so ingesting
    # from another folder adds nothing; that two such documents are annotated once is the
    # chunk-level dedup's job.
    key = source.text
    if source.kind in ("jsonl", "csv"):
        key += "\x00" + str(Path(source.path).resolve())
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def to_records(source: SourceDoc, config: ChunkingConfig, length: Callable[[str], int]) -> tuple[Document, list[Chunk]]:
    doc_id = document_id(source)
    doc = Document(
        id=doc_id,
        path=source.path,
        kind=source.kind,
        encoding=source.encoding,
        n_chars=len(source.text),
        n_pages=len(source.pages) if source.kind == "pdf" else None,
        meta=source.meta,
    )
    spans = chunk_document(source.pages, max_size=config.max_size, overlap=config.overlap, length=length)
    chunks = [
        Chunk(
            id=chunk_id(doc_id, span.text),
            document_id=doc_id,
            seq=seq,
            text=span.text,
            char_start=span.char_start,
            char_end=span.char_end,
            page_start=span.page_start,
            page_end=span.page_end,
            size=length(span.text),
        )
        for seq, span in enumerate(spans)
    ]
    return doc, chunks


Read = Callable[[], tuple[list[SourceDoc], list[str]]]


def ingest(
    store: Store,
    paths: Iterable[Path],
    *,
    config: ChunkingConfig | None = None,
    text_field: str = "text",
    limits: UnpackLimits | None = None,
    on_file: Callable[[Path], None] | None = None,
) -> IngestReport:
    """Read every file under `paths` (and every member of a .zip), chunk it and store it;
    failures are reported per file."""
    config = config or ChunkingConfig()
    limits = limits or UnpackLimits()
    length = length_function(config)
    report = IngestReport()
    pending: dict[str, tuple[Document, list[Chunk]]] = {}  # read, not yet stored
    pending_chunks = 0

    def store_pending() -> None:
        nonlocal pending_chunks
        report.chunks_new += store.add_documents(list(pending.values()), near_duplicate=config.near_duplicate)
        linked = store.duplicate_chunks(pending.keys())
        report.chunks_exact_duplicate += linked.exact
        report.chars_exact_duplicate += linked.exact_chars
        report.chunks_near_duplicate += linked.near
        report.chars_near_duplicate += linked.near_chars
        report.documents_new += len(pending)
        pending.clear()
        pending_chunks = 0

    def add(path: Path, read: Read) -> None:
        nonlocal pending_chunks
        report.files += 1
        if on_file:
            on_file(path)
        try:
            with library_output(path) as printed:
                sources, notes = read()
        except ReadError as exc:
            report.failures.append(FileFailure(path=str(path), reason=exc.reason))
            return
        except Exception as exc:  # a reader library crashing on a hostile file must not end the batch
            report.failures.append(FileFailure(path=str(path), reason=f"unexpected error while reading: {exc!r}"))
            return
        finally:
            report.warnings += printed
        report.warnings += notes
        for source in sources:
            doc, chunks = to_records(source, config, length)
            if doc.id in pending or store.document(doc.id) is not None:
                # Stored with its chunks in one transaction: chunking it again (say with another
                # max_size) would add a second set of chunks of the same text to pay for.
                report.documents_seen += 1
                continue
            pending[doc.id] = doc, chunks
            pending_chunks += len(chunks)
            if pending_chunks >= CHUNKS_PER_COMMIT:
                store_pending()

    for path in iter_files(paths, skipped=report.warnings):
        if not is_zip(path):
            add(path, partial(read_file_report, path, text_field=text_field, limits=limits))
            continue
        try:
            archive = ZipArchive(path, limits)
        except ReadError as exc:
            report.files += 1
            report.failures.append(FileFailure(path=str(path), reason=exc.reason))
            continue
        with archive:
            report.warnings += archive.skipped
            for member in archive.members:
                add(member.path, partial(archive.read, member, text_field=text_field))
    if pending:
        store_pending()
    return report


@contextmanager
def library_output(path: Path) -> Iterator[list[str]]:
    """Collect what reader libraries say while reading `path` (the Python warnings that the filters
    in force would print, and log records of WARNING and up, e.g. pypdf's), as report warnings
    instead of raw lines on stderr. A message repeated (pypdf can log one per object) is one line
    with its count."""
    said: list[str] = []
    lines: list[str] = []
    root = logging.getLogger()
    handlers, root.handlers = root.handlers, [_Collect(said)]  # libraries' loggers propagate here
    try:
        with warnings.catch_warnings(record=True) as caught:
            yield lines
    finally:
        root.handlers = handlers
        said += [f"{w.category.__name__}: {w.message}" for w in caught]
        lines += [f"{path}: {line}" + (f" ({n} times)" if n > 1 else "") for line, n in Counter(said).items()]


class _Collect(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(f"{record.name.split('.')[0]} {record.levelname.lower()}: {record.getMessage()}")
        except Exception:  # a malformed log call must not fail the file
            self.handleError(record)
