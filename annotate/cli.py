"""`distill-annotate`: a thin shell over annotate's library API."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from distillery import near_dup
from distillery.config import parse_sets
from distillery.errors import ConfigError, DistilleryError
from distillery.jsonl import read_jsonl, write_jsonl
from distillery.ledger import JobStopped
from distillery.options import CommandGroup, stop_on_ctrl_c, teacher_options, workspace_option
from distillery.privacy import describe_found
from distillery.records import LineageRecord
from distillery.store import Store
from distillery.tasks import Task, TaskFileError, builtin_names, load_task
from distillery.teacher_config import JobConfig, load_job_config

from . import runner
from .ingest import ChunkingConfig, IngestReport, ingest
from .readers import SUPPORTED_SUFFIXES

console = Console(stderr=True, soft_wrap=True)  # paths and errors stay on one greppable line


def _store(ctx: click.Context) -> Store:
    return Store.open(ctx.obj["workspace"])


@click.group(cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@workspace_option
@click.pass_context
def main(ctx: click.Context, workspace: Path) -> None:
    """Annotate documents with a teacher model: ingest files, run a task, export the records."""
    ctx.ensure_object(dict)["workspace"] = workspace


@main.command("ingest", help=f"Read files and folders ({', '.join(sorted(SUPPORTED_SUFFIXES))}; each also gzipped, "
              "as name.txt.gz; and .zip archives of them) into chunks. Re-ingesting the same files adds nothing. "
              "Exits non-zero when any file failed (the others are ingested), unless --allow-partial.")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--max-size", default=800, show_default=True, help="Largest chunk, in --unit.")
@click.option("--overlap", default=80, show_default=True, help="Sentences carried over between chunks, up to this size.")
@click.option("--unit", type=click.Choice(["chars", "tokens"]), default="chars", show_default=True)
@click.option("--tokenizer", help="Model dir whose tokenizer counts tokens (default: the embedded model).")
@click.option("--text-field", default="text", show_default=True, help="Field/column holding the text in .jsonl/.csv.")
@click.option("--near-duplicate", type=click.FloatRange(near_dup.MIN_THRESHOLD, 1.0), default=near_dup.DEFAULT_THRESHOLD,
              show_default=True, help="A chunk this similar to a stored one (Jaccard of 5-character shingles, whitespace "
                                      f"aside, and no passage of over {near_dup.MAX_EDIT} characters changed) is linked to it "
                                      "and not sent to the teacher; 1.0: only the same text.")
@click.option("--allow-partial", is_flag=True, help="Exit 0 even when some files failed (they are still listed).")
@click.pass_context
def ingest_cmd(ctx: click.Context, paths: tuple[Path, ...], max_size: int, overlap: int, unit: str,
               tokenizer: str | None, text_field: str, near_duplicate: float, allow_partial: bool) -> None:
    config = ChunkingConfig(max_size=max_size, overlap=overlap, unit=unit, tokenizer=tokenizer, near_duplicate=near_duplicate)
    with _store(ctx) as store:
        report = ingest_with_status(store, paths, config, text_field=text_field)
    if not allow_partial:
        report.require_complete("--allow-partial")  # a PartialIngest: one line and exit 1, via CommandGroup


def ingest_with_status(store: Store, paths: Iterable[Path], config: ChunkingConfig, *, text_field: str = "text") -> IngestReport:
    """`ingest` with the file being read on screen, then its summary and every failure named."""
    with console.status("reading…") as status:
        report = ingest(store, paths, config=config, text_field=text_field, on_file=lambda p: status.update(f"reading {p}"))
    table = Table(title="ingest", show_header=False)
    for label, value in (("files read", report.files), ("documents new", report.documents_new),
                         ("documents already ingested", report.documents_seen), ("chunks new", report.chunks_new),
                         ("  the same text as a stored chunk (linked, not sent)",
                          f"{report.chunks_exact_duplicate} ({report.chars_exact_duplicate:,} chars)"),
                         (f"  nearly the same, similarity >= {config.near_duplicate:g} (linked, not sent)",
                          f"{report.chunks_near_duplicate} ({report.chars_near_duplicate:,} chars)"),
                         ("files failed", len(report.failures)), ("warnings", len(report.warnings))):
        table.add_row(label, str(value))
    console.print(table)
    for failure in report.failures:
        console.print(f"[red]failed[/red] {escape(failure.path)}: {escape(failure.reason)}")
    for warning in report.warnings[:20]:
        console.print(f"[yellow]warning[/yellow] {escape(warning)}")
    if len(report.warnings) > 20:
        console.print(f"[yellow]… {len(report.warnings) - 20} more warnings[/yellow]")
    return report


@main.command("tasks")
@click.argument("name", required=False)
def tasks_cmd(name: str | None) -> None:
    """List the built-in tasks, or print one task's YAML (copy it to make your own)."""
    if name:
        try:
            click.echo(load_task(name).body)
        except TaskFileError as exc:
            raise click.ClickException(str(exc)) from exc
        return
    table = Table(title="built-in tasks")
    table.add_column("name")
    table.add_column("kind")
    table.add_column("labels")
    table.add_column("description")
    for n in builtin_names():
        t = load_task(n)
        table.add_row(n, t.spec.kind, " | ".join(t.spec.labels or t.spec.answer_labels or []), t.spec.description)
    Console().print(table)


def _parse_shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"'{value}' is not I/N (e.g. 0/4)", param_hint="--shard") from None
    if not 0 <= i < n:
        raise click.BadParameter(f"shard {i} is not in 0..{n - 1}", param_hint="--shard")
    return i, n


@main.command("run")
@click.option("-t", "--task", "task_name", help="Built-in task name or a task YAML path [default: config's, or relevance].")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="Job config YAML.")
@click.option("--var", "var_items", multiple=True, metavar="KEY=VALUE", help="Set a task variable (repeatable).")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N chunks (document order).")
@click.option("--shard", help="I/N: only the I-th of N disjoint chunk sets (split a job across keys).")
@click.option("--retry", "retry", default="", help="Re-run records in these states, e.g. invalid,failed.")
@click.option("--dry-run", is_flag=True, help="Print the estimated tokens and cost; send nothing.")
@click.option("--budget", type=float, help="Stop cleanly once the workspace has spent this much.")
@click.option("--privacy", type=click.Choice(["mask", "block", "allow"]),
              help="Personal data in a chunk bound for an external teacher: mask it, send no such chunk, or send "
                   "it as is [default: config's, or mask].")
@teacher_options()
@click.option("--max-tokens", type=click.IntRange(min=1), help="Max tokens per answer.")
@click.option("--temperature", type=float, help="Sampling temperature [default: 0.3].")
@click.pass_context
def run_cmd(ctx: click.Context, task_name: str | None, config_path: Path | None, var_items: tuple[str, ...],
            limit: int | None, shard: str | None, retry: str, dry_run: bool, **options: Any) -> None:
    """Annotate the ingested chunks with a task. Safe to kill and run again: it resumes."""
    overrides = {"task": task_name, "budget": options.pop("budget"), "privacy.policy": options.pop("privacy")}
    overrides |= {f"teacher.{k}": v for k, v in options.items()}
    try:
        config = load_job_config(config_path, overrides)
        task = load_task(config.task, overrides={**config.vars, **parse_sets(var_items, option="--var")} or None)
    except (ConfigError, TaskFileError) as exc:
        raise click.ClickException(str(exc)) from exc
    retry_states = tuple(s for s in retry.split(",") if s)
    bad = set(retry_states) - {"invalid", "failed", "refused", "too_long", "blocked", "ok"}
    if bad:
        raise click.BadParameter(f"unknown state(s) {', '.join(sorted(bad))}", param_hint="--retry")
    with _store(ctx) as store:
        if store.totals()["chunks"] == 0:
            raise click.ClickException(f"workspace {ctx.obj['workspace']} has no chunks: run `distill-annotate ingest PATH` first")
        if dry_run:  # plans nothing: a dry run leaves no records behind
            est = runner.estimate(store, task, config, limit=limit, shard=_parse_shard(shard), retry=retry_states)
            _announce_job(task, config, est.pending)
            _print_estimate(est)
            console.print(_linked_line(store))
            return
        pending = plan_job(store, task, config, limit=limit, shard=_parse_shard(shard), retry=retry_states)
        run_planned_job(store, task, config, pending)  # a stop or a missing key: one line, via CommandGroup


def plan_job(store: Store, task: Task, config: JobConfig, *, limit: int | None = None,
             shard: tuple[int, int] | None = None, retry: tuple[str, ...] = ()) -> int:
    """`runner.plan`, then a line saying what will be done by which teacher. Returns the records to do."""
    pending = runner.plan(store, task, config, limit=limit, shard=shard, retry=retry)
    _announce_job(task, config, pending)
    return pending


def _announce_job(task: Task, config: JobConfig, pending: int) -> None:
    t = config.teacher
    where = t.resolved_base_url() or "embedded local model"
    console.print(f"task [bold]{task.name}[/bold] ({task.hash[:12]}) · teacher {t.resolved_model()} @ {where} · "
                  f"{pending} records to do")


def run_planned_job(store: Store, task: Task, config: JobConfig, pending: int) -> runner.JobStats | None:
    """Run the planned job with a progress bar and print the summary; None when nothing was left.
    Raises ConfigError without a usable key and JobStopped when the job stopped early."""
    if pending == 0:
        console.print("nothing to do: every planned record is done (use --retry invalid,failed to redo failures)")
        _print_summary(store, task.name, None)
        return None
    if problem := config.teacher.key_problem():
        raise ConfigError(problem)
    stats = asyncio.run(_run_with_progress(store, task, config, pending))
    _print_summary(store, task.name, stats)
    if stats.stopped:
        raise JobStopped(stats.stopped)
    if failed := stats.by_status.get("failed", 0):
        raise JobStopped(f"{failed} records got no answer (status failed; the reasons are above): run again with "
                         "--retry failed once the teacher answers")
    return stats


async def _run_with_progress(store: Store, task: Task, config: JobConfig, pending: int) -> runner.JobStats:
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
               TextColumn("{task.fields[info]}")]
    with stop_on_ctrl_c(console) as stop, Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("annotating", total=pending, rate="", info="")

        def update(stats: runner.JobStats) -> None:
            rate = stats.done / stats.elapsed_s * 60 if stats.elapsed_s else 0
            errors = sum(n for s, n in stats.by_status.items() if s != "ok")
            progress.update(bar, completed=stats.done, total=stats.total, rate=f"{rate:.0f}/min",
                            info=f"tok {stats.prompt_tokens + stats.completion_tokens:,} · "
                                 f"{stats.cost:.4f} {stats.currency} · not ok {errors} · retries {stats.retries}")

        return await runner.run_job(store, task, config, on_progress=update, stop=stop)


def _print_estimate(est: runner.Estimate) -> None:
    table = Table(title="dry run: estimate (nothing sent)", show_header=False)
    table.add_row("records", f"{est.records:,}")
    table.add_row("prompt tokens (est.)", f"{est.prompt_tokens:,}")
    table.add_row("completion tokens (est.)", f"{est.completion_tokens:,}")
    table.add_row("cost (est.)", f"{est.cost:.4f} {est.currency}" if est.priced else "unknown: no price for this model (add it under prices:)")
    if est.note:
        table.add_row("note", est.note)
    Console().print(table)


def _print_summary(store: Store, task_name: str, stats: runner.JobStats | None) -> None:
    table = Table(title=f"task {task_name}: all records in the workspace")
    for col in ("status", "records", "prompt tokens", "completion tokens", "cost"):
        table.add_column(col, justify="right" if col != "status" else "left")
    for status, row in sorted(store.counts(task_name=task_name).items()):
        table.add_row(status, f"{row['records']:,}", f"{row['prompt_tokens']:,}", f"{row['completion_tokens']:,}", f"{row['cost']:.4f}")
    Console().print(table)
    if stats is None:
        return
    run = Table(title="this run", show_header=False)
    for label, value in (("records finished", stats.done), ("calls sent", stats.calls_sent),
                         ("answers reused (not paid again)", stats.calls_reused),
                         ("left to another run that had them out", stats.calls_held),
                         ("cancelled before they were sent", stats.calls_cancelled), ("HTTP retries", stats.retries),
                         ("  sent again after a timeout (may be charged twice)", stats.resent_after_timeout),
                         ("re-asks for broken format", stats.reasks),
                         ("personal data masked before sending", describe_found(stats.masked) or "none"),
                         ("tokens", f"{stats.prompt_tokens:,} in / {stats.completion_tokens:,} out"),
                         ("cost", f"{stats.cost:.4f} {stats.currency}"), ("elapsed", f"{stats.elapsed_s:.1f} s")):
        run.add_row(label, str(value))
    Console().print(run)
    if stats.resent_after_timeout:
        console.print(f"[yellow]{stats.resent_after_timeout} requests got no answer in time and were sent again; a "
                      "provider may charge each. If it keeps happening: raise --timeout, keep --stream on, or lower "
                      "--concurrency for a teacher that answers one request at a time.[/yellow]")
    for err in stats.errors:
        console.print(escape(err), style="yellow")  # errors end in "[chunk … (path #n)]": not markup


@main.command("status")
@click.pass_context
def status_cmd(ctx: click.Context) -> None:
    """Documents, chunks and records per task and status, with tokens and cost."""
    with _store(ctx) as store:
        totals = store.totals()
        console.print(f"workspace {ctx.obj['workspace']}: {totals['documents']} documents, {totals['chunks']} chunks, "
                      f"{totals['annotations']} records, {totals['calls']} teacher calls, spent {store.spent():.4f}")
        console.print(_linked_line(store))
        for name in store.task_names():
            _print_summary(store, name, None)


def _linked_line(store: Store) -> str:
    linked = store.duplicate_chunks()
    return (f"chunks linked to a stored chunk, never sent to the teacher: {linked.exact + linked.near} "
            f"({linked.exact} the same text, {linked.exact_chars:,} chars; {linked.near} nearly the same, "
            f"{linked.near_chars:,} chars)")


@main.command("export")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-t", "--task", "task_name", help="Only this task.")
@click.option("--status", "statuses", default="ok", show_default=True, help="Comma-separated states, or 'all'.")
@click.pass_context
def export_cmd(ctx: click.Context, out: Path, task_name: str | None, statuses: str) -> None:
    """Write records with their full lineage (document, chunk, task) as JSONL."""
    wanted = None if statuses == "all" else statuses.split(",")
    with _store(ctx) as store:
        n = write_jsonl(out, (store.lineage(ann) for _, ann in store.annotations(task_name=task_name, status=wanted)))
    console.print(f"wrote {n} records to {out}")


@main.command("import")
@click.argument("src", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def import_cmd(ctx: click.Context, src: Path) -> None:
    """Merge records exported by `export` (e.g. from a job split across machines)."""
    try:
        records = [record for _, record in read_jsonl(src, LineageRecord)]
    except DistilleryError as exc:
        raise click.ClickException(f"{exc}; nothing was imported") from exc
    with _store(ctx) as store:
        added = store.import_records(records)
    console.print(f"imported {added} new records ({len(records) - added} already present)")


from .grow_cli import grow_cmd  # noqa: E402 - the grow command lives in its own module

main.add_command(grow_cmd)
