"""How alike two instructions are, for the generators' filters (Self-Instruct, Evol-Instruct), in
Chinese as in English.

Self-Instruct keeps a new task only when its instruction's ROUGE-L against every task it has is
under 0.7. The reference code scores with rouge_score's default tokenizer, which deletes every
character outside [a-z0-9]: a Chinese instruction becomes no tokens at all and matches nothing (or,
in other ports, every instruction starting with a non-ASCII character is dropped). Here Chinese runs
are segmented into words by jieba and other text split into lower-cased words and numbers;
punctuation and spaces are no tokens; no text is ever dropped for its script.

`Pool` holds everything a workspace already has (the seeds' instructions and inputs, every stored
record's instruction and text, the chunks' texts) and answers `too_similar` for a candidate:
ROUGE-L F >= 0.7 on the instruction, or its instruction + input a near duplicate (Jaccard of
5-character shingles >= 0.9, distillery.minhash: CJK-safe) of something stored.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from distillery.minhash import Shingles, jaccard, shingles
from distillery.store import Store

ROUGE_THRESHOLD = 0.7  # Self-Instruct's
SHINGLE_THRESHOLD = 0.9
MAX_TOKENS = 200  # tokens of an instruction compared (LCS is O(nm))

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef"
_RUNS = re.compile(rf"([{_CJK}]+)|([^\W_]+)", re.UNICODE)  # a run of CJK, or a word of any other script
_CJK_CHAR = re.compile(rf"[{_CJK}]")
_LETTER = re.compile(r"[^\W\d_]", re.UNICODE)

_jieba = None


def _segment(run: str) -> list[str]:
    global _jieba
    if _jieba is None:
        import jieba

        jieba.setLogLevel(logging.WARNING)
        _jieba = jieba
    return [w for w in _jieba.lcut(run) if w.strip()]


def tokens(text: str) -> list[str]:
    """Words: Chinese segmented by jieba, other scripts by word, lower-cased; no punctuation."""
    out: list[str] = []
    for m in _RUNS.finditer(text or ""):
        if m.group(1):
            out += _segment(m.group(1))
        else:
            out.append(m.group(2).casefold())
    return out


def language(text: str) -> str:
    """'zh' when most letters are CJK characters, else 'en'."""
    letters = len(_LETTER.findall(text or ""))
    cjk = len(_CJK_CHAR.findall(text or ""))
    return "zh" if letters and cjk * 2 >= letters else ("zh" if cjk else "en")


def lcs(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(a: list[str], b: list[str]) -> float:
    """ROUGE-L F1 of two token lists: 2 * LCS / (len(a) + len(b))."""
    if not a or not b:
        return 0.0
    return 2 * lcs(a[:MAX_TOKENS], b[:MAX_TOKENS]) / (min(len(a), MAX_TOKENS) + min(len(b), MAX_TOKENS))


def similarity(a: str, b: str) -> float:
    """ROUGE-L F1 of two texts on CJK-aware word tokens."""
    return rouge_l(tokens(a), tokens(b))


class Verdict(NamedTuple):
    similar: bool
    score: float  # the highest score found (ROUGE-L, or the Jaccard that matched)
    what: str  # what it matched: "<kind>: <text>", "" when nothing


@dataclass
class _Entry:
    kind: str  # seed, stored record, chunk, generated
    text: str
    tokens: list[str] | None  # an instruction (ROUGE-L); None: only near-dup checked
    counts: Counter[str] | None
    shingles: Shingles


class Pool:
    """What candidates must not repeat. `add` what is kept so later candidates are checked against it."""

    def __init__(self, *, rouge: float = ROUGE_THRESHOLD, near: float = SHINGLE_THRESHOLD) -> None:
        self.rouge, self.near = rouge, near
        self.entries: list[_Entry] = []
        self._by_token: dict[str, set[int]] = {}
        self._seen: set[str] = set()

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, kind: str, instruction: str | None, text: str | None = None) -> None:
        """One thing to dedup against: an instruction (with the input it goes with), or a bare text."""
        whole = "\n".join(t for t in (instruction, text) if t)
        key = f"{instruction or ''}\x00{text or ''}"
        if not whole.strip() or key in self._seen:
            return
        self._seen.add(key)
        toks = tokens(instruction)[:MAX_TOKENS] if instruction else None
        entry = _Entry(kind, whole, toks, Counter(toks) if toks else None, shingles(whole))
        self.entries.append(entry)
        for tok in set(toks or ()):
            self._by_token.setdefault(tok, set()).add(len(self.entries) - 1)

    @classmethod
    def of_workspace(cls, store: Store, seeds: Iterable[object] = (), *, exclude_origins: Iterable[str] = (),
                     **thresholds: float) -> Pool:
        """The seeds' instructions and inputs, every stored record's instruction and text (generated
        ones too, but not those of `exclude_origins`: a generator re-deriving its own records on a
        re-run must see the workspace as its first run did), and the chunks' texts."""
        pool = cls(**thresholds)
        for seed in seeds:
            ex = seed.example  # type: ignore[attr-defined]
            pool.add("seed", ex.instruction, ex.input)
        skip = set(exclude_origins)
        for _, ann in store.annotations(status="ok"):
            if ann.origin in skip:
                continue
            if ann.instruction or ann.text:
                pool.add("stored record", ann.instruction, ann.text)
            elif ann.input:
                pool.add("stored record", ann.input)
        for chunk_id in store.chunk_ids():
            chunk = store.chunk(chunk_id)
            if chunk is not None:
                pool.add("chunk", None, chunk.text)
        return pool

    def too_similar(self, instruction: str, input: str | None = None) -> Verdict:
        """(True, score, what) when the instruction's ROUGE-L against a pooled instruction reaches the
        threshold, or instruction + input is a near duplicate of a pooled text."""
        toks = tokens(instruction)[:MAX_TOKENS]
        best = Verdict(False, 0.0, "")
        if toks:
            counts, n = Counter(toks), len(toks)
            candidates: set[int] = set()
            for tok in counts:
                candidates |= self._by_token.get(tok, set())
            for i in sorted(candidates):
                e = self.entries[i]
                assert e.tokens is not None and e.counts is not None
                m = len(e.tokens)
                bound = sum((counts & e.counts).values())  # the LCS is at most the shared tokens
                if 2 * bound / (n + m) < max(self.rouge, best.score):
                    continue
                score = rouge_l(toks, e.tokens)
                if score > best.score:
                    best = Verdict(score >= self.rouge, score, f"{e.kind}: {e.text[:80]}")
                    if best.similar:
                        return best
        whole = "\n".join(t for t in (instruction, input) if t)
        own = shingles(whole)
        size = len(own.unique)
        for e in self.entries:
            other = len(e.shingles.unique)
            if min(size, other) < self.near * max(size, other):  # the sizes alone rule it out
                continue
            score = jaccard(own, e.shingles)
            if score >= self.near:
                return Verdict(True, score, f"{e.kind}: {e.text[:80]}")
        return best
