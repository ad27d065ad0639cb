"""A corpus of real-looking typeset documents with a known (gold) segmentation.

Each document is built from generated sentences and laid out the way publishing tools do it:
PDFs typeset with reportlab (two columns, running headers and footers, page numbers, words
hyphenated at line ends, a table of contents and an index, CJK text in the standard Adobe CID
fonts so no font file is needed), and text hard-wrapped at a fixed width. The gold sentences
let a test or a benchmark measure what ingest made of them: boundaries that cut a sentence,
furniture (headers, footers, TOC lines) left in chunks, content lost.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["GoldDoc", "Quality", "build_corpus", "measure"]

_EN_SUBJECTS = [
    "The data controller", "Each processing department", "The compliance officer", "An external auditor",
    "The information security team", "Every business unit", "The board of directors", "A contracted supplier",
]  # fmt: skip
_EN_VERBS = [
    "shall document", "must review", "is responsible for maintaining", "will periodically assess",
    "should report", "may temporarily suspend", "must independently verify", "shall communicate",
]  # fmt: skip
_EN_OBJECTS = [
    "the classification of personal information", "all cross-border transfers of customer records",
    "the retention schedule for archived correspondence", "incident notifications within seventy-two hours",
    "the effectiveness of organisational countermeasures", "authorisation procedures for privileged accounts",
    "the documentation accompanying international shipments", "responsibilities concerning telecommunications infrastructure",
]  # fmt: skip
_EN_TAILS = [
    "before the end of each quarter", "in accordance with the applicable regulations", "without undue delay",
    "as described in the previous section", "unless an exemption has been granted in writing", "for every affected system",
]  # fmt: skip
_ZH_SUBJECTS = ["数据处理者", "网络运营者", "重要数据的处理者", "各业务部门", "信息安全管理部门", "外部审计机构", "个人信息保护负责人"]
_ZH_VERBS = ["应当建立健全", "负责组织实施", "应当定期评估", "不得擅自变更", "应当及时报告", "依法承担", "应当妥善保存"]
_ZH_OBJECTS = [
    "全流程数据安全管理制度", "数据分类分级保护工作", "个人信息出境的风险", "网络日志和访问记录", "数据安全事件应急预案",
    "重要数据目录和处理情况", "与第三方共享数据的合同条款",
]  # fmt: skip
_ZH_TAILS = ["，并向主管部门备案", "，保障数据的完整性和可用性", "，每年至少开展一次", "，防止数据被篡改或者泄露", "，确保责任落实到人"]
_JA_SENTENCES = [
    "本規程は、当社における個人情報の適正な取扱いを確保するために定める。",
    "個人情報保護管理者は、年に一回以上、運用状況を点検しなければならない。",
    "従業者は、業務上知り得た個人情報を第三者に漏らしてはならない。",
    "委託先の選定にあたっては、安全管理措置の水準を事前に確認する。",
    "漏えい等の事案が発生した場合は、速やかに責任者へ報告するものとする。",
    "保存期間を経過した記録は、復元できない方法により廃棄する。",
]  # fmt: skip


def _en_sentence(rng: random.Random) -> str:
    return f"{rng.choice(_EN_SUBJECTS)} {rng.choice(_EN_VERBS)} {rng.choice(_EN_OBJECTS)} {rng.choice(_EN_TAILS)}."


def _zh_sentence(rng: random.Random) -> str:
    return f"{rng.choice(_ZH_SUBJECTS)}{rng.choice(_ZH_VERBS)}{rng.choice(_ZH_OBJECTS)}{rng.choice(_ZH_TAILS)}。"


@dataclass
class GoldDoc:
    path: Path
    sentences: list[str]  # the content, in order
    furniture: list[str] = field(default_factory=list)  # text that must not reach a chunk


def _paragraphs(rng: random.Random, make, count: int) -> list[list[str]]:  # noqa: ANN001 - a sentence factory
    return [[make(rng) for _ in range(rng.randint(2, 5))] for _ in range(count)]


# ---------------------------------------------------------------- PDF typesetting


class _Typesetter:
    """Lays paragraphs into columns of fixed width, page after page, like a word processor:
    words wrapped (long English words hyphenated), running header and footer on every page."""

    def __init__(
        self, path: Path, *, font: str, size: float, columns: int, header: str, footer: str, cjk: bool, total: int = 0
    ) -> None:
        from reportlab.lib.pagesizes import A4
        from reportlab.pdfgen import canvas

        self.canvas = canvas.Canvas(str(path), pagesize=A4)
        self.width, self.height = A4
        self.font, self.size, self.columns, self.cjk = font, size, columns, cjk
        self.header, self.footer = header, footer
        self.margin, self.gutter, self.leading = 60.0, 24.0, size * 1.35
        self.column_width = (self.width - 2 * self.margin - (columns - 1) * self.gutter) / columns
        self.page = 0
        self.pages_total = total  # known from a first pass; footers print "of N"
        self.furniture_font = "Helvetica" if not cjk else font
        self._new_page()

    def _stringwidth(self, text: str) -> float:
        from reportlab.pdfbase.pdfmetrics import stringWidth

        return stringWidth(text, self.font, self.size)

    def _new_page(self) -> None:
        if self.page:
            self.canvas.showPage()
        self.page += 1
        self.column = 0
        self.y = self.height - self.margin - 30
        self.canvas.setFont(self.furniture_font, 8)
        self.canvas.drawString(self.margin, self.height - self.margin, self.header)
        footer = self.footer.format(page=self.page, total=self.pages_total or "?")
        self.canvas.drawCentredString(self.width / 2, self.margin - 24, footer)
        self.canvas.setFont(self.font, self.size)

    def _line(self, text: str) -> None:
        if self.y < self.margin:
            self.column += 1
            self.y = self.height - self.margin - 30
            if self.column == self.columns:
                self._new_page()
        x = self.margin + self.column * (self.column_width + self.gutter)
        self.canvas.setFont(self.font, self.size)
        self.canvas.drawString(x, self.y, text)
        self.y -= self.leading

    def paragraph(self, text: str) -> None:
        for line in self._wrap(text):
            self._line(line)
        self.y -= self.leading * 0.6  # paragraph spacing

    def heading(self, text: str) -> None:
        self.y -= self.leading * 0.5
        self._line(text)

    def listing_page(self, title: str, lines: list[str]) -> None:
        self.heading(title)
        for line in lines:
            self._line(line)
        self._new_page()

    def _wrap(self, text: str) -> list[str]:
        fits = lambda s: self._stringwidth(s) <= self.column_width  # noqa: E731
        lines, current = [], ""
        if self.cjk:
            for char in text:
                # Kinsoku: closing punctuation never starts a line; it hangs at the end of the previous one.
                if not fits(current + char) and char not in "。，、；：！？）」』》":
                    lines.append(current)
                    current = ""
                current += char
            return [*lines, current] if current else lines
        for word in text.split():
            candidate = f"{current} {word}".strip()
            if fits(candidate):
                current = candidate
                continue
            # Break a compound after its own hyphen, else hyphenate a long word as a typesetter would
            # (at least three letters on each side).
            compound = word.find("-") + 1
            cut = max((i for i in range(3, len(word) - 2) if word[: i + 1].isalpha() and fits(f"{current} {word[:i]}-")), default=0)
            if compound and fits(f"{current} {word[:compound]}"):
                lines.append(f"{current} {word[:compound]}".strip())
                current = word[compound:]
            elif len(word) >= 8 and cut:
                lines.append(f"{current} {word[:cut]}-".strip())
                current = word[cut:]
            else:
                lines.append(current)
                current = word
        return [*lines, current] if current else lines

    def save(self) -> int:
        self.canvas.save()
        return self.page


def _typeset_pdf(
    path: Path, paragraphs: list[list[str]], headings: list[str], *, toc: list[str], index: list[str], **layout  # noqa: ANN003
) -> None:
    pages = 0
    for _ in range(2):  # the first pass counts pages for "Page n of N"
        setter = _Typesetter(path, total=pages, **layout)
        if toc:
            setter.listing_page("Contents" if not layout["cjk"] else "目录", toc)
        for number, sentences in enumerate(paragraphs):
            if number % 4 == 0:
                setter.heading(headings[number // 4])
            setter.paragraph((" " if not layout["cjk"] else "").join(sentences))
        if index:
            setter._new_page()
            setter.listing_page("Index" if not layout["cjk"] else "索引", index)
        pages = setter.save()


def _register_cid_fonts() -> None:
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont

    for name in ("STSong-Light", "HeiseiMin-W3"):
        pdfmetrics.registerFont(UnicodeCIDFont(name))


def _with_headings(paragraphs: list[list[str]], heading) -> tuple[list[str], list[str]]:  # noqa: ANN001
    """Headings every four paragraphs, and the gold content: headings and sentences in reading order."""
    headings = [heading(n + 1) for n in range((len(paragraphs) + 3) // 4)]
    gold = []
    for number, sentences in enumerate(paragraphs):
        if number % 4 == 0:
            gold.append(headings[number // 4])
        gold += sentences
    return headings, gold


_ZH_NUMERALS = "一二三四五六七八九十"


def build_corpus(folder: Path, *, seed: int = 7, scale: int = 1) -> list[GoldDoc]:
    """Write the corpus into `folder`; `scale` multiplies the documents' length."""
    _register_cid_fonts()
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    docs: list[GoldDoc] = []

    en = _paragraphs(rng, _en_sentence, 24 * scale)
    toc = [f"{n}. Section {n} {'.' * 40} {2 + n}" for n in range(1, 9)]
    index = [f"{word}, {rng.randint(2, 30)}, {rng.randint(31, 60)}" for word in
             ("audit", "breach", "consent", "controller", "deletion", "encryption", "retention", "supplier", "transfer")]  # fmt: skip
    header = "ACME Corporation - Annual Compliance Handbook 2026"
    headings, gold = _with_headings(en, lambda n: f"Chapter {n} Governance and oversight")
    _typeset_pdf(folder / "handbook-en.pdf", en, headings, toc=toc, index=index, font="Times-Roman", size=10, columns=2,
                 header=header, footer="Page {page} of {total}", cjk=False)  # fmt: skip
    docs.append(GoldDoc(folder / "handbook-en.pdf", gold, [header, "Page 1 of", "Contents", *toc, "Index", *index]))

    zh = _paragraphs(rng, _zh_sentence, 20 * scale)
    header_zh = "数据安全管理办法（内部试行版）"
    headings, gold = _with_headings(zh, lambda n: f"第{_ZH_NUMERALS[(n - 1) % 10]}章 管理职责")
    _typeset_pdf(folder / "rules-zh.pdf", zh, headings, toc=[], index=[], font="STSong-Light", size=10.5, columns=1,
                 header=header_zh, footer="第 {page} 页 共 {total} 页", cjk=True)  # fmt: skip
    docs.append(GoldDoc(folder / "rules-zh.pdf", gold, [header_zh, "第 1 页 共"]))

    ja = [[rng.choice(_JA_SENTENCES) for _ in range(3)] for _ in range(30 * scale)]
    header_ja = "個人情報取扱規程"
    headings, gold = _with_headings(ja, lambda n: f"第{_ZH_NUMERALS[(n - 1) % 10]}章 総則")
    _typeset_pdf(folder / "rules-ja.pdf", ja, headings, toc=[], index=[], font="HeiseiMin-W3", size=10.5, columns=2,
                 header=header_ja, footer="- {page} -", cjk=True)  # fmt: skip
    docs.append(GoldDoc(folder / "rules-ja.pdf", gold, [header_ja, "- 2 -"]))

    wrapped_en = _paragraphs(rng, _en_sentence, 15 * scale)
    (folder / "notes-en.txt").write_text("\n\n".join(_hard_wrap(" ".join(p), 72, cjk=False) for p in wrapped_en) + "\n")
    docs.append(GoldDoc(folder / "notes-en.txt", [s for p in wrapped_en for s in p]))

    wrapped_zh = _paragraphs(rng, _zh_sentence, 15 * scale)
    (folder / "notes-zh.txt").write_text("\n\n".join(_hard_wrap("".join(p), 36, cjk=True) for p in wrapped_zh) + "\n")
    docs.append(GoldDoc(folder / "notes-zh.txt", [s for p in wrapped_zh for s in p]))
    return docs


def _hard_wrap(text: str, width: int, *, cjk: bool) -> str:
    """Wrap as an editor's fill command does: CJK at any character, English between words."""
    if cjk:
        return "\n".join(text[i : i + width] for i in range(0, len(text), width))
    import textwrap

    return textwrap.fill(text, width, break_on_hyphens=False)


@dataclass
class Quality:
    chunks: int
    boundaries: int  # chunk starts and ends
    mid_sentence: int  # of those, inside a gold sentence
    furniture_chunks: int  # chunks holding a header, footer, page number, TOC or index line
    lost_sentences: int  # gold sentences not found whole in the document text
    lost_chars: int


def _squash(text: str) -> str:
    # Compared without whitespace: whether a line break became a space or nothing is not a loss.
    return "".join(text.split())


def measure(gold: GoldDoc, document_text: str, chunk_texts: list[str]) -> Quality:
    """How clean the chunks of one document are, against its gold sentences."""
    sentences = [_squash(s) for s in gold.sentences]
    content = "".join(sentences)
    ends, position = {0}, 0
    for sentence in sentences:
        position += len(sentence)
        ends.add(position)
    mid = 0
    for text in map(_squash, chunk_texts):
        at = content.find(text)
        # A chunk that is not a run of the content (furniture inside it, text out of order) has
        # no sentence-aligned edges at all.
        mid += 2 if at < 0 else (at not in ends) + (at + len(text) not in ends)
    furniture = [_squash(f) for f in gold.furniture]
    text = _squash(document_text)
    lost = [s for s in sentences if s not in text]
    return Quality(
        chunks=len(chunk_texts),
        boundaries=2 * len(chunk_texts),
        mid_sentence=mid,
        furniture_chunks=sum(1 for chunk in map(_squash, chunk_texts) if any(f in chunk for f in furniture)),
        lost_sentences=len(lost),
        lost_chars=sum(map(len, lost)),
    )
