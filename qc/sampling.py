"""Drawing a review sample: how many records, which ones, and what the result will decide.

Two ways to size it, both stated in plain words before anyone reviews:
- a lot-acceptance plan from ISO 2859-1 (lot size -> code letter -> n, Ac, Re for an AQL);
- an estimate: enough records that the 95% Wilson interval of the acceptance rate is at most
  +/- margin wide, and a target rate the interval is compared with (or a size you pick).

Samples are reproducible: the same lot and seed always draw the same records in the same order.
Stratified samples allocate proportionally (largest remainder), so every record still has the
same chance of being drawn and the plain acceptance rate stays an unbiased estimate.
"""

from __future__ import annotations

import math
import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from distillery.records import NEW_TASK_ORIGINS, Sample
from distillery.store import Store

from .iso2859 import IsoPlan, PlanError, iso_plan
from .lot import Contexts, LotError, answered
from .stats import acceptance_probability, wilson, wilson_half_width, wilson_sample_size

DEFAULT_AQL = 2.5
Strata = Literal["random", "label", "document", "task"]


class SampleSpec(BaseModel):
    """What the user asked for; stored with the sample."""

    model_config = ConfigDict(extra="forbid")
    tasks: list[str]
    by: Strata = "random"
    flagged: Literal["exclude", "include"] = "exclude"  # auto-flagged records in the lot or not
    seed: int | None = None  # None: 1 for the workspace's first sample, 2 for the second...: they differ
    aql: float | None = None  # ISO 2859-1 plan, percent nonconforming
    level: str = "II"  # ISO 2859-1 inspection level
    margin: float | None = Field(None, gt=0, lt=0.5)  # estimate plan: Wilson half-width wanted
    size: int | None = Field(None, ge=1)  # estimate plan with a size you pick
    confidence: float = Field(0.95, gt=0, lt=1)
    expected: float = Field(0.9, ge=0, le=1)  # acceptance rate you expect (sizes the margin plan)
    target: float = Field(0.9, ge=0, le=1)  # estimate plans: the lowest acceptance rate you accept

    @model_validator(mode="after")
    def _one_sizing(self) -> SampleSpec:
        chosen = [name for name in ("aql", "margin", "size") if getattr(self, name) is not None]
        if len(chosen) > 1:
            raise ValueError(f"choose one way to size the sample, not {' and '.join(chosen)}")
        if not chosen:
            self.aql = DEFAULT_AQL
        return self


class Plan(BaseModel):
    """What a sample decides, and how."""

    kind: Literal["iso", "estimate"]
    lot_size: int
    n: int
    census: bool  # the sample is the whole lot
    confidence: float
    iso: IsoPlan | None = None
    margin: float | None = None  # estimate: the half-width the size was chosen for (None: size picked)
    unlimited_n: int | None = None  # estimate by margin: the size before the finite-population correction
    expected: float | None = None
    target: float | None = None

    @property
    def one_line(self) -> str:
        if self.iso:
            letter = self.iso.code_letter + (f" (plan {self.iso.plan_letter})" if self.iso.plan_letter != self.iso.code_letter else "")
            return (f"ISO 2859-1 level {self.iso.level} code {letter}, AQL {self.iso.aql:g}%: "
                    f"review {self.n}, pass at <= {self.iso.accept} bad, fail at {self.iso.reject}")
        return f"estimate: review {self.n}, pass if the {self.confidence:.0%} interval is >= {self.target:.0%}"


def make_plan(spec: SampleSpec, lot_size: int) -> Plan:
    if lot_size < 1:
        raise LotError("the lot is empty: nothing to sample")
    if spec.aql is not None:
        try:
            iso = iso_plan(lot_size, spec.aql, spec.level)
        except PlanError as exc:
            raise LotError(str(exc)) from exc
        return Plan(kind="iso", lot_size=lot_size, n=iso.sample_size, census=iso.census, confidence=spec.confidence, iso=iso)
    if spec.size is not None:
        wanted, unlimited = spec.size, None
    else:
        # Sized for an infinite population, then corrected for this lot: drawing without
        # replacement from a small lot pins its rate down with fewer records.
        unlimited = wilson_sample_size(spec.margin or 0.05, spec.confidence, spec.expected)
        wanted = finite_population_size(unlimited, lot_size)
    return Plan(kind="estimate", lot_size=lot_size, n=min(wanted, lot_size), census=wanted >= lot_size,
                confidence=spec.confidence, margin=spec.margin, expected=spec.expected, target=spec.target,
                unlimited_n=unlimited)


def finite_population_size(n: int, lot_size: int) -> int:
    """The sample size `n` (sized for an unlimited population) corrected for a lot of `lot_size`."""
    return math.ceil(n / (1 + (n - 1) / lot_size))


def smallest_passing_size(target: float, confidence: float) -> int:
    """The fewest records whose Wilson interval clears `target` when every one is accepted."""
    n = 1
    while wilson(n, n, confidence).low < target:
        n += 1
    return n


def _rate_accepted_with(n: int, accept: int, chance: float) -> float:
    """The defect rate at which the plan passes a lot with this chance (bisection on the OC curve)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if acceptance_probability(n, accept, mid) > chance:
            lo = mid
        else:
            hi = mid
    return lo


def describe(plan: Plan) -> list[str]:
    """The plan in plain words, for the person about to review."""
    lines = []
    if plan.census:
        lines.append(f"The lot is small ({plan.lot_size} records): review every one of them.")
    if plan.iso:
        iso = plan.iso
        kind = "special" if iso.level.startswith("S") else "general"
        how = (f"Plan: ISO 2859-1, {kind} inspection level {iso.level}, normal inspection, single sampling. "
               f"A lot of {plan.lot_size} records has code letter {iso.code_letter}")
        if iso.plan_letter != iso.code_letter:
            how += f"; for AQL {iso.aql:g}% the table's arrow points to the plan of letter {iso.plan_letter}"
        lines.append(how + f": review {plan.n} records drawn at random.")
        lines.append(f"A record is bad if a reviewer rejects it or has to fix it. The lot passes if at most "
                     f"{iso.accept} of the {plan.n} are bad, and fails as soon as {iso.reject} "
                     f"{'is' if iso.reject == 1 else 'are'}.")
        good = acceptance_probability(plan.n, iso.accept, iso.aql / 100)
        limit = _rate_accepted_with(plan.n, iso.accept, 0.10)
        lines.append(f"What that means: a lot with {iso.aql:g}% bad records (the AQL) passes {good:.0%} of the time; "
                     f"one with {limit:.1%} bad or more passes at most 10% of the time.")
    else:
        assert plan.target is not None and plan.expected is not None
        width = wilson_half_width(plan.expected, plan.n, plan.confidence) if plan.n else 1.0
        why = (f"enough to know the share of good records within +/-{plan.margin:.1%}" if plan.margin
               else f"the size you chose; it pins the share of good records to about +/-{width:.1%}")
        lines.append(f"Plan: estimate the acceptance rate. Review {plan.n} records drawn at random: {why} at "
                     f"{plan.confidence:.0%} confidence (Wilson interval), if it is near {plan.expected:.0%}.")
        if plan.unlimited_n is not None and plan.unlimited_n > plan.n and not plan.census:
            lines.append(f"Sized for this lot of {plan.lot_size} (finite-population correction): {plan.n} records "
                         f"instead of the {plan.unlimited_n} an unlimited lot would need.")
        if plan.census:
            lines.append(f"Every record is reviewed, so the acceptance rate is known exactly: the lot passes when it is "
                         f"at or above the target {plan.target:.0%}.")
        else:
            lines.append(f"The lot passes when the whole {plan.confidence:.0%} interval is at or above the target "
                         f"{plan.target:.0%}, fails when the whole interval is below it, and is inconclusive otherwise.")
            if wilson(plan.n, plan.n, plan.confidence).low < plan.target:
                need = smallest_passing_size(plan.target, plan.confidence)
                lines.append(f"Warning: {plan.n} records cannot pass even if every one is accepted (the interval of "
                             f"{plan.n} of {plan.n} starts at {wilson(plan.n, plan.n, plan.confidence).low:.1%}); "
                             f"a pass needs at least {need} records: sample with --size {need} or more, or --margin.")
    return lines


def allocate(sizes: dict[str, int], n: int) -> dict[str, int]:
    """Proportional allocation of n over strata by largest remainder (ties: stratum order)."""
    total = sum(sizes.values())
    quotas = {k: n * size / total for k, size in sizes.items()}
    out = {k: int(q) for k, q in quotas.items()}
    for k in sorted(quotas, key=lambda k: (-(quotas[k] - out[k]), k))[: n - sum(out.values())]:
        out[k] += 1
    return out


def draw(units: list[tuple[str, str]], n: int, seed: int) -> list[tuple[str, str]]:
    """n of the (record id, stratum) units, stratified proportionally, in a seeded random order."""
    rng = random.Random(seed)
    strata: dict[str, list[str]] = {}
    for record_id, stratum in sorted(units):
        strata.setdefault(stratum, []).append(record_id)
    quota = allocate({k: len(v) for k, v in strata.items()}, min(n, len(units)))
    picked = [(rid, k) for k in sorted(strata) for rid in rng.sample(strata[k], quota[k])]
    rng.shuffle(picked)
    return picked


def _stratum(store: Store, by: Strata, ann_task: str, conclusion: str | None, chunk_id: str, paths: dict[str, str]) -> str:
    if by == "random":
        return "all"
    if by == "task":
        return ann_task
    if by == "label":
        return conclusion or ""
    chunk = store.chunk(chunk_id)
    assert chunk is not None  # foreign key
    if chunk.document_id not in paths:
        doc = store.document(chunk.document_id)
        paths[chunk.document_id] = doc.path if doc else chunk.document_id
    return paths[chunk.document_id]


def lot_units(store: Store, spec: SampleSpec) -> list[tuple[str, str]]:
    """The lot as (record id, stratum): the tasks' trainable records, flagged ones per the spec."""
    flagged = store.flags(task_names=spec.tasks) if spec.flagged == "exclude" else {}
    if spec.by == "label":
        contexts = Contexts(store)
        for name in spec.tasks:
            ann = next(answered(store, [name]), None)
            if ann is not None and not contexts.task(ann.task_hash).labels(ann.step):
                raise LotError(f"task {name} has no closed label set to stratify by; use --by document or --by task")
    paths: dict[str, str] = {}
    return [
        # A record with its own instruction answers a task of its own: its conclusion is no label of the lot's.
        (ann.id, _stratum(store, spec.by, ann.task_name,
                          f"({ann.origin})" if ann.origin in NEW_TASK_ORIGINS else ann.conclusion, ann.chunk_id, paths))
        for ann in answered(store, spec.tasks)
        if ann.id not in flagged
    ]


def next_name(store: Store) -> str:
    taken = {s.name for s in store.samples()}
    return next(f"s{i}" for i in range(1, len(taken) + 2) if f"s{i}" not in taken)


def create_sample(store: Store, spec: SampleSpec, name: str | None = None) -> tuple[Sample, Plan]:
    """Draw and store a sample (with a snapshot of its lot). Returns it and its plan."""
    name = name or next_name(store)
    if store.sample(name) is not None:
        raise LotError(f"a sample named '{name}' exists already; pick another --name")
    if spec.seed is None:
        spec = spec.model_copy(update={"seed": len(store.samples()) + 1})
    assert spec.seed is not None
    units = lot_units(store, spec)
    if not units:
        why = " (every record is flagged: see `distill-qc check`, or sample with --flagged include)" if spec.flagged == "exclude" else ""
        raise LotError(f"no records to sample in task {', '.join(spec.tasks)}{why}")
    plan = make_plan(spec, len(units))
    items = draw(units, plan.n, spec.seed)
    sample = Sample(name=name, tasks=spec.tasks, spec=spec.model_dump(), plan=plan.model_dump(),
                    lot_size=len(units), size=len(items))
    return store.create_sample(sample, lot=(rid for rid, _ in units), items=items), plan


def plan_of(sample: Sample) -> Plan:
    return Plan.model_validate(sample.plan)


def spec_of(sample: Sample) -> SampleSpec:
    return SampleSpec.model_validate(sample.spec)
