"""`distill`: one entry point. `distill run` runs the whole distillation from a project config,
`distill init` writes one to edit, and `distill annotate|qc|finetune|serve ...` are the stages'
own command lines (the same as the `distill-<stage>` commands)."""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

import click
from rich.console import Console

from .config import parse_sets
from .options import CommandGroup, sets_option, workspace_option
from .pipeline import run_project
from .stages import StageMissing, load_stage, stage_names

PROJECT_FILE = "distill.yaml"
console = Console(soft_wrap=True)


class DistillGroup(CommandGroup):
    """The built-in commands, then each installed stage's command line, loaded when it is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*stage_names(), *super().list_commands(ctx)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands:
            return self.commands[name]
        return load_stage(name).command if name in stage_names() else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in stage_names():
            try:
                rows.append((name, load_stage(name).help))
            except StageMissing as exc:
                rows.append((name, f"(not available here: {exc})"))
        rows += [(name, cmd.get_short_help_str(80)) for name, cmd in self.commands.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=DistillGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="distillery")
def main() -> None:
    """Distil a large teacher model into a small one you can serve.

    \b
    distill init my-project             write my-project/distill.yaml (teacher, task, QC, finetune, serve)
    distill run my-project/distill.yaml run it all: annotate -> qc -> finetune -> serve -> report
    distill run examples/pipeline.yaml  the shipped demo (embedded model, no key, no GPU)

    Each stage is also a command of its own (distill annotate --help, ...); `distill run` prints
    the stage commands it performs, so any step can be re-run by hand.
    """


@main.command("run")
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@workspace_option
@sets_option("finetune.train.num_train_epochs=2")
@click.option("--teacher", type=click.Path(dir_okay=False, path_type=Path),
              help="Annotate job config whose teacher to use, e.g. examples/kimi.yaml (sets annotate.teacher).")
@click.option("--review", type=click.Choice(["scripted", "human"]),
              help="human: stop after sampling until a person reviewed it; scripted: a script accepts the sample.")
def run_cmd(config: Path | None, workspace: Path, sets: tuple[str, ...], teacher: Path | None, review: str | None) -> None:
    """Run the whole distillation from CONFIG [default: ./distill.yaml], resuming where it stopped.

    Writes WORKSPACE/report.md and report.json. Running it again redoes nothing that is done:
    no chunk is asked (or paid for) twice, no sample drawn twice, no finished training repeated.
    """
    if config is None:
        config = Path(PROJECT_FILE)
        if not config.is_file():
            raise click.UsageError(f"no {PROJECT_FILE} here: give a project config (`distill init DIR` writes one; "
                                   "examples/pipeline.yaml runs the demo)")
    overrides = parse_sets(sets)
    if teacher is not None:
        overrides["annotate.teacher"] = str(teacher.resolve())
    if review is not None:
        overrides["qc.review"] = review
    try:
        report = run_project(config, workspace, overrides=overrides, console=console)
    except KeyboardInterrupt:
        console.print("[yellow]stopped[/]: run the same command again to resume (nothing done is redone)")
        sys.exit(130)
    if report is not None and not all(t.met for t in report.targets):
        console.print("[yellow]some targets were not met: the report says by how much[/]")


@main.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help=f"Overwrite an existing {PROJECT_FILE}.")
def init_cmd(directory: Path, force: bool) -> None:
    """Start a project in DIRECTORY: a commented distill.yaml to edit and a docs/ folder for documents."""
    target = directory / PROJECT_FILE
    if target.exists() and not force:
        raise click.ClickException(f"{target} exists already: edit it, or pass --force to start over")
    (directory / "docs").mkdir(parents=True, exist_ok=True)
    target.write_text(project_template(), encoding="utf-8")
    console.print(f"wrote {target} and {directory / 'docs'}/\n"
                  f"next: put your documents in {directory / 'docs'}, read {target} (teacher, task, review, student), "
                  f"then: distill run {target} -w {directory / 'workspace'}")


def project_template() -> str:
    """The commented project config `distill init` writes."""
    return (resources.files("distillery") / "templates" / PROJECT_FILE).read_text(encoding="utf-8")
