"""Layout-aware text: typeset PDFs and hard-wrapped text become sentences, without page furniture."""

from __future__ import annotations

from pathlib import Path

import pytest

from annotate.chunking import chunk_document
from annotate.layout import join, unwrap
from annotate.pdf_text import PdfLine, PdfPage, _clean_chars, clean_pages
from annotate.readers import read_file_report
from doubles.corpus import build_corpus, measure


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    return build_corpus(tmp_path_factory.mktemp("corpus"))


def test_corpus_chunks_are_whole_sentences_without_furniture(corpus) -> None:
    for gold in corpus:
        docs, _warnings = read_file_report(gold.path)
        [doc] = docs
        spans = chunk_document(doc.pages, max_size=300, overlap=0)
        quality = measure(gold, doc.text, [span.text for span in spans])
        assert quality.chunks > 5, gold.path.name
        assert quality.lost_chars == 0, gold.path.name
        assert quality.mid_sentence / quality.boundaries < 0.01, (gold.path.name, quality)
        assert quality.furniture_chunks == 0, (gold.path.name, quality)


def test_pdf_hyphenation_is_undone_but_compounds_keep_their_hyphen(corpus) -> None:
    english = next(gold for gold in corpus if gold.path.name == "handbook-en.pdf")
    [doc] = read_file_report(english.path)[0]
    assert "cross-border" in doc.text and "crossborder" not in doc.text
    # The typesetter hyphenated long words at line ends: none survives as "word- part" or a glyph.
    assert "\ufffe" not in doc.text and "- " not in doc.text.replace(" - ", "")
    assert "telecommunications" in doc.text


def test_pdf_toc_and_index_pages_are_left_out_with_a_warning(corpus) -> None:
    english = next(gold for gold in corpus if gold.path.name == "handbook-en.pdf")
    [doc], warnings = read_file_report(english.path)
    numbers = [page.number for page in doc.pages]
    assert 1 not in numbers  # the table of contents
    assert any("table of contents or an index" in w and "1" in w for w in warnings)
    assert "Section 3" not in doc.text and "encryption, " not in doc.text
    assert doc.meta["furniture_lines_removed"] > 0


def test_pdf_cjk_lines_join_without_spaces(corpus) -> None:
    chinese = next(gold for gold in corpus if gold.path.name == "rules-zh.pdf")
    [doc] = read_file_report(chinese.path)[0]
    for sentence in chinese.sentences:
        assert sentence in doc.text  # exactly, no space inserted where a line was wrapped
    assert "数据安全管理办法（内部试行版）" not in doc.text and "页 共" not in doc.text


def _page(number: int, body: list[str], *, top: str | None = None, bottom: str | None = None) -> PdfPage:
    """A page as PDFium gives it: body lines 14 points apart, a header or footer set apart by more."""
    lines = [PdfLine(text, 60.0, 500.0, 760 - 14 * i) for i, text in enumerate(body)]
    if top is not None:
        lines.insert(0, PdfLine(top, 60.0, 200.0, 800.0))
    if bottom is not None:
        lines.append(PdfLine(bottom, 280.0, 300.0, 40.0))
    return PdfPage(number, lines)


BODY = ["This paragraph runs to the right edge of the column and then", *["goes on from line to line"] * 8,
        "continues on the next line of the page."]
PARAGRAPH = " ".join(BODY)


def test_page_numbers_and_running_headers_are_dropped_where_they_stand_apart() -> None:
    pages = [_page(1, BODY, top="iii", bottom="12"), _page(2, BODY, top="Annual report 2026", bottom="第 13 页"),
             _page(3, BODY, top="Annual report 2026", bottom="- 14 -"), _page(4, BODY, top="Annual report 2026", bottom="Page 15 of 20")]  # fmt: skip
    cleaned = clean_pages(pages)
    assert cleaned.removed_lines == 8
    for _number, text in cleaned.pages:
        assert text == PARAGRAPH


def test_lines_of_running_text_are_content_however_they_repeat() -> None:
    # The same number inside the body, and body lines that open every page, are content.
    [(_, text)] = clean_pages([_page(1, [*BODY, "12", "were counted in the survey of this year."], bottom="7")]).pages
    assert text == f"{PARAGRAPH} 12 were counted in the survey of this year."
    pages = [_page(n, ["Article 1 applies to every contract signed by the company,", "whatever its value."]) for n in (1, 2, 3)]
    assert all(text.startswith("Article 1 applies") for _, text in clean_pages(pages).pages)


def test_a_repeated_line_on_a_one_line_page_is_content() -> None:
    pages = [_page(n, ["Signed by the board."]) for n in (1, 2, 3)]
    assert [text for _, text in clean_pages(pages).pages] == ["Signed by the board."] * 3


def test_glyphs_from_symbol_fonts_are_mapped_or_dropped() -> None:
    assert _clean_chars("\uf0b7 first item", set()) == "• first item"
    assert _clean_chars("\x88 second item", set()) == "• second item"
    assert _clean_chars("price\x88 list\ufffd", set()) == "price list"
    assert _clean_chars("cross\ufffeborder and transf\ufffeers", {"cross-border"}) == "cross-border and transfers"


def test_join_is_language_aware() -> None:
    assert join("个人信息保护负责人应当建立健全", "数据安全事件应急预案。") == "个人信息保护负责人应当建立健全数据安全事件应急预案。"
    assert join("迷", "你 Debian 系统") == "迷你 Debian 系统"
    assert join("the informa-", "tion security team") == "the information security team"
    assert join("see section", "5 below") == "see section 5 below"
    assert join("Mid-", "Atlantic") == "Mid- Atlantic"  # a capital after the hyphen: not a hyphenated word


def test_unwrap_rejoins_hard_wrapped_paragraphs_and_keeps_structure() -> None:
    wrapped = (
        "An external auditor will periodically assess all cross-border transfers\n"
        "of customer records unless an exemption has been granted in writing.\n"
        "Each processing department is responsible for maintaining the records.\n"
        "\n"
        "- a list item that is long enough to be wrapped by the editor onto a\n"
        "  second line that continues it\n"
        "- a short item\n"
        "\n"
        "    indented code stays on its own line\n"
        "    and so does this one\n"
        "\n"
        "```\n"
        "fenced code is never joined with what comes after it in the block\n"
        "second line of the fenced block stays exactly where it was written\n"
        "```\n"
    )
    assert unwrap(wrapped).split("\n") == [
        "An external auditor will periodically assess all cross-border transfers of customer records unless an"
        " exemption has been granted in writing. Each processing department is responsible for maintaining the records.",
        "",
        "- a list item that is long enough to be wrapped by the editor onto a second line that continues it",
        "- a short item",
        "",
        "    indented code stays on its own line",
        "    and so does this one",
        "",
        "```",
        "fenced code is never joined with what comes after it in the block",
        "second line of the fenced block stays exactly where it was written",
        "```",
        "",
    ]


def test_text_that_is_not_hard_wrapped_is_unchanged() -> None:
    lines = [
        "第一条 为了规范数据处理活动，保障数据安全，促进数据开发利用，保护个人、组织的合法权益，维护国家主权、安全和发展利益，制定本法。",
        "第二条 在中华人民共和国境内开展数据处理活动及其安全监管，适用本法。",
        "Short line.",
        "A much longer line of English that is a paragraph of its own and was never wrapped by any editor at all.",
        "Another.",
    ]
    assert unwrap("\n".join(lines)) == "\n".join(lines)


def test_hard_wrapped_chinese_text_file_reads_as_sentences(tmp_path: Path) -> None:
    text = "网络运营者负责组织实施重要数据目录和处理情况，确保责任落实到人。外部审计机构不得擅自变更全流程数据安全管理制度，每年至少开展一次。" * 3
    path = tmp_path / "notes.txt"
    path.write_text("\n".join(text[i : i + 36] for i in range(0, len(text), 36)) + "\n", encoding="utf-8")
    [doc] = read_file_report(path)[0]
    assert doc.text == text
