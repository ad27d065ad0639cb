"""What the training split is made of: caps per document and per label, rare labels repeated, and
the prompt forms mixed (zero-shot or few-shot, with or without reasoning). Seeded throughout.

Only the training split is mixed: validation and test keep one row per approved record in the
form the model is served with, so their losses and scores measure the real task.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, Field, model_validator

from distillery.records import SEPARATOR, TrainingExample

from .rows import Prompted
from .workspace import PromptFormat

OPEN = "(open-ended)"  # the label of an example whose task has no closed label set


class MixOptions(BaseModel):
    max_per_document: int | None = Field(None, ge=1)  # one long document must not teach its own style
    max_per_label: int | None = Field(None, ge=1)  # closed-label tasks: a dominant label is cut down to this
    min_per_label: int | None = Field(None, ge=1)  # closed-label tasks: rarer labels are repeated up to this
    few_shot: float = Field(0.0, ge=0.0, le=1.0)  # share of rows shown `shots` solved examples first
    shots: int = Field(2, ge=1, le=8)
    without_reasoning: float = Field(0.0, ge=0.0, le=1.0)  # share of rows answering the conclusion alone
    # Said after the instruction in a row without reasoning, so the instruction still matches its answer.
    answer_only: str = f"Give only the conclusion, then {SEPARATOR}."

    @model_validator(mode="after")
    def _floor_under_cap(self) -> MixOptions:
        if self.min_per_label and self.max_per_label and self.min_per_label > self.max_per_label:
            raise ValueError(f"min_per_label ({self.min_per_label}) is above max_per_label ({self.max_per_label})")
        return self


class LabelShare(BaseModel):
    label: str  # "task/step: conclusion", or "task/step: (open-ended)"
    approved: int  # training examples before mixing
    dropped: int  # cut by the document or label cap
    repeated: int  # extra copies of rare-label examples
    rows: int  # in the training file


class Composition(BaseModel):
    """The training split as written, and its size against the model's."""

    labels: list[LabelShare]
    documents: int
    most_per_document: int  # the largest number of rows one document gives, after the caps
    forms: dict[str, int]  # "zero-shot, with reasoning" -> rows
    rows: int
    tokens: int | None = None  # the training rows' tokens as the template encodes them (after the check)
    model_parameters: int | None = None
    lora_parameters: int | None = None  # trainable, LoRA of rank `lora_rank` on every linear layer
    lora_rank: int | None = None


@dataclass(frozen=True)
class Row:
    """One training row: an approved example in a prompt form."""

    example: TrainingExample
    prompted: Prompted
    answer: str


def _label(ex: TrainingExample, label_of: Callable[[TrainingExample], str | None]) -> str:
    return f"{ex.task_name}/{ex.step}: {label_of(ex) or OPEN}"


def _closed(label: str) -> bool:
    """Caps and floors apply to closed labels only: an open-ended answer is no class to balance."""
    return not label.endswith(OPEN)


def _cap(examples: list[TrainingExample], key: Callable[[TrainingExample], str], cap: int | None,
         rng: random.Random, *, only: Callable[[str], bool] = lambda _k: True) -> list[TrainingExample]:
    """At most `cap` examples per key, drawn across documents in turn, so a cut keeps the spread."""
    if cap is None:
        return examples
    groups: dict[str, list[TrainingExample]] = defaultdict(list)
    for ex in examples:
        groups[key(ex)].append(ex)
    kept: set[str] = set()
    for k, group in groups.items():
        if not only(k) or len(group) <= cap:
            kept.update(ex.annotation_id for ex in group)
            continue
        shuffled = rng.sample(group, len(group))
        turn = Counter[str]()
        ranked = []
        for ex in shuffled:  # the i-th example drawn from its document sorts with every document's i-th
            ranked.append((turn[ex.document_id], len(ranked), ex))
            turn[ex.document_id] += 1
        kept.update(ex.annotation_id for _, _, ex in sorted(ranked, key=lambda r: r[:2])[:cap])
    return [ex for ex in examples if ex.annotation_id in kept]


def _pick(n: int, share: float, rng: random.Random) -> set[int]:
    """round(share * n) of the positions 0..n-1, seeded: exact shares, not a coin per row."""
    return set(rng.sample(range(n), round(share * n)))


def mix(examples: list[TrainingExample], options: MixOptions, *, label_of: Callable[[TrainingExample], str | None],
        prompt: PromptFormat, seed: int) -> tuple[list[Row], Composition]:
    """The training rows and what they are made of. `label_of` gives a closed-label example's label."""
    rng = random.Random(seed)
    before = Counter(_label(ex, label_of) for ex in examples)
    kept = _cap(examples, lambda ex: ex.document_id, options.max_per_document, rng)
    kept = _cap(kept, lambda ex: _label(ex, label_of), options.max_per_label, rng, only=_closed)
    after_caps = Counter(_label(ex, label_of) for ex in kept)

    repeats: list[TrainingExample] = []
    if options.min_per_label:
        by_label: dict[str, list[TrainingExample]] = defaultdict(list)
        for ex in kept:
            by_label[_label(ex, label_of)].append(ex)
        for label, group in by_label.items():
            missing = options.min_per_label - len(group) if _closed(label) else 0
            order = rng.sample(group, len(group))
            repeats += [order[i % len(order)] for i in range(max(missing, 0))]
    chosen = kept + repeats
    copies = Counter[str]()
    ids = []
    for ex in chosen:  # a repeated example gets its own id: check errors and eval name rows by id
        copies[ex.annotation_id] += 1
        ids.append(ex.annotation_id if copies[ex.annotation_id] == 1 else f"{ex.annotation_id}#{copies[ex.annotation_id]}")

    few = _pick(len(chosen), options.few_shot, rng)
    terse = _pick(len(chosen), options.without_reasoning, rng)
    pool: dict[str, list[TrainingExample]] = defaultdict(list)  # solved examples come from the same task
    for ex in kept:
        pool[f"{ex.task_name}/{ex.step}"].append(ex)
    rows: list[Row] = []
    forms = Counter[str]()
    for i, (ex, row_id) in enumerate(zip(chosen, ids)):
        short = i in terse
        note = options.answer_only if short else None
        shots: tuple[tuple[str, str], ...] = ()
        if i in few:
            others = [o for o in pool[f"{ex.task_name}/{ex.step}"] if o.document_id != ex.document_id]
            shots = tuple((prompt.messages(_ask(o, note), o.input)[-1]["content"], _answer(o, short))
                          for o in rng.sample(others, min(options.shots, len(others))))
        rows.append(Row(example=ex, prompted=Prompted(row_id, _ask(ex, note), ex.input, shots, ex.task_name),
                        answer=_answer(ex, short)))
        forms[f"{'few-shot' if shots else 'zero-shot'}, {'without' if short else 'with'} reasoning"] += 1

    written = Counter(_label(r.example, label_of) for r in rows)
    per_doc = Counter(r.example.document_id for r in rows)
    labels = [LabelShare(label=label, approved=before[label], dropped=before[label] - after_caps[label],
                         repeated=written[label] - after_caps[label], rows=written[label]) for label in sorted(before)]
    return rows, Composition(labels=labels, documents=len(per_doc), most_per_document=max(per_doc.values(), default=0),
                             forms=dict(sorted(forms.items())), rows=len(rows))


def _ask(ex: TrainingExample, note: str | None) -> str:
    """A record's own instruction (a QA answer's names its question), with the answer-only note."""
    return f"{ex.instruction}\n{note}" if note else ex.instruction


def _answer(ex: TrainingExample, short: bool) -> str:
    return f"{ex.conclusion}{SEPARATOR}" if short else ex.output
