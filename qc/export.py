"""Export what passed QC: training examples and, from reviewers' fixes, preference pairs.

Which records go out:
- the sample's lot (the records it was drawn from), except those a reviewer rejected, and
  except flagged records no reviewer approved (a flag keeps a record out until a person says
  otherwise);
- plus records outside the lot that a reviewer approved (accepted or fixed) one by one;
- a fixed record goes out corrected, and its fix becomes a DPO pair (chosen = the correction,
  rejected = the teacher's original).
Records a reviewer rejected go to a file of their own when asked (`rejected_out`): the teacher's
answer as it was, the undesirable examples of KTO (finetune prepare --also kto).
A lot the sample rejects (or has not decided) is not exported unless forced.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from distillery.errors import DistilleryError
from distillery.jsonl import write_jsonl
from distillery.records import SEPARATOR, Annotation, PreferencePair, Sample, TrainingExample
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
    second_round_pairs: int = 0  # of the pairs, approved corrections of the tuned student's answers
    generated: dict[str, int] = {}  # of the examples, records a generator made, by origin
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
    rejected_path: str = ""  # where the rejected records went, when asked for


def _example(ctx: Context, outcome: Outcome | None) -> TrainingExample:
    ann = ctx.annotation
    fixed = outcome is not None and outcome.verdict == "fix"
    review = outcome.decisive if outcome else None
    return TrainingExample(
        annotation_id=ann.id, task_name=ann.task_name, task_hash=ann.task_hash, step=ann.step,
        document_id=ctx.document.id, document_path=ctx.document.path, chunk_id=ctx.chunk.id,
        instruction=ctx.instruction, input=ctx.source,
        conclusion=(review.conclusion if fixed and review else ann.conclusion) or "",
        reasoning=(review.reasoning if fixed and review else ann.reasoning) or "",
        corrected=fixed, reviewer=review.reviewer if review else None, teacher_model=ann.model,
        origin=ann.origin, derived_from=derived_from(ctx),
    )  # fmt: skip


def derived_from(ctx: Context) -> list[str]:
    """The documents a generated record drew on (its own first); empty for an annotated record."""
    if ctx.annotation.origin is None:
        return []
    return list(dict.fromkeys([ctx.document.id, *ctx.annotation.derivation.get("documents", [])]))


def _second_round_pair(example: TrainingExample, ann: Annotation) -> PreferencePair:
    """An approved correction: the teacher's answer over the tuned student's, for the origin's prompt."""
    return PreferencePair(annotation_id=ann.id, instruction=example.instruction, input=example.input,
                          chosen=example.output, rejected=ann.derivation["student_answer"], reviewer=example.reviewer,
                          origin="correction", origin_id=ann.derivation.get("of"))


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
    rejected_out: Path | None = None,
    force: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> ExportSummary:
    """Write the approved records and preference pairs (and, with `rejected_out`, the records a
    reviewer rejected); refuses (ExportRefused) unless the lot passed."""
    summary = ExportSummary(path=str(out), pairs_path=str(pairs_out), rejected_path=str(rejected_out or ""))
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
    # Two passes, so that memory holds a sort key per exported record, not the records: the first
    # decides what goes out and in which order, the second reads those records again and writes them.
    lot = _Membership(store.sample_lot(sample.id)) if sample is not None and sample.id is not None else None
    flags = store.flags(task_names=tasks)
    contexts = Contexts(store)
    paths: dict[str, int] = {}  # document path -> number, ranked by path after the pass
    keys: list[tuple[int, int, int, str]] = []  # (path number, chunk seq, item index, id) per exported record
    rejected_keys: list[tuple[int, int, int, str]] = []  # the same, per rejected record (with rejected_out)

    def key(ann: Annotation) -> tuple[int, int, int, str]:
        ctx = contexts.of(ann)
        return paths.setdefault(ctx.document.path, len(paths)), ctx.chunk.seq, ann.item_index, ann.id

    lot_usable = 0
    for ann in answered(store, tasks):
        outcome = every.get(ann.id)
        in_lot = lot is None or ann.id in lot
        lot_usable += in_lot
        rejected = outcome is not None and outcome.verdict == "reject"
        if rejected and rejected_out is not None and ann.conclusion is not None:
            rejected_keys.append(key(ann))
        if not in_lot and (outcome is None or rejected):  # outside the lot: only the approved
            summary.not_in_lot += outcome is None
            continue
        if ann.conclusion is None:  # a usable record always has one; counted as gone below
            lot_usable -= in_lot
            continue
        if rejected:
            summary.rejected += 1
            continue
        if outcome is None and ann.id in flags:
            summary.flagged += 1
            continue
        summary.by_review += outcome is not None
        summary.with_lot += outcome is None
        summary.outside_lot += not in_lot
        keys.append(key(ann))
    summary.gone = (len(lot) if lot is not None else lot_usable) - lot_usable  # re-annotated since the sample: no longer `ok`
    rank = {number: r for r, (_, number) in enumerate(sorted(paths.items()))}
    for found in (keys, rejected_keys):
        found.sort(key=lambda k: (rank[k[0]], k[1], k[2], k[3]))  # document order: readable, and stable across runs
    pairs: list[PreferencePair] = []

    def examples(keys: list[tuple[int, int, int, str]], *, training: bool) -> Iterator[TrainingExample]:
        for n, (_, _, _, aid) in enumerate(keys, 1):
            if on_progress and (n % 5000 == 0 or n == len(keys)):
                on_progress(n, len(keys))
            ann = store.annotation(aid)
            if ann is None or ann.conclusion is None:
                raise ExportRefused(f"record {aid} changed while exporting: run distill-qc export again")
            outcome = every.get(aid)
            example = _example(contexts.of(ann), outcome)
            summary.corrected += example.corrected
            if ann.origin == "correction":
                # A second round's correction trains as a preference pair, never as a plain example: its
                # prompt is an approved record's, which trains already. A rejected one goes nowhere.
                if training and "student_answer" in ann.derivation:
                    pairs.append(_second_round_pair(example, ann))
                    summary.second_round_pairs += 1
                continue
            if outcome is not None and outcome.verdict == "fix":
                pairs.append(_pair(example, outcome))
            if training and ann.origin is not None:
                summary.generated[ann.origin] = summary.generated.get(ann.origin, 0) + 1
            yield example

    summary.examples = write_jsonl(out, examples(keys, training=True))
    write_jsonl(pairs_out, pairs)
    summary.pairs = len(pairs)
    if rejected_out is not None:
        write_jsonl(rejected_out, examples(rejected_keys, training=False))  # a rejection is never a fix: no pairs, no corrections
    return summary


class _Membership:
    """Whether a record id is in a lot of up to millions, in 8 bytes an id (a sorted array of hashes)."""

    def __init__(self, ids: list[str]) -> None:
        self._hashes = np.sort(np.fromiter((_hash64(i) for i in ids), dtype=np.uint64, count=len(ids)))

    def __len__(self) -> int:
        return len(self._hashes)

    def __contains__(self, record_id: str) -> bool:
        h = np.uint64(_hash64(record_id))
        at = int(np.searchsorted(self._hashes, h))
        return at < len(self._hashes) and self._hashes[at] == h


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
