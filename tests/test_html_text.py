"""HTML main content with structure (issue #15): real fixture pages through the real reader,
and the extraction rules one at a time on small pages."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from annotate.html_text import html_to_text
from annotate.ingest import ingest
from annotate.readers import read_file, read_file_report
from distillery.store import Store

FIXTURES = Path(__file__).parent / "fixtures" / "html"
# Per page: every piece of real content (each must appear exactly once), its code blocks (verbatim)
# and strings found only in its navigation, TOCs and site furniture (none may appear).
GOLD: dict[str, dict] = json.loads((FIXTURES / "gold.json").read_text(encoding="utf-8"))
CONTENT_PAGES = [name for name, gold in GOLD.items() if gold["content"]]
CJK_PAIR = re.compile(r"[\u3000-\u9fff\uff00-\uffef] [\u3000-\u9fff\uff00-\uffef]")


def read_page(name: str) -> str:
    [doc] = read_file(FIXTURES / name)
    assert doc.kind == "html" and doc.meta == {"title": GOLD[name]["title"]}
    return doc.text


@pytest.mark.parametrize("name", CONTENT_PAGES)
def test_every_content_sentence_once_and_no_boilerplate(name: str) -> None:
    text = read_page(name)
    gold = GOLD[name]
    assert {s: text.count(s) for s in gold["content"]} == {s: 1 for s in gold["content"]}
    for code in gold["code"]:
        assert f"\n{code}\n```" in text  # the whole block, indentation and blank lines included
    assert [b for b in gold["boilerplate"] if b in text] == []
    assert CJK_PAIR.findall(text) == []  # no space was put between two CJK characters


def test_docbook_chapter_structure() -> None:
    text = read_page("docbook_chapter.html")
    lines = text.split("\n")
    # The title once, as the first heading; the navheader and the TOC before it are gone.
    assert text.startswith("# 第 1 章 GNU/Linux 教程\n\n我认为学习计算机系统")
    assert {"## 1.1. 控制台基础", "### 1.1.1. Shell 提示符", "## 1.3. 简单的 shell 脚本"} <= set(lines)
    assert {"- 输入用户名后按回车键。", "1. 在 GNOME 中打开“终端”应用程序。", "3. 在任意桌面中运行 xterm 命令。"} <= set(lines)
    table = "| 软件包 | 流行度 | 说明 |\n| --- | --- | --- |\n| mc | V:50, I:209 | 文本模式的全屏文件管理器 |\n"
    assert table in text
    assert "| r | 可读 \\| readable |" in lines  # a "|" in a cell does not split it
    # The admonition's layout table is read as blocks, not as a table of one cell.
    assert "注意\n\n系统消息保存在 /etc/motd 文件中，管理员可以随时修改它。" in text
    assert "su\n切换到另一个用户，默认是 root 用户。" in text  # a definition list: term, then definition
    assert '            echo "other: $f"' in lines  # bold markup inside <pre> leaves the code as written


def test_cms_article_structure() -> None:
    text = read_page("cms_article.html")
    assert text.startswith("# How we cut our build times in half\n")
    assert "```python\ndef cache_key(lock_path: Path) -> str:\n" in text
    assert "> The slowest part of our build was the part nobody owned." in text.split("\n")
    assert "| Stage | Before | After |\n| --- | --- | --- |\n| Dependencies | 12 min | 1 min |" in text
    # A list of links to other sites is content; the same shape linking into the site is not.
    assert "### Further reading\n\n- Docker build cache\n- Remote caching in Bazel" in text
    assert "我们也在上海办公室分享了这些经验。团队计划在下个季度把同样的缓存方案推广到移动端构建。" in text


def test_index_page_keeps_title_and_abstract_only() -> None:
    text = read_page("docbook_index.html")
    assert "本书《Debian 参考手册》为 Debian 系统的安装后用户提供了一个广泛的概述。" in text
    assert len(text) < 200  # of a page of about 4 KB, most of it the table of contents


def test_toc_only_page_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    docs, warnings = read_file_report(FIXTURES / "docbook_part.html")
    assert docs == []
    assert warnings == [
        f"{FIXTURES / 'docbook_part.html'}: no main content (only navigation, a table of contents or page furniture); skipped"
    ]
    manual = tmp_path / "manual"
    manual.mkdir()
    for name in ("docbook_chapter.html", "docbook_part.html"):
        shutil.copy(FIXTURES / name, manual / name)
    report = ingest(Store.open(tmp_path / "ws"), [manual])
    assert report.failures == []
    assert report.files == 2 and report.documents_new == 1 and report.chunks_new > 0
    assert [w for w in report.warnings if "no main content" in w] == [warnings[0].replace(str(FIXTURES), str(manual))]


# ---------------------------------------------------------------- one rule at a time


def body(html: str) -> str:
    return html_to_text(f"<html><head><title>T</title></head><body>{html}</body></html>").text


def test_source_line_breaks_join_cjk_without_space_and_latin_with_one() -> None:
    html = "<p>中文\n  段落，<b>粗体</b>\n文字和\n<code>ls</code>\n命令。English\n   words\tand  spaces.</p>"
    assert body(html) == "中文段落，粗体文字和 ls 命令。English words and spaces."
    assert body("<p>한국어\n문장</p>") == "한국어 문장"  # Korean is written with spaces


def test_link_density_drops_internal_link_lists_only() -> None:
    html = """<p>Intro paragraph.</p>
    <ul><li><a href="#a">Alpha</a></li><li><a href="/b">Beta</a></li><li><a href="https://site.example/c">Gamma</a></li></ul>
    <ul><li><a href="https://other.example/x">Outside one</a></li><li><a href="https://other.example/y">Outside two</a></li></ul>
    <ul><li>See <a href="#a">Alpha</a> for the long explanation of it all.</li><li>A plain item.</li></ul>
    <div><a href="/tag/x">x</a> <a href="/tag/y">y</a> <a href="/tag/z">z</a></div>"""
    page = f'<html><head><link rel="canonical" href="https://site.example/p"></head><body>{html}</body></html>'
    assert html_to_text(page).text == (
        "Intro paragraph.\n\n- Outside one\n- Outside two\n\n- See Alpha for the long explanation of it all.\n- A plain item."
    )


def test_furniture_by_tag_role_and_class() -> None:
    html = """<header><p>Site name</p></header><div role="navigation">Jump around</div>
    <div id="cookie-banner">We use cookies.</div><div class="breadcrumbs">Home » Here</div>
    <a class="skip" href="#main">Skip to main content</a><span class="sr-only">Screen reader only</span>
    <article><header><h1>Article title</h1></header><p>Body with a <span class="guimenu">File</span> menu.</p>
    <aside><p>An aside inside the article.</p></aside><footer>Tagged x</footer></article>
    <aside><p>A page sidebar.</p></aside><footer><p>Copyright</p></footer>"""
    assert body(html) == "# Article title\n\nBody with a File menu.\n\nAn aside inside the article."


def test_a_wrapper_holding_the_content_is_never_dropped() -> None:
    # ASP.NET wraps the whole page in a <form>; WordPress marks the page wrapper "has-sidebar".
    html = '<form id="form1"><div class="site has-sidebar"><h1>Report</h1><p>Kept text.</p><input value="Go"></div></form>'
    assert body(html) == "# Report\n\nKept text."


def test_layout_tables_become_blocks_and_data_tables_stay_tables() -> None:
    layout = "<table><tr><td><p>First block.</p></td><td><p>Second block.</p></td></tr></table>"
    assert body(layout) == "First block.\n\nSecond block."
    single_column = "<table><tr><td>Only</td></tr><tr><td>cells</td></tr></table>"
    assert body(single_column) == "Only\n\ncells"
    data = "<table><thead><tr><th>k</th><th>v</th></tr></thead><tr><td><p>one</p></td><td>a<br>b</td></tr></table>"
    assert body(data) == "| k | v |\n| --- | --- |\n| one | a b |"
    spans = "<table><tr><th>k</th><th>v</th></tr><tr><td rowspan=2>x</td><td>1</td></tr><tr><td>2</td></tr></table>"
    assert body(spans) == "| k | v |\n| --- | --- |\n| x | 1 |\n|  | 2 |"  # columns stay aligned


def test_code_blocks_verbatim_with_a_fence_the_code_cannot_close() -> None:
    html = '<pre class="lang-md">\n\n  indented first line\n```\n\n\tafter a tab\n</pre>'
    assert body(html) == "````md\n  indented first line\n```\n\n\tafter a tab\n````"
    in_list = "<ul><li>step<pre>if x {\n    y\n\n}</pre></li></ul>"  # a line of bare "}" after a blank line
    assert body(in_list) == "- step\n\n  ```\n  if x {\n      y\n\n  }\n  ```"


def test_headings_that_head_nothing_and_a_repeated_title_go() -> None:
    html = """<div class="titlepage"><h1>Guide</h1></div><p class="title">Guide</p>
    <h2>Empty section</h2><h2>Full section</h2><h3>Sub</h3><p>Text.</p><h2>Trailing heading</h2>"""
    assert body(html) == "# Guide\n\n## Full section\n\n### Sub\n\nText."
    assert body("<h1>Only</h1><h2>Headings</h2>") == ""


def test_link_bars_go_but_a_sentence_citing_sections_stays() -> None:
    html = """<div class="dqwz">当前位置：<a href="/">首页</a> &gt; <a href="/tzgg/">通知公告</a> &gt; 正文</div>
    <div>参见 <a href="#s21">第 2.1 节</a> 和 <a href="#s22">第 2.2 节</a>。</div>
    <p>【<a href="javascript:window.print()">打印本页</a>】【<a href="javascript:window.close()">关闭窗口</a>】</p>
    <p>Body text.</p><div class="bottom">© 2024 某市应急管理局 ICP备12345678号</div>"""
    assert body(html) == "参见 第 2.1 节 和 第 2.2 节。\n\nBody text."
