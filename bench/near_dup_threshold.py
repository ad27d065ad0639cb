"""Which Jaccard threshold links a re-issued chunk with a changed date, amount or name, and not one
with a changed sentence? Measures the shingle Jaccard similarity of a chunk and its edited copy.

Chunks of eight sentences, ~300 or ~800 characters, Chinese and English, one of the sentences
carrying a date, an amount and a name. Edits: the date, the amount or the name changed, or one of
the other seven sentences replaced by a new one of about the same length (1/8 of the chunk). Prints,
per shingle length k, the minimum, median and maximum similarity over the trials, the longest
passage that differs (distillery.minhash.longest_edit), and how often `distillery.near_dup.place`
links the edited copy at two thresholds.

Then the index's recall: pairs of random Chinese texts (300-800 characters) edited until their
Jaccard similarity lies just above a threshold; how many share a band (become candidates) and how
many of those the signature screen drops before the exact check.

    .venv/bin/python bench/near_dup_threshold.py [--trials 200] [--pairs 4000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from distillery import minhash, near_dup  # noqa: E402
from distillery.records import text_key  # noqa: E402
from doubles.corpus import _EN_OBJECTS, _EN_SUBJECTS, _EN_TAILS, _EN_VERBS, _ZH_OBJECTS, _ZH_SUBJECTS, _ZH_TAILS, _ZH_VERBS  # noqa: E402

KS = (3, 4, 5)
THRESHOLDS = (0.85, 0.9)
ZH_NAMES = ["张伟", "王秀英", "李娜", "刘洋", "欧阳建国", "陈静", "赵志强", "黄晓明"]
EN_NAMES = ["John Smith", "Maria Garcia", "Wei Zhang", "Margaret Thompson", "Ahmed Khan", "Olga Petrova", "Li Na"]
EN_MONTHS = ["January", "March", "June", "August", "October", "November", "December"]
Vocabulary = tuple[list[str], list[str], list[str], list[str]]  # subjects, verbs, objects, tails
ZH = (_ZH_SUBJECTS, _ZH_VERBS, _ZH_OBJECTS, _ZH_TAILS)
EN = (_EN_SUBJECTS, _EN_VERBS, _EN_OBJECTS, _EN_TAILS)
# A rewritten sentence in new words: none of its phrases is in the chunk's vocabulary.
ZH_NEW = (["市场监督管理部门", "供电企业", "物业服务人", "学校和托育机构", "承运人", "医疗卫生机构", "出版单位"],
          ["可以委托", "须于每季度末提交", "有权拒绝", "暂停受理", "酌情减免", "统一印制", "按月公示"],
          ["电梯维护保养记录", "旅客行李的赔偿申请", "食堂原材料采购台账", "药品不良反应监测报告", "图书出版许可证明", "居民用电费用明细"],
          ["，逾期不再补办", "，由街道办事处负责解释", "，费用由申请人承担", "，并在门户网站公开", "，具体标准另行制定"])  # fmt: skip
EN_SHORT = (["The auditor", "Each team", "The owner", "A supplier", "The board", "All staff"],
            ["must keep", "shall review", "will sign", "may refuse", "should file", "must check"],
            ["the records", "every request", "the contract", "all invoices", "the access logs", "any incident"])  # fmt: skip
EN_SHORT_NEW = (["Tenants", "Our bakery", "The marshal", "Drivers", "Visitors", "The harbour"],
                ["can borrow", "rarely paint", "will donate", "may close", "often lock", "should sweep"],
                ["the ladders", "spare bread", "the stairwell", "the pool", "late parcels", "the north gate"])  # fmt: skip
EN_NEW = (["Tenants", "The harbour master", "Visiting students", "Our bakery", "The fire marshal", "Volunteer drivers"],
          ["can borrow", "rarely inspect", "happily donate", "will repaint", "occasionally close", "politely decline"],
          ["ladders from the shed", "cargo manifests", "leftover bread", "the north stairwell", "the pool", "late parcels"],
          ["after heavy rain", "during school holidays", "near the old pier", "before the winter fair", "on quiet Sundays"])  # fmt: skip
EDITS = ("date", "amount", "name", "sentence, new words", "sentence, same words", "short sentence added")


def _date(lang: str, rng: random.Random) -> str:
    y, m, d = rng.randint(2015, 2026), rng.randint(1, 12), rng.randint(1, 28)
    return f"{y}年{m}月{d}日" if lang == "zh" else f"{EN_MONTHS[m % len(EN_MONTHS)]} {d}, {y}"


def _amount(lang: str, rng: random.Random) -> str:
    n = rng.randint(5, 2000)
    return f"{n}万元" if lang == "zh" else f"${n},000"


def _name(lang: str, rng: random.Random) -> str:
    return rng.choice(ZH_NAMES if lang == "zh" else EN_NAMES)


def _fact(lang: str, date: str, amount: str, name: str) -> str:
    if lang == "zh":
        return f"本办法由{name}于{date}签发，违反者最高处以{amount}罚款。"
    return f"Signed by {name} on {date}; fines up to {amount}. "


def _sentence(lang: str, rng: random.Random, length: int, words: Vocabulary) -> str:
    """A sentence of about `length` characters: clauses of `words` (the tail only in long ones)."""
    if lang == "en" and length < 60:
        words = EN_SHORT if words is EN else EN_SHORT_NEW
    parts = words if length >= (60 if lang == "zh" else 130) else words[:3]
    sep, joiner = ("", "；") if lang == "zh" else (" ", "; ")
    clause = lambda: sep.join(rng.choice(p) for p in parts)  # noqa: E731
    text = clause()
    while abs(len(text) + len(joiner) + len(nxt := clause()) - length) < abs(len(text) - length):  # nearer with it
        text += joiner + nxt
    return text + ("。" if lang == "zh" else ". ")


def _chunk(lang: str, rng: random.Random, size: int) -> tuple[list[str], int, tuple[str, str, str]]:
    """Eight sentences of about size/8 characters; returns them, the fact sentence's index, its values."""
    values = (_date(lang, rng), _amount(lang, rng), _name(lang, rng))
    fact = _fact(lang, *values)
    sentences = [_sentence(lang, rng, (size - len(fact)) // 7, ZH if lang == "zh" else EN) for _ in range(7)]
    at = rng.randrange(8)
    sentences.insert(at, fact)
    return sentences, at, values


def _edit(lang: str, rng: random.Random, sentences: list[str], at: int, values: tuple[str, str, str], edit: str) -> list[str]:
    out = list(sentences)
    date, amount, name = values
    if edit == "date":
        while (new := _date(lang, rng)) == date:
            pass
        out[at] = _fact(lang, new, amount, name)
    elif edit == "amount":
        while (new := _amount(lang, rng)) == amount:
            pass
        out[at] = _fact(lang, date, new, name)
    elif edit == "name":
        while (new := _name(lang, rng)) == name:
            pass
        out[at] = _fact(lang, date, amount, new)
    elif edit == "short sentence added":
        out.insert(rng.randrange(9), _sentence(lang, rng, 30 if lang == "zh" else 40, ZH_NEW if lang == "zh" else EN_NEW))
    else:
        i = rng.choice([j for j in range(8) if j != at])
        same = edit.endswith("same words")
        words = (ZH if same else ZH_NEW) if lang == "zh" else (EN if same else EN_NEW)
        while (new := _sentence(lang, rng, len(sentences[i]), words)) == sentences[i]:
            pass
        out[i] = new
    return out


def _jaccard(a: str, b: str, k: int) -> float:
    a, b = "".join(a.split()), "".join(b.split())
    sa, sb = {a[i : i + k] for i in range(len(a) - k + 1)}, {b[i : i + k] for i in range(len(b) - k + 1)}
    return len(sa & sb) / len(sa | sb)


def _linked(a: str, b: str, threshold: float) -> bool:
    """Whether near_dup.place, as ingest runs it, links b to a."""
    chunks = [near_dup.NewChunk("a", a, text_key(a)), near_dup.NewChunk("b", b, text_key(b))]
    placed = near_dup.place(chunks, threshold=threshold, same_text={}, buckets=lambda keys: [], texts=lambda ids: {})
    return placed[1].duplicate_of == "a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=4000)
    args = parser.parse_args()
    head = " ".join(f"{'k=' + str(k) + ': min / median / max':>24}" for k in KS)
    linked = " ".join(f"{'linked at ' + str(t):>14}" for t in THRESHOLDS)
    print(f"{'text':<8} {'chars':>5} {'edit':<21} {head} {'longest edit':>13} {linked}")
    for lang in ("zh", "en"):
        for size in (300, 800):
            rows = [("unrelated", lambda rng: ("".join(_chunk(lang, rng, size)[0]), "".join(_chunk(lang, rng, size)[0])))]
            rows += [(edit, lambda rng, edit=edit: _pair(lang, rng, size, edit)) for edit in EDITS]
            for edit, make in rows:
                rng = random.Random(f"{lang}{size}{edit}")
                sims: dict[int, list[float]] = {k: [] for k in KS}
                links, chars, edits = [0] * len(THRESHOLDS), [], []
                for _ in range(args.trials):
                    a, b = make(rng)
                    chars.append(len(a))
                    for k in KS:
                        sims[k].append(_jaccard(a, b, k))
                    edits.append(minhash.longest_edit(minhash.shingles(a), minhash.shingles(b)))
                    for i, t in enumerate(THRESHOLDS):
                        links[i] += _linked(a, b, t)
                cols = " ".join(f"{min(s):>8.3f} / {statistics.median(s):.3f} / {max(s):.3f}" for s in sims.values())
                shares = " ".join(f"{n / args.trials:>14.0%}" for n in links)
                print(f"{'Chinese' if lang == 'zh' else 'English':<8} {statistics.median(chars):>5.0f} {edit:<21} {cols} "
                      f"{min(edits):>6} - {max(edits):<4} {shares}")
    index_recall(args.pairs)


def index_recall(pairs: int) -> None:
    rng = random.Random(1)
    alphabet = [chr(0x4E00 + i) for i in range(3000)]
    print(f"\n{'Jaccard':<10} {'pairs':>6} {'share a band':>13} {'dropped by the screen':>22}")
    for threshold in (near_dup.MIN_THRESHOLD, near_dup.DEFAULT_THRESHOLD):
        found = dropped = n = 0
        for _ in range(pairs):
            a = [rng.choice(alphabet) for _ in range(rng.choice([300, 500, 800]))]
            b, before = list(a), minhash.shingles("".join(a))
            while (j := minhash.jaccard(before, minhash.shingles("".join(b)))) > threshold + 0.01:
                b[rng.randrange(len(b))] = rng.choice(alphabet)
            if j < threshold:
                continue
            sigs = minhash.signatures(["".join(a), "".join(b)])
            keys = minhash.band_keys(sigs)
            n += 1
            found += bool((keys[0] == keys[1]).any())
            dropped += minhash.estimate(sigs[:1], sigs[1:])[0] < threshold - near_dup.ESTIMATE_MARGIN
        print(f"{threshold:.2f}-{threshold + 0.01:.2f}  {n:>6} {found / n:>13.2%} {dropped / n:>22.2%}")


def _pair(lang: str, rng: random.Random, size: int, edit: str) -> tuple[str, str]:
    sentences, at, values = _chunk(lang, rng, size)
    return "".join(sentences), "".join(_edit(lang, rng, sentences, at, values, edit))


if __name__ == "__main__":
    main()
