"""Check the distillation proof: run the whole pipeline (examples/pipeline.py) and test its report
against the targets, or check the report an earlier run left in a workspace.

    python bench/pipeline_proof.py                          # run the demo into bench-workspace/, then check
    python bench/pipeline_proof.py --report demo-workspace  # check what `python examples/pipeline.py` wrote

Prints the figures (student before/after, early-exit ratio, cost) and each target; exits 1 when
a target is missed, so the figures in the README can be re-checked with one command.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import pipeline  # noqa: E402
import proof  # noqa: E402


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-w", "--workspace", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-workspace"),
              show_default=True, help="Workspace to run the pipeline in.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Only check the report.json in this workspace; run nothing.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Pipeline config override (repeatable).")
def main(workspace: Path, report_dir: Path | None, sets: tuple[str, ...]) -> None:
    if report_dir is None:
        overrides = dict(item.split("=", 1) for item in sets)
        try:
            config = pipeline.load_pipeline_config(pipeline.DEFAULT_CONFIG, overrides)
            report = pipeline.Pipeline(config, workspace).run()
        except pipeline.PipelineError as exc:
            raise SystemExit(f"error: {exc}") from exc
        if report is None:
            raise SystemExit("the pipeline stopped for a human review; this bench needs review: scripted")
    else:
        path = report_dir / proof.REPORT_JSON
        if not path.is_file():
            raise SystemExit(f"{path} does not exist: run python examples/pipeline.py -w {report_dir} first")
        report = proof.ProofReport.model_validate_json(path.read_text(encoding="utf-8"))
        pipeline.print_summary(report, report_dir)
    f, e = report.fidelity, report.early_exit
    print(f"format compliance   base {f.base.format_compliance:.3f}  tuned {f.tuned.format_compliance:.3f}")
    print(f"accuracy vs teacher base {f.base.accuracy:.3f}  tuned {f.tuned.accuracy:.3f}  majority {f.majority_baseline:.3f}")
    print(f"macro-F1 vs teacher base {f.base.macro_f1 or 0:.3f}  tuned {f.tuned.macro_f1 or 0:.3f}")
    print(f"early exit          {e.median_full_s:.2f} s / {e.median_conclusion_s:.2f} s = {e.speedup:.2f}x "
          f"({e.mean_full_tokens:.0f} vs {e.mean_conclusion_tokens:.0f} answer tokens, {e.inputs} inputs)")
    missed = [t for t in report.targets if not t.met]
    for t in report.targets:
        print(f"{'MET ' if t.met else 'MISS'} {t.name}: wanted {t.wanted}, got {t.got}")
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
