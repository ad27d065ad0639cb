"""From the review log to decisions: each record's verdict, and the lot's.

The log is append-only. A reviewer's current verdict on a record is their latest accept, reject
or fix (a skip only moves their cursor). When reviewers disagree the record takes the most
severe verdict (reject > fix > accept), and a record counts as bad ("defective") when it was
rejected or had to be fixed: the teacher's answer was not good enough as it stood.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel

from distillery.records import VERDICTS, Review

from .sampling import Plan
from .stats import Interval, wilson

_SEVERITY = {"accept": 0, "fix": 1, "reject": 2}


class Outcome(BaseModel):
    annotation_id: str
    verdict: Literal["accept", "reject", "fix"]
    decisive: Review  # the review behind the verdict (and the correction, for a fix)
    by_reviewer: dict[str, Review]  # each reviewer's current verdict

    @property
    def defective(self) -> bool:
        return self.verdict != "accept"


def current(reviews: Iterable[Review]) -> dict[tuple[str, str], Review]:
    """Each (record, reviewer)'s latest decision; skips are not decisions."""
    latest: dict[tuple[str, str], Review] = {}
    for review in sorted(reviews, key=lambda r: r.id or 0):
        if review.verdict in VERDICTS:
            latest[(review.annotation_id, review.reviewer)] = review
    return latest


def outcomes(reviews: Iterable[Review]) -> dict[str, Outcome]:
    """Each reviewed record's verdict: the most severe of its reviewers' current verdicts."""
    grouped: dict[str, dict[str, Review]] = {}
    for (annotation_id, reviewer), review in current(reviews).items():
        grouped.setdefault(annotation_id, {})[reviewer] = review
    out = {}
    for annotation_id, by_reviewer in grouped.items():
        decisive = max(by_reviewer.values(), key=lambda r: (_SEVERITY[r.verdict], r.id or 0))
        out[annotation_id] = Outcome(annotation_id=annotation_id, verdict=decisive.verdict, decisive=decisive,
                                     by_reviewer=by_reviewer)
    return out


Status = Literal["accept", "reject", "pending", "inconclusive"]


class Decision(BaseModel):
    status: Status
    headline: str  # one sentence: what to do and why
    sample_size: int
    reviewed: int
    defective: int
    acceptance: Interval  # share of reviewed records accepted as they stood

    @property
    def train(self) -> bool:
        return self.status == "accept"


def decide(plan: Plan, sample_outcomes: list[Outcome]) -> Decision:
    """The lot decision from the verdicts on the sample's records."""
    reviewed = len(sample_outcomes)
    bad = sum(o.defective for o in sample_outcomes)
    rate = wilson(reviewed - bad, reviewed, plan.confidence)
    n = plan.n
    said = f"{bad} of {reviewed} reviewed records were rejected or fixed"
    status: Status
    if plan.iso:
        iso = plan.iso
        if bad >= iso.reject:
            status = "reject"
            headline = f"Do not train on this lot: {said}, reaching the plan's rejection number {iso.reject}"
            if reviewed < n:
                headline += f" before the end of the sample ({reviewed} of {n}); reviewing the rest cannot change it"
        elif reviewed < n:
            status = "pending"
            headline = (f"Not decided yet: {reviewed} of {n} sampled records reviewed, {bad} bad so far "
                        f"(the lot fails at {iso.reject}); review the remaining {n - reviewed}")
        else:
            status = "accept"
            headline = (f"Train on this lot: {said}, within the plan's acceptance number {iso.accept} "
                        f"(ISO 2859-1, AQL {iso.aql:g}%)")
    else:
        target = plan.target or 0.0
        interval = f"{rate.low:.1%}-{rate.high:.1%}"
        if reviewed < n:
            status = "pending"
            headline = f"Not decided yet: {reviewed} of {n} sampled records reviewed; review the remaining {n - reviewed}"
        elif plan.census:
            # Every record of the lot was reviewed: its rate is known exactly, not estimated.
            met = rate.estimate is not None and rate.estimate >= target
            status = "accept" if met else "reject"
            headline = (f"{'Train on' if met else 'Do not train on'} this lot: every one of its {plan.lot_size} records "
                        f"was reviewed and {rate.estimate:.1%} were accepted, {'at or above' if met else 'below'} the "
                        f"target {target:.0%}")
        elif rate.low >= target:
            status = "accept"
            headline = (f"Train on this lot: {rate.estimate:.1%} accepted, and the {plan.confidence:.0%} interval "
                        f"{interval} is at or above the target {target:.0%}")
        elif rate.high < target:
            status = "reject"
            headline = (f"Do not train on this lot: {rate.estimate:.1%} accepted, and the whole {plan.confidence:.0%} "
                        f"interval {interval} is below the target {target:.0%}")
        else:
            status = "inconclusive"
            headline = (f"Inconclusive: {rate.estimate:.1%} accepted, but the {plan.confidence:.0%} interval {interval} "
                        f"contains the target {target:.0%}; review a larger sample or decide yourself")
    return Decision(status=status, headline=headline + ".", sample_size=n, reviewed=reviewed, defective=bad,
                    acceptance=rate)
