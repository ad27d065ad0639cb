"""`distill-annotate grow METHOD`: grow the approved records into more training data (a thin shell
over annotate.augment, annotate.paraphrase, annotate.self_instruct, annotate.evol_instruct and
annotate.instruction_backtranslation). What it makes is stored as generated records: qc reviews them
like any other before they can train."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from distillery.errors import ConfigError
from distillery.growing import GrowError, GrowStats, approved_seeds
from distillery.ledger import JobStopped
from distillery.options import stop_on_ctrl_c, teacher_options
from distillery.store import Store
from distillery.teacher_config import JobConfig, load_job_config
from distillery.workspace import Workspace

console = Console(stderr=True, soft_wrap=True)

# METHOD -> whether it pays a teacher (eda and aeda run locally, for free)
METHODS: dict[str, bool] = {"eda": False, "aeda": False, "back-translate": True, "self-instruct": True,
                            "evol-instruct": True, "instruction-backtranslation": True}

Progress_ = Callable[[GrowStats], None]


def _runner(method: str, store: Store, seeds: list, config: JobConfig, opts: dict[str, Any],
            stop: asyncio.Event, on_progress: Progress_) -> Awaitable[GrowStats]:
    """The library call behind METHOD (imported when used: each generator's libraries load on demand)."""
    if method in ("eda", "aeda"):
        from .augment import augment

        async def local() -> GrowStats:  # on this thread: the store's connection belongs to it
            return augment(store, seeds, method=method, per_record=opts["per_record"], alpha=opts["alpha"],
                           seed=opts["seed"], on_progress=on_progress)

        return local()
    common = {"stop": stop, "on_progress": on_progress}
    if method == "back-translate":
        from .paraphrase import back_translate

        return back_translate(store, seeds, config, **common)
    if method == "self-instruct":
        from .self_instruct import self_instruct

        return self_instruct(store, seeds, config, rounds=opts["rounds"], per_round=opts["per_round"],
                             seed=opts["seed"], **common)
    if method == "evol-instruct":
        from .evol_instruct import evol_instruct

        return evol_instruct(store, seeds, config, rounds=opts["rounds"], seed=opts["seed"], **common)
    from .instruction_backtranslation import instruction_backtranslation

    return instruction_backtranslation(store, seeds, config, limit=opts["limit"], threshold=opts["threshold"],
                                       **common)


async def _run(method: str, store: Store, seeds: list, config: JobConfig, opts: dict[str, Any]) -> GrowStats:
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), TimeElapsedColumn(), TextColumn("{task.fields[info]}")]
    with stop_on_ctrl_c(console) as stop, Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(f"grow {method}", total=None, info="")

        def update(stats: GrowStats) -> None:
            progress.update(bar, info=f"made {stats.made:,} · dropped {sum(stats.dropped.values()):,} · calls "
                                      f"{stats.calls_sent:,} sent, {stats.calls_reused:,} reused · "
                                      f"{stats.cost:.4f} {stats.currency}")

        return await _runner(method, store, seeds, config, opts, stop, update)


def print_grow_summary(stats: GrowStats, method: str, *, teacher: bool) -> None:
    table = Table(title=f"grow {method}", show_header=False)
    rows: list[tuple[str, str]] = [("records (or chunks) worked from", f"{stats.seeds:,}"),
                                   (f"{stats.generator or method} records before", f"{stats.before:,}"),
                                   ("made by this run", f"{stats.made:,}"),
                                   (f"{stats.generator or method} records after", f"{stats.after:,}")]
    if stats.rounds:
        rows.append(("rounds", str(stats.rounds)))
    rows += [(f"dropped: {why}", f"{n:,}") for why, n in sorted(stats.dropped.items(), key=lambda kv: -kv[1])]
    if teacher:
        rows += [("calls sent", f"{stats.calls_sent:,}"), ("answers reused (not paid again)", f"{stats.calls_reused:,}"),
                 ("tokens", f"{stats.prompt_tokens:,} in / {stats.completion_tokens:,} out"),
                 ("cost", f"{stats.cost:.4f} {stats.currency}")]
    for label, value in rows:
        table.add_row(label, value)
    Console().print(table)
    for err in stats.errors:
        console.print(escape(err), style="yellow")


@click.command("grow")
@click.argument("method", type=click.Choice(list(METHODS)))
@click.option("--approved", type=click.Path(dir_okay=False, path_type=Path),
              help="Approved records to grow from [default: the workspace's exports/approved.jsonl].")
@click.option("-t", "--task", "task_names", multiple=True, help="Only the approved records of this task (repeatable).")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="Job config YAML "
              "(the teacher, limits, budget, privacy: the same as annotate run's).")
@click.option("--per-record", default=4, show_default=True, type=click.IntRange(min=1),
              help="eda/aeda: augmented versions per approved record.")
@click.option("--alpha", default=0.1, show_default=True, type=click.FloatRange(0.01, 0.5),
              help="eda: share of the words each operation changes.")
@click.option("--rounds", default=2, show_default=True, type=click.IntRange(min=1, max=10),
              help="self-instruct/evol-instruct: rounds at most.")
@click.option("--per-round", default=8, show_default=True, type=click.IntRange(min=1),
              help="self-instruct: teacher requests per round.")
@click.option("--limit", type=click.IntRange(min=1), help="instruction-backtranslation: chunks at most.")
@click.option("--threshold", default=4, show_default=True, type=click.IntRange(1, 5),
              help="instruction-backtranslation: the teacher's 1-5 quality score a record must reach.")
@click.option("--seed", default=0, show_default=True, help="Random seed (the same seed, the same requests: resumable).")
@click.option("--budget", type=float, help="Stop cleanly once the workspace has spent this much.")
@click.option("--privacy", type=click.Choice(["mask", "block", "allow"]),
              help="Personal data bound for an external teacher [default: config's, or mask].")
@teacher_options()
@click.option("--max-tokens", type=click.IntRange(min=1), help="Max tokens per answer.")
@click.option("--temperature", type=float, help="Sampling temperature.")
@click.pass_context
def grow_cmd(ctx: click.Context, method: str, approved: Path | None, task_names: tuple[str, ...],
             config_path: Path | None, **options: Any) -> None:
    """Grow the approved records into more training data with METHOD:

    \b
      eda                          word operations, label kept (free, no teacher)
      aeda                         punctuation insertion, label kept (free, no teacher)
      back-translate               paraphrase through another language, conclusion re-checked
      self-instruct                new tasks written from seed tasks (Self-Instruct)
      evol-instruct                evolved instructions (Evol-Instruct), eliminations counted
      instruction-backtranslation  instructions for unreviewed chunks, self-curated

    Safe to kill and run again: nothing paid for is paid again. The new records are stored for
    review: run distill-qc check, sample, review and export before they can train.
    """
    teacher = METHODS[method]
    opts = {k: options.pop(k) for k in ("per_record", "alpha", "rounds", "per_round", "limit", "threshold", "seed")}
    overrides = {"budget": options.pop("budget"), "privacy.policy": options.pop("privacy")}
    overrides |= {f"teacher.{k}": v for k, v in options.items()}
    try:
        config = load_job_config(config_path, overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    workspace = Workspace(ctx.obj["workspace"])
    with Store.open(workspace.root) as store:
        try:
            seeds = approved_seeds(store, approved or workspace.approved, task_names=task_names)
        except GrowError as exc:
            raise click.ClickException(str(exc)) from exc
        if teacher and (problem := config.teacher.key_problem()):
            raise ConfigError(problem)
        stats = asyncio.run(_run(method, store, seeds, config, opts))  # it counts its records before and after
    print_grow_summary(stats, method, teacher=teacher)
    if stats.stopped:
        raise JobStopped(stats.stopped)
    console.print(f"next: review the new records (distill-qc -w {workspace.root} check, then sample, review, export); "
                  "only what qc exports trains")
