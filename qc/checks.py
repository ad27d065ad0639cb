"""Automatic checks: per-record rules and duplicate detection, stored as flags.

A flag marks a record with a reason; nothing is deleted. A flagged record stays out of the
export unless a reviewer approves it. Each `check` run recomputes the rule and duplicate flags
of the tasks it covers (judge flags only change when the judge runs).
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

from distillery.parsing import ContractError
from distillery.records import SEPARATOR, Annotation, Flag
from distillery.store import Store

from .dedup import find_duplicates
from .lot import TRAINABLE_STEPS, Context, Contexts, answered
from .text import language, overlap_share

FLAG_KINDS: dict[str, str] = {
    "contract": "the answer breaks the conclusion####reasoning contract",
    "label": "the conclusion is not in the task's label set",
    "empty": "empty conclusion or reasoning",
    "short": "reasoning shorter than the minimum",
    "long": "answer longer than the maximum",
    "language": "the answer is not in the source's language",
    "grounding": "the reasoning shares little with its source text",
    "refusal": "the answer contains a refusal phrase",
    "duplicate_answer": "exact or near duplicate of another answer",
    "duplicate_question": "exact or near duplicate of another QA question",
    "judge_low": "the LLM judge scored it below the keep threshold",
}
RULE_KINDS = tuple(k for k in FLAG_KINDS if k != "judge_low")

DEFAULT_REFUSALS = (
    "作为一个人工智能", "作为人工智能", "作为一个ai", "作为ai", "作为一个语言模型", "作为语言模型",
    "我无法", "我不能", "很抱歉", "抱歉，我", "对不起，我", "无法回答", "无法提供", "不便回答",
    "i'm sorry", "i am sorry", "i apologize", "i cannot", "i can't", "i can not", "i'm unable", "i am unable",
    "as an ai", "as a language model",
)  # fmt: skip
MIN_GROUNDING_TOKENS = 4  # fewer content tokens than this: too little text to judge grounding


class CheckConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_reasoning_chars: int = Field(8, ge=0)
    max_answer_chars: int = Field(2000, ge=1)
    min_grounding: float = Field(0.2, ge=0, le=1)  # share of the reasoning's words found in the source
    near_duplicate: float = Field(0.8, gt=0, le=1)  # Jaccard of character shingles
    shingle: int = Field(3, ge=1, le=10)  # characters per shingle
    refusal_phrases: list[str] = Field(default_factory=lambda: list(DEFAULT_REFUSALS))


class CheckSummary(BaseModel):
    tasks: list[str]
    records: int  # answered records checked (ok + invalid)
    lot: int  # of which ok: the candidates for training
    flagged: int  # records with at least one flag
    by_kind: dict[str, int]
    examples: dict[str, str]  # one detail per kind, to show what it means


def _flag(ann: Annotation, kind: str, detail: str, **extra: object) -> Flag:
    return Flag(annotation_id=ann.id, kind=kind, detail=detail, **extra)


def check_record(ctx: Context, config: CheckConfig) -> list[Flag]:
    """The per-record rules for one answered record."""
    ann, task = ctx.annotation, ctx.task
    if ann.status != "ok" or ann.conclusion is None:
        return [_flag(ann, "contract", ann.error or f"status {ann.status}: no usable answer")]
    flags: list[Flag] = []
    conclusion, reasoning = ann.conclusion.strip(), (ann.reasoning or "").strip()
    try:  # the stored answer must still parse under its task's contract (imports, edited stores)
        if ann.raw_text is not None:
            task.parse(ann.step, ann.raw_text, None)
        if SEPARATOR in conclusion or SEPARATOR in reasoning:
            raise ContractError(f"'{SEPARATOR}' inside the conclusion or reasoning")
    except ContractError as exc:
        flags.append(_flag(ann, "contract", str(exc)))
    labels = task.labels(ann.step)
    if labels and conclusion not in labels:
        flags.append(_flag(ann, "label", f"conclusion '{conclusion[:40]}' is not one of {' | '.join(labels)}"))
    if not conclusion or not reasoning:
        flags.append(_flag(ann, "empty", "empty conclusion" if not conclusion else "empty reasoning"))
    elif len(reasoning) < config.min_reasoning_chars:
        flags.append(_flag(ann, "short", f"reasoning has {len(reasoning)} characters (minimum {config.min_reasoning_chars})",
                           score=len(reasoning)))
    size = len(conclusion) + len(SEPARATOR) + len(reasoning)
    if size > config.max_answer_chars:
        flags.append(_flag(ann, "long", f"answer has {size} characters (maximum {config.max_answer_chars})", score=size))
    source_lang, answer_lang = language(ctx.chunk.text), language(f"{conclusion} {reasoning}")
    if source_lang and answer_lang and source_lang != answer_lang:
        flags.append(_flag(ann, "language", f"source is {source_lang}, answer is {answer_lang}"))
    share = overlap_share(reasoning, ctx.chunk.text, min_tokens=MIN_GROUNDING_TOKENS)
    if share is not None and share < config.min_grounding:
        flags.append(_flag(ann, "grounding", f"only {share:.0%} of the reasoning's words occur in the source "
                                             f"(minimum {config.min_grounding:.0%})", score=share))
    answer = unicodedata.normalize("NFKC", f"{conclusion} {reasoning}").casefold()
    hits = [p for p in config.refusal_phrases if unicodedata.normalize("NFKC", p).casefold() in answer]
    if hits:
        flags.append(_flag(ann, "refusal", f"contains '{hits[0]}'"))
    return flags


def duplicate_flags(texts: dict[tuple[str, str], list[tuple[str, str]]], contexts: Contexts,
                    config: CheckConfig) -> list[Flag]:
    """Duplicates among {(flag kind, task): [(record id, text), ...]}, each list in record order."""
    flags: list[Flag] = []
    for (kind, _), items in texts.items():
        what = "answer" if kind == "duplicate_answer" else "question"
        for dup in find_duplicates(items, threshold=config.near_duplicate, k=config.shingle):
            kept = contexts.by_id(dup.of)
            how = "an exact duplicate" if dup.exact else f"a near duplicate (Jaccard {dup.jaccard:.2f})"
            flags.append(Flag(annotation_id=dup.key, kind=kind, related_id=dup.of, score=dup.jaccard,
                              detail=f"{what} is {how} of record {dup.of[:12]} ({kept.where})"))
    return flags


def run_checks(
    store: Store,
    task_names: list[str],
    config: CheckConfig,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> CheckSummary:
    """Check every answered record of the tasks and store the flags (replacing the last run's).

    Records stream through once; only their ids and texts are kept for the duplicate search.
    """
    statuses = ("ok", "invalid")
    total = store.annotation_count(task_names=task_names, steps=TRAINABLE_STEPS, statuses=statuses)
    contexts = Contexts(store)
    flags: list[Flag] = []
    texts: dict[tuple[str, str], list[tuple[str, str]]] = {}
    checked = lot = 0
    for ann in answered(store, task_names, statuses):
        flags += check_record(contexts.of(ann), config)
        checked += 1
        if ann.status == "ok":
            lot += 1
            texts.setdefault(("duplicate_answer", ann.task_name), []).append(
                (ann.id, f"{ann.conclusion} {ann.reasoning or ''}"))
            if ann.step == "answer" and ann.input:
                texts.setdefault(("duplicate_question", ann.task_name), []).append((ann.id, ann.input))
        if on_progress and (checked % 200 == 0 or checked == total):
            on_progress(checked, total)
    if on_phase:
        on_phase("finding duplicates")
    flags += duplicate_flags(texts, contexts, config)
    store.replace_flags(flags, task_names=task_names, kinds=RULE_KINDS)
    stored = store.flags(task_names=task_names)  # judge flags from earlier runs count too
    all_flags = [f for fs in stored.values() for f in fs]
    return CheckSummary(
        tasks=task_names,
        records=checked,
        lot=lot,
        flagged=len(stored),
        by_kind=dict(Counter(f.kind for f in all_flags)),
        examples={f.kind: f.detail for f in reversed(all_flags)},
    )
