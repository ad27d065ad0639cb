"""What growing the dataset and a second, teacher-corrected round do to the demo's student.

On a workspace where the demo ran (`distill run examples/pipeline.yaml -w W`), through the same
commands a user types (each is printed):

  1. grow the approved records: `distill annotate grow eda` and `grow aeda` (free, no teacher; the
     demo's embedded teacher is too small to paraphrase or write tasks, so the teacher-paid
     generators are measured by their tests against the Moonshot-compatible server instead);
  2. review them as the demo does (qc check, sample, the scripted reviewer accepts the sample, export);
  3. prepare and train `sft-grown` with the demo's own settings on the grown set (the split is drawn
     on annotated records only, so its test documents are the demo's);
  4. the second round from the demo's run: `distill finetune second-round --run sft-lora`, qc,
     prepare, and `train --stage dpo --from-run sft-lora` into `dpo-round2`;
  5. each run's `finetune eval` on the demo's test split, and a table of records before and after
     each generator, cost, and the test figures.

Then `python bench/pipeline_proof.py --report W --heldout --also-run sft-grown --also-run dpo-round2`
scores them on the held-out set (examples/heldout, 152 documents) with 95% intervals.

    python bench/grow_proof.py -w bench-workspace            # after the demo ran there
"""

from __future__ import annotations

import csv
import json
import shlex
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import click

from distillery.jsonl import read_jsonl
from distillery.pipeline import load_project
from distillery.records import PreferencePair, TrainingExample
from distillery.store import Store
from distillery.workspace import Workspace
from qc.stats import wilson

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "pipeline.yaml"
REVIEWER = "bench-script"


def distill(ws: Path, stage: str, *args: str, check: bool = True) -> str:
    cmd = [sys.executable, "-m", "distillery", stage, "-w", str(ws), *args]
    print("$ distill " + shlex.join(cmd[3:]), flush=True)
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True)
    print(f"  ({time.monotonic() - started:.0f} s)", flush=True)
    if check and done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def scripted_review(ws: Path, name: str) -> int:
    """The demo's reviewer: the sample's sheet with every open row accepted, imported back."""
    sheet = ws / "qc" / f"review-{name}.csv"
    distill(ws, "qc", "sheet", "export", str(sheet), "-s", name, "-r", REVIEWER)
    with sheet.open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        if not row["verdict"].strip():
            row["reviewer"], row["verdict"], row["note"] = REVIEWER, "accept", "scripted bench review"
    with sheet.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    distill(ws, "qc", "sheet", "import", str(sheet))
    return len(rows)


def review_round(ws: Path, name: str) -> None:
    distill(ws, "qc", "check")
    distill(ws, "qc", "sample", "--name", name)
    scripted_review(ws, name)
    distill(ws, "qc", "export")


def approved_counts(ws: Path) -> Counter[str]:
    return Counter(ex.origin or "annotated" for _, ex in read_jsonl(Workspace(ws).approved, TrainingExample))


def eval_figures(ws: Path, run: str, data: Path) -> dict[str, dict]:
    distill(ws, "finetune", "eval", "--run", run, "--data", str(data), "--no-base", "--max-new-tokens", "160")
    report = json.loads((Workspace(ws).run(run) / "eval" / "eval.json").read_text())
    return {m["name"]: m for m in report["models"]}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-w", "--workspace", type=click.Path(file_okay=False, exists=True, path_type=Path), required=True,
              help="A workspace where `distill run examples/pipeline.yaml` finished.")
@click.option("--per-record", default=2, show_default=True, help="Augmented versions per approved record (eda, aeda).")
@click.option("--skip-second-round", is_flag=True, help="Only the growing part.")
@click.option("--dpo-learning-rate", default=5e-5, show_default=True,
              help="The DPO run's learning rate (the demo's SFT rate, 1e-3, took the student from 60% to 30%).")
def main(workspace: Path, per_record: int, skip_second_round: bool, dpo_learning_rate: float) -> None:
    ws = workspace
    if not Workspace(ws).report_json.is_file():
        raise SystemExit(f"{ws} has no report.json: run `distill run examples/pipeline.yaml -w {ws}` first")
    settings = load_project(CONFIG).finetune
    sets = [arg for key, value in settings["train"].items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    prep = ["--model", str(settings["model"]), "--cutoff-len", str(settings["cutoff_len"]), "--val", str(settings["val"]),
            "--test", str(settings["test"]), "--seed", str(settings["seed"]), *(["--stratify"] if settings["stratify"] else [])]
    data = ws / "finetune"
    table: list[tuple[str, str]] = []
    before = approved_counts(ws)
    table.append(("approved records (demo)", str(sum(before.values()))))

    for method in ("eda", "aeda"):
        with Store.open(ws) as store:
            had = sum(1 for _ in store.annotations(generated=True))
        distill(ws, "annotate", "grow", method, "--per-record", str(per_record))
        with Store.open(ws) as store:
            now = sum(1 for _ in store.annotations(generated=True))
        table.append((f"grow {method}: records made (cost 0)", f"{now - had}"))
    review_round(ws, "grown")
    after = approved_counts(ws)
    table.append(("approved after review", ", ".join(f"{k} {v}" for k, v in sorted(after.items()))))
    distill(ws, "finetune", "prepare", "--out", str(data / "data-grown"), *prep)
    distill(ws, "finetune", "train", "--data", str(data / "data-grown"), "--run", "sft-grown", *sets)
    figures = {"sft-lora": eval_figures(ws, "sft-lora", data / "data"),
               "sft-grown": eval_figures(ws, "sft-grown", data / "data-grown")}

    if not skip_second_round:
        out = distill(ws, "finetune", "second-round", "--run", "sft-lora")
        print(out[-2000:])
        review_round(ws, "round2")
        pairs = [p for _, p in read_jsonl(Workspace(ws).preferences, PreferencePair)]
        table.append(("second round: approved correction pairs", str(sum(p.origin == "correction" for p in pairs))))
        distill(ws, "finetune", "prepare", "--out", str(data / "data-round2"), *prep)
        distill(ws, "finetune", "train", "--stage", "dpo", "--from-run", "sft-lora", "--data", str(data / "data-round2"),
                "--run", "dpo-round2", *sets, "--set", f"learning_rate={dpo_learning_rate}")
        figures["dpo-round2"] = eval_figures(ws, "dpo-round2", data / "data")

    for label, value in table:
        print(f"{label:<44}{value}")
    print(f"\n{'run':<14}{'format':>8}{'agreement':>11}{'95% interval':>18}  (demo test split, vs the teacher)")
    for run, models in figures.items():
        m = models["tuned"]
        iv = wilson(round(m["accuracy"] * m["examples"]), m["examples"])
        print(f"{run:<14}{m['format_compliance']:>8.0%}{m['accuracy']:>11.0%}{f'[{iv.low:.0%}, {iv.high:.0%}]':>18}")
    runs = " ".join(f"--also-run {r}" for r in figures if r != "sft-lora")
    print(f"\nheld-out: python bench/pipeline_proof.py --report {ws} --heldout {runs}")


if __name__ == "__main__":
    main()
