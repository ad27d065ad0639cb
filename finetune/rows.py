"""The rows of each LLaMA-Factory dataset prepare writes, and their dataset_info.json entries.

Every chat row has one shape: an id, the system prompt, the user turn (after any solved examples
shown first, for few-shot) and what the stage learns from: one answer (sft), a chosen and a
rejected answer (rm: DPO, ORPO, SimPO, reward models), one answer and a `kto_tag` (kto), or
nothing (a PPO prompt). Pre-training rows are `{"text": ...}`. The shapes follow LLaMA-Factory
0.9.5's converter (llamafactory/data/converter.py) and its data/README.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from distillery.records import TrainingExample

from .workspace import LoaderStage, PromptFormat

Layout = Literal["alpaca", "sharegpt"]


@dataclass(frozen=True)
class Prompted:
    """One row's prompt: the user turn, after the solved examples (user turn, answer) shown first."""

    id: str
    instruction: str
    input: str
    shots: tuple[tuple[str, str], ...] = ()
    task: str | None = None  # the task's name, kept in the row for whoever filters the file

    @classmethod
    def of(cls, ex: TrainingExample, row_id: str | None = None) -> Prompted:
        """An approved record's prompt, zero-shot, in the form it is served."""
        return cls(row_id or ex.annotation_id, ex.instruction, ex.input, task=ex.task_name)


@dataclass(frozen=True)
class Feedback:
    """One answer with the reviewers' verdict on it: a KTO row, and a row of the reward CSV."""

    prompted: Prompted
    answer: str
    desirable: bool
    document_id: str


def _turns(p: Prompted, layout: Layout, prompt: PromptFormat) -> dict[str, Any]:
    base = {"id": p.id} | ({"task": p.task} if p.task else {}) | {"system": prompt.system}
    if layout == "alpaca":
        history = {"history": [list(shot) for shot in p.shots]} if p.shots else {}
        return base | {"instruction": p.instruction, "input": p.input} | history
    turns = [turn for user, answer in p.shots for turn in ({"from": "human", "value": user},
                                                            {"from": "gpt", "value": answer})]
    user = prompt.messages(p.instruction, p.input)[-1]["content"]
    return base | {"conversations": [*turns, {"from": "human", "value": user}]}


def sft_row(p: Prompted, answer: str, layout: Layout, prompt: PromptFormat) -> dict[str, Any]:
    row = _turns(p, layout, prompt)
    if layout == "alpaca":
        return row | {"output": answer}
    return row | {"conversations": [*row["conversations"], {"from": "gpt", "value": answer}]}


def kto_row(p: Prompted, answer: str, desirable: bool, layout: Layout, prompt: PromptFormat) -> dict[str, Any]:
    return sft_row(p, answer, layout, prompt) | {"kto_tag": desirable}


def pair_row(p: Prompted, chosen: str, rejected: str, layout: Layout, prompt: PromptFormat) -> dict[str, Any]:
    row = _turns(p, layout, prompt)
    if layout == "alpaca":
        return row | {"chosen": chosen, "rejected": rejected}
    return row | {"chosen": {"from": "gpt", "value": chosen}, "rejected": {"from": "gpt", "value": rejected}}


def prompt_row(p: Prompted, prompt: PromptFormat) -> dict[str, Any]:
    # Alpaca whatever the layout: a sharegpt row must end with an answer, and a PPO prompt has none.
    return _turns(p, "alpaca", prompt)


def dataset_entry(file: str, layout: Layout, stage: LoaderStage, *, history: bool = False) -> dict[str, Any]:
    """The dataset_info.json entry LLaMA-Factory reads `file` by, for the stage that reads it."""
    if stage == "pt":
        return {"file_name": file, "columns": {"prompt": "text"}}
    if stage == "ppo":
        layout = "alpaca"
    if layout == "alpaca":
        columns = {"prompt": "instruction", "query": "input", "system": "system"}
        columns |= {"history": "history"} if history else {}
        columns |= ({"chosen": "chosen", "rejected": "rejected"} if stage == "rm"
                    else {} if stage == "ppo" else {"response": "output"})
    else:
        columns = {"messages": "conversations", "system": "system"}
        columns |= {"chosen": "chosen", "rejected": "rejected"} if stage == "rm" else {}
    columns |= {"kto_tag": "kto_tag"} if stage == "kto" else {}
    entry: dict[str, Any] = {"file_name": file, "formatting": layout, "columns": columns}
    return entry | {"ranking": True} if stage == "rm" else entry


def write_rows(path: Path, rows: Iterable[dict[str, Any]], file_type: str) -> int:
    """Write the rows as JSON or JSONL; returns how many."""
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    # One example per line in both types, so a line number in a check error is easy to find.
    text = "\n".join(lines) + "\n" if file_type == "jsonl" else "[\n" + ",\n".join(lines) + "\n]\n"
    path.write_text(text, encoding="utf-8")
    return len(lines)
