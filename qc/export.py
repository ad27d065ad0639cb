"""Export what passed QC: training examples and, from reviewers' fixes, preference pairs.

Which records go out:
- the sample's lot (the records it was drawn from), except those a reviewer rejected, and
  except flagged records no reviewer approved (a flag keeps a record out until a person says
  otherwise);
- plus records outside the lot that a reviewer approved (accepted or fixed) one by one;
- a fixed record goes out corrected, and its fix becomes a DPO pair (chosen = the correction,
  rejected = the teacher's original).
A lot the sample rejects (or has not decided) is not exported unless forced.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from distillery.errors import DistilleryError
from distillery.jsonl import write_jsonl
from distillery.records import SEPARATOR, PreferencePair, Sample, TrainingExample
from distillery.store import Store

from .lot import Context, Contexts, answered
from .sampling import plan_of
from .verdicts import Decision, Outcome, decide, outcomes


class ExportRefused(DistilleryError):
    """The lot may not be exported as it stands; the message says why and what to do."""


class ExportSummary(BaseModel):
    examples: int = 0
    corrected: int = 0
    pairs: int = 0
    by_review: int = 0  # approved by a reviewer (accepted or fixed)
    with_lot: int = 0  # approved with the lot, not reviewed
    outside_lot: int = 0  # approved by a reviewer one by one, not in the sample's lot
    rejected: int = 0  # left out: a reviewer rejected them
    flagged: int = 0  # left out: flagged and approved by no reviewer
    gone: int = 0  # left out: no longer an `ok` record (re-annotated since the sample)
    not_in_lot: int = 0  # left out: usable records outside the sampled lot (flagged when it was drawn, or newer)
    decision: str | None = None  # the lot decision's headline, when there was a sample
    overridden: str | None = None  # the refusal --force overrode
    path: str = ""
    pairs_path: str = ""


def _example(ctx: Context, outcome: Outcome | None) -> TrainingExample:
    ann = ctx.annotation
    fixed = outcome is not None and outcome.verdict == "fix"
    review = outcome.decisive if outcome else None
    return TrainingExample(
        annotation_id=ann.id, task_name=ann.task_name, task_hash=ann.task_hash, step=ann.step,
        document_id=ctx.document.id, document_path=ctx.document.path, chunk_id=ctx.chunk.id,
        instruction=ctx.instruction, input=ctx.chunk.text,
        conclusion=(review.conclusion if fixed and review else ann.conclusion) or "",
        reasoning=(review.reasoning if fixed and review else ann.reasoning) or "",
        corrected=fixed, reviewer=review.reviewer if review else None, teacher_model=ann.model,
    )  # fmt: skip


def _pair(example: TrainingExample, outcome: Outcome) -> PreferencePair:
    review = outcome.decisive
    rejected = f"{review.original_conclusion or ''}{SEPARATOR}{review.original_reasoning or ''}"
    return PreferencePair(annotation_id=example.annotation_id, instruction=example.instruction, input=example.input,
                          chosen=example.output, rejected=rejected, reviewer=review.reviewer)


def sample_decision(store: Store, sample: Sample) -> tuple[Decision, dict[str, Outcome]]:
    """The lot decision of a sample, and the outcome of every reviewed record of its tasks."""
    assert sample.id is not None
    every = outcomes(store.reviews())  # reviews are few: a person gave each one
    items = store.sample_items(sample.id)
    return decide(plan_of(sample), [every[i.annotation_id] for i in items if i.annotation_id in every]), every


def refusal(decision: Decision, sample: Sample) -> str | None:
    """Why this decision forbids an export, in words with the way out; None when it allows one."""
    if decision.status == "accept":
        return None
    todo = {
        "reject": "improve the data (re-annotate, or review and fix the bad records) and draw a new sample",
        "pending": f"finish the review: distill-qc review --sample {sample.name}",
        "inconclusive": "draw a larger sample (e.g. distill-qc sample --margin 0.03) and review it",
    }[decision.status]
    return f"sample {sample.name}: {decision.headline} To go on: {todo}; or pass --force to export anyway."


def export_approved(
    store: Store,
    *,
    sample: Sample | None,
    task_names: list[str],
    out: Path,
    pairs_out: Path,
    force: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> ExportSummary:
    """Write the approved records and preference pairs; refuses (ExportRefused) unless the lot passed."""
    summary = ExportSummary(path=str(out), pairs_path=str(pairs_out))
    if sample is not None:
        decision, every = sample_decision(store, sample)
        summary.decision = decision.headline
        why = refusal(decision, sample)
        if why and not force:
            raise ExportRefused(why)
        summary.overridden = why
        assert sample.id is not None
        tasks = sample.tasks
    else:
        why = ("no sample has been reviewed for these records: run distill-qc sample and review first, or pass "
               "--force to export without QC")
        if not force:
            raise ExportRefused(why)
        summary.overridden = why
        tasks, every = task_names, outcomes(store.reviews())
    usable = {a.id: a for a in answered(store, tasks)}  # read once: the lot and the rescued come from here
    lot = store.sample_lot(sample.id) if sample is not None and sample.id is not None else list(usable)
    in_lot = set(lot)
    approved_elsewhere = sorted(aid for aid, o in every.items() if aid not in in_lot and o.verdict != "reject"
                                and aid in usable)  # reviewed in the tasks' lots only
    summary.not_in_lot = sum(1 for aid in usable if aid not in in_lot and aid not in every)
    flags = store.flags(task_names=tasks)
    contexts = Contexts(store)
    examples: list[tuple[tuple[str, int, int, str], TrainingExample, Outcome | None]] = []
    candidates = [*lot, *approved_elsewhere]
    for i, aid in enumerate(candidates, 1):
        if on_progress and (i % 500 == 0 or i == len(candidates)):
            on_progress(i, len(candidates))
        outcome = every.get(aid)
        ann = usable.get(aid)
        if ann is None or ann.conclusion is None:  # re-annotated since the sample: no longer `ok`
            summary.gone += 1
            continue
        if outcome is not None and outcome.verdict == "reject":
            summary.rejected += 1
            continue
        if outcome is None and aid in flags:
            summary.flagged += 1
            continue
        summary.by_review += outcome is not None
        summary.with_lot += outcome is None
        summary.outside_lot += aid not in in_lot
        ctx = contexts.of(ann)
        order = (ctx.document.path, ctx.chunk.seq, ann.item_index, ann.id)
        examples.append((order, _example(ctx, outcome), outcome))
    examples.sort(key=lambda row: row[0])  # document order: readable, and stable across runs
    pairs = [_pair(ex, o) for _, ex, o in examples if o is not None and o.verdict == "fix"]
    write_jsonl(out, (ex for _, ex, _ in examples))
    write_jsonl(pairs_out, pairs)
    summary.examples, summary.pairs = len(examples), len(pairs)
    summary.corrected = sum(ex.corrected for _, ex, _ in examples)
    return summary
