"""`distill run`: the whole distillation from one project config, with resume.

    documents -> annotate -> qc -> finetune -> serve -> report.md / report.json

Each step is its stage's own (found through `distillery.stages`); it calls the stage's library
API and prints the stage command that does the same, so any step can be re-run or inspected by
hand. Running again resumes: nothing is stored, asked, paid for, sampled or trained twice. Every
section is checked before the first step runs, so a typo fails in a second, not after an hour.
A step that cannot go on raises a DistilleryError; the command line says which step failed
and that running again resumes.
"""

from __future__ import annotations

import os
import shlex
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.rule import Rule
from rich.table import Table

from .config import apply_overrides, read_mapping, validate
from .errors import ConfigError, DistilleryError
from .stages import FLOW, Stage, load_stage
from .workspace import Workspace

_AGAIN = ("Fix that and run the same `distill run` again: finished steps are not redone, nothing paid for "
          "is asked again.")


class StepFailed(DistilleryError):
    """A step stopped the run; the message names the step and how to go on."""


class ProjectConfig(BaseModel):
    """The project file (`distill init` writes one; examples/pipeline.yaml is the demo's).
    Each stage checks its own section; relative paths are relative to the file's folder."""

    model_config = ConfigDict(extra="forbid")
    annotate: dict[str, Any] = Field(default_factory=dict)
    qc: dict[str, Any] = Field(default_factory=dict)
    finetune: dict[str, Any] = Field(default_factory=dict)
    serve: dict[str, Any] = Field(default_factory=dict)
    # torch/OpenMP threads for the model steps; None = torch's default (every core). On a busy
    # machine 1 can be faster: spinning threads wait on descheduled peers.
    threads: int | None = Field(None, ge=1)


class Handoff(BaseModel):
    """What one step hands the next (everything else travels through the workspace)."""

    task: str | None = None  # annotate -> qc: the task whose records are reviewed and trained on
    sample: str | None = None  # qc: the sample that decided the lot
    model_dir: Path | None = None  # finetune -> serve: the tuned (merged) model
    probe_prompts: list[str] = Field(default_factory=list)  # finetune -> serve: held-out inputs, as the student sees them


class Target(BaseModel):
    """One thing the run promises, checked against what it measured."""

    name: str
    wanted: str
    got: str
    met: bool


class StepResult(BaseModel):
    figures: dict[str, Any] = Field(default_factory=dict)  # report.json: stages.<name>
    markdown: list[str] = Field(default_factory=list)  # its section of report.md
    summary: list[str] = Field(default_factory=list)  # lines for the closing summary
    targets: list[Target] = Field(default_factory=list)
    outputs: dict[str, Path] = Field(default_factory=dict)  # what it left, where
    paused: str | None = None  # the run stops here, cleanly; says what a person has to do first
    notices: list[str] = Field(default_factory=list)  # what a reader must know first (the report's first line)


class RunReport(BaseModel):
    notices: list[str] = Field(default_factory=list)
    workspace: str
    config: str
    generated_at: str
    stages: dict[str, dict[str, Any]]
    targets: list[Target]
    outputs: dict[str, str]


@dataclass
class RunContext:
    """What every step gets: where things are, how to speak, and what the steps before it handed over."""

    workspace: Workspace
    base: Path  # the config file's folder: relative paths in it are relative to this
    console: Console
    threads: int | None = None
    handoff: Handoff = field(default_factory=Handoff)

    def resolve(self, path: str | Path) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base / p).resolve()

    def show(self, path: str | Path) -> str:
        """A path as the user would type it: relative to the current directory when it is inside it."""
        try:
            return str(Path(path).resolve().relative_to(Path.cwd()))
        except ValueError:
            return str(path)

    def command(self, stage: str, *args: str | Path, workspace: bool = True) -> None:
        """Print the stage command that does what the step is about to do (with `-w` unless the
        stage works outside a workspace)."""
        words = ["distill", stage, *(["-w", self.show(self.workspace.root)] if workspace else []),
                 *(self.show(a) if isinstance(a, Path) else str(a) for a in args)]
        self.console.print(f"[bold cyan]$ {shlex.join(words)}[/]", highlight=False)


def load_project(path: Path, overrides: dict[str, Any] | None = None) -> ProjectConfig:
    data = read_mapping(path)
    try:
        apply_overrides(data, overrides or {})
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return validate(ProjectConfig, data, str(path))


def configure(project: ProjectConfig, ctx: RunContext, path: Path) -> list[tuple[Stage, Any]]:
    """Every stage's settings, checked before any work; an error names the file and the key."""
    steps = []
    for name in FLOW:
        stage = load_stage(name)
        try:
            steps.append((stage, stage.configure(getattr(project, name), ctx)))
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    return steps


def run_project(path: Path, workspace: Path, *, overrides: dict[str, Any] | None = None,
                console: Console | None = None) -> RunReport | None:
    """Run every step of the project at `path` in `workspace`; None when a step paused the run."""
    path = Path(path)
    project = load_project(path, overrides)
    ctx = RunContext(workspace=Workspace(workspace.resolve()), base=path.resolve().parent,
                     console=console or Console(soft_wrap=True), threads=project.threads)
    steps = configure(project, ctx, path)
    if project.threads:
        import torch

        # Model steps run in this process (teacher, eval) and in child processes (training, serving).
        os.environ["OMP_NUM_THREADS"] = str(project.threads)
        torch.set_num_threads(project.threads)
    results: dict[str, StepResult] = {}
    for number, (stage, settings) in enumerate(steps, 1):
        ctx.console.print(Rule(f"[bold]{number}/{len(steps) + 1} {stage.name}: {stage.help}"))
        try:
            result = stage.run(ctx, settings)
        except DistilleryError as exc:
            raise StepFailed(f"step {stage.name} failed: {exc}\n{_AGAIN}") from exc
        except Exception as exc:  # a bug or the machine (disk, memory): still one message, the traceback in a file
            log = ctx.workspace.root / "distill-run.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(traceback.format_exc(), encoding="utf-8")
            raise StepFailed(f"step {stage.name} failed: {type(exc).__name__}: {exc} (the traceback is in {log})\n"
                             f"{_AGAIN}") from exc
        results[stage.name] = result
        if result.paused:
            ctx.console.print(f"[yellow]paused after {stage.name}[/]: {result.paused}")
            return None
    ctx.console.print(Rule(f"[bold]{len(steps) + 1}/{len(steps) + 1} report"))
    report = RunReport(
        notices=[n for r in results.values() for n in r.notices],
        workspace=str(ctx.workspace.root), config=str(path.resolve()),
        generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        stages={name: r.figures for name, r in results.items()},
        targets=[t for r in results.values() for t in r.targets],
        outputs={what: str(where) for r in results.values() for what, where in r.outputs.items()},
    )
    write_report(report, results, ctx.workspace)
    print_summary(report, results, ctx)
    return report


def render_markdown(report: RunReport, results: dict[str, StepResult]) -> str:
    title = "# Distillation report" + "".join(f" ({notice})" for notice in report.notices)
    rows = [
        title, "",
        f"Workspace `{report.workspace}`, config `{report.config}`, written {report.generated_at}.", "",
        "## Targets", "", "| target | wanted | got | met |", "| --- | --- | --- | --- |",
        *[f"| {t.name} | {t.wanted} | {t.got} | {'yes' if t.met else 'NO'} |" for t in report.targets], "",
    ]
    for result in results.values():
        rows += [*result.markdown, ""]
    rows += ["## Where everything is", "", *[f"- {what}: `{where}`" for what, where in report.outputs.items()], ""]
    return "\n".join(rows)


def write_report(report: RunReport, results: dict[str, StepResult], workspace: Workspace) -> None:
    workspace.report_json.write_text(report.model_dump_json(indent=2), encoding="utf-8")
    workspace.report_md.write_text(render_markdown(report, results), encoding="utf-8")


def targets_table(targets: list[Target]) -> Table:
    table = Table(title="targets")
    for column in ("target", "wanted", "got", "met"):
        table.add_column(column)
    for t in targets:
        table.add_row(t.name, t.wanted, t.got, "[green]yes[/]" if t.met else "[red]NO[/]")
    return table


def print_summary(report: RunReport, results: dict[str, StepResult], ctx: RunContext) -> None:
    for notice in report.notices:
        ctx.console.print(f"[bold yellow]{notice}[/]")
    ctx.console.print(targets_table(report.targets))
    for result in results.values():
        for line in result.summary:
            ctx.console.print(line)
    outputs = {**report.outputs, "this report": str(ctx.workspace.report_md)}
    width = max(len(what) for what in outputs)
    for what, where in outputs.items():
        ctx.console.print(f"  {what:<{width}}  {ctx.show(where)}")
