"""Text measures that work on Chinese as well as English.

Chinese has no spaces, so anything word-based (ROUGE's tokenizer, word shingles, "first
character is ASCII" filters) silently fails on it. Here Chinese is measured by characters:
Han bigrams stand in for words, character n-grams for shingles.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from typing import Literal

from ftfy import fix_text
from ftfy.badness import BADNESS_RE

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_HAN_RUN = re.compile(f"[{_HAN}]+")
_HAN_CHAR = re.compile(f"[{_HAN}]")
_LATIN_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
# Function words carry no grounding: sharing "the" with the source proves nothing.
_EN_STOP = frozenset(
    ["a", "an", "and", "are", "as", "at", "be", "been", "but", "by", "for", "from", "has", "have", "in", "is", "it", "its", "of", "on", "or", "that", "the", "this", "to", "was", "were", "which", "with", "not", "no", "can", "may", "will", "would", "should", "also", "than", "then", "there", "these", "those", "they", "their", "what", "who"]
)
# Decoding damage. Control characters other than tab and newlines, and private-use code points
# (a PDF's symbol-font glyphs): no answer should carry them.
_CONTROL_OR_PRIVATE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ue000-\uf8ff]")
# What UTF-8 bytes read as GBK leave behind: U+FFFD written as UTF-8 then read as GBK; MSVC's
# fill bytes for uninitialised memory (0xCC, 0xCD) read as GBK.
_GBK_MARKERS = ("锟斤拷", "烫烫烫", "屯屯屯")
_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]{2,}")
_MIN_RECOVERED_HAN = 3  # Han characters a run must turn back into: genuine GBK text almost never does
# Language is decided when one script has at least this share of the text's words.
_DOMINANT = 0.7
_HAN_PER_WORD = 1.5  # a Chinese word is about 1.5 characters: counts both scripts in words


@functools.lru_cache(maxsize=16)  # a check normalizes one answer for several measures
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


def _utf8_read_as_gbk(text: str) -> tuple[str, str] | None:
    """A run of the text that is UTF-8 bytes decoded as GBK, with what it said: (run, reading).

    Encoding genuine Chinese back to GBK gives bytes that are almost never valid UTF-8; encoding
    mojibake back gives the original UTF-8, so the run decodes to Chinese again.
    """
    for run in _NON_ASCII_RUN.findall(text):
        try:
            raw = run.encode("gbk")
        except UnicodeEncodeError:  # characters GBK lacks: these were never GBK-decoded bytes
            continue
        reading = raw.decode("utf-8", errors="replace")
        recovered = len(_HAN_CHAR.findall(reading))
        if recovered >= _MIN_RECOVERED_HAN and recovered > 2 * reading.count("\ufffd"):
            return run, reading
    return None


def _snippet(text: str, start: int, end: int, around: int = 8) -> str:
    return text[max(0, start - around) : end + around].strip()


def decoding_damage(text: str) -> str | None:
    """What shows that the text passed through a wrong decoding, in words; None when nothing does.

    U+FFFD (bytes a decoder could not read), control and private-use characters, UTF-8 read as GBK
    (the Chinese mojibake), and UTF-8 read as Latin-1/cp1252 and kin (ftfy's detector).
    """
    if n := text.count("\ufffd"):
        return f"{n} U+FFFD replacement character{'s' if n > 1 else ''} (bytes lost in decoding)"
    if marker := next((m for m in _GBK_MARKERS if m in text), None):
        return f"'{marker}': bytes read with the wrong encoding (UTF-8 as GBK)"
    if m := _CONTROL_OR_PRIVATE.search(text):
        what = "private-use" if m.group() >= "\ue000" else "control"
        return f"{what} character U+{ord(m.group()):04X} near '{_snippet(text, m.start(), m.end()).replace(m.group(), '?')}'"
    if found := _utf8_read_as_gbk(text):
        run, reading = found
        return f"'{run[:20]}' is UTF-8 read as GBK (it said '{reading[:20]}')"
    if m := BADNESS_RE.search(text):
        bad = _snippet(text, m.start(), m.end())
        return f"'{bad}' is mojibake (it said '{fix_text(bad, uncurl_quotes=False)}')"
    return None


def repeated_line(text: str, *, min_chars: int = 4) -> tuple[str, int] | None:
    """The line the text repeats most, and how often (lines of fewer than min_chars letters, digits
    or Han characters, such as '---' or '}', do not count); None when no line repeats."""
    lines = [line.strip() for line in text.splitlines()]
    repeats = [(n, line) for line, n in Counter(lines).items() if n > 1 and len(normalize(line)) >= min_chars]
    if not repeats:
        return None
    n, line = max(repeats)
    return line, n


def self_repetition(text: str, *, window: int = 10) -> float:
    """Share of the text's `window`-character stretches (normalized) that already occurred earlier
    in it: ~0 for written text, most of it for a model that loops. Under three windows long: 0."""
    norm = normalize(text)
    n = len(norm) - window + 1
    if n < 2 * window:
        return 0.0
    return 1 - len({norm[i : i + window] for i in range(n)}) / n


def most_repeated(text: str, *, window: int = 10) -> tuple[str, int]:
    """The `window`-character stretch (normalized) the text repeats most, and how often."""
    norm = normalize(text)
    return Counter(norm[i : i + window] for i in range(len(norm) - window + 1)).most_common(1)[0]


def echoed_heading(text: str, headings: list[str]) -> str | None:
    """The first line of the text that is one of the prompt's headings ('## 目标', '示例：'), as a
    heading: the line is the heading, or its words marked up as one ('# Goal', 'Goal:', '**目标**')."""
    words = {_heading_words(h): h for h in headings}
    for line in text.splitlines():
        line = line.strip()
        marked = line.startswith(("#", "**")) or line.endswith((":", "：", "**"))
        if line in headings or (marked and _heading_words(line) in words):
            return line
    return None


def _heading_words(line: str) -> str:
    return line.strip().strip("#*:： \t").strip().casefold()
