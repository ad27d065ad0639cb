"""finetune's step of `distill run`: the approved records -> a LLaMA-Factory dataset split by
document -> LoRA -> merged model -> base vs tuned on the held-out documents.

The `finetune:` section of the project config:

    model: embedded        # the student: a local model dir (Qwen2-7B-Instruct on a GPU), or
                           # `embedded` (SmolLM2-135M, trains on a CPU)
    cutoff_len: 1024
    val: 0.1               # shares of documents held out for validation and test
    test: 0.1
    seed: 42
    stratify: false        # keep each label's share of documents in every split
    method: lora           # or qlora (4-bit base weights, GPU)
    train: {}              # LLaMA-Factory keys on top of finetune/defaults.yaml
    eval_max_new_tokens: 256
    eval_limit: null       # only the first N test examples
    targets: {format: 0.95, fidelity_gain: 0.2}
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from distillery.config import validate
from distillery.errors import ConfigError
from distillery.formatting import pct
from distillery.pipeline import RunContext, StepResult, Target
from distillery.stages import Stage

from .cli import eval_with_progress, main, prepare_with_status, train_with_progress
from .config import ADAPTER_DIR, MERGED_DIR, write_train_config
from .evaluate import EvalReport, ModelScores, load_test_split, run_candidates
from .export import export
from .prepare import PrepareOptions
from .workspace import DEFAULT_SYSTEM


class FinetuneTargets(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: float = Field(0.95, ge=0, le=1)  # share of tuned answers that keep conclusion####reasoning
    fidelity_gain: float = Field(0.2, ge=0, le=1)  # tuned accuracy above both the base's and the majority label's


class FinetuneSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = "embedded"
    cutoff_len: int = Field(1024, ge=16)
    val: float = Field(0.1, ge=0, lt=1)
    test: float = Field(0.1, gt=0, lt=1)  # the held-out documents the proof is measured on
    seed: int = 42
    stratify: bool = False
    system: str = DEFAULT_SYSTEM
    method: Literal["lora", "qlora"] = "lora"
    train: dict[str, Any] = Field(default_factory=dict)  # LLaMA-Factory keys, as `train --set`
    eval_max_new_tokens: int = Field(256, ge=1)
    eval_limit: int | None = Field(None, ge=1)
    targets: FinetuneTargets = Field(default_factory=FinetuneTargets)


class StudentFigures(BaseModel):
    name: str
    format_compliance: float
    accuracy: float
    accuracy_ci: tuple[float, float]  # 95% Wilson interval: a few dozen test chunks decide little
    macro_f1: float | None
    mean_generated_tokens: float


class FidelityFigures(BaseModel):
    test_examples: int
    train_examples: int
    majority_label: str | None
    majority_baseline: float  # accuracy of always answering the commonest test label
    base: StudentFigures
    tuned: StudentFigures


class TrainingFigures(BaseModel):
    run: str
    wall_s: float  # the whole step: load, train, merge
    train_runtime_s: float | None  # the trainer's own figure
    steps: int | None
    train_loss: float | None


def configure(section: dict[str, Any], ctx: RunContext) -> FinetuneSettings:
    settings = validate(FinetuneSettings, section, None, section="finetune")
    if settings.val + settings.test >= 1:
        raise ConfigError(f"finetune.val + finetune.test is {settings.val + settings.test:g}: nothing would be left to train on")
    return settings


def run(ctx: RunContext, settings: FinetuneSettings) -> StepResult:
    ws, s = ctx.workspace, settings
    started = time.monotonic()
    ctx.command("finetune", "prepare", "--model", s.model, "--cutoff-len", str(s.cutoff_len), "--val", str(s.val),
                "--test", str(s.test), "--seed", str(s.seed), *(["--stratify"] if s.stratify else []))
    prepare_with_status(ws.approved, ws.finetune_data,
                        PrepareOptions(model=s.model, cutoff_len=s.cutoff_len, val_fraction=s.val, test_fraction=s.test,
                                       seed=s.seed, stratify=s.stratify, system=s.system),
                        preferences=ws.preferences if ws.preferences.is_file() else None, workspace=ws.root)
    ctx.command("finetune", "train", "--method", s.method,
                *[arg for key, value in s.train.items() for arg in ("--set", f"{key}={value}")])
    run_dir, _, manifest = write_train_config(ws, method=s.method, overrides=dict(s.train))
    result = train_with_progress(run_dir)
    merged = run_dir / MERGED_DIR
    if not (result.skipped and (merged / "config.json").is_file()):
        ctx.command("finetune", "export", "--run", run_dir.name)
        with ctx.console.status(f"merging the adapter of {run_dir.name} (llamafactory-cli export)…"):
            export(run_dir)
    wall_s = time.monotonic() - started
    limit = ["--limit", str(s.eval_limit)] if s.eval_limit else []
    ctx.command("finetune", "eval", "--run", run_dir.name, "--max-new-tokens", str(s.eval_max_new_tokens), *limit)
    evaluation, _ = eval_with_progress(run_dir, ws.finetune_data, run_candidates(run_dir), limit=s.eval_limit,
                                       max_new_tokens=s.eval_max_new_tokens)
    _, test = load_test_split(ws.finetune_data)
    fidelity = fidelity_figures(evaluation, [ex.conclusion for ex in test[: evaluation.test_examples]],
                                manifest.splits["train"].examples)
    training = training_figures(run_dir, wall_s)
    ctx.handoff.model_dir = merged
    ctx.handoff.probe_prompts = [manifest.prompt.messages(ex.instruction, ex.input)[-1]["content"] for ex in test]
    return StepResult(
        figures={"training": training.model_dump(mode="json"), "fidelity": fidelity.model_dump(mode="json")},
        markdown=markdown(training, fidelity),
        summary=[f"student: format {fidelity.base.format_compliance:.1%} -> {fidelity.tuned.format_compliance:.1%}, "
                 f"agreement with the teacher {fidelity.base.accuracy:.1%} -> {fidelity.tuned.accuracy:.1%} on "
                 f"{fidelity.test_examples} held-out chunks; training {training.wall_s:.0f} s"],
        targets=check_targets(fidelity, s.targets),
        outputs={"training data": ws.finetune_data, "tuned model (merged)": merged,
                 "eval answers": run_dir / "eval"},
    )


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def training_figures(run_dir: Path, wall_s: float) -> TrainingFigures:
    results = _json(run_dir / ADAPTER_DIR / "train_results.json")
    state = _json(run_dir / ADAPTER_DIR / "trainer_state.json")
    return TrainingFigures(run=run_dir.name, wall_s=wall_s, train_runtime_s=results.get("train_runtime"),
                           steps=state.get("global_step"), train_loss=results.get("train_loss"))


def _student(scores: ModelScores) -> StudentFigures:
    from scipy.stats import binomtest  # scipy comes with LLaMA-Factory; its Wilson interval is the textbook one

    ci = binomtest(round(scores.accuracy * scores.examples), scores.examples).proportion_ci(0.95, method="wilson")
    low, high = float(ci.low), float(ci.high)
    return StudentFigures(name=scores.name, format_compliance=scores.format_compliance, accuracy=scores.accuracy,
                          accuracy_ci=(low, high), macro_f1=scores.macro_f1,
                          mean_generated_tokens=scores.mean_generated_tokens)


def fidelity_figures(report: EvalReport, references: list[str], train_examples: int) -> FidelityFigures:
    by_name = {m.name: m for m in report.models}
    if not {"base", "tuned"} <= set(by_name):
        raise ValueError(f"eval.json has {sorted(by_name)}: run `distill finetune eval` with the base model too")
    common = Counter(references).most_common(1)
    return FidelityFigures(
        test_examples=report.test_examples, train_examples=train_examples,
        majority_label=common[0][0] if common else None,
        majority_baseline=common[0][1] / len(references) if common else 0.0,
        base=_student(by_name["base"]), tuned=_student(by_name["tuned"]),
    )


def check_targets(fidelity: FidelityFigures, targets: FinetuneTargets) -> list[Target]:
    """Format compliance after tuning, and fidelity well above base: tuned accuracy at least
    `fidelity_gain` above both the base's and the majority baseline (always the commonest label)."""
    tuned, base = fidelity.tuned, fidelity.base
    floor = max(base.accuracy, fidelity.majority_baseline)
    return [
        Target(name="format compliance after tuning", wanted=f">= {pct(targets.format)}",
               got=f"{pct(tuned.format_compliance)} (base {pct(base.format_compliance)})",
               met=tuned.format_compliance >= targets.format),
        Target(name="fidelity to the teacher",
               wanted=f"accuracy >= {pct(floor + targets.fidelity_gain)} (base/majority + {pct(targets.fidelity_gain)})",
               got=f"{pct(tuned.accuracy)}, macro-F1 {pct(tuned.macro_f1)} (base {pct(base.accuracy)}, "
                   f"majority {pct(fidelity.majority_baseline)})",
               met=tuned.accuracy >= floor + targets.fidelity_gain),
    ]


def markdown(tr: TrainingFigures, f: FidelityFigures) -> list[str]:
    return [
        "## Student before and after tuning (test split, against the teacher's answers)", "",
        f"{f.test_examples} held-out examples from documents the student never trained on "
        f"({f.train_examples} training examples). Majority baseline: always `{f.majority_label}` scores "
        f"{pct(f.majority_baseline)}.", "",
        "| model | format compliance | accuracy [95% CI] | macro-F1 | generated tokens |", "| --- | --- | --- | --- | --- |",
        *[f"| {s.name} | {pct(s.format_compliance)} | {pct(s.accuracy)} [{pct(s.accuracy_ci[0])}, {pct(s.accuracy_ci[1])}] "
          f"| {pct(s.macro_f1)} | {s.mean_generated_tokens:.0f} |" for s in (f.base, f.tuned)], "",
        f"Training run `{tr.run}`: {tr.steps} steps, {tr.train_runtime_s or 0:.0f} s in the trainer, {tr.wall_s:.0f} s "
        f"for the whole step (load, train, merge); mean train loss "
        f"{'n/a' if tr.train_loss is None else f'{tr.train_loss:.3f}'}.",
    ]


STAGE = Stage(name="finetune", help="dataset split by document, LoRA, merge, base vs tuned", command=main,
              configure=configure, run=run)
