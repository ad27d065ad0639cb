"""Automatic checks: per-record rules and duplicate detection, stored as flags.

A flag marks a record with a reason; nothing is deleted. A flagged record stays out of the
export unless a reviewer approves it. Each `check` run recomputes the rule and duplicate flags
of the tasks it covers (judge flags only change when the judge runs).
"""

from __future__ import annotations

import functools
import unicodedata
from collections import Counter
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

from distillery.parsing import ContractError
from distillery.records import SEPARATOR, Annotation, Flag
from distillery.store import Store
from distillery.tasks import Task

from .dedup import ChangedDuringCheck, DuplicateFinder
from .lot import TRAINABLE_STEPS, Context, Contexts, LotError, answered
from .text import (
    decoding_damage,
    echoed_heading,
    jaccard,
    language,
    most_repeated,
    normalize,
    overlap_share,
    repeated_line,
    self_repetition,
    shingles,
)

FLAG_KINDS: dict[str, str] = {
    "contract": "the answer breaks the conclusion####reasoning contract",
    "label": "the conclusion is not in the task's label set",
    "empty": "empty conclusion or reasoning",
    "short": "reasoning shorter than the minimum",
    "long": "answer longer than the maximum",
    "language": "the answer is not in the source's language",
    "grounding": "the reasoning shares little with its source text",
    "refusal": "the answer contains a refusal phrase",
    "mojibake": "decoding damage: U+FFFD, mojibake (UTF-8 read as GBK or Latin-1), control or private-use characters",
    "repetition": "the same line or phrase over and over (filler, a looping model)",
    "echo": "the answer echoes the prompt: its headings, or the task's output example copied",
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
REPETITION_WINDOW = 10  # characters per stretch when measuring how much an answer repeats itself
MIN_EXAMPLE_CHARS = 8  # a shorter example reasoning ("是") is no evidence of copying


class CheckConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_reasoning_chars: int = Field(8, ge=0)
    max_answer_chars: int = Field(2000, ge=1)
    min_grounding: float = Field(0.2, ge=0, le=1)  # share of the reasoning's words found in the source
    # Jaccard of character shingles. 0.6: a 5% character edit scores 0.66-0.90, unrelated answers on
    # one topic at most 0.29 (qc/README.md has the measured table: bench/qc_near_duplicates.py).
    near_duplicate: float = Field(0.6, gt=0, le=1)
    shingle: int = Field(3, ge=1, le=10)  # characters per shingle
    refusal_phrases: list[str] = Field(default_factory=lambda: list(DEFAULT_REFUSALS))
    max_repetition: float = Field(0.3, gt=0, le=1)  # share of an answer part's 10-character stretches seen before in it
    max_line_repeats: int = Field(3, ge=2)  # a line this many times is filler


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
    # A record with an instruction of its own (a generated task) is not bound by its task's label set.
    labels = task.labels(ann.step) if ann.instruction is None else None
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
    source_lang, answer_lang = language(ctx.source), language(f"{conclusion} {reasoning}")
    if source_lang and answer_lang and source_lang != answer_lang:
        flags.append(_flag(ann, "language", f"source is {source_lang}, answer is {answer_lang}"))
    share = overlap_share(reasoning, ctx.source, min_tokens=MIN_GROUNDING_TOKENS)
    if share is not None and share < config.min_grounding:
        flags.append(_flag(ann, "grounding", f"only {share:.0%} of the reasoning's words occur in the source "
                                             f"(minimum {config.min_grounding:.0%})", score=share))
    answer = unicodedata.normalize("NFKC", f"{conclusion} {reasoning}").casefold()
    hits = [p for p in config.refusal_phrases if unicodedata.normalize("NFKC", p).casefold() in answer]
    if hits:
        flags.append(_flag(ann, "refusal", f"contains '{hits[0]}'"))
    if damage := decoding_damage(f"{conclusion}\n{reasoning}"):
        source = decoding_damage(ctx.source)
        flags.append(_flag(ann, "mojibake", damage + ("; the source has it too: re-ingest it" if source else "")))
    if repeated := _repetition(conclusion, reasoning, config):
        flags.append(_flag(ann, "repetition", repeated))
    if echo := _echo(task, ctx, conclusion, reasoning, config):
        flags.append(_flag(ann, "echo", echo))
    return flags


def _repetition(conclusion: str, reasoning: str, config: CheckConfig) -> str | None:
    line = repeated_line(f"{conclusion}\n{reasoning}")
    if line and line[1] >= config.max_line_repeats:
        return f"the line '{line[0][:40]}' appears {line[1]} times"
    # Each part on its own: a reasoning may rightly quote its conclusion.
    for part, text in (("reasoning", reasoning), ("conclusion", conclusion)):
        share = self_repetition(text, window=REPETITION_WINDOW)
        if share >= config.max_repetition:
            stretch, n = most_repeated(text, window=REPETITION_WINDOW)
            return f"{share:.0%} of the {part} repeats itself ('{stretch}' {n} times)"
    return None


@functools.lru_cache(maxsize=256)
def _example_reasonings(examples: tuple[str, ...], k: int) -> list[tuple[str, str, set[str]]]:
    """(reasoning, normalized, shingles) of each example answer long enough to tell a copy by."""
    out = []
    for example in examples:
        reasoning = example.split(SEPARATOR, 1)[-1].strip()
        if len(norm := normalize(reasoning)) >= MIN_EXAMPLE_CHARS:
            out.append((reasoning, norm, shingles(reasoning, k)))
    return out


def _echo(task: Task, ctx: Context, conclusion: str, reasoning: str, config: CheckConfig) -> str | None:
    """The prompt's own headings in the answer, or the task's output example (or a few-shot
    answer) copied into the reasoning: the teacher repeated its prompt instead of answering."""
    if heading := echoed_heading(f"{conclusion}\n{reasoning}", task.headings):
        return f"repeats the prompt's heading '{heading}'"
    ann = ctx.annotation
    shown = task.output_example(ann.step, text=ctx.source, question=ann.input)
    examples = _example_reasonings((shown, *(ex.answer for ex in task.spec.examples)), config.shingle)
    if not examples:
        return None
    norm = normalize(reasoning)
    for example, example_norm, example_shingles in examples:
        if example_norm in norm:
            return f"copies the task's example answer '{example[:30]}'"
        # A retouched copy keeps the example's opening or closing words; only then is it measured.
        anchors = example_norm[:MIN_EXAMPLE_CHARS], example_norm[-MIN_EXAMPLE_CHARS:]
        if any(a in norm for a in anchors) and (score := jaccard(shingles(reasoning, config.shingle),
                                                                 example_shingles)) >= config.near_duplicate:
            return f"is a near copy (Jaccard {score:.2f}) of the task's example answer '{example[:30]}'"
    return None


# What each duplicate search compares, and which records it covers. A generated record shares its
# origin's answer by construction (an augmentation keeps the label and reasoning; a correction answers
# the same prompt): the answer search leaves generated records out, and their generators dedup what
# they make against the workspace (annotate.augment, annotate.similarity).
_DUPLICATE_TEXT: dict[str, Callable[[Annotation], str | None]] = {
    "duplicate_answer": lambda ann: f"{ann.conclusion} {ann.reasoning or ''}" if ann.origin is None else None,
    "duplicate_question": lambda ann: ann.input if ann.step == "answer" and ann.input else None,
}


def duplicate_flags(store: Store, finders: dict[tuple[str, str], DuplicateFinder], contexts: Contexts) -> list[Flag]:
    """Resolve each (flag kind, task) search, its records read again in the order they were added."""
    flags: list[Flag] = []
    for (kind, task_name), finder in finders.items():
        what = "answer" if kind == "duplicate_answer" else "question"
        text_of = _DUPLICATE_TEXT[kind]
        again = ((ann.id, text) for ann in answered(store, [task_name]) if (text := text_of(ann)) is not None)
        try:
            found = finder.resolve(again)
        except ChangedDuringCheck as exc:
            raise LotError(f"{exc}: records changed while they were checked (is an annotate job running?); "
                           "run distill-qc check again") from exc
        for dup in found:
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

    Records stream through once for the rules; the duplicate search keeps a few dozen bytes per
    record from that pass and reads the records once more to confirm its candidates.
    """
    statuses = ("ok", "invalid")
    total = store.annotation_count(task_names=task_names, steps=TRAINABLE_STEPS, statuses=statuses)
    contexts = Contexts(store)
    flags: list[Flag] = []
    finders: dict[tuple[str, str], DuplicateFinder] = {}
    checked = lot = 0
    for ann in answered(store, task_names, statuses):
        flags += check_record(contexts.of(ann), config)
        checked += 1
        if ann.status == "ok":
            lot += 1
            for kind, text_of in _DUPLICATE_TEXT.items():
                if (text := text_of(ann)) is not None:
                    if (kind, ann.task_name) not in finders:
                        finders[kind, ann.task_name] = DuplicateFinder(threshold=config.near_duplicate, k=config.shingle)
                    finders[kind, ann.task_name].add(text)
        if on_progress and (checked % 200 == 0 or checked == total):
            on_progress(checked, total)
    if on_phase:
        on_phase("finding duplicates")
    flags += duplicate_flags(store, finders, contexts)
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
