"""What a re-issued document costs: new chunks after one sentence changed, added or removed.

A chunk whose text is already stored is linked to it and never sent to the teacher again, so
the chunks of a re-issued document that are new text are what it costs. Compares the chunker
as shipped (content-defined anchors, annotate/chunking.py) with plain greedy packing, on
generated Chinese and English regulations of 120 paragraphs, 40 random edits each.

    .venv/bin/python bench/reissue_chunks.py [--trials 40]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from annotate import chunking  # noqa: E402
from annotate.readers import Page  # noqa: E402
from doubles.corpus import _en_sentence, _zh_sentence  # noqa: E402


def new_chunks(make, joiner: str, edit: str, size: int, trials: int) -> tuple[int, float]:  # noqa: ANN001
    """(chunks of the original, mean chunks of the re-issue that are new text)."""
    rng = random.Random(3)
    paragraphs = [[make(rng) for _ in range(rng.randint(2, 5))] for _ in range(120)]
    original = "\n".join(joiner.join(p) for p in paragraphs)
    before = {c.text for c in chunking.chunk_document([Page(None, original)], max_size=size, overlap=size // 10)}
    edits, total = random.Random(5), 0
    for _ in range(trials):
        changed = [list(p) for p in paragraphs]
        i = edits.randrange(len(changed))
        j = edits.randrange(len(changed[i]))
        {"change": lambda: changed[i].__setitem__(j, make(edits)), "add": lambda: changed[i].insert(j, make(edits)),
         "remove": lambda: changed[i].pop(j)}[edit]()  # fmt: skip
        text = "\n".join(joiner.join(p) for p in changed)
        total += sum(c.text not in before for c in chunking.chunk_document([Page(None, text)], max_size=size, overlap=size // 10))
    return len(before), total / trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=40)
    args = parser.parse_args()
    shipped = chunking.ANCHOR_FILL
    print(f"{'text':<8} {'chunk':>5} {'edit':<7} {'greedy: chunks, new':>20} {'anchors: chunks, new':>21}")
    for language, make, joiner in (("English", _en_sentence, " "), ("Chinese", _zh_sentence, "")):
        for size in (400, 800):
            for edit in ("change", "add", "remove"):
                chunking.ANCHOR_FILL = 2.0  # never: greedy packing
                greedy = new_chunks(make, joiner, edit, size, args.trials)
                chunking.ANCHOR_FILL = shipped
                anchored = new_chunks(make, joiner, edit, size, args.trials)
                print(f"{language:<8} {size:>5} {edit:<7} {greedy[0]:>12} {greedy[1]:>7.1f} {anchored[0]:>13} {anchored[1]:>7.1f}")


if __name__ == "__main__":
    main()
