"""Sentence boundaries in Chinese and English text.

The chunker packs whole sentences into chunks; the embedded teacher quotes whole sentences
as its reasoning. Both use this one splitter.
"""

from __future__ import annotations

import re

__all__ = ["split_sentences", "add_stripped"]

_CLOSERS = "”’」』）》】〉\"')\\]"
# A sentence ends after: Chinese terminators (always); . ! ? when followed by
# whitespace, the end or a CJK character (so "3.5" and "example.com" do not end one);
# a newline. Closing quotes and brackets stay with the sentence they close.
_BOUNDARY = re.compile(
    rf"[。！？；…]+[{_CLOSERS}]*"
    rf"|[.!?]+[{_CLOSERS}]*(?=\s|$|[\u3400-\u9fff])"
    r"|\n"
)
_WORD_BEFORE = re.compile(r"[A-Za-z.]+$")
_NEXT_CHAR = re.compile(r"[ \t]*(\S)")
# Abbreviations usually followed by a capitalised word ("Dr. Smith"); those usually
# followed by a lowercase word ("e.g. the", "etc. and") are caught by the case rule.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr vs fig figs vol pp approx inc ltd co corp dept est "
    "jan feb mar apr jun jul aug sep sept oct nov dec gen gov rep sen rev capt col lt sgt".split()
)


def split_sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) spans of the sentences of `text`, in order.

    Each span is stripped of surrounding whitespace and non-empty; together they
    hold every non-whitespace character of `text` exactly once.
    """
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        if match.group().startswith(".") and not _ends_sentence(text, match.start(), match.end()):
            continue
        add_stripped(text, start, match.end(), spans)
        start = match.end()
    add_stripped(text, start, len(text), spans)
    return spans


def _ends_sentence(text: str, dot: int, end: int) -> bool:
    """Whether the '.' at `dot` (its punctuation run ending at `end`) ends a sentence."""
    word = _WORD_BEFORE.search(text, max(0, dot - 20), dot)
    if word:
        word_text = word.group().lstrip(".")
        if "." in word_text or word_text.lower() in _ABBREVIATIONS:
            return False  # "e.g.", "U.S.", "Dr."
        if len(word_text) == 1 and word_text.isupper():
            return False  # an initial: "J. Smith"
    following = _NEXT_CHAR.match(text, end)
    # English sentences start with a capital: ". the" and ". 5" continue the sentence.
    return not (following and (following.group(1).islower() or following.group(1).isdigit()))


def add_stripped(text: str, start: int, end: int, spans: list[tuple[int, int]]) -> None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start < end:
        spans.append((start, end))
