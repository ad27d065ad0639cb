"""Readers against real files written to tmp_path."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import docx
import pytest
from fpdf import FPDF

from annotate.readers import Page, ReadError, SourceDoc, iter_files, read_file, read_file_report

CHINESE = (
    "自然语言处理是人工智能的一个分支。\n"
    "它研究人与计算机之间用自然语言进行有效通信的方法！——《概论》第3章，“重点”内容：（一）、（二）？"
)
# Not in GB2312: GBK-only characters and a GB18030-only one (four bytes).
CHINESE_RARE = CHINESE + "\n镕喆堃，以及𠀀。"


@pytest.mark.parametrize(
    ("data", "text", "encoding"),
    [
        (CHINESE.encode("gbk"), CHINESE, "gb18030"),
        (CHINESE_RARE.encode("gb18030"), CHINESE_RARE, "gb18030"),
        (codecs.BOM_UTF8 + CHINESE.encode("utf-8"), CHINESE, "utf-8-sig"),
        (CHINESE.encode("utf-8"), CHINESE, "utf-8"),
        (codecs.BOM_UTF16_LE + CHINESE.encode("utf-16-le"), CHINESE, "utf-16"),
    ],
    ids=["gbk", "gb18030", "utf-8-bom", "utf-8", "utf-16"],
)
def test_text_encodings_decode_exactly(tmp_path: Path, data: bytes, text: str, encoding: str) -> None:
    path = tmp_path / "doc.txt"
    path.write_bytes(data)
    [doc] = read_file(path)
    assert doc.text == text
    assert doc.encoding == encoding
    assert doc.kind == "txt" and doc.path == str(path) and doc.pages == [Page(None, text)]


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("自然語言處理是人工智慧的一個分支。它研究人與電腦之間用自然語言進行有效通訊的各種理論和方法。", "big5"),
        ("自然言語処理は人工知能の一分野です。コンピュータと人間の言語の相互作用を研究します。", "shift_jis"),
        # Traditional characters are outside GB2312: the last resort finds GB18030 for them.
        ("自然語言處理是人工智慧的一個分支。它研究人與電腦之間用自然語言進行有效通訊的各種理論和方法。", "gbk"),
    ],
)
def test_last_resort_encodings_decode_exactly(tmp_path: Path, text: str, encoding: str) -> None:
    path = tmp_path / "doc.txt"
    path.write_bytes(text.encode(encoding))
    [doc] = read_file(path)
    assert doc.text == text


def test_ambiguous_single_byte_text_is_refused_not_guessed(tmp_path: Path) -> None:
    # cp1252 French also decodes "cleanly" as cp1257 (Baltic) to different letters.
    path = tmp_path / "fr.txt"
    path.write_bytes("Le café est très bon. Naïve élève à Noël, déjà vu.".encode("cp1252"))
    with pytest.raises(ReadError, match="save it as UTF-8"):
        read_file(path)


def test_broken_utf8_is_refused_not_garbled(tmp_path: Path) -> None:
    data = (CHINESE * 5).encode("utf-8")
    path = tmp_path / "broken.txt"
    path.write_bytes(data[:40] + b"\xff" + data[40:])
    with pytest.raises(ReadError, match="UTF-8"):
        read_file(path)


def test_text_is_normalised(tmp_path: Path) -> None:
    path = tmp_path / "doc.txt"
    # "e" + combining acute (NFD) must come back composed (NFC).
    path.write_bytes("Cafe\u0301  \r\nline two\t\r\n\r\n\r\n\r\n\r\n全角，标点。  \r\n".encode())
    [doc] = read_file(path)
    assert doc.text == "Café\nline two\n\n全角，标点。"


def _pdf(pages: list[str]) -> bytes:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    for text in pages:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 10, text)
        else:  # a page with only a drawing, like a scanned image: nothing to extract
            pdf.rect(20, 20, 100, 100, style="F")
    return bytes(pdf.output())


def test_pdf_keeps_page_numbers(tmp_path: Path) -> None:
    path = tmp_path / "report.pdf"
    path.write_bytes(_pdf([f"Page {n} says hello. It has a second sentence." for n in (1, 2, 3)]))
    docs, warnings = read_file_report(path)
    assert warnings == []
    [doc] = docs
    assert doc.kind == "pdf" and doc.encoding is None
    assert [page.number for page in doc.pages] == [1, 2, 3]
    for number, page in zip((1, 2, 3), doc.pages, strict=True):
        assert page.text == f"Page {number} says hello. It has a second sentence."
    assert doc.text == "\n\n".join(page.text for page in doc.pages)


def test_pdf_skips_blank_pages_but_keeps_numbers(tmp_path: Path) -> None:
    path = tmp_path / "gaps.pdf"
    path.write_bytes(_pdf(["First page text.", "", "Third page text."]))
    [doc] = read_file(path)
    assert [page.number for page in doc.pages] == [1, 3]


def test_corrupt_pdf(tmp_path: Path) -> None:
    path = tmp_path / "broken.pdf"
    path.write_bytes(_pdf(["Some text."])[:600])
    with pytest.raises(ReadError, match="corrupt") as info:
        read_file(path)
    assert info.value.path == str(path)


def test_pdf_without_text_needs_ocr(tmp_path: Path) -> None:
    path = tmp_path / "scan.pdf"
    path.write_bytes(_pdf(["", ""]))
    with pytest.raises(ReadError) as info:
        read_file(path)
    assert "OCR" in info.value.reason


def test_docx_paragraphs_and_tables_in_order(tmp_path: Path) -> None:
    document = docx.Document()
    document.core_properties.title = "季度报告"
    document.add_paragraph("第一段：介绍。")
    document.add_paragraph("The second paragraph, in English.")
    table = document.add_table(rows=2, cols=2)
    for r, row in enumerate([("名称", "Value"), ("甲", "42")]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    document.add_paragraph("最后一段。")
    path = tmp_path / "report.docx"
    document.save(str(path))
    [doc] = read_file(path)
    assert doc.kind == "docx" and doc.encoding is None
    assert doc.text == "第一段：介绍。\nThe second paragraph, in English.\n名称 | Value\n甲 | 42\n最后一段。"
    assert doc.meta == {"title": "季度报告"}


def test_corrupt_docx(tmp_path: Path) -> None:
    path = tmp_path / "broken.docx"
    path.write_bytes(b"PK\x03\x04 this is not really a zip file")
    with pytest.raises(ReadError, match="docx"):
        read_file(path)


def test_html_drops_scripts_and_keeps_blocks(tmp_path: Path) -> None:
    html = """<!DOCTYPE html><html><head><title> 新闻 标题 </title>
    <style>p { color: red }</style><script>var x = "hidden";</script></head>
    <body><nav><a href="/">Home</a> <a href="/x">Menu</a></nav>
    <!-- a comment -->
    <h1>Main   heading</h1>
    <p>First <b>bold</b>
       paragraph.</p><div>第二段。<br>换行之后。</div>
    <ul><li>one</li><li>two</li></ul>
    <table><tr><td>a</td><td>b</td></tr></table>
    <script>alert(1)</script></body></html>"""
    path = tmp_path / "page.html"
    path.write_text(html, encoding="utf-8")
    [doc] = read_file(path)
    # Structure survives as light Markdown (issue #15): heading, paragraphs, list items, a pipe table.
    assert doc.text == "# Main heading\n\nFirst bold paragraph.\n\n第二段。\n换行之后。\n\n- one\n- two\n\n| a | b |\n| --- | --- |"
    assert doc.meta == {"title": "新闻 标题"}
    assert doc.kind == "html"


def test_markdown_light_cleanup(tmp_path: Path) -> None:
    path = tmp_path / "notes.md"
    path.write_text("# 标题 #\n\n![diagram](img/a.png)\nSee [the docs](https://x.org) now.\n", encoding="utf-8")
    [doc] = read_file(path)
    assert doc.text == "标题\n\nSee the docs now."
    assert doc.kind == "md"


def test_jsonl_rows_and_warnings(tmp_path: Path) -> None:
    lines = [
        json.dumps({"text": "第一条。", "id": 7, "source": "a", "tags": ["x"]}, ensure_ascii=False),
        "",
        "{not json",
        json.dumps({"body": "no text field"}),
        json.dumps([1, 2]),
        json.dumps({"text": "   "}),
        json.dumps({"text": "Second row."}),
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    docs, warnings = read_file_report(path)
    assert [(d.path, d.text, d.meta) for d in docs] == [
        (f"{path}#L1", "第一条。", {"id": 7, "source": "a"}),
        (f"{path}#L7", "Second row.", {}),
    ]
    assert all(d.kind == "jsonl" and d.encoding == "utf-8" for d in docs)
    assert len(warnings) == 4
    assert warnings[0].startswith(f"{path} line 3: not valid JSON (")
    assert [w.split(":")[0] for w in warnings[1:]] == [f"{path} line {n}" for n in (4, 5, 6)]
    assert read_file(path) == docs


def test_jsonl_custom_field_and_no_usable_line(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"content": "hello"}\n', encoding="utf-8")
    assert read_file(path, text_field="content")[0].text == "hello"
    with pytest.raises(ReadError, match="'text'"):
        read_file(path)


def test_csv_rows(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes('id,text,lang\r\n1,"多行\r\n文本。",zh\r\n2,,en\r\n3,Plain row.,en\r\n'.encode("gbk"))
    docs, warnings = read_file_report(path)
    assert [(d.path, d.text, d.meta, d.encoding) for d in docs] == [
        (f"{path}#R1", "多行\n文本。", {"id": "1", "lang": "zh"}, "gb18030"),
        (f"{path}#R3", "Plain row.", {"id": "3", "lang": "en"}, "gb18030"),
    ]
    assert warnings == [f"{path} row 2: 'text' is empty"]


def test_csv_missing_column_names_columns(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("id,body\n1,hello\n", encoding="utf-8")
    with pytest.raises(ReadError) as info:
        read_file(path)
    assert "'text'" in info.value.reason and "id, body" in info.value.reason


@pytest.mark.parametrize("name", ["blob.txt", "blob.jsonl", "blob.csv"])
def test_binary_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ReadError, match="binary"):
        read_file(path)


def test_unknown_suffix(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ReadError, match="unsupported file type '.png'"):
        read_file(path)


@pytest.mark.parametrize(
    ("name", "data"), [("a.txt", b""), ("b.md", b" \n\t\r\n"), ("c.txt", "\u3000\n".encode()), ("d.pdf", b"")]
)
def test_empty_file(tmp_path: Path, name: str, data: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ReadError) as info:
        read_file(path)
    assert info.value.reason == "empty file"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ReadError, match="cannot read"):
        read_file(tmp_path / "nope.txt")


def test_iter_files_recurses_sorted_and_skips_hidden(tmp_path: Path) -> None:
    for name in ["b.txt", "a/z.md", "a/b/c.pdf", "a/.hidden.txt", ".git/config.txt", "a/.cache/x.txt", "c.csv"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    single = tmp_path / "a" / ".hidden.txt"
    found = list(iter_files([tmp_path, single]))
    assert found == [tmp_path / "a/b/c.pdf", tmp_path / "a/z.md", tmp_path / "b.txt", tmp_path / "c.csv", single]


def test_source_doc_text_joins_pages() -> None:
    doc = SourceDoc(path="x.pdf", kind="pdf", encoding=None, pages=[Page(1, "a"), Page(2, "b")])
    assert doc.text == "a\n\nb"
    assert doc.meta == {}
