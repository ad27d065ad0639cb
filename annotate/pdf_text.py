"""The running text of a typeset PDF: lines rejoined into paragraphs, page furniture removed.

Text comes from PDFium (pypdfium2): fast, good with CJK fonts (embedded or not), and it marks
words it finds hyphenated at a line end. PDFium gives lines in reading order with positions;
what a reader skips is removed here:
- running headers, footers and page numbers: lines in a page's top or bottom margin whose
  text (digits aside) repeats on several pages, or that are only a page number;
- table-of-contents and back-of-book index pages, and dot-leader lines ("Setup ...... 12");
- control and private-use glyphs (symbol-font bullets become "•").
Lines are then joined into paragraphs (annotate.layout), also across page and column breaks,
so that no sentence is cut where the page happened to end. Page numbers stay as metadata.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from typing import NamedTuple

from distillery.sentences import split_sentences

from .layout import ends_sentence, join, starts_item

__all__ = ["PdfLine", "PdfPage", "read_pdf_pages", "clean_pages"]


class PdfLine(NamedTuple):
    text: str
    x0: float  # left of the first character
    x1: float  # right of the last character
    y: float  # baseline of the first character (PDF space: larger is higher on the page)


class PdfPage(NamedTuple):
    number: int  # 1-based
    lines: list[PdfLine]


class PdfError(Exception):
    """The file is not a readable PDF (the reader turns this into a ReadError)."""


def read_pdf_pages(data: bytes) -> tuple[list[PdfPage], dict[str, str]]:
    """The lines of every page, and the document's metadata (title, ...)."""
    import pypdfium2 as pdfium  # imported here: only PDF reading pays for it

    try:
        document = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        raise PdfError(str(exc)) from exc
    try:
        meta = {k.lower(): v.strip() for k, v in document.get_metadata_dict(skip_empty=True).items()}
        pages = []
        for index in range(len(document)):
            page = document[index]
            try:
                pages.append(PdfPage(index + 1, _lines(page.get_textpage())))
            finally:
                page.close()
        return pages, meta
    finally:
        document.close()


def _lines(textpage) -> list[PdfLine]:  # noqa: ANN001 - a pypdfium2 PdfTextPage
    text = textpage.get_text_range()
    lines = []
    # PDFium's text has one character per char index, its own line breaks ("\r\n") included.
    for match in re.finditer(r"[^\r\n]+", text):
        start, end = match.span()
        while start < end and text[start].isspace():
            start += 1
        if start == end:
            continue
        x0, y, _, _ = textpage.get_charbox(start)
        _, _, x1, _ = textpage.get_charbox(end - 1)
        lines.append(PdfLine(text[start:end], x0, x1, y))
    return lines


# ---------------------------------------------------------------- characters

_HYPHEN_MARK = "\ufffe"  # PDFium: "a hyphen at a line end, word continues on the next line"
_GLYPH = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ue000-\uf8ff\ufffd]")
_BULLET_GLYPH = re.compile(r"^\s*[\x80-\x9f\ue000-\uf8ff\ufffd]+\s+")


_MARKED = re.compile(r"(\w+)[\ufffe\x02](\w+)")
_COMPOUND = re.compile(r"\b[^\W\d_]+-[^\W\d_]+\b")


def compounds(pages: list[PdfPage]) -> set[str]:
    """Hyphenated words the document writes within a line ("cross-border"): a line-end hyphen
    inside one of them is part of the word, not hyphenation."""
    return {match.lower() for page in pages for line in page.lines for match in _COMPOUND.findall(line.text)}


def _clean_chars(text: str, known: set[str]) -> str:
    def rejoin(match: re.Match[str]) -> str:
        hyphenated = f"{match[1]}-{match[2]}"
        return hyphenated if hyphenated.lower() in known else match[1] + match[2]

    text = _MARKED.sub(rejoin, text).replace(_HYPHEN_MARK, "").replace("\x02", "")
    # A symbol-font bullet arrives as a private-use or C1 code: it was a bullet; anywhere else, noise.
    text = _BULLET_GLYPH.sub("• ", text)
    return _GLYPH.sub("", text).replace("\xa0", " ").rstrip()


# ---------------------------------------------------------------- page furniture

MARGIN_LINES = 2  # lines at the top and at the bottom of a page that may be running headers/footers
_PAGE_NUMBER = re.compile(
    r"^(?:page|p\.|pp\.|seite|página)?\s*[-–—(\[]?\s*(?:#|[ivx]{1,6})\s*[-–—)\]]?"
    r"(?:\s*(?:/|of|von|de)\s*#)?$"
    r"|^第\s*#\s*页(?:\s*[,，/]?\s*共\s*#\s*页)?$|^#\s*/\s*#$|^-\s*#\s*-$",
    re.IGNORECASE,
)
_DOT_LEADER = re.compile(r"(?:\.\s?){4,}|…{2,}|(?:·\s?){4,}|_{4,}")
_TOC_LINE = re.compile(r"(?:(?:\.\s?){3,}|…{2,}|(?:·\s?){3,}|\s{2,}|\t)\s*[\divxlc]+$", re.IGNORECASE)
_INDEX_LINE = re.compile(r"[,，\s]\s*\d{1,4}(?:\s*[-–]\s*\d{1,4})?(?:\s*[,，]\s*\d{1,4}(?:\s*[-–]\s*\d{1,4})?)*$")


def _key(text: str) -> str:
    """Header identity: the same running header on every page, whatever page number it carries."""
    return re.sub(r"\s+", " ", re.sub(r"\d+", "#", text.lower())).strip()


def _steps(lines: list[PdfLine]) -> list[float]:
    """Vertical distances between successive line heights (same-height lines are columns)."""
    heights = sorted((line.y for line in lines), reverse=True)
    return [a - b for a, b in zip(heights, heights[1:]) if a - b > 1]


def line_spacing(pages: list[PdfPage]) -> float:
    """The body's usual distance between lines, over the whole document (a short page alone cannot tell)."""
    steps = [step for page in pages for step in _steps(page.lines)]
    return statistics.median(steps) if steps else 0.0


def _margin_indexes(lines: list[PdfLine], spacing: float, *, sparse: bool = False) -> set[int]:
    """Lines set apart at the top or the bottom of a page: at most MARGIN_LINES there, with a gap
    wider than the body's line spacing between them and the body. A line of running text is
    never furniture, however often its words repeat. A page of too few lines to tell (a blank
    page with its header and footer) is all margin when `sparse`, else none of it is."""
    order = sorted(range(len(lines)), key=lambda i: -lines[i].y)
    if len(_steps(lines)) < 2 or not spacing:
        return set(order) if sparse else set()
    wide = 1.4 * spacing
    margin: set[int] = set()
    for block in (order, order[::-1]):
        for count in range(1, min(MARGIN_LINES, len(block) - 1) + 1):
            if abs(lines[block[count - 1]].y - lines[block[count]].y) > wide:
                margin.update(block[:count])
                break
    return margin


def _edge_indexes(lines: list[PdfLine], margin: set[int]) -> set[int]:
    """Where a page number stands: the topmost or bottommost line, when it is set apart."""
    if not lines:
        return set()
    order = sorted(range(len(lines)), key=lambda i: -lines[i].y)
    return {order[0], order[-1]} & margin


def furniture_keys(pages: list[PdfPage]) -> set[str]:
    """Keys of margin lines that repeat on several pages: running headers and footers."""
    seen: Counter[str] = Counter()
    spacing = line_spacing(pages)
    for page in pages:
        seen.update({_key(page.lines[i].text) for i in _margin_indexes(page.lines, spacing)})
    needed = 3 if len(pages) >= 3 else 2
    return {key for key, count in seen.items() if count >= needed}


def _is_listing_page(lines: list[str]) -> bool:
    """A table of contents or an index: most lines end in page numbers."""
    if len(lines) < 5:
        return False
    toc = sum(1 for line in lines if _TOC_LINE.search(line) or _DOT_LEADER.search(line))
    index = sum(1 for line in lines if _INDEX_LINE.search(line) and not ends_sentence(line))
    return toc >= 0.5 * len(lines) or index >= 0.6 * len(lines)


class Cleaned(NamedTuple):
    pages: list[tuple[int, str]]  # page number, running text (paragraphs one per line)
    removed_lines: int  # headers, footers, page numbers, dot-leader lines
    listing_pages: list[int]  # table-of-contents / index pages left out


def clean_pages(pages: list[PdfPage]) -> Cleaned:
    furniture = furniture_keys(pages)
    spacing = line_spacing(pages)
    known = compounds(pages)
    removed = 0
    listing: list[int] = []
    kept: list[tuple[int, list[PdfLine]]] = []
    for page in pages:
        margin = _margin_indexes(page.lines, spacing, sparse=True)
        edges = _edge_indexes(page.lines, margin)
        lines = []
        for i, line in enumerate(page.lines):
            text = _clean_chars(line.text, known)
            key = _key(text)
            if not text.strip():
                continue
            if i in margin and key in furniture or i in edges and _PAGE_NUMBER.match(key):
                removed += 1
                continue
            lines.append(line._replace(text=text))
        if _is_listing_page([line.text for line in lines]):
            listing.append(page.number)
            continue
        leaders = [line for line in lines if _DOT_LEADER.search(line.text)]  # a TOC line on a page of text
        removed += len(leaders)
        kept.append((page.number, [line for line in lines if line not in leaders]))
    return Cleaned(_carry_over([_paragraphs(number, lines) for number, lines in kept]), removed, listing)


# ---------------------------------------------------------------- paragraphs


class _Page(NamedTuple):
    number: int
    paragraphs: list[str]
    open_end: bool  # the last line runs to the right edge without ending a sentence: it goes on


def _paragraphs(number: int, lines: list[PdfLine]) -> _Page:
    """Join a page's lines into paragraphs: a line ending short of its column's right edge, a
    wide vertical gap after a sentence end, or a list item starts a new one."""
    if not lines:
        return _Page(number, [], False)
    right = _column_rights(lines)
    gaps = [a.y - b.y for a, b in zip(lines, lines[1:]) if a.y - b.y > 0]
    spacing = statistics.median(gaps) if gaps else 0.0
    paragraphs = [lines[0].text]
    def short(line: PdfLine) -> bool:
        return line.x1 < right[_column(line, right)] - 0.12 * _width(lines)

    for prev, line in zip(lines, lines[1:]):
        gap = prev.y - line.y
        wide_gap = spacing > 0 and gap > 1.6 * spacing
        if short(prev) or starts_item(line.text) or (wide_gap and ends_sentence(prev.text)):
            paragraphs.append(line.text)
        else:
            paragraphs[-1] = join(paragraphs[-1], line.text)
    return _Page(number, paragraphs, not short(lines[-1]) and not ends_sentence(lines[-1].text))


def _width(lines: list[PdfLine]) -> float:
    return max(line.x1 for line in lines) - min(line.x0 for line in lines)


def _column_rights(lines: list[PdfLine]) -> dict[float, float]:
    """Right edge of each text column, keyed by the column's left edge (multi-column pages
    have one per column): the x where most of the column's full lines end."""
    starts = Counter(round(line.x0 / 10) * 10 for line in lines)
    lefts = sorted(x for x, n in starts.items() if n >= max(2, 0.15 * len(lines))) or [min(starts)]
    ends: dict[float, list[float]] = {x: [] for x in lefts}
    for line in lines:
        ends[_nearest_left(line, lefts)].append(line.x1)
    return {x: sorted(v)[int(0.8 * (len(v) - 1))] if v else max(line.x1 for line in lines) for x, v in ends.items()}


def _nearest_left(line: PdfLine, lefts: list[float]) -> float:
    candidates = [x for x in lefts if x <= line.x0 + 10]
    return candidates[-1] if candidates else lefts[0]


def _column(line: PdfLine, right: dict[float, float]) -> float:
    return _nearest_left(line, sorted(right))


def _carry_over(pages: list[_Page]) -> list[tuple[int, str]]:
    """A sentence cut by a page break ends on the page where it started; the rest of its
    paragraph stays on the next page (a new line there is a sentence end, so nothing is cut)."""
    for page, following in zip(pages, pages[1:]):
        if page.open_end and page.paragraphs and following.paragraphs and not starts_item(following.paragraphs[0]):
            head = following.paragraphs[0]
            sentences = split_sentences(head)
            end = sentences[0][1] if sentences else len(head)
            page.paragraphs[-1] = join(page.paragraphs[-1], head[:end])
            rest = head[end:].strip()
            following.paragraphs[:1] = [rest] if rest else []
    return [(page.number, "\n".join(page.paragraphs)) for page in pages]
