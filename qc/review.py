"""One reviewer's pass over a sample, independent of any screen.

Every verdict goes to the store the moment it is given (committed before the call returns), so
a quit, a closed terminal or kill -9 loses at most the record on screen. A session resumes
after the last record this reviewer acted on, at the first one still without their verdict.
"""

from __future__ import annotations

from collections import Counter

from distillery.errors import DistilleryError
from distillery.records import SEPARATOR, Review, Sample, Verdict
from distillery.store import Store

from .lot import Context, Contexts
from .verdicts import current

# Why a record was rejected (or what a fix repaired). Keys are stored; the words are shown.
REASONS: dict[str, str] = {
    "wrong_conclusion": "wrong conclusion or label",
    "unsupported": "reasoning wrong or not supported by the source",
    "hallucination": "states facts that are not in the source",
    "bad_question": "question unclear or not answerable from the source",
    "format": "format or language problem",
    "duplicate": "duplicate of another record",
    "other": "other (see the note)",
}


class ReviewError(DistilleryError, ValueError):
    """A verdict that cannot be recorded as given; the message says what is missing."""


def validate_fix(ctx: Context, conclusion: str, reasoning: str) -> None:
    """A correction must change something, keep the contract and, with a label set, use a label."""
    ann = ctx.annotation
    if not conclusion.strip() or not reasoning.strip():
        raise ReviewError("a fixed answer needs both a conclusion and a reasoning")
    if SEPARATOR in conclusion or SEPARATOR in reasoning:
        raise ReviewError(f"'{SEPARATOR}' separates conclusion and reasoning; it cannot appear inside them")
    labels = ctx.task.labels(ann.step)
    if labels and conclusion not in labels:
        raise ReviewError(f"'{conclusion}' is not one of the task's labels: {' | '.join(labels)}")
    if conclusion == ann.conclusion and reasoning == (ann.reasoning or ""):
        raise ReviewError("nothing changed")


def make_review(
    ctx: Context,
    *,
    reviewer: str,
    verdict: Verdict,
    sample_id: int | None,
    source: str,
    reason: str | None = None,
    note: str | None = None,
    conclusion: str | None = None,
    reasoning: str | None = None,
) -> Review:
    """A validated verdict on one record, with the teacher's answer as the reviewer saw it."""
    if not reviewer.strip():
        raise ReviewError("a verdict needs the reviewer's name")
    if reason is not None and reason not in REASONS:
        raise ReviewError(f"reason '{reason}' is not one of {', '.join(REASONS)}")
    if verdict == "reject" and reason is None:
        raise ReviewError(f"a rejection needs a reason: one of {', '.join(REASONS)}")
    if verdict == "fix":
        if conclusion is None or reasoning is None:
            raise ReviewError("a fix needs the corrected conclusion and reasoning")
        validate_fix(ctx, conclusion, reasoning)
    elif conclusion is not None or reasoning is not None:
        raise ReviewError(f"only a fix carries a corrected answer, not {verdict}")
    ann = ctx.annotation
    return Review(sample_id=sample_id, annotation_id=ann.id, reviewer=reviewer.strip(), verdict=verdict,
                  reason=reason, note=(note or "").strip() or None, conclusion=conclusion, reasoning=reasoning,
                  original_conclusion=ann.conclusion, original_reasoning=ann.reasoning, source=source)


class ReviewSession:
    def __init__(self, store: Store, sample: Sample, reviewer: str) -> None:
        assert sample.id is not None
        self.store, self.sample, self.reviewer = store, sample, reviewer
        self.items = store.sample_items(sample.id)
        self._lookup = Contexts(store)
        self._contexts: dict[int, Context] = {}  # by position: the screen redraws often
        ids = [item.annotation_id for item in self.items]
        # This reviewer's verdicts on these records, from any sample or spreadsheet.
        mine = store.reviews(reviewer=reviewer, annotation_ids=ids)
        self.verdicts: dict[str, Review] = {aid: r for (aid, _), r in current(mine).items()}
        in_sample = [r for r in mine if r.sample_id == sample.id]
        self._last_position = self._position(in_sample[-1].annotation_id) if in_sample else -1
        self.given = Counter[str]()  # this session's verdicts
        self.flags = store.flags(task_names=sample.tasks)  # shown next to each record
        self.judgements = store.judgements(task_names=sample.tasks)

    def __len__(self) -> int:
        return len(self.items)

    def _position(self, annotation_id: str) -> int:
        return next(i for i, item in enumerate(self.items) if item.annotation_id == annotation_id)

    def context(self, index: int) -> Context:
        if index not in self._contexts:
            self._contexts[index] = self._lookup.by_id(self.items[index].annotation_id)
        return self._contexts[index]

    def verdict(self, index: int) -> Review | None:
        return self.verdicts.get(self.items[index].annotation_id)

    @property
    def done(self) -> int:
        return sum(item.annotation_id in self.verdicts for item in self.items)

    def counts(self) -> Counter[str]:
        return Counter(self.verdicts[i.annotation_id].verdict for i in self.items if i.annotation_id in self.verdicts)

    def next_open(self, after: int) -> int | None:
        """The first record after `after` (wrapping around) without this reviewer's verdict."""
        n = len(self.items)
        for step in range(1, n + 1):
            index = (after + step) % n
            if self.verdict(index) is None:
                return index
        return None

    def resume_index(self) -> int | None:
        """Where to start: after the last record acted on, at the first one still open."""
        return self.next_open(self._last_position)

    def give(self, index: int, verdict: Verdict, **details: str | None) -> Review:
        """Record a verdict (or a skip) on the record at `index`; committed when this returns."""
        review = make_review(self.context(index), reviewer=self.reviewer, verdict=verdict, sample_id=self.sample.id,
                             source="screen", **details)
        review = self.store.add_review(review)
        if verdict != "skip":
            self.verdicts[review.annotation_id] = review
        self.given[verdict] += 1
        self._last_position = index
        return review
