"""Check the distillation proof: run the whole pipeline (`distill run examples/pipeline.yaml`) and
test its report against the targets, or check the report an earlier run left in a workspace.

    python bench/pipeline_proof.py                           # run the demo into bench-workspace/, then check
    python bench/pipeline_proof.py --report workspace        # check what `distill run examples/pipeline.yaml` wrote
    python bench/pipeline_proof.py --heldout                 # the demo, then the held-out set (examples/heldout)
    python bench/pipeline_proof.py --report workspace --heldout

Prints the figures (student before/after, early-exit ratio, cost) and each target; exits 1 when
a target is missed, so the figures in the README can be re-checked with one command.

The demo's test split is ten documents: too few to tell (its 70% has a 95% interval of 40-89%).
`--heldout` also asks the base student, the tuned student and the demo's teacher about the
held-out set's documents (written for the project, never used to word the teacher's cues, never
trained on) and reports each one's agreement with the author's labels and the students' with the
teacher, each with its Wilson 95% interval; a half-width above 8 points is a missed target.
"""

from __future__ import annotations

import asyncio
import csv
import sys
from pathlib import Path

import click

from distillery.config import parse_sets
from distillery.errors import DistilleryError
from distillery.pipeline import RunReport, Target, load_project, run_project, targets_table
from distillery.records import TrainingExample
from distillery.tasks import Task, load_task
from distillery.teacher import ChatResult
from distillery.teacher_config import JobConfig, build_teacher, load_job_config
from distillery.workspace import Workspace
from qc.stats import Interval, wilson

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "pipeline.yaml"
HELDOUT = Path(__file__).resolve().parents[1] / "examples" / "heldout"
TEACHER_CONCURRENCY = 8  # a batch of the embedded teacher: more would only queue (and overflow its queue)
MAX_HALF_WIDTH = 0.08  # issue #13: a 95% interval of at most +/- 8 points (ten documents gave +/- 25)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-w", "--workspace", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-workspace"),
              show_default=True, help="Workspace to run the pipeline in.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Only check the report.json in this workspace; run no pipeline.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Project config override (repeatable).")
@click.option("--heldout", is_flag=True, help="Also score the students and the teacher on examples/heldout (documents written for the project).")
@click.option("--heldout-tokens", type=click.IntRange(min=8), default=32, show_default=True,
              help="Tokens a student may write per held-out answer: only its conclusion, which opens it, is scored.")
@click.option("--also-run", "also_runs", multiple=True, metavar="RUN",
              help="With --heldout: also score this training run's tuned model (repeatable), e.g. the runs "
                   "bench/grow_proof.py trains on the grown set and on the second round's pairs.")
def main(workspace: Path, report_dir: Path | None, sets: tuple[str, ...], heldout: bool, heldout_tokens: int,
         also_runs: tuple[str, ...]) -> None:
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
    targets = list(report.targets)
    if heldout:
        threads = load_project(CONFIG, parse_sets(sets)).threads
        if threads and report_dir is not None:  # run_project set them for the run it made
            import torch

            torch.set_num_threads(threads)
        targets += heldout_proof(Workspace(report_dir or workspace), report, heldout_tokens, also_runs)
    for t in targets:
        print(f"{'MET ' if t.met else 'MISS'} {t.name}: wanted {t.wanted}, got {t.got}")
    sys.exit(0 if all(t.met for t in targets) else 1)


def read_heldout(root: Path = HELDOUT) -> list[tuple[str, str, str]]:
    """(file, text, author label) for each document labels.csv lists, in its order."""
    with (root / "labels.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [(row["file"], (root / "docs" / row["file"]).read_text(encoding="utf-8").strip(), row["label"])
            for row in rows]


def teacher_answers(config: JobConfig, task: Task, texts: list[str]) -> list[str | None]:
    """The label the demo's teacher gives each text, asked as `annotate run` asks it about a chunk
    (None where its answer breaks the contract)."""
    from annotate.runner import teacher_request
    from distillery.parsing import ContractError

    step = task.first_step
    teacher = build_teacher(config.teacher)
    slots = asyncio.Semaphore(TEACHER_CONCURRENCY)

    async def one(text: str) -> ChatResult:
        async with slots:
            return await teacher.complete(teacher_request(task, config, task.messages(step, text), step, text))

    async def ask() -> list[str | None]:
        try:
            results = await asyncio.gather(*(one(text) for text in texts))
        finally:
            await teacher.aclose()
        labels: list[str | None] = []
        for result in results:
            try:
                labels.append(task.parse(step, result.content, result.finish_reason).conclusion)
            except ContractError:
                labels.append(None)
        return labels

    return asyncio.run(ask())


def student_answers(ws: Workspace, report: RunReport, task: Task, docs: list[tuple[str, str, str]],
                    max_new_tokens: int, also_runs: tuple[str, ...] = ()) -> dict[str, list[str | None]]:
    """The conclusion the run's base and tuned students give each document (and the tuned model of
    each of `also_runs`, under its run's name), prompted as in training and read as the finetune
    stage's eval reads it."""
    from finetune.evaluate import evaluate_examples, run_candidates
    from finetune.workspace import Manifest

    manifest = Manifest.load(ws.finetune_data)
    step = task.first_step
    examples = [TrainingExample(annotation_id=file, task_name=task.name, task_hash=task.hash, step=step,
                                document_id=file, document_path=file, chunk_id=file,
                                instruction=task.student_instruction(), input=text, conclusion=label, reasoning="")
                for file, text, label in docs]
    run_dir = ws.run(report.stages["finetune"]["training"]["run"])
    candidates = run_candidates(run_dir)
    for name in also_runs:
        if not ws.run(name).is_dir():
            raise SystemExit(f"no training run {name} in {ws.root} (--also-run): bench/grow_proof.py trains them")
        candidates += [c.model_copy(update={"name": name}) for c in run_candidates(ws.run(name), base=False)]
    _, predictions = evaluate_examples(examples, manifest.prompt, manifest.tasks, candidates,
                                       source=str(HELDOUT), max_new_tokens=max_new_tokens)
    return {name: [p.conclusion for p in preds] for name, preds in predictions.items()}


def agreement(a: list[str | None], b: list[str | None]) -> Interval:
    """How often two answer lists agree, with its Wilson 95% interval (no answer agrees with nothing)."""
    return wilson(sum(x is not None and x == y for x, y in zip(a, b, strict=True)), len(a))


def heldout_proof(ws: Workspace, report: RunReport, max_new_tokens: int, also_runs: tuple[str, ...] = ()) -> list[Target]:
    """Print the held-out agreement table; one target per figure: its interval's half-width."""
    config = load_job_config(ws.root / "annotate-job.yaml")  # the teacher and task the demo ran with
    task = load_task(config.task, overrides=config.vars or None)
    docs = read_heldout()
    authors: list[str | None] = [label for _, _, label in docs]
    print(f"held-out set: {len(docs)} documents ({HELDOUT})")
    answers = {"teacher": teacher_answers(config, task, [text for _, text, _ in docs]),
               **student_answers(ws, report, task, docs, max_new_tokens, also_runs)}
    rows = [(f"{name} vs author labels", agreement(labels, authors)) for name, labels in answers.items()]
    rows += [(f"{name} vs teacher", agreement(answers[name], answers["teacher"])) for name in ("base", "tuned", *also_runs)]
    print(f"{'':<28}{'agreement':>10}{'95% interval':>18}{'half-width':>12}")
    for name, iv in rows:
        print(f"{name:<28}{iv.estimate or 0:>10.1%}{f'[{iv.low:.1%}, {iv.high:.1%}]':>18}{iv.half_width * 100:>9.1f} pts"
              f"  ({iv.successes}/{iv.n})")
    return [Target(name=f"held-out {name}: interval half-width", wanted=f"<= {MAX_HALF_WIDTH * 100:.0f} pts",
                   got=f"{iv.half_width * 100:.1f} pts", met=iv.half_width <= MAX_HALF_WIDTH) for name, iv in rows]


if __name__ == "__main__":
    main()
