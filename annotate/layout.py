"""Lines back into sentences: the layout rules PDF and hard-wrapped text share.

A chunk boundary falls between sentences, and the chunker reads a newline as a sentence end. A
line break that a typesetter or an editor made (PDF lines, text wrapped at 72 columns) is not
one, so lines are joined back into paragraphs first: without a space between CJK characters,
with English hyphenation undone, and a paragraph ending where a line ends short or a list item
begins.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["join", "ends_sentence", "starts_item", "is_wide", "display_width", "unwrap"]

_TERMINAL = ".!?。！？…:：;；"
_CLOSERS = "”’」』）》】〉\"')]"
# A list item or numbered heading starts a paragraph of its own: "- x", "• x", "1. x", "(a) x", "一、x", "第三条 x".
_ITEM = re.compile(
    r"^\s*(?:[-*•·●○▪◦–—]\s|\(?\d{1,3}[.)、]\s?|\(?[a-zA-Z][.)]\s|[一二三四五六七八九十]+、|（[一二三四五六七八九十\d]+）"
    r"|第[一二三四五六七八九十百零\d]+[章节条款部分篇]\s?)"
)


def is_wide(char: str) -> bool:
    """CJK ideographs, kana, hangul and full-width punctuation: written without spaces between them."""
    return unicodedata.east_asian_width(char) in ("W", "F")


def display_width(text: str) -> float:
    """Columns the text takes in a terminal or an editor: CJK characters count two. Measured by
    UTF-8 length (CJK is 3 bytes, ASCII 1): exact for both, close for the rest, and computed in C,
    which matters because every line of every text file is measured."""
    return (len(text) + len(text.encode("utf-8", "surrogatepass"))) / 2


def ends_sentence(line: str) -> bool:
    stripped = line.rstrip().rstrip(_CLOSERS)
    return bool(stripped) and stripped[-1] in _TERMINAL


def starts_item(line: str) -> bool:
    return bool(_ITEM.match(line))


def join(left: str, right: str) -> str:
    """Two consecutive lines of one paragraph as one line."""
    left, right = left.rstrip(), right.lstrip()
    if not left or not right:
        return left or right
    # "informa-" + "tion": a word hyphenated at the line end (a letter on both sides, lower case after).
    if left.endswith("-") and len(left) > 1 and left[-2].isalpha() and right[0].islower():
        return left[:-1] + right
    if is_wide(left[-1]) or is_wide(right[0]):
        return left + right
    return f"{left} {right}"


_FENCE = re.compile(r"^\s*(```|~~~)")
_STRUCTURE = re.compile(r"^\s*(?:#{1,6}\s|\||>|```|~~~)")


def unwrap(text: str) -> str:
    """Rejoin the lines of hard-wrapped text (lines cut at a fixed width) into paragraphs.

    Text that is not hard-wrapped comes back unchanged: a file whose lines are paragraphs must
    keep them. Markdown structure (headings, tables, quotes, fenced code) and indented lines
    (code, verse) are never joined; a list item starts a new paragraph and takes its wrapped
    continuation lines.
    """
    lines = text.split("\n")
    measured = [display_width(line) for line in lines]
    widths = sorted(w for w, line in zip(measured, lines) if line.strip())
    if len(widths) < 4:
        return text
    wrap = widths[int(0.95 * (len(widths) - 1))]
    near = [line for w, line in zip(measured, lines) if line.strip() and w >= 0.7 * wrap]
    open_ends = sum(1 for line in near if not ends_sentence(line))
    # Hard-wrapped: a fixed wrap width an editor would pick, most lines close to it, and many of
    # those ending mid-sentence (a file of one sentence or one record per line is not wrapped).
    if not (40 <= wrap <= 160 and len(near) >= 0.5 * len(widths) and open_ends >= 0.3 * len(near)):
        return text
    out: list[str] = []
    in_code = False
    joinable = False  # whether the last output line is prose that the next line may continue
    for line, width in zip(lines, measured):
        if _FENCE.match(line):
            in_code = not in_code
        if in_code or _FENCE.match(line) or _STRUCTURE.match(line) or not line.strip():
            out.append(line)
            joinable = False
            continue
        indented = line.startswith((" ", "\t")) and not (out and joinable and starts_item(out[-1]))
        if joinable and not indented and not starts_item(line):
            out[-1] = join(out[-1], line)
        else:
            out.append(line)
        # A line that ends well short of the wrap width ended its paragraph.
        joinable = not indented and width >= 0.7 * wrap
    return "\n".join(out)
