"""Text measures that work on Chinese as well as English.

Chinese has no spaces, so anything word-based (ROUGE's tokenizer, word shingles, "first
character is ASCII" filters) silently fails on it. Here Chinese is measured by characters:
Han bigrams stand in for words, character n-grams for shingles.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_HAN_RUN = re.compile(f"[{_HAN}]+")
_HAN_CHAR = re.compile(f"[{_HAN}]")
_LATIN_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
# Function words carry no grounding: sharing "the" with the source proves nothing.
_EN_STOP = frozenset(
    ["a", "an", "and", "are", "as", "at", "be", "been", "but", "by", "for", "from", "has", "have", "in", "is", "it", "its", "of", "on", "or", "that", "the", "this", "to", "was", "were", "which", "with", "not", "no", "can", "may", "will", "would", "should", "also", "than", "then", "there", "these", "those", "they", "their", "what", "who"]
)
# Language is decided when one script has at least this share of the text's words.
_DOMINANT = 0.7
_HAN_PER_WORD = 1.5  # a Chinese word is about 1.5 characters: counts both scripts in words


def normalize(text: str) -> str:
    """NFKC, case-folded, without whitespace, punctuation or symbols: what near-duplicates share."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in text if unicodedata.category(ch)[0] not in "PZSC")


def shingles(text: str, k: int) -> set[str]:
    """Character k-grams of the normalized text."""
    return grams(normalize(text), k)


def grams(norm: str, k: int) -> set[str]:
    """Character k-grams of an already normalized text. A text shorter than k is its own single
    shingle, so short texts compare by equality instead of all colliding on the empty set."""
    if len(norm) <= k:
        return {norm} if norm else set()
    return {norm[i : i + k] for i in range(len(norm) - k + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def language(text: str) -> Literal["zh", "en"] | None:
    """The text's language when one script clearly dominates; None for mixed, other or tiny texts."""
    han = len(_HAN_CHAR.findall(text)) / _HAN_PER_WORD
    latin = len(_LATIN_WORD.findall(unicodedata.normalize("NFKC", text).lower()))
    if han + latin < 3:
        return None
    if han / (han + latin) >= _DOMINANT:
        return "zh"
    if latin / (han + latin) >= _DOMINANT:
        return "en"
    return None


def content_tokens(text: str) -> set[str]:
    """Han bigrams (a lone Han character stands alone), English content words, and numbers."""
    text = unicodedata.normalize("NFKC", text).lower()
    tokens: set[str] = set()
    for run in _HAN_RUN.findall(text):
        tokens.update(run[i : i + 2] for i in range(max(1, len(run) - 1)))
    tokens.update(w for w in _LATIN_WORD.findall(text) if len(w) > 1 and w not in _EN_STOP)
    tokens.update(_NUMBER.findall(text))
    return tokens


def overlap_share(text: str, source: str, *, min_tokens: int = 1) -> float | None:
    """Share of the text's content tokens that also occur in the source (None: too few tokens)."""
    tokens = content_tokens(text)
    if len(tokens) < max(1, min_tokens):
        return None
    return len(tokens & content_tokens(source)) / len(tokens)


def shared_spans(source: str, text: str, k: int = 4) -> list[tuple[int, int]]:
    """Character spans of `source` that also occur in `text` (runs of k or more characters,
    case-insensitive): the part of a chunk an answer quotes or paraphrases closely."""
    low_src, low_text = source.casefold(), text.casefold()
    if len(low_src) != len(source):  # casefold changed lengths (ß): positions would drift
        low_src, low_text = source, text
    grams = {low_text[i : i + k] for i in range(len(low_text) - k + 1)}
    spans: list[tuple[int, int]] = []
    for i in range(len(low_src) - k + 1):
        if low_src[i : i + k] in grams and not low_src[i : i + k].isspace():
            if spans and spans[-1][1] >= i:
                spans[-1] = (spans[-1][0], i + k)
            else:
                spans.append((i, i + k))
    return spans
