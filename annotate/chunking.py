"""Split document text into sentence-aligned chunks for the teacher.

A chunk is a run of whole sentences (Chinese and English aware) no longer than
`max_size`, measured by any length function (characters by default, or a
tokenizer's token count). Chunks carry character offsets into `SourceDoc.text`
and the pages they span, so every annotation can be traced back to its source.
"""

from __future__ import annotations

import hashlib
import itertools
from bisect import bisect_right
from collections.abc import Callable
from typing import NamedTuple

from annotate.readers import Page
from distillery.sentences import add_stripped, split_sentences

__all__ = ["ChunkSpan", "split_sentences", "chunk_document", "chunk_id"]


class ChunkSpan(NamedTuple):
    text: str
    char_start: int  # offsets into the document text (SourceDoc.text)
    char_end: int
    page_start: int | None  # page numbers of the first / last character; None when not paged
    page_end: int | None


def chunk_document(
    pages: list[Page],
    *,
    max_size: int = 1000,
    overlap: int = 100,
    length: Callable[[str], int] = len,
) -> list[ChunkSpan]:
    """Pack whole sentences of the pages' text (joined by "\\n\\n") into chunks.

    Each chunk is at most `max_size` by `length`, treating length as additive over
    sentences and the whitespace between them (exact for `len`). A sentence longer
    than `max_size` is cut at a comma, else whitespace, else anywhere. A chunk ends early before
    an anchor sentence once it is ANCHOR_FILL full (content-defined boundaries). Each chunk
    after the first starts with the last whole sentences of the one before, as many
    as fit in `overlap` (0: no overlap) while leaving room for at least one new sentence.
    """
    if max_size < 1:
        raise ValueError(f"max_size must be at least 1, got {max_size}")
    if overlap < 0:
        raise ValueError(f"overlap must be at least 0, got {overlap}")
    text = "\n\n".join(page.text for page in pages)
    units: list[tuple[int, int]] = []  # sentences, and pieces of over-long ones
    sizes: list[int] = []  # their lengths, each measured once
    for start, end in split_sentences(text):
        size = length(text[start:end])
        pieces = [(start, end)] if size <= max_size else _fit(text, start, end, max_size, length)
        units.extend(pieces)
        sizes.extend([size] if len(pieces) == 1 else (length(text[s:e]) for s, e in pieces))
    if not units:
        return []
    gap_cache: dict[str, int] = {}

    def gap(i: int) -> int:
        """Length of the whitespace between unit i-1 and unit i."""
        between = text[units[i - 1][1] : units[i][0]]
        if between not in gap_cache:
            gap_cache[between] = length(between) if between else 0
        return gap_cache[between]

    page_starts = []
    offset = 0
    for page in pages:
        page_starts.append(offset)
        offset += len(page.text) + 2

    def page_at(position: int) -> int | None:
        return pages[bisect_right(page_starts, position) - 1].number

    anchors = [_is_anchor(text[s:e]) for s, e in units]
    # reach[i]: the length of units[0..i] with the whitespace between them, so that units[a..b]
    # measure reach[b] - reach[a] + sizes[a] without measuring text again.
    reach = list(itertools.accumulate((gap(i) if i else 0) + size for i, size in enumerate(sizes)))
    chunks: list[ChunkSpan] = []
    first = fresh = 0  # `fresh`: the chunk's first unit that the previous chunk did not hold
    while True:
        last, total = first, sizes[first]  # `last` is inclusive
        while last + 1 < len(units) and total + gap(last + 1) + sizes[last + 1] <= max_size:
            if (anchors[last + 1] and last >= fresh and total >= ANCHOR_FILL * max_size
                    and reach[-1] - reach[first] + sizes[first] > max_size):
                break  # a content-defined boundary (see _is_anchor), unless this chunk can hold the rest
            last += 1
            total += gap(last) + sizes[last]
        start, end = units[first][0], units[last][1]
        chunks.append(ChunkSpan(text[start:end], start, end, page_at(start), page_at(end - 1)))
        if last + 1 == len(units):
            return chunks
        first, fresh = _overlap_start(first, last, sizes, gap, overlap, max_size), last + 1


# Content-defined boundaries. Packing greedily from the start, one sentence changed in a re-issued
# document would shift every later chunk boundary, and every later chunk would be new text to pay
# for. So a chunk that is already ANCHOR_FILL full also ends before an "anchor" sentence, one
# that its own text marks (1 in ANCHOR_EVERY by hash): both versions then break at the same
# anchor after the change, and the chunks after it are identical, hence annotated once.
# A chunk that can hold the rest of the document takes it: a break there would only add a chunk.
# Measured (docs/ingest.md): one sentence inserted or deleted in a 120-paragraph document made
# 6-28 new chunks with greedy packing, 2-7 with anchors; the price is 2% (English) to 18%
# (Chinese, 800-char chunks) more chunks on every document.
ANCHOR_EVERY = 10
ANCHOR_FILL = 0.6


def _is_anchor(sentence: str) -> bool:
    return hashlib.blake2b(sentence.encode("utf-8"), digest_size=4).digest()[0] % ANCHOR_EVERY == 0


def _overlap_start(
    first: int, last: int, sizes: list[int], gap: Callable[[int], int], overlap: int, max_size: int
) -> int:
    """Index of the first unit of the chunk after units[first..last]."""
    following = last + 1
    room = max_size - sizes[following] - gap(following)  # the next chunk must also fit a new unit
    start, carried = following, 0
    # Going back never reaches `first`, so every chunk adds at least one new unit.
    while start - 1 > first:
        extra = sizes[start - 1] + (gap(start) if start < following else 0)
        if carried + extra > min(overlap, room):
            break
        carried += extra
        start -= 1
    return start


_SOFT_BREAKS = "，、,;；："


def _fit(text: str, start: int, end: int, max_size: int, length: Callable[[str], int]) -> list[tuple[int, int]]:
    """Cut the over-long (stripped) sentence text[start:end] into stripped pieces within `max_size`."""
    pieces: list[tuple[int, int]] = []
    while True:
        size = _longest_prefix(text, start, end, max_size, length)
        if start + size == end:
            pieces.append((start, end))
            return pieces
        window = text[start : start + size]
        # Prefer after the last comma, then before the last whitespace, in the window's
        # second half (so no piece is needlessly small); otherwise cut at the limit.
        half = size // 2
        cut = max(window.rfind(mark, half) + 1 for mark in _SOFT_BREAKS)
        if not cut:
            cut = next((i for i in range(size - 1, max(half, 1) - 1, -1) if window[i].isspace()), size)
        add_stripped(text, start, start + cut, pieces)
        start += cut
        while text[start].isspace():  # stops: the sentence ends with a non-space character
            start += 1


def _longest_prefix(text: str, start: int, end: int, max_size: int, length: Callable[[str], int]) -> int:
    """Characters in the longest prefix of text[start:end] within `max_size` (at least 1)."""
    # Gallop, then bisect (length only grows with text): every probe is about as long
    # as the answer, never the whole rest of a huge sentence through a slow tokenizer.
    remaining = end - start
    fits, too_long = 0, remaining + 1
    probe = min(max_size, remaining)
    while fits < remaining and too_long > remaining:
        if length(text[start : start + probe]) <= max_size:
            fits, probe = probe, min(2 * probe, remaining)
        else:
            too_long = probe
    while too_long - fits > 1:
        middle = (fits + too_long) // 2
        if length(text[start : start + middle]) <= max_size:
            fits = middle
        else:
            too_long = middle
    return max(fits, 1)  # one character even if it alone is too long, so that cutting progresses


def chunk_id(document_id: str, text: str) -> str:
    """Stable id of a chunk: the same text of the same document always gets the same id."""
    return hashlib.sha256(f"{document_id}\x00{text}".encode()).hexdigest()[:32]
