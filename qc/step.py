"""qc's step of `distill run`: automatic checks, a statistically sized sample, its review, the
report, and the approved records.

The `qc:` section of the project config:

    review: human          # human: the run stops after sampling until `distill qc review` is done
                           # scripted: a script accepts every sampled record (demos, smoke tests)
    sample: {aql: 2.5}     # how to draw: any `distill qc sample` setting (aql, level, margin, size,
                           # confidence, expected, target, by, flagged, seed)
    checks: {}             # thresholds of `distill qc check` (min_reasoning_chars, min_grounding, ...)
"""

from __future__ import annotations

import csv
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from distillery.config import validate
from distillery.pipeline import RunContext, StepResult
from distillery.records import Sample
from distillery.stages import Stage
from distillery.store import Store

from .checks import CheckConfig, run_checks
from .cli import _progress, main
from .export import export_approved
from .report import build_report, print_report
from .report_html import write_html
from .sampling import SampleSpec, create_sample, describe, lot_units, spec_of
from .spreadsheet import export_sheet, import_sheet

REVIEWER = "demo-script"  # who the scripted review says it is


class QCSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    review: Literal["human", "scripted"] = "human"
    sample: dict[str, Any] = Field(default_factory=dict)  # SampleSpec fields but the tasks
    checks: CheckConfig = Field(default_factory=CheckConfig)


class QCFigures(BaseModel):
    sample: str
    sample_size: int
    lot_size: int
    verdicts: dict[str, int]
    decision: str
    reviewer: str  # who gave the verdicts (the demo's script, or people)
    flagged: int
    approved: int  # records exported for training


def configure(section: dict[str, Any], ctx: RunContext) -> QCSettings:
    settings = validate(QCSettings, section, None, section="qc")
    validate(SampleSpec, {"tasks": ["-"], **settings.sample}, None, section="qc.sample")
    return settings


def current_sample(store: Store, task: str) -> Sample | None:
    """The latest sample of the task whose lot is still exactly the task's reviewable records;
    after new answers (more documents, an edited task) the old sample no longer speaks for them."""
    for sample in reversed(store.samples()):
        if task in sample.tasks:
            assert sample.id is not None
            current = {rid for rid, _ in lot_units(store, spec_of(sample))}
            return sample if current == set(store.sample_lot(sample.id)) else None
    return None


def unreviewed(store: Store, sample: Sample) -> int:
    return sample.size - len({r.annotation_id for r in store.reviews(sample_id=sample.id)})


def scripted_review(ctx: RunContext, store: Store, sample: Sample) -> None:
    """The demo's reviewer: the spreadsheet round trip a person would do offline, with every
    record accepted by a script. Real runs review with `distill qc review` instead."""
    sheet = ctx.workspace.review_sheets / f"review-{sample.name}.csv"
    ctx.command("qc", "sheet", "export", sheet, "-s", sample.name, "-r", REVIEWER)
    export_sheet(store, sample, REVIEWER, sheet)
    with sheet.open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    fields = list(rows[0]) if rows else []
    for row in rows:
        if not row["verdict"].strip():
            row["reviewer"], row["verdict"], row["note"] = REVIEWER, "accept", "scripted demo review"
    with sheet.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    ctx.console.print(f"scripted review: {len(rows)} sampled records accepted as '{REVIEWER}' in {ctx.show(sheet)}")
    ctx.command("qc", "sheet", "import", sheet)
    summary = import_sheet(store, sheet)
    ctx.console.print(f"{summary.added} verdicts imported, {summary.unchanged} already in the workspace")


def run(ctx: RunContext, settings: QCSettings) -> StepResult:
    ws, task = ctx.workspace, ctx.handoff.task
    assert task is not None, "qc runs after annotate"
    with Store.open(ws.root) as store:
        ctx.command("qc", "check", "-t", task)
        with _progress("checking records") as bar:
            checked = run_checks(store, [task], settings.checks, on_progress=bar, on_phase=bar.phase)
            bar.finish("checked", checked.records)
        ctx.console.print(f"{checked.records} records checked, {checked.flagged} flagged")
        sample = current_sample(store, task)
        if sample is not None:
            ctx.console.print(f"sample {sample.name} was drawn from these same records before: reviewing it, not drawing another")
        else:
            options = [f"--{key.replace('_', '-')}={value}" for key, value in settings.sample.items()]
            ctx.command("qc", "sample", "-t", task, *options)
            sample, plan = create_sample(store, SampleSpec(tasks=[task], **settings.sample))
            ctx.console.print(f"sample {sample.name}: {sample.size} of {sample.lot_size} records")
            for line in describe(plan):
                ctx.console.print(f"  {line}")
        if settings.review == "scripted":
            scripted_review(ctx, store, sample)
        elif left := unreviewed(store, sample):
            return StepResult(paused=(
                f"sample {sample.name} has {left} records waiting for a reviewer: run "
                f"`distill qc -w {ctx.show(ws.root)} review -s {sample.name}`, then the same `distill run` again"))
        ctx.command("qc", "report", "-s", sample.name)
        report = build_report(store, sample, str(ws.root))
        print_report(report, ctx.console)
        html = write_html(report, ws.reports / f"qc-{sample.name}.html")
        ctx.command("qc", "export", "-s", sample.name, "-t", task)
        exported = export_approved(store, sample=sample, task_names=[task], force=False, out=ws.approved,
                                   pairs_out=ws.preferences, rejected_out=ws.rejected)
        reviewers = sorted({r.reviewer for r in store.reviews(sample_id=sample.id)})
        figures = QCFigures(sample=sample.name, sample_size=sample.size, lot_size=sample.lot_size,
                            verdicts=report.verdicts, decision=report.decision.headline,
                            reviewer=", ".join(reviewers) or "nobody", flagged=len(store.flags(task_names=[task])),
                            approved=exported.examples)
    ctx.handoff.sample = sample.name
    return StepResult(
        figures=figures.model_dump(mode="json"),
        markdown=markdown(figures),
        summary=[f"review: sample {figures.sample} ({figures.sample_size} of {figures.lot_size}), "
                 f"{figures.decision.rstrip('.')}; {figures.approved} records approved"],
        outputs={"approved records": ws.approved, "QC report": html},
        notices=[f"the QC verdicts were given by a script ('{REVIEWER}'), not by a person: a demo, not a review"]
        if REVIEWER in reviewers else [],
    )


def markdown(q: QCFigures) -> list[str]:
    return [
        "## Quality control", "",
        f"- {q.flagged} records flagged by the checks; sample {q.sample} of {q.sample_size} from a lot of {q.lot_size}, "
        f"verdicts {q.verdicts} by {q.reviewer}. {q.decision.rstrip('.')}. {q.approved} records approved for training",
    ]


STAGE = Stage(name="qc", help="checks, a sized sample, its review, the approved records", command=main,
              configure=configure, run=run)
