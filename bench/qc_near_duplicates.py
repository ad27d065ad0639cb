"""What Jaccard similarity near duplicates have, and where the default threshold goes.

    .venv/bin/python bench/qc_near_duplicates.py        # ~20 s

Real-length teacher answers on one topic (tests/qc_texts.py: 10 Chinese, 100-140 characters;
10 English, 260-370 letters), each edited at random 200 times at 1/2/5/10% of its characters
(substitutions, insertions and deletions alike), against the answers' own pairs (different
answers on the same topic). Prints, for character shingles of 2-5 characters, the Jaccard
similarity of edited copies and of unrelated pairs, how many of each a threshold flags, and the
LSH banding each threshold gets (qc.dedup.lsh_bands) with its chance of finding a pair.
"""

from __future__ import annotations

import itertools
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from qc_texts import EN_ANSWERS, ZH_ANSWERS, edit  # noqa: E402

from qc.checks import CheckConfig  # noqa: E402
from qc.dedup import candidate_chance, lsh_bands  # noqa: E402
from qc.text import jaccard, shingles  # noqa: E402

RATES = (0.01, 0.02, 0.05, 0.10)
COPIES = 200  # edited copies per answer and rate


def edited(texts: list[str], rate: float, k: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return sorted(jaccard(shingles(t, k), shingles(edit(t, rate, rng), k)) for t in texts for _ in range(COPIES))


def unrelated(texts: list[str], k: int) -> list[float]:
    return sorted(jaccard(shingles(a, k), shingles(b, k)) for a, b in itertools.combinations(texts, 2))


def main() -> None:
    near = CheckConfig().near_duplicate
    corpora = {"zh": ZH_ANSWERS, "en": EN_ANSWERS}
    print(f"Jaccard of 3-character shingles (the default); {COPIES} random edits of each of 10 answers per row")
    print(f"{'':<24}{'min':>6}{'p1':>6}{'median':>8}{'max':>6}   flagged at 0.8 / 0.7 / {near}")
    for lang, texts in corpora.items():
        for rate in RATES:
            js = edited(texts, rate, 3, seed=int(rate * 1000))
            flagged = " / ".join(f"{sum(j >= t for j in js) / len(js):.1%}" for t in (0.8, 0.7, near))
            print(f"{lang} {rate:>4.0%} edits{'':<12}{js[0]:>6.2f}{js[len(js) // 100]:>6.2f}{statistics.median(js):>8.2f}"
                  f"{js[-1]:>6.2f}   {flagged}")
        js = unrelated(texts, 3)
        flagged = " / ".join(f"{sum(j >= t for j in js)}" for t in (0.8, 0.7, near))
        print(f"{lang} unrelated (45 pairs){'':<3}{js[0]:>6.2f}{'':>6}{statistics.median(js):>8.2f}{js[-1]:>6.2f}   {flagged}")
    print("\nOther shingle sizes: median Jaccard of 5% edits (the lowest of 2,000) | highest unrelated pair")
    for k in (2, 3, 4, 5):
        row = []
        for lang, texts in corpora.items():
            js = edited(texts, 0.05, k, seed=50)
            row.append(f"{lang} {statistics.median(js):.2f} ({js[0]:.2f}) | {unrelated(texts, k)[-1]:.2f}")
        print(f"k={k}: " + "    ".join(row))
    print("\nLSH banding for each threshold (128 permutations) and its chance of making a pair a candidate")
    print(f"{'threshold':>9} {'bands x rows':>13} {'J=t-0.1':>8} {'J=t':>7} {'J=t+0.05':>9} {'J=0.3':>7} {'J=0.15':>7}")
    for t in (0.5, 0.6, 0.7, 0.8):
        b, r = lsh_bands(t)
        chances = [candidate_chance(s, b, r) for s in (t - 0.1, t, t + 0.05, 0.3, 0.15)]
        print(f"{t:>9} {f'{b} x {r}':>13} " + " ".join(f"{c:>8.1%}" for c in chances))


if __name__ == "__main__":
    main()
