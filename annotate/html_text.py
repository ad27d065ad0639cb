"""HTML page -> its main content as plain text with light Markdown structure.

Headings become `#` lines, list items `- ` / `1. `, `<pre>` a fenced block kept verbatim, data
tables Markdown pipe tables, paragraphs are separated by blank lines; inline markup (links,
emphasis, inline code, images) is dropped so sentences read as written. Navigation, tables
of contents, site headers/footers/sidebars, cookie banners, scripts and styles are removed by
explicit rules (tags, ARIA roles, DocBook and CMS class names, link density) before conversion.

Why not a main-content extractor: on the pages of tests/fixtures/html (bench/html_extract.py),
trafilatura 2.3 lost 1343 characters of content and readability-lxml 0.9 lost 990 (every DocBook
section heading, the article's own title, figure captions, lists of links to other sites;
trafilatura also cut a code block at its inline markup and put spaces between CJK characters);
these rules lose none and keep no boilerplate there. The DOM work is BeautifulSoup on lxml; the
HTML -> Markdown conversion is markdownify, adjusted where plain text for a teacher needs it.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Collection, Iterator
from typing import NamedTuple
from urllib.parse import urlsplit

from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning, Tag, XMLParsedAsHTMLWarning
from bs4.element import NavigableString, PageElement, PreformattedString
from markdownify import MarkdownConverter

__all__ = ["HtmlText", "html_to_text"]


class HtmlText(NamedTuple):
    text: str  # "" when nothing but navigation, tables of contents and the like was on the page
    title: str | None


def html_to_text(html: str) -> HtmlText:
    """The main content of an HTML page, and its `<title>`."""
    with warnings.catch_warnings():
        # A short page can look like a file name; XHTML (DocBook's usual output) parses fine as HTML.
        warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)
        soup = BeautifulSoup(html, "lxml")
    title = " ".join(soup.title.get_text().split()) if soup.title else ""
    _drop_boilerplate(soup, _site_host(soup))
    _prepare_tables(soup)
    _join_source_lines(soup)
    markdown = _Converter().convert_soup(soup.body or soup)
    return HtmlText(_tidy(markdown), title or None)


# ---------------------------------------------------------------- boilerplate

# Never content: code, styling, embedded media, form controls, navigation. Not <form>: ASP.NET
# pages wrap the whole page in one.
_DROP_TAGS = {
    "head", "script", "style", "noscript", "template", "svg", "canvas", "iframe", "object", "embed",
    "audio", "video", "map", "img", "picture", "nav", "search", "button", "input", "select", "textarea", "dialog",
}  # fmt: skip
_DROP_ROLES = {"navigation", "banner", "contentinfo", "search", "dialog", "alertdialog", "menu", "menubar"}
# Whole class tokens: DocBook navigation and TOCs, screen-reader-only text, code line numbers.
_DROP_CLASSES = {
    "navheader", "navfooter", "toc", "contents", "table-of-contents", "indexdiv", "headerlink",
    "sr-only", "screen-reader-text", "visually-hidden", "linenos", "lineno", "line-numbers-rows",
}  # fmt: skip
_LIST_OF = re.compile(r"list-of-[a-z]+")  # DocBook list-of-tables, -figures, -examples, ...
# Words inside a class or id ("site-footer", "cookie_notice", "ez-toc-container"). Only words
# that name site furniture: DocBook's "table-contents" or "guimenu" must not match.
_DROP_WORDS = re.compile(
    r"(?:^|[-_])(?:toc|breadcrumbs?|nav|navbar|navigation|menu|pagination|pager|sidebar|sphinxsidebar|cookies?|"
    r"consent|gdpr|share|sharing|social|comments|footer|masthead|banner|advert|advertisement|ads|newsletter|skip)"
    r"(?:$|[-_])"
)
# An element holding one of these, or half the page's text, wraps the content itself, whatever its
# class says (WordPress puts "has-sidebar" on the wrapper of the whole page).
_LANDMARKS = {"main", "article"}
_ADMONITIONS = {"note", "tip", "warning", "caution", "important"}


def _site_host(soup: BeautifulSoup) -> str | None:
    """The page's own host, so absolute links back into the site count as internal."""
    for tag, attr in (("link", "href"), ("base", "href"), ("meta", "content")):
        for el in soup.find_all(tag):
            if tag == "link" and "canonical" not in el.get("rel", []):
                continue
            if tag == "meta" and el.get("property") != "og:url":
                continue
            host = urlsplit(str(el.get(attr, ""))).hostname
            if host:
                return host
    return None


def _drop_boilerplate(soup: BeautifulSoup, host: str | None) -> None:
    for el in list(_tags(soup, _DROP_TAGS)):
        el.decompose()
    page_chars = _chars(soup)
    for el, sure in [(el, sure) for el in _tags(soup) if (sure := _furniture(el)) is not None]:
        if not el.decomposed and not _holds_content(el, sure, page_chars):
            el.decompose()
    for el in list(_tags(soup, _LINK_BLOCKS)):
        if not el.decomposed and _mostly_internal_links(el, host):
            el.decompose()
    for el in list(_tags(soup, {"a"})):
        # What is left of javascript: links are controls in text ("字体：大 中 小"), not words.
        if str(el.get("href", "")).strip().lower().startswith("javascript:"):
            el.decompose()


def _holds_content(el: Tag, sure: bool, page_chars: int) -> bool:
    """Whether furniture wraps the content after all: never past a landmark, and for a guess
    from a class name or a page-level <header>, not past the page's h1 or half its text either."""
    if any(d.name in _LANDMARKS or d.get("role") == "main" for d in _tags(el)):
        return True
    return not sure and (_contains(el, {"h1"}) or _chars(el) >= page_chars / 2)


def _chars(el: Tag) -> int:
    return len("".join(el.get_text().split()))


def _furniture(el: Tag) -> bool | None:
    """True: surely site furniture (a role, a DocBook class, a <footer>); False: probably (a word
    in a class or id, hidden, a page-level <header> or <aside>); None: not furniture."""
    if el.name in ("html", "body", "main", "article") or _within(el, _CODE):
        return None
    classes = [c.lower() for c in el.get("class", [])]
    if (
        el.get("role") in _DROP_ROLES
        or el.name == "footer"
        or any(c in _DROP_CLASSES or _LIST_OF.fullmatch(c) for c in classes)
        or (el.name == "a" and str(el.get("href", "")).startswith("#") and el.get_text().strip().lower().startswith("skip"))
    ):
        return True
    # A page's header and sidebar; inside an article they are its title block and its asides.
    if el.name in ("header", "aside") and not _within(el, _SECTIONING):
        return False
    if el.has_attr("hidden") or el.get("aria-hidden") == "true":
        return False
    names = [*classes, str(el.get("id", "")).lower()]
    return False if any(_DROP_WORDS.search(name) for name in names) else None


def _mostly_internal_links(el: Tag, host: str | None) -> bool:
    """A TOC, menu, link bar or "related posts" block: its text is mostly links within the site."""
    if el.name == "div" and _contains(el, _BLOCKS):  # a div only judged as a leaf: content divs wrap paragraphs
        return False
    if el.name == "table" and _contains(el, {"th"}):  # data tables may well link every row
        return False
    links = [a for a in _tags(el, {"a"}) if _internal(str(a.get("href", "")), host)]
    if len(links) < 2:
        return False
    text = _chars(el)
    linked = sum(map(_chars, links))
    if el.name != "div":
        return linked >= 0.7 * text
    # A bar of links with a few words between ("当前位置：首页 > 通知公告 > 正文", "Home | About"):
    # what is not a link is short and no sentence. A sentence citing two sections stays.
    linked_ids = {id(a) for a in links}  # identity: bs4 compares tags by their whole markup
    rest = "".join(s for s in el.strings if not any(id(parent) in linked_ids for parent in s.parents))
    return linked >= 0.4 * text and len("".join(rest.split())) <= 40 and not _SENTENCE_END.search(rest)


_SENTENCE_END = re.compile(r"[。！？!?]|\.(?:\s|$)")
_BLOCKS = {"p", "div", "pre", "ul", "ol", "dl", "table", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6"}
_LINK_BLOCKS = {"ul", "ol", "dl", "table", "div"}
_CODE = {"pre", "code"}
_SECTIONING = {"article", "main", "section"}


# Plain walks over the tree: bs4's find/find_parent build a matcher per call, and called per
# element that made a long page several times slower.
def _tags(root: Tag, names: Collection[str] | None = None) -> Iterator[Tag]:
    return (el for el in root.descendants if isinstance(el, Tag) and (names is None or el.name in names))


def _contains(el: Tag, names: Collection[str]) -> bool:
    return next(_tags(el, names), None) is not None


def _within(el: PageElement, names: Collection[str]) -> bool:
    return any(parent.name in names for parent in el.parents)


def _nearest_table(el: Tag) -> Tag | None:
    return next((parent for parent in el.parents if parent.name == "table"), None)


def _internal(href: str, host: str | None) -> bool:
    parts = urlsplit(href)
    if parts.scheme in ("", "javascript") and not parts.netloc:
        return True  # "#section", "ch02.html", "/about/"
    return host is not None and parts.hostname == host


def _prepare_tables(soup: BeautifulSoup) -> None:
    """Tables used for layout (DocBook admonitions, page grids) become plain blocks; in data
    tables a cell spanning rows leaves an empty cell in the rows below, so columns stay aligned."""
    for table in reversed(list(_tags(soup, {"table"}))):  # innermost first
        if not _is_layout(table):
            _fill_row_spans(soup, table)
            continue
        for part in list(_tags(table, {"thead", "tbody", "tfoot", "tr", "td", "th"})):
            if _nearest_table(part) is table:
                part.name = "div"
        table.name = "div"


def _fill_row_spans(soup: BeautifulSoup, table: Tag) -> None:
    spanning: dict[int, int] = {}  # grid column -> rows it is still covered by a cell from above
    for row in _tags(table, {"tr"}):
        column = 0
        for cell in [c for c in row.children if c.name in ("td", "th")] + [None]:
            while spanning.get(column, 0) > 0:  # covered here: an empty cell in its place
                spanning[column] -= 1
                empty = soup.new_tag("td")
                if cell is None:
                    row.append(empty)
                else:
                    cell.insert_before(empty)
                column += 1
            if cell is None:
                break
            width = _span(cell, "colspan")
            if (height := _span(cell, "rowspan")) > 1:
                spanning.update({column + i: height - 1 for i in range(width)})
            column += width


def _span(cell: Tag, attr: str) -> int:
    value = str(cell.get(attr, "1")).strip()
    return min(int(value), 1000) if value.isdigit() and int(value) > 0 else 1


def _is_layout(table: Tag) -> bool:
    if table.get("role") in ("presentation", "none") or _contains(table, {"table"}):
        return True
    parent = table.parent
    if isinstance(parent, Tag) and parent.name == "div" and _ADMONITIONS & set(parent.get("class", [])):
        return True
    rows = [[cell for cell in row.children if cell.name in ("td", "th")] for row in _tags(table, {"tr"})]
    widest = max(map(len, rows), default=0)
    has_blocks = any(_contains(cell, _BLOCKS) for row in rows for cell in row)
    return widest <= 1 or (has_blocks and not _contains(table, {"th"}))


# ---------------------------------------------------------------- whitespace

_SEGMENT_BREAK = re.compile(r"\s*\n\s*")
# East Asian scripts written without spaces between words (Hangul is written with them).
_CJK = re.compile(r"[\u2e80-\u312f\u3190-\u9fff\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef\U00020000-\U0003134f]")


def _join_source_lines(soup: BeautifulSoup) -> None:
    """Source line breaks are not text: one becomes a space, or nothing between two CJK
    characters (CSS Text 3, segment break transformation), so "自己\\n练习" reads "自己练习"."""
    strings = [
        s
        for s in soup.descendants
        if isinstance(s, NavigableString) and not isinstance(s, PreformattedString) and not _within(s, {"pre"})
    ]
    # The visible characters either side of each string, for breaks at a string's edge.
    before: list[str] = []
    last = ""
    for s in strings:
        before.append(last)
        stripped = s.rstrip()
        last = stripped[-1] if stripped else last
    after: list[str] = [""] * len(strings)
    following = ""
    for i in range(len(strings) - 1, -1, -1):
        after[i] = following
        stripped = strings[i].lstrip()
        following = stripped[0] if stripped else following
    for s, left, right in zip(strings, before, after):
        if "\n" in s:
            s.replace_with(_SEGMENT_BREAK.sub(lambda m: _break(m, left, right), str(s)))


def _break(match: re.Match[str], left: str, right: str) -> str:
    text = match.string
    prev = text[match.start() - 1] if match.start() > 0 else left
    next_ = text[match.end()] if match.end() < len(text) else right
    return "" if _CJK.match(prev or " ") and _CJK.match(next_ or " ") else " "


# ---------------------------------------------------------------- conversion


class _Converter(MarkdownConverter):
    """markdownify, set for plain text: no inline markup or escapes, verbatim code, safe tables."""

    def __init__(self) -> None:
        super().__init__(
            heading_style="ATX",
            bullets="-",
            escape_asterisks=False,
            escape_underscores=False,
            table_infer_header=True,
            strip=["a", "b", "strong", "em", "i", "u", "code", "kbd", "samp", "tt", "var", "mark", "small",
                   "sub", "sup", "del", "s", "abbr", "cite", "dfn", "q", "span", "font"],
        )  # fmt: skip

    def convert_pre(self, el: Tag, text: str, parent_tags: set[str]) -> str:
        code = _EDGE_BLANK_LINES.sub("", text)  # blank lines at the edges only: indentation is the code's
        if not code:
            return ""
        # A fence longer than any backtick run inside, so code holding ``` cannot close it.
        fence = "`" * max([3, *(len(run) + 1 for run in re.findall(r"`{3,}", code))])
        return f"\n\n{fence}{_language(el)}\n{code}\n{fence}\n\n"

    def convert_td(self, el: Tag, text: str, parent_tags: set[str]) -> str:
        # A "|" inside a cell would split it in two.
        return super().convert_td(el, text.replace("|", r"\|"), parent_tags)

    convert_th = convert_td

    def convert_dt(self, el: Tag, text: str, parent_tags: set[str]) -> str:
        return f"\n\n{' '.join(text.split())}\n" if "_inline" not in parent_tags else f" {text.strip()} "

    def convert_dd(self, el: Tag, text: str, parent_tags: set[str]) -> str:
        return f"{text.strip()}\n\n" if "_inline" not in parent_tags else f" {text.strip()} "

    def convert_hr(self, el: Tag, text: str, parent_tags: set[str]) -> str:
        return "\n\n"


_EDGE_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+|(?:\n[ \t]*)+\Z|\A[ \t]+\Z")
_LANGUAGE = re.compile(r"(?:language|lang)-([\w+#.-]+)")


def _language(pre: Tag) -> str:
    """The code's language where the page names it (`<code class="language-python">`)."""
    for el in (pre, pre.find("code")):
        for name in el.get("class", []) if isinstance(el, Tag) else []:
            if found := _LANGUAGE.fullmatch(name):
                return found.group(1)
    return ""


# ---------------------------------------------------------------- tidying

_HEADING = re.compile(r"(#{1,6}) (.*)")
_WORD = re.compile(r"\w")
_FOOTER = re.compile(r"©|\bcopyright\b|all rights reserved|powered by|版权所有|ICP备|网站标识码|主办单位|技术支持", re.IGNORECASE)
_FENCE = re.compile(r"[ \t]*(`{3,})[\w+#.-]*")  # indented: a code block inside a list item


def _tidy(markdown: str) -> str:
    """Blocks joined by blank lines, without: blocks of bare punctuation (what dropped links leave,
    "【】【】"), the site footer at the end, headings that head nothing (what is left of a TOC
    page or a dropped sidebar), a block repeating the one before it (title, then h1)."""
    blocks = [block for block in _blocks(markdown) if _is_code(block) or _WORD.search(block)]
    while blocks and len(blocks[-1]) <= 300 and not _is_code(blocks[-1]) and _FOOTER.search(blocks[-1]):
        blocks.pop()
    kept: list[str] = []
    covered = [False] * 7  # covered[n]: content follows before the next heading of level <= n
    for block in reversed(blocks):
        heading = _HEADING.fullmatch(block)
        if not heading:
            covered = [True] * 7
            kept.append(block)
            continue
        level = len(heading.group(1))
        if covered[level]:
            kept.append(block)
        covered[level:] = [False] * (7 - level)
    kept.reverse()
    unique: list[str] = []
    for block in kept:
        if unique and _plain(block) == _plain(unique[-1]) and not _is_code(block):
            if _HEADING.fullmatch(block) and not _HEADING.fullmatch(unique[-1]):
                unique[-1] = block  # keep the heading form of a repeated title
            continue
        unique.append(block)
    return "\n\n".join(unique)


def _is_code(block: str) -> bool:
    return _FENCE.fullmatch(block.split("\n", 1)[0]) is not None


def _plain(block: str) -> str:
    return " ".join(block.lstrip("#").split())


def _blocks(markdown: str) -> list[str]:
    """Non-empty blocks between blank lines; a fenced code block is one block, blank lines and all."""
    blocks: list[str] = []
    current: list[str] = []
    fence: str | None = None
    for line in markdown.split("\n"):
        if fence is not None:
            current.append(line)
            if line.strip() == fence:
                fence = None
            continue
        opening = _FENCE.fullmatch(line)
        if opening:
            fence = opening.group(1)
        if line.strip() or fence is not None:
            current.append(line.rstrip())
        elif current:
            blocks.append("\n".join(current))
            current = []
    if current:
        blocks.append("\n".join(current))
    return [block.strip("\n") for block in blocks if block.strip()]
