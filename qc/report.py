"""The QC report: whether to train on the lot, and the evidence, as terminal tables.

Everything a lead needs to read in one place: the decision and why, the acceptance rate with
its 95% Wilson interval (overall, by label, by source document, by task, by reviewer), why
records were rejected, how well the automatic checks predicted the reviewers, and whether the
reviewers agree with each other. `qc.report_html` renders the same `QCReport` as one HTML file.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from itertools import combinations

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table
from rich.text import Text

from distillery.formatting import pct
from distillery.records import Sample, utcnow
from distillery.store import Store

from .export import sample_decision
from .lot import Contexts
from .review import REASONS
from .sampling import Plan, SampleSpec, describe, plan_of, spec_of
from .stats import Agreement, Interval, acceptance_probability, agreement, wilson
from .verdicts import Decision, Outcome, current

TOP_DOCUMENTS = 25


class GroupRow(BaseModel):
    key: str
    reviewed: int
    accepted: int
    rate: Interval


class ReasonRow(BaseModel):
    reason: str
    rejected: int
    fixed: int


class FlagRow(BaseModel):
    kind: str
    flagged: int  # reviewed records carrying this flag
    bad: int  # of which reviewers rejected or fixed
    precision: float | None  # bad / flagged: when the check fires, how often it is right
    recall: float | None  # bad / all bad records: how many of the bad ones it catches


class PairRow(BaseModel):
    a: str
    b: str
    good_bad: Agreement  # accept vs (reject or fix): what decides the lot
    verdicts: Agreement  # accept / reject / fix


class JudgeRow(BaseModel):
    verdict: str
    n: int
    mean_score: float


class QCReport(BaseModel):
    workspace: str
    generated_at: str
    sample: str
    tasks: list[str]
    sampled_at: str
    spec: SampleSpec
    plan: Plan
    plan_text: list[str]
    decision: Decision
    verdicts: dict[str, int]
    by_label: list[GroupRow]
    by_document: list[GroupRow]
    documents_total: int
    by_task: list[GroupRow]
    by_reviewer: list[GroupRow]
    reasons: list[ReasonRow]
    flags: list[FlagRow]
    flags_in_sample: int  # reviewed records that carry any flag
    lot_flags: dict[str, int]  # flag counts over all the tasks' records
    agreement: list[PairRow]
    judge: list[JudgeRow]
    oc: list[tuple[float, float]]  # (defect rate, chance the plan passes such a lot)


def _groups(keyed: Iterable[tuple[str, bool]], confidence: float) -> list[GroupRow]:
    """Acceptance per group from (group, accepted) pairs, biggest groups first."""
    seen: Counter[str] = Counter()
    good: Counter[str] = Counter()
    for key, accepted in keyed:
        seen[key] += 1
        good[key] += accepted
    return [GroupRow(key=k, reviewed=n, accepted=good[k], rate=wilson(good[k], n, confidence))
            for k, n in sorted(seen.items(), key=lambda kv: (-kv[1], kv[0]))]


def _flag_rows(reviewed: list[Outcome], flags: dict[str, list[str]]) -> list[FlagRow]:
    bad_total = sum(o.defective for o in reviewed)
    kinds = sorted({k for o in reviewed for k in flags.get(o.annotation_id, [])})
    rows = []
    for kind in [*kinds, "any flag"]:
        hit = [o for o in reviewed if (kind in flags.get(o.annotation_id, []) if kind != "any flag" else flags.get(o.annotation_id))]
        bad = sum(o.defective for o in hit)
        rows.append(FlagRow(kind=kind, flagged=len(hit), bad=bad, precision=bad / len(hit) if hit else None,
                            recall=bad / bad_total if bad_total else None))
    return rows if kinds else []


def _oc(plan: Plan) -> list[tuple[float, float]]:
    if plan.iso is None:
        return []
    top = max(0.2, plan.iso.aql / 100 * 4)
    return [(top * i / 50, acceptance_probability(plan.n, plan.iso.accept, top * i / 50)) for i in range(51)]


def build_report(store: Store, sample: Sample, workspace: str) -> QCReport:
    """Everything the report shows, computed from the store."""
    assert sample.id is not None
    plan, spec = plan_of(sample), spec_of(sample)
    decision, every = sample_decision(store, sample)
    items = store.sample_items(sample.id)
    reviewed = [every[i.annotation_id] for i in items if i.annotation_id in every]
    contexts = Contexts(store)
    ctx = {o.annotation_id: contexts.by_id(o.annotation_id) for o in reviewed}
    conf = plan.confidence

    labelled = [o for o in reviewed if ctx[o.annotation_id].task.labels(ctx[o.annotation_id].annotation.step)]
    by_label = _groups(((o.decisive.original_conclusion or "", not o.defective) for o in labelled), conf)
    by_document = _groups(((ctx[o.annotation_id].document.path, not o.defective) for o in reviewed), conf)
    by_task = _groups(((ctx[o.annotation_id].annotation.task_name, not o.defective) for o in reviewed), conf)
    item_ids = {i.annotation_id for i in items}
    mine = [r for (aid, _), r in current(store.reviews(annotation_ids=item_ids)).items()]
    by_reviewer = _groups(((r.reviewer, r.verdict == "accept") for r in mine), conf)

    reasons: dict[str, Counter[str]] = {}
    for o in reviewed:
        if o.defective:
            reasons.setdefault(o.decisive.reason or "(no reason given)", Counter())[o.verdict] += 1
    reason_rows = sorted((ReasonRow(reason=r, rejected=c["reject"], fixed=c["fix"]) for r, c in reasons.items()),
                         key=lambda row: -(row.rejected + row.fixed))

    flags = {aid: [f.kind for f in fs] for aid, fs in store.flags(task_names=sample.tasks).items()}
    pairs = []
    reviewers = sorted({r.reviewer for r in mine})
    by_pair = {(r.annotation_id, r.reviewer): r.verdict for r in mine}
    for a, b in combinations(reviewers, 2):
        common = sorted(aid for aid in item_ids if (aid, a) in by_pair and (aid, b) in by_pair)
        va, vb = [by_pair[(x, a)] for x in common], [by_pair[(x, b)] for x in common]
        if common:
            good_bad = agreement(*([("good" if v == "accept" else "bad") for v in vs] for vs in (va, vb)))
            pairs.append(PairRow(a=a, b=b, verdicts=agreement(va, vb), good_bad=good_bad))

    scores: dict[str, list[int]] = {}
    judged = store.judgements(task_names=sample.tasks)
    for o in reviewed:
        for j in judged.get(o.annotation_id, []):
            if j.score is not None:
                scores.setdefault(o.verdict, []).append(j.score)
    judge = [JudgeRow(verdict=v, n=len(s), mean_score=sum(s) / len(s)) for v, s in sorted(scores.items())]

    return QCReport(
        workspace=workspace, generated_at=utcnow(), sample=sample.name, tasks=sample.tasks,
        sampled_at=sample.created_at, spec=spec, plan=plan, plan_text=describe(plan), decision=decision,
        verdicts=dict(Counter(o.verdict for o in reviewed)), by_label=by_label,
        by_document=by_document[:TOP_DOCUMENTS], documents_total=len(by_document), by_task=by_task,
        by_reviewer=by_reviewer, reasons=reason_rows, flags=_flag_rows(reviewed, flags),
        flags_in_sample=sum(bool(flags.get(o.annotation_id)) for o in reviewed),
        lot_flags=dict(Counter(k for ks in flags.values() for k in ks)), agreement=pairs, judge=judge, oc=_oc(plan),
    )  # fmt: skip


# -- terminal -------------------------------------------------------------------------------------

DECISION_STYLE = {"accept": "bold green", "reject": "bold red", "pending": "bold yellow", "inconclusive": "bold yellow"}
DECISION_WORD = {"accept": "TRAIN", "reject": "DO NOT TRAIN", "pending": "NOT DECIDED YET", "inconclusive": "INCONCLUSIVE"}


def interval_text(rate: Interval) -> str:
    return f"{pct(rate.estimate)}  [{rate.low:.1%}, {rate.high:.1%}]"


def _group_table(title: str, rows: list[GroupRow], key: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col, justify in ((key, "left"), ("reviewed", "right"), ("accepted", "right"), ("rate [95% CI]", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(row.key, str(row.reviewed), str(row.accepted), interval_text(row.rate))
    return table


def print_report(report: QCReport, console: Console) -> None:
    d = report.decision
    console.print(Text(d.headline, style=DECISION_STYLE[d.status]))
    console.print(f"sample {report.sample} of task {', '.join(report.tasks)} · lot {report.plan.lot_size} records · "
                  f"{d.reviewed} of {d.sample_size} sampled records reviewed")
    for line in report.plan_text:
        console.print(f"  {line}", style="dim")
    summary = Table(title="verdicts", title_justify="left", show_header=False)
    summary.add_row("acceptance rate [95% Wilson CI]", interval_text(d.acceptance))
    for verdict in ("accept", "fix", "reject"):
        summary.add_row(verdict, str(report.verdicts.get(verdict, 0)))
    console.print(summary)
    if not d.reviewed:
        console.print("no verdicts yet: distill-qc review --sample " + report.sample)
        return
    if report.by_label:
        console.print(_group_table("by the teacher's label", report.by_label, "label"))
    if len(report.by_task) > 1:
        console.print(_group_table("by task", report.by_task, "task"))
    more = f" (top {len(report.by_document)} of {report.documents_total})" if report.documents_total > len(report.by_document) else ""
    console.print(_group_table(f"by source document{more}", report.by_document, "document"))
    console.print(_group_table("by reviewer (each reviewer's own verdicts)", report.by_reviewer, "reviewer"))
    if report.reasons:
        table = Table(title="why records were rejected or fixed", title_justify="left")
        for col in ("reason", "rejected", "fixed"):
            table.add_column(col, justify="left" if col == "reason" else "right")
        for row in report.reasons:
            table.add_row(REASONS.get(row.reason, row.reason), str(row.rejected), str(row.fixed))
        console.print(table)
    if report.flags:
        table = Table(title="automatic checks vs reviewers (reviewed records)", title_justify="left")
        for col in ("flag", "flagged", "found bad", "precision", "recall"):
            table.add_column(col, justify="left" if col == "flag" else "right")
        for row in report.flags:
            table.add_row(row.kind, str(row.flagged), str(row.bad), pct(row.precision), pct(row.recall))
        console.print(table)
    else:
        console.print("automatic checks vs reviewers: no reviewed record carries a flag"
                      + (" (the sample left flagged records out; draw one with --flagged include to measure the checks)"
                         if report.spec.flagged == "exclude" else ""), style="dim")
    if report.agreement:
        table = Table(title="reviewer agreement (records both reviewed)", title_justify="left")
        for col in ("reviewers", "records", "agree (good/bad)", "kappa (good/bad)", "kappa (3 verdicts)"):
            table.add_column(col, justify="left" if col == "reviewers" else "right")
        for p in report.agreement:
            kappa = "-" if p.good_bad.kappa is None else f"{p.good_bad.kappa:.2f} ({p.good_bad.words})"
            k3 = "-" if p.verdicts.kappa is None else f"{p.verdicts.kappa:.2f}"
            table.add_row(f"{p.a} · {p.b}", str(p.good_bad.n), pct(p.good_bad.percent), kappa, k3)
        console.print(table)
    if report.judge:
        console.print("judge score by verdict: " + ", ".join(f"{j.verdict} {j.mean_score:.1f} (n={j.n})" for j in report.judge))
    if report.lot_flags:
        console.print("flags over all records: " + ", ".join(f"{k} {n}" for k, n in sorted(report.lot_flags.items())), style="dim")

