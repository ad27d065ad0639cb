"""Check the distillation proof: run the whole pipeline (`distill run examples/pipeline.yaml`) and
test its report against the targets, or check the report an earlier run left in a workspace.

    python bench/pipeline_proof.py                           # run the demo into bench-workspace/, then check
    python bench/pipeline_proof.py --report workspace        # check what `distill run examples/pipeline.yaml` wrote

Prints the figures (student before/after, early-exit ratio, cost) and each target; exits 1 when
a target is missed, so the figures in the README can be re-checked with one command.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from distillery.config import parse_sets
from distillery.errors import DistilleryError
from distillery.pipeline import RunReport, run_project, targets_table
from distillery.workspace import Workspace

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "pipeline.yaml"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-w", "--workspace", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-workspace"),
              show_default=True, help="Workspace to run the pipeline in.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Only check the report.json in this workspace; run nothing.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Project config override (repeatable).")
def main(workspace: Path, report_dir: Path | None, sets: tuple[str, ...]) -> None:
    if report_dir is None:
        try:
            report = run_project(CONFIG, workspace, overrides=parse_sets(sets))
        except DistilleryError as exc:
            raise SystemExit(f"error: {exc}") from exc
        if report is None:
            raise SystemExit("the pipeline stopped for a human review; this bench needs qc.review: scripted")
    else:
        path = Workspace(report_dir).report_json
        if not path.is_file():
            raise SystemExit(f"{path} does not exist: run `distill run examples/pipeline.yaml -w {report_dir}` first")
        report = RunReport.model_validate_json(path.read_text(encoding="utf-8"))
        from rich.console import Console

        Console().print(targets_table(report.targets))
    fidelity, e = report.stages["finetune"]["fidelity"], report.stages["serve"]
    base, tuned = fidelity["base"], fidelity["tuned"]
    print(f"format compliance   base {base['format_compliance']:.3f}  tuned {tuned['format_compliance']:.3f}")
    print(f"accuracy vs teacher base {base['accuracy']:.3f}  tuned {tuned['accuracy']:.3f}  "
          f"majority {fidelity['majority_baseline']:.3f}")
    print(f"macro-F1 vs teacher base {base['macro_f1'] or 0:.3f}  tuned {tuned['macro_f1'] or 0:.3f}")
    print(f"early exit          {e['median_full_s']:.2f} s / {e['median_conclusion_s']:.2f} s = {e['speedup']:.2f}x "
          f"({e['mean_full_tokens']:.0f} vs {e['mean_conclusion_tokens']:.0f} answer tokens, {e['inputs']} inputs)")
    for t in report.targets:
        print(f"{'MET ' if t.met else 'MISS'} {t.name}: wanted {t.wanted}, got {t.got}")
    sys.exit(0 if all(t.met for t in report.targets) else 1)


if __name__ == "__main__":
    main()
