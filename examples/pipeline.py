"""The whole distillation on one machine: documents -> teacher -> QC -> LoRA -> eval -> served model.

    python examples/pipeline.py                              # the shipped demo (examples/pipeline.yaml)
    python examples/pipeline.py --teacher examples/kimi.yaml  # the same with Kimi (MOONSHOT_API_KEY)
    python examples/pipeline.py --review human                # stop for a person to review the sample

Every stage runs as the command a person would type, printed before it runs, so any step can be
re-run or inspected by hand. Running the pipeline again resumes: documents are not stored twice,
answered chunks are not asked (or paid for) again, a sample is drawn once, a finished training
run is not trained again. The end writes `report.md` / `report.json` into the workspace: the
proof, measured, that the student learned the teacher's task (see examples/proof.py).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import click
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.rule import Rule
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))  # proof.py, when run as a script or imported by path

import proof  # noqa: E402

from distillery.config import apply_overrides, load_mapping, validate  # noqa: E402
from distillery.records import Sample  # noqa: E402
from distillery.store import Store  # noqa: E402
from distillery.tasks import load_task  # noqa: E402
from distillery.teacher_config import load_job_config  # noqa: E402
from qc.report import pct  # noqa: E402

console = Console(soft_wrap=True)
HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = HERE / "pipeline.yaml"
RUN = "sft-lora"  # the run name `distill-finetune train` uses for a LoRA SFT
REVIEWER = "demo-script"


class PipelineError(Exception):
    """A step failed; the message says which command to run again or what to fix."""


class FinetuneStep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = "embedded"  # the student: a model dir, or `embedded` (SmolLM2-135M)
    cutoff_len: int = Field(512, ge=16)
    val: float = Field(0.0, ge=0, lt=1)
    test: float = Field(0.25, gt=0, lt=1)
    seed: int = 42
    stratify: bool = True  # each label keeps its share of documents in the test split
    train: dict[str, Any] = Field(default_factory=dict)  # LLaMA-Factory keys, as `train --set`
    eval_max_new_tokens: int = Field(160, ge=1)
    eval_limit: int | None = Field(None, ge=1)


class ServeStep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_new_tokens: int = Field(160, ge=1)
    proof_inputs: int = Field(10, ge=1)  # test inputs asked both ways for the early-exit figure


class Targets(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: float = 0.95
    speedup: float = 3.0
    fidelity_gain: float = 0.2


class PipelineConfig(BaseModel):
    """examples/pipeline.yaml. Relative paths are relative to the YAML file's folder."""

    model_config = ConfigDict(extra="forbid")
    documents: Path
    task: Path
    teacher: Path  # an annotate job config: its teacher (and prices, budget) are used, the task is ours
    gold_labels: Path | None = None  # file,label: the author's labels, to report the teacher's accuracy
    review: Literal["scripted", "human"] = "scripted"
    sample: list[str] = Field(default_factory=list)  # extra `distill-qc sample` options
    finetune: FinetuneStep = Field(default_factory=FinetuneStep)
    serve: ServeStep = Field(default_factory=ServeStep)
    targets: Targets = Field(default_factory=Targets)
    threads: int | None = Field(None, ge=1)  # OMP/torch threads for the model steps (None: torch's default)


def load_pipeline_config(path: Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    if not path.is_file():
        raise PipelineError(f"{path}: no such pipeline config")
    data = load_mapping(path.read_text(encoding="utf-8"), str(path), PipelineError)
    apply_overrides(data, overrides or {}, PipelineError)
    config = validate(PipelineConfig, data, str(path), PipelineError)
    base = path.resolve().parent
    for name in ("documents", "task", "teacher", "gold_labels"):
        value = getattr(config, name)
        if value is not None and not value.is_absolute():
            setattr(config, name, base / value)
    return config


def check_inputs(config: PipelineConfig) -> dict[str, str] | None:
    """Fail before any work on a missing input, naming the key; returns the author's labels."""
    for name, want_dir in (("documents", True), ("task", False), ("teacher", False), ("gold_labels", False)):
        value = getattr(config, name)
        if value is not None and not (value.is_dir() if want_dir else value.is_file()):
            raise PipelineError(f"{name}: {value} is not a {'folder' if want_dir else 'file'}; fix the path in the "
                                "pipeline config (relative paths are relative to the config file)")
    if config.gold_labels is None:
        return None
    try:
        return proof.read_gold(config.gold_labels)
    except ValueError as exc:
        raise PipelineError(f"gold_labels: {exc}") from exc


class Pipeline:
    def __init__(self, config: PipelineConfig, workspace: Path) -> None:
        self.config = config
        self.ws = workspace.resolve()
        self.env = {**os.environ}
        if config.threads:
            # One OpenMP thread per model process: on a small, shared CPU, spinning threads that
            # wait on each other ran SmolLM2 2-4x slower than one (bench/finetune_step.py).
            self.env["OMP_NUM_THREADS"] = str(config.threads)
        self.timings: dict[str, float] = {}
        self.gold = check_inputs(config)

    # -- running the stages' commands ----------------------------------------------------------

    def sh(self, stage: str, *args: str | Path, step: str | None = None) -> None:
        """Run `distill-<stage> -w WS args...` as its own process, printed first."""
        argv = [str(a) for a in args]
        console.print(f"[bold cyan]$ distill-{stage} -w {self._show(self.ws)} {' '.join(map(self._show, argv))}[/]")
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", stage, "-w", str(self.ws), *argv], env=self.env)
        if step:
            self.timings[step] = time.monotonic() - started
        if done.returncode != 0:
            raise PipelineError(f"`distill-{stage} {' '.join(argv)}` failed (exit {done.returncode}); its message is "
                                f"above. Fix that and run the pipeline again: finished steps are not redone.")

    @staticmethod
    def _show(arg: str | Path) -> str:
        """Paths as the user typed them (relative to here) when they can be."""
        try:
            return str(Path(arg).resolve().relative_to(Path.cwd())) if os.sep in str(arg) else str(arg)
        except ValueError:
            return str(arg)

    @staticmethod
    def step(title: str) -> None:
        console.print(Rule(f"[bold]{title}"))

    # -- the stages ----------------------------------------------------------------------------

    def annotate(self) -> str:
        c = self.config
        self.step("1/6 annotate: documents -> chunks -> teacher answers")
        self.sh("annotate", "ingest", c.documents)
        self.sh("annotate", "run", "-c", c.teacher, "--task", c.task, step="annotate")
        return load_task(c.task).name

    def qc(self, task: str) -> str | None:
        """check, sample, review, report, export: the sample's name, None while it waits for a person."""
        self.step("2/6 quality control: checks, a sized sample, its review, approved records")
        self.sh("qc", "check", "-t", task)
        sample = self._current_sample(task)
        if sample is not None:
            console.print(f"sample {sample.name} was drawn from these same records before: reviewing it, not drawing another")
        else:
            self.sh("qc", "sample", "-t", task, *self.config.sample)
            sample = self._current_sample(task)
            assert sample is not None
        if self.config.review == "scripted":
            self.scripted_review(sample.name)
        elif self._unreviewed(sample.name):
            console.print(f"[yellow]sample {sample.name} waits for a reviewer[/]: run "
                          f"[bold]distill-qc -w {self._show(self.ws)} review[/], then this pipeline again.")
            return None
        self.sh("qc", "report", "-s", sample.name)
        self.sh("qc", "export", "-s", sample.name, "-t", task)
        return sample.name

    def _current_sample(self, task: str) -> Sample | None:
        """The latest sample of the task whose lot is still exactly the task's reviewable records;
        after new answers (more documents, an edited task) the old sample no longer speaks for them."""
        from qc.sampling import lot_units, spec_of

        with Store.open(self.ws) as store:
            for sample in reversed(store.samples()):
                if task in sample.tasks:
                    assert sample.id is not None
                    current = {rid for rid, _ in lot_units(store, spec_of(sample))}
                    return sample if current == set(store.sample_lot(sample.id)) else None
        return None

    def _unreviewed(self, sample_name: str) -> int:
        with Store.open(self.ws) as store:
            sample = store.sample(sample_name)
            assert sample is not None
            return sample.size - len({r.annotation_id for r in store.reviews(sample_id=sample.id)})

    def scripted_review(self, sample_name: str) -> None:
        """The demo's reviewer: the spreadsheet round trip a person would do offline, with every
        record accepted by a script. Real runs review with `distill-qc review` instead."""
        sheet = self.ws / "qc" / f"review-{sample_name}.csv"
        sheet.parent.mkdir(parents=True, exist_ok=True)
        self.sh("qc", "sheet", "export", sheet, "-s", sample_name, "-r", REVIEWER)
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
        console.print(f"scripted review: {len(rows)} sampled records accepted as '{REVIEWER}' in {self._show(sheet)}")
        self.sh("qc", "sheet", "import", sheet)

    def finetune(self) -> None:
        f = self.config.finetune
        self.step("3/6 finetune: dataset split by document, LoRA, merge")
        self.sh("finetune", "prepare", "--model", f.model, "--cutoff-len", f.cutoff_len, "--val", f.val,
                "--test", f.test, "--seed", f.seed, *(["--stratify"] if f.stratify else []))
        sets = [arg for key, value in f.train.items() for arg in ("--set", f"{key}={value}")]
        self.sh("finetune", "train", *sets, step="train")
        self.step("4/6 evaluate: base vs tuned student on the held-out documents")
        limit = ["--limit", str(f.eval_limit)] if f.eval_limit else []
        self.sh("finetune", "eval", "--run", RUN, "--max-new-tokens", f.eval_max_new_tokens, *limit)

    def serve(self) -> proof.EarlyExitFigures:
        from transformers import AutoTokenizer

        from finetune.evaluate import load_test_split
        from serve.process import ServerProcess

        self.step("5/6 serve: the tuned student behind POST /algorithm/ChatRest")
        merged = self.ws / "finetune" / "runs" / RUN / "merged"
        manifest, examples = load_test_split(self.ws / "finetune" / "data", self.config.serve.proof_inputs)
        prompts = [manifest.prompt.messages(ex.instruction, ex.input)[-1]["content"] for ex in examples]
        args = ["--model", str(merged), "--max-new-tokens", str(self.config.serve.max_new_tokens)]
        if self.config.threads:
            args += ["--torch-threads", str(self.config.threads)]
        console.print(f"[bold cyan]$ distill-serve gunicorn {' '.join(map(self._show, args))}[/]")
        tokenizer = AutoTokenizer.from_pretrained(merged)
        with ServerProcess(args, log=self.ws / "serve.log", env=self.env) as server:
            console.print(f"listening at {server.url}; asking {len(prompts)} held-out inputs, conclusion only and with reasoning")
            figures = proof.measure_early_exit(server.url, prompts, lambda text: len(tokenizer.encode(text)))
        console.print(f"POST {server.url}/algorithm/ChatRest {json.dumps(figures.example_request, ensure_ascii=False)[:160]}…")
        console.print(f"-> {json.dumps(figures.example_response, ensure_ascii=False)}")
        return figures

    # -- the proof --------------------------------------------------------------------------------

    def report(self, task: str, sample_name: str, early_exit: proof.EarlyExitFigures) -> proof.ProofReport:
        from finetune.evaluate import EvalReport, load_test_split
        from qc.report import build_report

        self.step("6/6 report")
        c = self.config
        job = load_job_config(c.teacher, {"task": str(c.task)})
        with Store.open(self.ws) as store:
            teacher = proof.teacher_figures(store, task, job.teacher.resolved_model(), job.price().currency,
                                            self.timings.get("annotate", 0.0), c.documents, self.gold)
            sample = store.sample(sample_name)
            assert sample is not None
            qc_report = build_report(store, sample, str(self.ws))
            reviewers = sorted({r.reviewer for r in store.reviews(sample_id=sample.id)})
            flagged = len(store.flags(task_names=[task]))
        approved = self.ws / "exports" / "approved.jsonl"
        qc_figures = proof.QCFigures(
            sample=sample.name, sample_size=sample.size, lot_size=sample.lot_size, verdicts=qc_report.verdicts,
            decision=qc_report.decision.headline, reviewer=", ".join(reviewers) or "nobody", flagged=flagged,
            approved=sum(1 for line in approved.open(encoding="utf-8") if line.strip()),
        )
        run_dir = self.ws / "finetune" / "runs" / RUN
        results = _json(run_dir / "adapter" / "train_results.json")
        state = _json(run_dir / "adapter" / "trainer_state.json")
        training = proof.TrainingFigures(
            wall_s=self.timings.get("train", 0.0), train_runtime_s=results.get("train_runtime"),
            steps=state.get("global_step"), train_loss=results.get("train_loss"),
        )
        manifest, test = load_test_split(self.ws / "finetune" / "data")
        evaluation = EvalReport.model_validate_json((run_dir / "eval" / "eval.json").read_text(encoding="utf-8"))
        fidelity = proof.fidelity_figures(evaluation, [ex.conclusion for ex in test[: evaluation.test_examples]],
                                          manifest.splits["train"].examples)
        report = proof.ProofReport(
            workspace=str(self.ws), generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            teacher=teacher, qc=qc_figures, training=training, fidelity=fidelity, early_exit=early_exit,
            targets=proof.check_targets(fidelity, early_exit, min_format=c.targets.format,
                                        min_speedup=c.targets.speedup, min_gain=c.targets.fidelity_gain),
        )
        proof.write_report(report, self.ws)
        return report

    def run(self) -> proof.ProofReport | None:
        task = self.annotate()
        sample = self.qc(task)
        if sample is None:
            return None
        self.finetune()
        figures = self.serve()
        report = self.report(task, sample, figures)
        print_summary(report, self.ws)
        return report


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def print_summary(report: proof.ProofReport, workspace: Path) -> None:
    table = Table(title="distillation proof", show_lines=False)
    for column in ("target", "wanted", "got", "met"):
        table.add_column(column)
    for t in report.targets:
        table.add_row(t.name, t.wanted, t.got, "[green]yes[/]" if t.met else "[red]NO[/]")
    console.print(table)
    f, e, tr, te = report.fidelity, report.early_exit, report.training, report.teacher
    console.print(f"student: format {pct(f.base.format_compliance)} -> {pct(f.tuned.format_compliance)}, "
                  f"agreement with the teacher {pct(f.base.accuracy)} -> {pct(f.tuned.accuracy)} "
                  f"(macro-F1 {pct(f.base.macro_f1)} -> {pct(f.tuned.macro_f1)}) on {f.test_examples} held-out chunks")
    console.print(f"teacher: {te.prompt_tokens + te.completion_tokens:,} tokens, {te.cost:.2f} {te.currency}; "
                  f"training {tr.wall_s:.0f} s; serving {e.tokens_per_s:.1f} tokens/s, early exit {e.speedup:.1f}x")
    where = {
        "store (documents, answers, verdicts)": workspace / "distillery.db",
        "approved records": workspace / "exports" / "approved.jsonl",
        "training data": workspace / "finetune" / "data",
        "tuned model (merged)": workspace / "finetune" / "runs" / RUN / "merged",
        "eval answers": workspace / "finetune" / "runs" / RUN / "eval",
        "this report": workspace / proof.REPORT_MD,
    }
    for what, path in where.items():
        console.print(f"  {what:<38} {Pipeline._show(path)}")
    console.print(f"serve it: distill-serve run --model {Pipeline._show(where['tuned model (merged)'])}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_CONFIG,
              show_default="examples/pipeline.yaml", help="Pipeline config YAML.")
@click.option("-w", "--workspace", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-workspace"),
              show_default=True, help="Where the store, data, models and report go.")
@click.option("--teacher", type=click.Path(dir_okay=False, path_type=Path),
              help="Annotate job config whose teacher to use, e.g. examples/kimi.yaml [default: the config's].")
@click.option("--review", type=click.Choice(["scripted", "human"]),
              help="scripted: accept the sample by script (demo); human: stop until a person reviewed it.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set finetune.train.num_train_epochs=2 (repeatable).")
def main(config_path: Path, workspace: Path, teacher: Path | None, review: str | None, sets: tuple[str, ...]) -> None:
    """Run the whole distillation and write the proof report."""
    overrides: dict[str, Any] = {}
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq:
            raise click.BadParameter(f"'{item}' is not KEY=VALUE", param_hint="--set")
        overrides[key] = value
    try:
        config = load_pipeline_config(config_path, overrides)
        if teacher is not None:
            config.teacher = teacher.resolve()
        if review is not None:
            config.review = review  # type: ignore[assignment]
        report = Pipeline(config, workspace).run()
    except PipelineError as exc:
        console.print(f"[red]error[/]: {exc}")
        sys.exit(1)
    if report is not None and not all(t.met for t in report.targets):
        console.print("[yellow]some targets were not met: the report says by how much[/]")


if __name__ == "__main__":
    main()
