"""Sentence splitting and chunk packing."""

from __future__ import annotations

import hashlib
import random

import pytest

from annotate import chunking
from annotate.chunking import ChunkSpan, chunk_document, chunk_id, split_sentences
from annotate.readers import Page


def sentences(text: str) -> list[str]:
    return [text[start:end] for start, end in split_sentences(text)]



@pytest.fixture
def greedy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain greedy packing: these tests pin exact boundaries, which anchors would move."""
    monkeypatch.setattr(chunking, "ANCHOR_FILL", 2.0)


def test_anchors_end_a_chunk_early_only_once_it_is_full_enough() -> None:
    sentences = [f"第{i:03d}句话在这里结束。" for i in range(200)]
    size = len(sentences[0])
    anchored = {i for i, s in enumerate(sentences) if chunking._is_anchor(s)}
    assert 5 < len(anchored) < 60
    chunks = chunk_document([Page(None, "".join(sentences))], max_size=200, overlap=0)
    for chunk in chunks[:-1]:
        end = sentences.index(chunk.text[-size:])
        # Ended before an anchor once 60% full, or because the next sentence did not fit.
        assert end + 1 in anchored and len(chunk.text) >= 0.6 * 200 or len(chunk.text) + size > 200
    assert any(len(c.text) + size <= 200 for c in chunks[:-1])  # some did end early


def test_a_chunk_that_can_hold_the_rest_of_the_document_takes_it() -> None:
    sentences = [f"第{i:03d}句话在这里结束。" for i in range(200)]
    # A document that fits in one chunk, with an anchor sentence well past the 60% mark.
    first_anchor = next(i for i, s in enumerate(sentences) if chunking._is_anchor(s) and i >= 8)
    whole = "".join(sentences[: first_anchor + 2])
    max_size = len(whole) + 5
    assert len("".join(sentences[:first_anchor])) >= chunking.ANCHOR_FILL * max_size
    assert [c.text for c in chunk_document([Page(None, whole)], max_size=max_size, overlap=0)] == [whole]
    # The last chunk of a longer one likewise: the document ends in one chunk after its last break.
    chunks = chunk_document([Page(None, "".join(sentences))], max_size=200, overlap=0)
    assert len(chunks[-1].text) + len(chunks[-2].text) > 200

def test_chinese_sentences() -> None:
    text = "今天天气很好。我们去公园吧！你来吗？他说：“我不去。”她笑了……然后走了；再见。没有句号的结尾"
    assert sentences(text) == [
        "今天天气很好。",
        "我们去公园吧！",
        "你来吗？",
        "他说：“我不去。”",
        "她笑了……",
        "然后走了；",
        "再见。",
        "没有句号的结尾",
    ]


def test_english_sentences_keep_abbreviations_and_decimals() -> None:
    text = (
        "Some models, e.g. the small ones, score 3.5 points. Dr. Smith agreed! "
        'Did J. R. R. Tolkien write it? He said "yes." Apples, pears, etc. are fruit. '
        "See example.com for more...  The end"
    )
    assert sentences(text) == [
        "Some models, e.g. the small ones, score 3.5 points.",
        "Dr. Smith agreed!",
        "Did J. R. R. Tolkien write it?",
        'He said "yes."',
        "Apples, pears, etc. are fruit.",
        "See example.com for more...",
        "The end",
    ]


def test_newlines_end_sentences_and_spans_are_stripped() -> None:
    text = "  标题\n第一句。English line\n\n  Last one.  \n"
    spans = split_sentences(text)
    assert [text[s:e] for s, e in spans] == ["标题", "第一句。", "English line", "Last one."]
    assert spans[0] == (2, 4)


def test_mixed_language_boundaries() -> None:
    assert sentences("我用Python 3.11写代码。It works!然后继续") == ["我用Python 3.11写代码。", "It works!", "然后继续"]


def test_empty_and_whitespace_text() -> None:
    assert split_sentences("") == []
    assert split_sentences(" \n\n\t ") == []
    assert chunk_document([]) == []
    assert chunk_document([Page(None, "  \n ")]) == []


def test_short_document_is_one_chunk() -> None:
    assert chunk_document([Page(None, "一句话。Two sentences.")]) == [
        ChunkSpan("一句话。Two sentences.", 0, 18, None, None)
    ]


def test_chunks_are_whole_sentences_within_max_size() -> None:
    text = "".join(f"这是第{i}个句子，内容不长。" for i in range(40))
    chunks = chunk_document([Page(None, text)], max_size=50, overlap=0)
    ends = {end for _, end in split_sentences(text)}
    starts = {start for start, _ in split_sentences(text)}
    assert len(chunks) > 5
    for chunk in chunks:
        assert len(chunk.text) <= 50
        assert chunk.char_start in starts and chunk.char_end in ends
    assert "".join(chunk.text for chunk in chunks) == text  # no overlap: a partition


def test_english_chunks_round_trip_offsets() -> None:
    text = " ".join(f"Sentence {i} has e.g. 3.5 units of text." for i in range(30))
    chunks = chunk_document([Page(None, text)], max_size=120, overlap=45)
    for chunk in chunks:
        assert len(chunk.text) <= 120
        assert text[chunk.char_start : chunk.char_end].strip() == chunk.text
        assert chunk.text.startswith("Sentence") and chunk.text.endswith("text.")


def test_long_sentence_is_split_at_commas_then_spaces_then_hard() -> None:
    clause = "一个很长的从句在这里继续"  # 12 characters
    commas = "，".join([clause] * 6) + "。"
    chunks = chunk_document([Page(None, commas)], max_size=30, overlap=0)
    assert [c.text for c in chunks] == [f"{clause}，{clause}，", f"{clause}，{clause}，", f"{clause}，{clause}。"]

    words = " ".join(["word"] * 20)  # 99 characters, no punctuation
    chunks = chunk_document([Page(None, words)], max_size=30, overlap=0)
    assert all(len(c.text) <= 30 and c.text.startswith("word") and c.text.endswith("word") for c in chunks)
    assert " ".join(c.text for c in chunks) == words

    solid = "无" * 70
    assert [len(c.text) for c in chunk_document([Page(None, solid)], max_size=30, overlap=0)] == [30, 30, 10]


def test_overlap_repeats_trailing_sentences(greedy: None) -> None:
    text = "甲甲甲。乙乙乙。丙丙丙。丁丁丁。戊戊戊。"  # five 4-character sentences
    chunks = chunk_document([Page(None, text)], max_size=12, overlap=8)
    assert [c.text for c in chunks] == [
        "甲甲甲。乙乙乙。丙丙丙。",
        "乙乙乙。丙丙丙。丁丁丁。",
        "丙丙丙。丁丁丁。戊戊戊。",
    ]
    chunks = chunk_document([Page(None, text)], max_size=12, overlap=4)
    assert [c.text for c in chunks] == ["甲甲甲。乙乙乙。丙丙丙。", "丙丙丙。丁丁丁。戊戊戊。"]
    chunks = chunk_document([Page(None, text)], max_size=12, overlap=3)  # no whole sentence fits
    assert [c.text for c in chunks] == ["甲甲甲。乙乙乙。丙丙丙。", "丁丁丁。戊戊戊。"]


def test_overlap_never_crowds_out_the_next_sentence() -> None:
    # The 9-character sentence fits only without the overlap; no chunk may repeat an old one.
    text = "一二三。四五六。七八九十一二三四。"
    chunks = chunk_document([Page(None, text)], max_size=10, overlap=5)
    assert [c.text for c in chunks] == ["一二三。四五六。", "七八九十一二三四。"]


def test_page_spans() -> None:
    pages = [Page(1, "第一页。第一页第二句。"), Page(2, "Page two here."), Page(3, "第三页。")]
    doc_text = "\n\n".join(p.text for p in pages)
    chunks = chunk_document(pages, max_size=20, overlap=0)
    assert [(c.text, c.page_start, c.page_end) for c in chunks] == [
        ("第一页。第一页第二句。", 1, 1),
        ("Page two here.\n\n第三页。", 2, 3),
    ]
    for chunk in chunks:
        assert doc_text[chunk.char_start : chunk.char_end].strip() == chunk.text


def test_custom_length_function(greedy: None) -> None:
    def tokens(text: str) -> int:  # a crude tokenizer: one token per word or CJK character
        return sum(1 if word.isascii() else len(word) for word in text.split())

    text = " ".join(f"Word{i} word word." for i in range(20))
    chunks = chunk_document([Page(None, text)], max_size=10, overlap=3, length=tokens)
    assert all(tokens(c.text) <= 10 for c in chunks)
    assert [c.text for c in chunks[:2]] == [
        "Word0 word word. Word1 word word. Word2 word word.",
        "Word2 word word. Word3 word word. Word4 word word.",
    ]


def test_invalid_sizes() -> None:
    with pytest.raises(ValueError):
        chunk_document([Page(None, "x")], max_size=0)
    with pytest.raises(ValueError):
        chunk_document([Page(None, "x")], max_size=10, overlap=-1)


def test_deterministic_and_chunk_id() -> None:
    text = "第一句。Second one. 第三句！" * 50
    assert chunk_document([Page(None, text)], max_size=40) == chunk_document([Page(None, text)], max_size=40)
    assert chunk_id("doc-1", "文本") == hashlib.sha256("doc-1\x00文本".encode()).hexdigest()[:32]
    assert chunk_id("doc-1", "文本") != chunk_id("doc-2", "文本")
    assert chunk_id("ab", "c") != chunk_id("a", "bc")


_ALPHABET = [*"我们。！？，”abC.!?,3  ", "\n", "\n\n", "e.g.", "Dr."]


@pytest.mark.parametrize("seed", range(300))
def test_random_documents(seed: int) -> None:
    """Property check (seeded, no hypothesis in the venv): terminates, covers, fits."""
    rng = random.Random(seed)
    pages = [
        Page(n if rng.random() < 0.5 else None, "".join(rng.choices(_ALPHABET, k=rng.randint(0, 120))))
        for n in range(1, rng.randint(1, 4))
    ]
    max_size = rng.randint(1, 40)
    overlap = rng.randint(0, max_size + 5)  # overlap >= max_size is allowed: capped by the room left
    text = "\n\n".join(p.text for p in pages)
    chunks = chunk_document(pages, max_size=max_size, overlap=overlap)
    covered = [False] * len(text)
    previous_end = 0
    for chunk in chunks:
        assert 0 < len(chunk.text) <= max_size
        assert text[chunk.char_start : chunk.char_end] == chunk.text == chunk.text.strip()
        assert chunk.char_end > previous_end  # every chunk adds new text
        previous_end = chunk.char_end
        for i in range(chunk.char_start, chunk.char_end):
            covered[i] = True
    assert all(covered[i] or text[i].isspace() for i in range(len(text)))
