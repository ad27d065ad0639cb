"""The flat CSV forms, for trainers other than LLaMA-Factory (a classifier, a reward regressor).

    <split>.csv   Input,Label    the user turn the model reads -> the approved conclusion
    reward.csv    Input,Reward   the user turn, a blank line, an answer -> 1 accepted, 0 not

Written by Python's csv module (RFC 4180: quoted fields keep commas and newlines), UTF-8.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

from distillery.records import TrainingExample

from .rows import Feedback
from .workspace import PromptFormat

LABEL_HEADER = ("Input", "Label")
REWARD_HEADER = ("Input", "Reward")
REWARD_FILE = "reward.csv"


def _write(path: Path, header: tuple[str, str], rows: Iterable[tuple[str, object]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def write_flat(root: Path, splits: dict[str, list[TrainingExample]], scored: list[Feedback],
               prompt: PromptFormat) -> list[str]:
    """Write a label CSV per split and, when there are scored answers, reward.csv; returns the file names."""
    def user(instruction: str, input: str) -> str:
        return prompt.messages(instruction, input)[-1]["content"]

    names = []
    for split, examples in splits.items():
        _write(root / f"{split}.csv", LABEL_HEADER, ((user(ex.instruction, ex.input), ex.conclusion) for ex in examples))
        names.append(f"{split}.csv")
    if scored:
        _write(root / REWARD_FILE, REWARD_HEADER,
               ((f"{user(f.prompted.instruction, f.prompted.input)}\n\n{f.answer}", int(f.desirable)) for f in scored))
        names.append(REWARD_FILE)
    return names
