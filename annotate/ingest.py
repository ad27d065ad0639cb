"""Ingest: files -> documents -> chunks in the store. One bad file never sinks the batch."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from distillery.records import Chunk, Document
from distillery.store import Store

from .chunking import chunk_document, chunk_id
from .readers import ReadError, SourceDoc, iter_files, read_file_report


class ChunkingConfig(BaseModel):
    max_size: int = Field(800, ge=16)
    overlap: int = Field(80, ge=0)
    unit: Literal["chars", "tokens"] = "chars"
    tokenizer: str | None = None  # model dir whose tokenizer measures "tokens"; None => embedded model


class FileFailure(BaseModel):
    path: str
    reason: str


class IngestReport(BaseModel):
    files: int = 0
    documents_new: int = 0
    documents_seen: int = 0  # already in the store from an earlier ingest
    chunks_new: int = 0
    failures: list[FileFailure] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)


def length_function(config: ChunkingConfig) -> Callable[[str], int]:
    if config.unit == "chars":
        return len
    from transformers import AutoTokenizer  # the model extra; only needed for token units

    from distillery.runtime import embedded_model_dir

    tokenizer = AutoTokenizer.from_pretrained(config.tokenizer or embedded_model_dir())
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


def document_id(source: SourceDoc) -> str:
    # Content, not path: the same file ingested twice (or under a new name) is one document.
    return hashlib.sha256(source.text.encode("utf-8")).hexdigest()[:32]


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


def ingest(
    store: Store,
    paths: Iterable[Path],
    *,
    config: ChunkingConfig | None = None,
    text_field: str = "text",
    on_file: Callable[[Path], None] | None = None,
) -> IngestReport:
    """Read every file under `paths`, chunk it and store it; failures are reported per file."""
    config = config or ChunkingConfig()
    length = length_function(config)
    report = IngestReport()
    for path in iter_files(paths, skipped=report.warnings):
        report.files += 1
        if on_file:
            on_file(path)
        try:
            sources, warnings = read_file_report(path, text_field=text_field)
        except ReadError as exc:
            report.failures.append(FileFailure(path=str(path), reason=exc.reason))
            continue
        except Exception as exc:  # a reader library crashing on a hostile file must not end the batch
            report.failures.append(FileFailure(path=str(path), reason=f"unexpected error while reading: {exc!r}"))
            continue
        report.warnings += warnings
        for source in sources:
            doc, chunks = to_records(source, config, length)
            is_new = store.document(doc.id) is None
            report.chunks_new += store.add_document(doc, chunks)
            report.documents_new += is_new
            report.documents_seen += not is_new
    return report
