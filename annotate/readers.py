"""Read source documents (txt, md, pdf, docx, html, jsonl, csv; each also gzipped) into plain text.

Every reader returns `SourceDoc`s whose text is normalised the same way, so chunk
offsets and chunk ids do not depend on how a file happened to be saved (BOM,
CRLF, trailing spaces). A file that cannot be read raises `ReadError` with a
reason a person can act on; one bad row of a jsonl/csv file is only a warning.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import os
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import charset_normalizer
from pydantic import BaseModel, Field

from distillery.errors import DistilleryError
from distillery.formatting import size

from .layout import unwrap

__all__ = [
    "Page",
    "SourceDoc",
    "ReadError",
    "SUPPORTED_SUFFIXES",
    "UnpackLimits",
    "read_file",
    "read_file_report",
    "read_bytes_report",
    "iter_files",
]


class Page(NamedTuple):
    number: int | None  # 1-based page number for PDFs, None otherwise
    text: str


class SourceDoc(BaseModel):
    """The text of one document, split into pages (one page unless it is a PDF)."""

    path: str  # as given; a jsonl/csv row is "file.jsonl#L3" / "file.csv#R3"; a zip member "a.zip!dir/file.txt"
    kind: str  # "txt" | "md" | "pdf" | "docx" | "html" | "jsonl" | "csv"
    encoding: str | None  # detected text encoding, None for binary formats
    pages: list[Page]
    meta: dict[str, Any] = Field(default_factory=dict)

    @property
    def text(self) -> str:
        # Chunk offsets are into exactly this string: see annotate.chunking.
        return "\n\n".join(page.text for page in self.pages)


class ReadError(DistilleryError):
    """A file that cannot be turned into text; `reason` says what to do about it."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


_KINDS = {
    ".txt": "txt",
    ".text": "txt",
    ".md": "md",
    ".markdown": "md",
    ".pdf": "pdf",
    ".docx": "docx",
    ".html": "html",
    ".htm": "html",
    ".jsonl": "jsonl",
    ".csv": "csv",
}
SUPPORTED_SUFFIXES: frozenset[str] = frozenset(_KINDS)  # each also as "name.txt.gz"; .zip: see annotate.archives


class UnpackLimits(BaseModel):
    """How much one compressed file may unpack to: a zip bomb (kilobytes that unpack to
    gigabytes) becomes a ReadError naming the limit, not an exhausted machine."""

    member_bytes: int = Field(512 * 2**20, ge=1)  # one .gz file, or one member of a .zip
    archive_bytes: int = Field(4 * 2**30, ge=1)  # all the members of one .zip together

# Documents stored in one csv cell easily exceed the csv module's 128 KiB default.
csv.field_size_limit(2**31 - 1)


def read_file(path: Path, *, text_field: str = "text") -> list[SourceDoc]:
    """Read one file: one document, or one per usable jsonl line / csv row."""
    docs, _warnings = read_file_report(path, text_field=text_field)
    return docs


def read_file_report(
    path: Path, *, text_field: str = "text", limits: UnpackLimits | None = None
) -> tuple[list[SourceDoc], list[str]]:
    """Like `read_file`, also returning warnings about skipped jsonl lines / csv rows.
    "name.txt.gz" is unpacked (within `limits.member_bytes`) and read as "name.txt"."""
    path = Path(path)
    _kind(path)  # an unsupported name fails before its bytes are read
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ReadError(path, f"cannot read the file ({exc.strerror or exc})") from exc
    if path.suffix.lower() == ".gz" and data.strip():
        data = _gunzip(path, data, (limits or UnpackLimits()).member_bytes)
    return read_bytes_report(path, data, text_field=text_field)


def read_bytes_report(path: Path, data: bytes, *, text_field: str = "text") -> tuple[list[SourceDoc], list[str]]:
    """`read_file_report` for bytes already in memory (a zip member, an unpacked .gz): `path`
    names them in documents and messages, and its suffix says what they are."""
    path = Path(path)
    kind = _kind(path)
    if not data.strip():
        raise ReadError(path, "empty file")
    if kind == "pdf":
        return _read_pdf(path, data)
    if kind == "docx":
        return [_read_docx(path, data)], []
    text, encoding = _decode(path, data)
    if kind == "jsonl":
        return _read_jsonl(path, text, encoding, text_field)
    if kind == "csv":
        return _read_csv(path, text, encoding, text_field)
    meta: dict[str, Any] = {}
    text = _normalize(text)  # line ends are LF before any rule reads lines
    if kind == "html":
        text, title = _html_text(text)
        if not text:  # a TOC or menu page: a normal part of a site or manual, not a failed file
            return [], [f"{path}: no main content (only navigation, a table of contents or page furniture); skipped"]
        if title:
            meta["title"] = title
    elif kind == "md":
        text = unwrap(_markdown_text(text))
    else:
        text = unwrap(text)  # a line break an editor's fill made is not a sentence end
    return [_single(path, kind, encoding, [Page(None, _normalize(text))], meta)], []


def _kind(path: Path) -> str:
    """The document kind the file name says: "a.txt" and "a.txt.gz" are both txt."""
    suffix = path.suffix.lower()
    inner = Path(path.stem).suffix.lower() if suffix == ".gz" else suffix
    kind = _KINDS.get(inner)
    if kind is not None:
        return kind
    if suffix == ".zip":
        raise ReadError(path, "a .zip archive holds files, not text: ingest it (each member is read as a file)")
    shown = f"{inner}.gz" if suffix == ".gz" and inner else suffix or "(no suffix)"
    supported = ", ".join(sorted(SUPPORTED_SUFFIXES))
    raise ReadError(path, f"unsupported file type {shown!r}; supported: {supported}, each also gzipped (name.txt.gz), "
                          "and .zip archives of them")


def _gunzip(path: Path, data: bytes, limit: int) -> bytes:
    # Read at most one byte past the limit: the size in the gzip trailer is modulo 4 GiB and can
    # lie, so only unpacking tells. Unpacking to the end also checks the CRC.
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as fh:
            out = fh.read(limit + 1)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError; a cut-off file, EOFError
        raise ReadError(path, f"not a readable gzip file ({type(exc).__name__}: {exc}); it may be corrupt or "
                              "cut off: download it again") from exc
    if len(out) > limit:
        raise ReadError(path, f"unpacks to more than {size(limit)}, the limit for one file (a zip bomb?); "
                              "if it is genuine, unpack it yourself and ingest the result")
    return out


def iter_files(paths: Iterable[Path], skipped: list[str] | None = None) -> Iterator[Path]:
    """Yield the given files, and the files under the given directories (sorted). Hidden files
    and folders, and folders reached through a symlink (a link loop would never end), are not
    read; each is described in `skipped`, when given, so the summary can say so."""
    for path in map(Path, paths):
        if not path.is_dir():
            yield path  # a file named explicitly is kept, hidden or not; read_file judges it
            continue
        found: list[Path] = []
        # os.walk does not follow directory symlinks, so a link loop cannot recurse forever.
        for root, dirs, files in os.walk(path):
            for name in dirs:
                if name.startswith("."):
                    _note(skipped, f"{Path(root, name)}/: hidden folder, not read (name its files to ingest them)")
                elif Path(root, name).is_symlink():
                    _note(skipped, f"{Path(root, name)}/: a symlink to a folder, not followed (ingest its target)")
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if name.startswith("."):
                    _note(skipped, f"{Path(root, name)}: hidden file, not read (name it to ingest it)")
                else:
                    found.append(Path(root, name))
        yield from sorted(found, key=lambda p: p.relative_to(path).parts)


def _note(skipped: list[str] | None, what: str) -> None:
    if skipped is not None:
        skipped.append(what)


# ---------------------------------------------------------------- text decoding

# Control characters (tab, newline, CR and form feed aside) and private-use
# characters never appear in real text: their presence means a wrong decoding.
_BAD_CHARS = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ue000-\uf8ff]")


def _decode(path: Path, data: bytes) -> tuple[str, str]:
    # UTF-16 with a BOM (Windows Notepad's "Unicode") is full of NUL bytes: check it first.
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError:
            pass
    if b"\x00" in data[:8192]:
        raise ReadError(path, "binary file (contains NUL bytes), not text; convert it to a text format")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    else:
        return text, "utf-8-sig" if data.startswith(codecs.BOM_UTF8) else "utf-8"
    try:
        text = data.decode("gb18030")
    except UnicodeDecodeError:
        pass
    else:
        if _plausible_chinese(text):
            return text, "gb18030"
    # Last resort (Big5, Shift-JIS, ...). Short single-byte texts often fit several
    # code pages equally well (cp1252 and cp1257 French): a guess would be mojibake,
    # so accept only when every candidate charset_normalizer finds gives the same text.
    # UTF-16/32 without a BOM is its usual wrong guess for short binary data: not trusted.
    matches = [m for m in charset_normalizer.from_bytes(data) if not m.encoding.startswith(("utf_16", "utf_32"))]
    texts = {str(match) for match in matches}
    if len(texts) > 1:
        candidates = ", ".join(match.encoding for match in matches[:4])
        raise ReadError(path, f"cannot tell the text encoding (it could be {candidates}); save it as UTF-8")
    if texts:
        text = texts.pop()
        if not _BAD_CHARS.search(text):
            return text, matches[0].encoding
    raise ReadError(path, "cannot decode the text (not UTF-8 or GB18030/GBK); save it as UTF-8")


def _plausible_chinese(text: str) -> bool:
    # gb18030 decodes most byte strings without error, turning Latin-1 or broken UTF-8
    # into rare CJK characters. Real GBK text is almost all GB2312-area characters
    # (two bytes: lead 0xA1-0xF7, trail 0xA1-0xFE); mojibake is mostly outside it.
    if _BAD_CHARS.search(text):
        return False
    counts = Counter(c for c in text if ord(c) > 0x7F)
    common = sum(n for c, n in counts.items() if _in_gb2312_area(c))
    return common >= 0.9 * sum(counts.values())


def _in_gb2312_area(char: str) -> bool:
    encoded = char.encode("gb18030")
    return len(encoded) == 2 and 0xA1 <= encoded[0] <= 0xF7 and 0xA1 <= encoded[1] <= 0xFE


_BLANK_RUNS = re.compile(r"\n{3,}")


def _normalize(text: str) -> str:
    """NFC, LF line ends, no trailing spaces, at most one blank line in a row."""
    # NFC (not NFKC) so full-width Chinese punctuation stays as written.
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _BLANK_RUNS.sub("\n\n", text).strip("\n")


def _single(path: Path, kind: str, encoding: str | None, pages: list[Page], meta: dict[str, Any]) -> SourceDoc:
    pages = [page for page in pages if page.text.strip()]
    if not pages:
        raise ReadError(path, "empty file")
    return SourceDoc(path=str(path), kind=kind, encoding=encoding, pages=pages, meta=meta)


# ---------------------------------------------------------------- formats


def _read_pdf(path: Path, data: bytes) -> tuple[list[SourceDoc], list[str]]:
    from .pdf_text import PdfError, clean_pages, read_pdf_pages

    try:
        raw_pages, meta = read_pdf_pages(data)
    except PdfError as exc:
        if "password" in str(exc).lower():
            raise ReadError(path, "the PDF is password-protected; save an unprotected copy") from exc
        raise ReadError(path, f"not a readable PDF ({exc}); the file may be corrupt") from exc
    if not raw_pages:
        raise ReadError(path, "the PDF has no pages; the file may be corrupt")
    if not any(page.lines for page in raw_pages):
        raise ReadError(path, "the PDF has no extractable text; it is probably scanned images and needs OCR first")
    cleaned = clean_pages(raw_pages)
    warnings = []
    if cleaned.listing_pages:
        shown = ", ".join(map(str, cleaned.listing_pages))
        warnings.append(f"{path}: pages {shown} left out: a table of contents or an index, not running text")
    doc_meta: dict[str, Any] = {"title": meta["title"]} if meta.get("title") else {}
    if cleaned.removed_lines:
        doc_meta["furniture_lines_removed"] = cleaned.removed_lines
    pages = [Page(number, _normalize(text)) for number, text in cleaned.pages]
    if not any(page.text.strip() for page in pages):  # as an HTML TOC page: part of a manual, not a failure
        return [], [f"{path}: no running text (only a table of contents, an index or page furniture); skipped"]
    return [_single(path, "pdf", None, pages, doc_meta)], warnings


def _read_docx(path: Path, data: bytes) -> SourceDoc:
    import docx
    from docx.table import Table

    # A damaged .docx fails as a zip, an XML or a package error: all mean "unreadable".
    try:
        document = docx.Document(io.BytesIO(data))
        lines: list[str] = []
        for block in document.iter_inner_content():  # paragraphs and tables in body order
            if isinstance(block, Table):
                lines.extend(_table_rows(block))
            else:
                lines.append(block.text)
        title = document.core_properties.title
    except Exception as exc:
        raise ReadError(path, f"not a readable .docx ({type(exc).__name__}: {exc}); the file may be corrupt") from exc
    meta = {"title": title.strip()} if title and title.strip() else {}
    return _single(path, "docx", None, [Page(None, _normalize("\n".join(lines)))], meta)


def _table_rows(table: Any) -> list[str]:
    rows = []
    for row in table.rows:
        cells, seen = [], set()
        for cell in row.cells:
            # A merged cell is returned once per grid column it spans: keep it once.
            if id(cell._tc) not in seen:
                seen.add(id(cell._tc))
                cells.append(" ".join(cell.text.split()))
        rows.append(" | ".join(cells))
    return rows


def _html_text(html: str) -> tuple[str, str | None]:
    from .html_text import html_to_text  # imported here: only HTML reading pays for bs4 and markdownify

    return html_to_text(html)


_MD_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_MD_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_MD_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$", re.MULTILINE)
_MD_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)


def _markdown_text(text: str) -> str:
    # Light cleanup only: what a reader would not see (images, link targets, comments,
    # heading marks) goes; everything else, code included, is kept as written.
    text = _MD_COMMENT.sub("", _MD_IMAGE.sub("", text))
    return _MD_HEADING.sub(r"\1", _MD_LINK.sub(r"\1", text))


def _read_jsonl(path: Path, text: str, encoding: str, text_field: str) -> tuple[list[SourceDoc], list[str]]:
    docs: list[SourceDoc] = []
    warnings: list[str] = []
    # split("\n"), not splitlines(): JSON strings may hold raw U+2028 and friends.
    for number, line in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            warnings.append(f"{path} line {number}: not valid JSON ({exc})")
            continue
        if not isinstance(record, dict):
            warnings.append(f"{path} line {number}: not a JSON object")
            continue
        doc = _row_doc(path, f"#L{number}", "jsonl", encoding, record, text_field)
        if isinstance(doc, str):
            warnings.append(f"{path} line {number}: {doc}")
        else:
            docs.append(doc)
    if not docs:
        raise ReadError(path, f"no line has a non-empty {text_field!r} field" + _first(warnings))
    return docs, warnings


def _read_csv(path: Path, text: str, encoding: str, text_field: str) -> tuple[list[SourceDoc], list[str]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = reader.fieldnames or []
    if text_field not in columns:
        raise ReadError(path, f"no {text_field!r} column; columns found: {', '.join(columns)}")
    docs: list[SourceDoc] = []
    warnings: list[str] = []
    try:
        for number, row in enumerate(reader, start=1):
            row.pop(None, None)  # cells beyond the header have no column name
            doc = _row_doc(path, f"#R{number}", "csv", encoding, row, text_field)
            if isinstance(doc, str):
                warnings.append(f"{path} row {number}: {doc}")
            else:
                docs.append(doc)
    except csv.Error as exc:
        raise ReadError(path, f"malformed CSV near line {reader.line_num} ({exc})") from exc
    if not docs:
        raise ReadError(path, f"no row has a non-empty {text_field!r} value" + _first(warnings))
    return docs, warnings


def _row_doc(
    path: Path, anchor: str, kind: str, encoding: str, record: dict[str, Any], text_field: str
) -> SourceDoc | str:
    """The record's document, or why it has none."""
    value = record.get(text_field)
    if value is None:
        return f"no {text_field!r} field"
    if not isinstance(value, str):
        return f"{text_field!r} is a {type(value).__name__}, not a string"
    text = _normalize(value)
    if not text.strip():
        return f"{text_field!r} is empty"
    # Only scalars: nested values would not round-trip through the store's metadata as-is.
    meta = {k: v for k, v in record.items() if k != text_field and isinstance(v, str | int | float | bool | None)}
    return SourceDoc(path=f"{path}{anchor}", kind=kind, encoding=encoding, pages=[Page(None, text)], meta=meta)


def _first(warnings: list[str]) -> str:
    return f" (first problem: {warnings[0]})" if warnings else ""
