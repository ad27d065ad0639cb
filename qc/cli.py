"""`distill-qc`: a thin shell over qc's library API (check, sample, review, sheet, report, export)."""

from __future__ import annotations

import asyncio
import getpass
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from distillery.errors import ConfigError
from distillery.options import CommandGroup, teacher_options, workspace_option
from distillery.privacy import describe_found
from distillery.records import Sample
from distillery.store import Store
from distillery.teacher_config import load_job_config
from distillery.workspace import DB_NAME, Workspace

from . import checks, judge
from .export import (
    ExportRefused,
    export_approved,
    sample_decision,
)
from .lot import LotError, resolve_tasks
from .report import DECISION_STYLE, DECISION_WORD, build_report, print_report
from .report_html import write_html
from .review import ReviewSession
from .sampling import SampleSpec, create_sample, describe, plan_of, spec_of
from .screen import ReviewScreen, Terminal
from .spreadsheet import SheetError, export_sheet, import_sheet

console = Console(stderr=True, soft_wrap=True)  # messages and progress; tables go to stdout
out = Console(highlight=False)


def default_reviewer() -> str:
    return os.environ.get("DISTILLERY_REVIEWER") or getpass.getuser()


@contextmanager
def _store(ctx: click.Context) -> Iterator[Store]:
    """The workspace store; library errors come out as one clear line, not a traceback."""
    workspace = Workspace(ctx.obj["workspace"])
    if not workspace.exists():
        raise click.ClickException(f"no workspace at {workspace.root} (no {DB_NAME}): run distill-annotate first, or pass -w")
    with Store.open(workspace.root) as store:
        try:
            yield store
        except (LotError, SheetError, ExportRefused, ConfigError) as exc:
            raise click.ClickException(str(exc)) from exc


class _Bar:
    """A rich progress bar that appears at its first step (a refusal before it draws nothing)."""

    def __init__(self, description: str) -> None:
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("ETA"), TimeRemainingColumn()]
        self.progress = Progress(*columns, console=console, transient=False)
        self.task = self.progress.add_task(description, total=None)

    def __call__(self, done: int, total: int) -> None:
        if not self.progress.live.is_started:
            self.progress.start()
        self.progress.update(self.task, completed=done, total=total)

    def phase(self, description: str) -> None:
        """A step without a count (e.g. duplicate search): the bar says what it is doing."""
        self(0, 0)
        self.progress.update(self.task, description=description, total=None)

    def finish(self, description: str, total: int) -> None:
        self(total, total)
        self.progress.update(self.task, description=description)


@contextmanager
def _progress(description: str) -> Iterator[_Bar]:
    bar = _Bar(description)
    try:
        yield bar
    finally:
        if bar.progress.live.is_started:
            bar.progress.stop()


def _sample(store: Store, name: str | None) -> Sample:
    if name:
        sample = store.sample(name)
        if sample is None:
            known = ", ".join(s.name for s in store.samples()) or "none yet"
            raise click.ClickException(f"no sample named '{name}' (samples: {known})")
        return sample
    samples = store.samples()
    if not samples:
        raise click.ClickException("no sample yet: run `distill-qc sample` first")
    return samples[-1]


sample_option = click.option("-s", "--sample", "sample_name", help="Sample name [default: the latest].")
task_option = click.option("-t", "--task", "tasks", multiple=True, help="Only this task (repeatable) [default: all].")


@click.group(cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@workspace_option
@click.pass_context
def main(ctx: click.Context, workspace: Path) -> None:
    """Quality control of annotated records: check, sample, review, report, export.

    \b
    distill-qc check              automatic checks; flags are stored, nothing deleted
    distill-qc sample             draw a statistically sized sample (prints the plan)
    distill-qc review             review it at the terminal (quit any time, it resumes)
    distill-qc report             acceptance rate, lot decision, evidence (+ an HTML file)
    distill-qc export             approved records + preference pairs as JSONL
    """
    ctx.ensure_object(dict)["workspace"] = workspace


# -- check ----------------------------------------------------------------------------------------


@main.command("check")
@task_option
@click.option("--min-reasoning", default=8, show_default=True, help="Flag reasoning shorter than this (characters).")
@click.option("--max-answer", default=2000, show_default=True, help="Flag answers longer than this (characters).")
@click.option("--min-grounding", default=0.2, show_default=True,
              help="Flag reasoning when less than this share of its words occur in the source.")
@click.option("--near", default=checks.CheckConfig().near_duplicate, show_default=True,
              help="Near-duplicate threshold (Jaccard of character shingles; qc/README.md says why 0.6).")
@click.option("--shingle", default=3, show_default=True, help="Characters per shingle for near-duplicates.")
@click.option("--refusal", "refusals", multiple=True, help="Another refusal phrase to flag (repeatable).")
@click.option("--judge", "use_judge", is_flag=True, help="Also score every record 1-10 with an LLM judge (costs calls).")
@click.option("--judge-threshold", default=6, show_default=True, type=click.IntRange(1, 10),
              help="Flag records the judge scores below this.")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Judge: a job config YAML (as for distill-annotate run).")
@teacher_options(prefix="Judge: ")
@click.option("--budget", type=float, help="Judge: stop once the workspace has spent this much.")
@click.pass_context
def check_cmd(ctx: click.Context, tasks: tuple[str, ...], min_reasoning: int, max_answer: int, min_grounding: float,
              near: float, shingle: int, refusals: tuple[str, ...], use_judge: bool, judge_threshold: int,
              config_path: Path | None, budget: float | None, **teacher: Any) -> None:
    """Run the automatic checks over every answered record and store the flags.

    Per record: the conclusion####reasoning contract, the label set, empty/short/long answers,
    the answer's language against the source's, grounding of the reasoning in the source, refusal
    phrases, decoding damage (U+FFFD, mojibake), repeated lines or looping, and the prompt's
    headings or output example echoed back. Across records: exact and near-duplicate answers and
    QA questions. With --judge, an LLM scores each record 1-10 (the score is stored). Nothing is
    deleted: flagged records stay out of the export unless a reviewer approves them. Safe to re-run.
    """
    try:
        config = checks.CheckConfig(min_reasoning_chars=min_reasoning, max_answer_chars=max_answer,
                                    min_grounding=min_grounding, near_duplicate=near, shingle=shingle,
                                    refusal_phrases=[*checks.DEFAULT_REFUSALS, *refusals])
    except ValidationError as exc:
        raise click.BadParameter(str(exc).splitlines()[-1]) from exc
    with _store(ctx) as store:
        names = resolve_tasks(store, tasks)
        if use_judge:
            job_config = load_job_config(config_path, {"budget": budget, **{f"teacher.{k}": v for k, v in teacher.items()}})
            t = job_config.teacher
            if problem := t.key_problem():
                raise click.ClickException(f"the judge cannot run: {problem}")
            console.print(f"judge: {t.resolved_model()} @ {t.resolved_base_url() or 'embedded local model'}")
            with _progress("judging") as update:
                stats = asyncio.run(judge.judge_records(store, names, job_config, threshold=judge_threshold,
                                                        on_progress=update))
            scores = " ".join(f"{s}:{n}" for s, n in sorted(stats.scores.items()))
            console.print(f"judge: {stats.judged} scored ({stats.reused} answers reused, not paid again), "
                          f"{stats.unreadable} unreadable, {stats.failed} failed, {stats.low} below {judge_threshold}; "
                          f"cost {stats.cost:.4f} {stats.currency}; scores {scores or '-'}")
            if stats.masked or stats.blocked:
                console.print(f"judge: personal data masked before sending: {describe_found(stats.masked) or 'none'}; "
                              f"{stats.blocked} records not judged (privacy policy block)")
            if stats.stopped:
                console.print(f"[red]judge stopped early:[/red] {stats.stopped}")
        with _progress("checking records") as bar:
            summary = checks.run_checks(store, names, config, on_progress=bar, on_phase=bar.phase)
            bar.finish("checked", summary.records)
    table = Table(title=f"check: {', '.join(summary.tasks)}")
    for col, justify in (("flag", "left"), ("meaning", "left"), ("records", "right"), ("share", "right"), ("example", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for kind, meaning in checks.FLAG_KINDS.items():
        n = summary.by_kind.get(kind, 0)
        if n:
            example = summary.examples.get(kind, "")
            table.add_row(kind, meaning, str(n), f"{n / max(1, summary.records):.1%}",
                          example if len(example) <= 90 else example[:89] + "…")
    out.print(table)
    carry = "record carries a flag and stays" if summary.flagged == 1 else "records carry a flag and stay"
    out.print(f"{summary.records} answered records checked: {summary.lot} usable (status ok), "
              f"{summary.records - summary.lot} broke the contract. {summary.flagged} {carry} out of the export "
              "unless a reviewer approves them. Next: distill-qc sample")


# -- sample ---------------------------------------------------------------------------------------


@main.command("sample")
@task_option
@click.option("--aql", type=float, help="ISO 2859-1 plan for this AQL (percent bad records) [default: 2.5].")
@click.option("--level", default="II", show_default=True, type=click.Choice(["S-1", "S-2", "S-3", "S-4", "I", "II", "III"]),
              help="ISO 2859-1 inspection level.")
@click.option("--margin", type=float, help="Instead: estimate the acceptance rate within +/- this (e.g. 0.05).")
@click.option("--size", type=click.IntRange(min=1), help="Instead: review this many records.")
@click.option("--confidence", default=0.95, show_default=True, help="Confidence of the Wilson interval.")
@click.option("--expected", default=0.9, show_default=True, help="Acceptance rate you expect (sizes --margin).")
@click.option("--target", default=0.9, show_default=True, help="With --margin/--size: the lowest acceptable rate.")
@click.option("--by", type=click.Choice(["random", "label", "document", "task"]), default="random", show_default=True,
              help="Stratify the sample (proportional allocation).")
@click.option("--flagged", type=click.Choice(["exclude", "include"]), default="exclude", show_default=True,
              help="Leave auto-flagged records out of the lot, or sample them too (to measure the checks).")
@click.option("--seed", type=int, help="Random seed: the same seed and lot draw the same sample "
              "[default: 1 for the first sample, 2 for the second…: each new sample draws other records].")
@click.option("--name", help="Sample name [default: s1, s2, …].")
@click.pass_context
def sample_cmd(ctx: click.Context, tasks: tuple[str, ...], name: str | None, **options: Any) -> None:
    """Draw a review sample, sized by ISO 2859-1 or by the margin you want, and print the plan."""
    with _store(ctx) as store:
        try:
            spec = SampleSpec(tasks=resolve_tasks(store, tasks), **options)
        except ValidationError as exc:
            raise click.UsageError("; ".join((f"--{e['loc'][0]}: " if e["loc"] else "")
                                             + e["msg"].removeprefix("Value error, ") for e in exc.errors())) from exc
        sample, plan = create_sample(store, spec, name)
        spec = spec_of(sample)  # as stored, the default seed filled in
    out.print(f"[bold]sample {sample.name}[/bold]: {sample.size} of {sample.lot_size} records of task "
              f"{', '.join(sample.tasks)} (flagged records {spec.flagged}d, {spec.by} draw, seed {spec.seed})")
    for line in describe(plan):
        out.print(f"  {line}")
    out.print(f"Next: distill-qc review --sample {sample.name}   (or offline: distill-qc sheet export review.xlsx "
              f"--sample {sample.name})")


@main.command("samples")
@click.pass_context
def samples_cmd(ctx: click.Context) -> None:
    """List the samples with their review progress and lot decision."""
    with _store(ctx) as store:
        table = Table(title="samples")
        for col in ("name", "tasks", "lot", "size", "reviewed", "decision", "plan", "drawn"):
            table.add_column(col)
        for s in store.samples():
            decision, _ = sample_decision(store, s)
            table.add_row(s.name, ", ".join(s.tasks), str(s.lot_size), str(s.size), str(decision.reviewed),
                          f"[{DECISION_STYLE[decision.status]}]{DECISION_WORD[decision.status]}[/]", plan_of(s).one_line,
                          s.created_at)
    out.print(table)


# -- review ---------------------------------------------------------------------------------------


@main.command("review")
@sample_option
@click.option("-r", "--reviewer", default=default_reviewer, show_default="$DISTILLERY_REVIEWER or your login",
              help="Your name: verdicts are stored under it.")
@click.option("--editor", help="Editor for [e] fix [default: $VISUAL or $EDITOR].")
@click.pass_context
def review_cmd(ctx: click.Context, sample_name: str | None, reviewer: str, editor: str | None) -> None:
    """Review a sample at the terminal, one record at a time.

    Keys: a accept · r reject (pick a reason) · f fix inline · e fix in $EDITOR · s skip ·
    b back · q quit · ? help. Every verdict is saved the moment you give it: quit (or lose the
    terminal) at any time and run the same command to carry on where you stopped.
    """
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise click.ClickException("review needs an interactive terminal; to review offline use "
                                   "`distill-qc sheet export FILE.xlsx` and `distill-qc sheet import FILE.xlsx`")
    with _store(ctx) as store:
        sample = _sample(store, sample_name)
        session = ReviewSession(store, sample, reviewer)
        screen_console = Console(highlight=False)
        with Terminal() as terminal:
            plan = plan_of(sample)
            ReviewScreen(session, screen_console, terminal, plan_line=plan.one_line, plan_text=describe(plan),
                         editor=editor).run()
        decision, _ = sample_decision(store, sample)
    decided = {v: n for v, n in sorted(session.given.items()) if v != "skip"}
    given = ", ".join(f"{v} {n}" for v, n in decided.items()) or "none"
    skipped = f", {session.given['skip']} skipped" if session.given["skip"] else ""
    out.print(f"\nThis session: {sum(decided.values())} verdicts ({given}){skipped}. Sample {sample.name}: "
              f"{session.done} of {len(session)} records have your verdict, {decision.reviewed} have any reviewer's.")
    out.print(decision.headline, style=DECISION_STYLE[decision.status])
    if session.done < len(session):
        out.print(f"Carry on: distill-qc review --sample {sample.name} --reviewer {reviewer}")
    out.print(f"Numbers: distill-qc report --sample {sample.name}")


# -- spreadsheet round trip -------------------------------------------------------------------------


@main.group("sheet")
def sheet_group() -> None:
    """Review offline: export a sample to CSV/XLSX, import the filled-in file."""


@sheet_group.command("export")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@sample_option
@click.option("-r", "--reviewer", default=default_reviewer, show_default="$DISTILLERY_REVIEWER or your login",
              help="Name written in the reviewer column (their current verdicts are filled in).")
@click.pass_context
def sheet_export_cmd(ctx: click.Context, path: Path, sample_name: str | None, reviewer: str) -> None:
    """Write the sample to PATH (.xlsx or .csv) for a reviewer to fill in."""
    with _store(ctx) as store:
        sample = _sample(store, sample_name)
        try:
            n = export_sheet(store, sample, reviewer, path)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
    out.print(f"wrote {n} records of sample {sample.name} to {path}. The reviewer fills in verdict (accept/reject/fix), "
              f"reason, note and fixed_*; then: distill-qc sheet import {path}")


@sheet_group.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def sheet_import_cmd(ctx: click.Context, path: Path) -> None:
    """Import the verdicts of a filled-in sheet: all of it, or nothing if any row is wrong."""
    with _store(ctx) as store, console.status(f"reading {path}…"):
        summary = import_sheet(store, path)
    by = ", ".join(f"{v} {n}" for v, n in sorted(summary.by_verdict.items())) or "none"
    out.print(f"{path}: {summary.rows} rows; {summary.added} verdicts imported ({by}), {summary.unchanged} already "
              f"in the workspace, {summary.blank} rows without a verdict.")


# -- report and export --------------------------------------------------------------------------------


@main.command("report")
@sample_option
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the HTML report [default: WORKSPACE/reports/qc-SAMPLE.html].")
@click.option("--no-html", is_flag=True, help="Only the terminal tables.")
@click.pass_context
def report_cmd(ctx: click.Context, sample_name: str | None, html_path: Path | None, no_html: bool) -> None:
    """Acceptance rate with its 95% Wilson interval, the lot decision and why, and the evidence."""
    with _store(ctx) as store:
        sample = _sample(store, sample_name)
        report = build_report(store, sample, str(ctx.obj["workspace"]))
    print_report(report, out)
    if not no_html:
        path = write_html(report, html_path or Workspace(ctx.obj["workspace"]).reports / f"qc-{sample.name}.html")
        out.print(f"HTML report (one self-contained file): {path}")


@main.command("export")
@sample_option
@task_option
@click.option("-o", "--out", "out_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Training examples JSONL [default: WORKSPACE/exports/approved.jsonl].")
@click.option("--pairs", "pairs_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Preference pairs JSONL from reviewers' fixes [default: WORKSPACE/exports/preference_pairs.jsonl].")
@click.option("--force", is_flag=True, help="Export even if the lot was rejected or is undecided (or never sampled).")
@click.pass_context
def export_cmd(ctx: click.Context, sample_name: str | None, tasks: tuple[str, ...], out_path: Path | None,
               pairs_path: Path | None, force: bool) -> None:
    """Write the approved records (corrections applied), the fixes as DPO preference pairs and the
    rejected records (exports/rejected.jsonl, the undesirable examples of KTO).

    Refuses when the sample rejected the lot or has not decided it yet, saying why, unless --force.
    """
    workspace = Workspace(ctx.obj["workspace"])
    with _store(ctx) as store:
        samples = store.samples()
        sample = _sample(store, sample_name) if sample_name or (samples and not tasks) else None
        if sample is None and tasks:
            sample = next((s for s in reversed(samples) if set(tasks) <= set(s.tasks)), None)
        names = sample.tasks if sample else resolve_tasks(store, tasks)
        with _progress("exporting") as update:
            summary = export_approved(store, sample=sample, task_names=names, force=force,
                                      out=out_path or workspace.approved,
                                      pairs_out=pairs_path or workspace.preferences, rejected_out=workspace.rejected,
                                      on_progress=update)
    if summary.overridden:
        console.print(f"[yellow]exported with --force despite:[/yellow] {summary.overridden}")
    table = Table(title="export", show_header=False)
    for label, value in (("training examples", summary.examples), ("  of which corrected by a reviewer", summary.corrected),
                         ("  approved by a reviewer", summary.by_review), ("  approved with the lot", summary.with_lot),
                         ("  approved one by one outside the lot", summary.outside_lot),
                         ("left out: rejected by a reviewer", summary.rejected),
                         ("left out: flagged, approved by nobody", summary.flagged),
                         ("left out: no longer a usable record", summary.gone),
                         ("left out: not in the sampled lot (flagged then, or newer)", summary.not_in_lot),
                         ("preference pairs", summary.pairs)):
        table.add_row(label, str(value))
    out.print(table)
    out.print(f"examples: {summary.path}\npairs:    {summary.pairs_path}\nrejected: {summary.rejected_path}")
