"""HTML extraction: content lost, boilerplate kept and speed, on the fixture pages of tests/fixtures/html.

    .venv/bin/python bench/html_extract.py            # fixtures x50, one large page
    .venv/bin/python bench/html_extract.py --n 200

For each extractor: characters of gold content missing from its output (a sentence counts as lost
unless it appears verbatim: a space put between two CJK characters loses it), characters of
boilerplate in its output (navigation/TOC strings, plus content repeated, as a TOC repeats the
headings) as a share of the output, and extraction speed. Compared: annotate.html_text (ours), the
extractor it replaced (kept below as the baseline), and trafilatura and readability-lxml +
markdownify where installed (`pip install trafilatura readability-lxml`; not project dependencies).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

from annotate.html_text import html_to_text
from annotate.readers import _normalize

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "html"


def old_html_text(html: str) -> str:
    """annotate.readers._html_text before issue #15: every block flattened to one line."""
    from bs4 import BeautifulSoup
    from bs4.element import PreformattedString

    brk = "\x00"
    soup = BeautifulSoup(html.replace(brk, ""), "html.parser")
    for tag in soup.find_all(["script", "style", "nav", "noscript", "template", "head", "svg"]):
        tag.decompose()
    for pre in soup.find_all("pre"):
        for string in pre.find_all(string=True):
            string.replace_with(string.replace("\n", brk))
    blocks = ["p", "div", "section", "article", "main", "header", "footer", "aside", "blockquote", "pre", "h1", "h2",
              "h3", "h4", "h5", "h6", "ul", "ol", "li", "dl", "dt", "dd", "table", "tr", "figure", "figcaption", "form",
              "hr", "br", "address", "details", "summary"]  # fmt: skip
    for tag in soup.find_all(blocks):
        tag.insert_before(brk)
        tag.insert_after(brk)
    for cell in soup.find_all(["td", "th"]):
        cell.insert_after(" ")
    strings = (s for s in soup.find_all(string=True) if not isinstance(s, PreformattedString))
    text = re.sub(r"\s+", " ", "".join(strings))
    return "\n".join(line for line in (line.strip() for line in text.split(brk)) if line)


def trafilatura_text(html: str) -> str:
    import trafilatura

    return trafilatura.extract(html, output_format="markdown", include_tables=True, include_formatting=True) or ""


def readability_text(html: str) -> str:
    from markdownify import markdownify
    from readability import Document

    return markdownify(Document(html).summary(html_partial=True), heading_style="ATX", escape_underscores=False,
                       escape_asterisks=False, strip=["a", "img"])  # fmt: skip


EXTRACTORS: dict[str, Callable[[str], str]] = {
    "annotate.html_text": lambda html: html_to_text(html).text,
    "old _html_text": old_html_text,
    "trafilatura 2 (markdown)": trafilatura_text,
    "readability + markdownify": readability_text,
}


def score(extract: Callable[[str], str], pages: dict[str, str], gold: dict[str, dict]) -> tuple[int, int, int]:
    """(content characters lost, boilerplate characters kept, output characters) over all pages."""
    lost = kept = total = 0
    for name, html in pages.items():
        out = _normalize(extract(html))
        wanted = gold[name]["content"] + gold[name]["code"]
        lost += sum(len(s) for s in wanted if s not in out)
        kept += sum(len(s) * out.count(s) for s in gold[name]["boilerplate"])
        kept += sum(len(s) * (out.count(s) - 1) for s in gold[name]["content"] if out.count(s) > 1)
        total += len(out)
    return lost, kept, total


def seconds(extract: Callable[[str], str], pages: list[str], n: int, rounds: int = 5) -> float:
    """Time for n passes over the pages: the fastest of `rounds` runs, x n, so that other work
    on a shared machine inflates the figure as little as it can."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(max(1, n // rounds)):
            for html in pages:
                extract(html)
        best = min(best, time.perf_counter() - start)
    return best * n / max(1, n // rounds)


def large_page(chapter: str, copies: int) -> str:
    """The DocBook chapter with its body repeated: about the size of a long real manual chapter."""
    head, rest = chapter.split('<div class="chapter">', 1)
    body, tail = rest.rsplit('<div class="navfooter">', 1)
    return head + '<div class="chapter">' + body * copies + '<div class="navfooter">' + tail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50, help="times each fixture page is extracted for the timing")
    parser.add_argument("--copies", type=int, default=40, help="chapter bodies in the large page")
    args = parser.parse_args()
    gold = json.loads((FIXTURES / "gold.json").read_text(encoding="utf-8"))
    pages = {name: (FIXTURES / name).read_text(encoding="utf-8") for name in gold}
    size_mb = sum(len(html.encode()) for html in pages.values()) * args.n / 1e6
    big = large_page(pages["docbook_chapter.html"], args.copies)
    print(f"{len(pages)} fixture pages, {size_mb / args.n * 1000:.1f} KB; timing: x{args.n} = {size_mb:.2f} MB; "
          f"large page: {len(big.encode()) / 1e6:.2f} MB")  # fmt: skip
    print(f"{'extractor':<28}{'content lost':>14}{'boilerplate kept':>30}{'MB/s':>8}{'large page s':>14}")
    timings: dict[str, float] = {}
    for name, extract in EXTRACTORS.items():
        try:
            lost, kept, total = score(extract, pages, gold)
        except ImportError as exc:
            print(f"{name:<28}  not installed ({exc.name})")
            continue
        timings[name] = seconds(extract, list(pages.values()), args.n)
        big_s = seconds(extract, [big], 1, rounds=3)
        share = f"{kept} of {total} chars ({kept / max(total, 1):.1%})"
        print(f"{name:<28}{lost:>8} chars{share:>30}{size_mb / timings[name]:>8.2f}{big_s:>14.2f}")
    ratio = timings["annotate.html_text"] / timings["old _html_text"]
    print(f"annotate.html_text takes {ratio:.2f}x the time of the old _html_text on the same pages")


if __name__ == "__main__":
    main()
