"""Held-out evaluation on the test split, base model and tuned model side by side.

Every model generates through `distillery.runtime.ModelRuntime` (the runtime `serve` uses), with the
exact prompt the model was trained on (the dataset's system prompt + instruction + input).

- accuracy: the answer's conclusion equals the approved one. An answer that breaks the format is
  still credited when it starts with the right label, so accuracy and format are measured apart.
- macro-F1: over the labels of closed-label tasks (sklearn's convention: the labels that occur in
  the references or predictions, F1 = 0 where undefined); None when every task is open-ended.
- format compliance: the answer has `####` after a conclusion that is one of the task's labels
  (any non-empty conclusion for open-ended tasks).
- mean generated tokens: what a caller pays per answer.
"""

from __future__ import annotations

import gc
import time
import unicodedata
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from distillery.jsonl import write_jsonl
from distillery.parsing import ContractError, match_label, parse_answer
from distillery.records import TrainingExample

from .prepare import read_jsonl
from .workspace import FinetuneError, Manifest, PromptFormat, TaskLabels

if TYPE_CHECKING:
    from distillery.runtime import GenerationConfig, ModelRuntime, Quantization

REPORT_FILE = "eval.json"


class Candidate(BaseModel):
    name: str  # column title: base, tuned, ...
    model: str  # a model dir (or hub id)
    adapter: str | None = None  # a LoRA adapter dir on top of `model`


class Prediction(BaseModel):
    id: str
    task: str  # "task/step", the key of the label sets in the manifest
    reference: str
    answer: str  # the generated text, verbatim
    conclusion: str | None  # what was read as its conclusion (None: nothing recognisable)
    correct: bool
    format_ok: bool
    tokens: int
    finish_reason: str = "stop"  # "length": cut off at max_new_tokens


class LabelScore(BaseModel):
    precision: float
    recall: float
    f1: float
    support: int


class ModelScores(BaseModel):
    name: str
    model: str
    adapter: str | None
    examples: int
    accuracy: float
    macro_f1: float | None
    format_compliance: float
    mean_generated_tokens: float
    per_label: dict[str, LabelScore]  # "task/step/label" -> score, closed-label tasks only
    seconds: float


class EvalReport(BaseModel):
    data_dir: str
    test_examples: int
    max_new_tokens: int
    labels: dict[str, TaskLabels]
    models: list[ModelScores]


def _norm(text: str) -> str:
    return unicodedata.normalize("NFKC", text).strip().casefold()


def judge(example: TrainingExample, answer: str, finish_reason: str, labels: list[str] | None) -> tuple[str | None, bool, bool]:
    """(conclusion read from the answer, correct, format_ok) for one generated answer."""
    try:
        conclusion: str | None = parse_answer(answer, labels=labels, finish_reason=finish_reason,
                                              min_reasoning_chars=0).conclusion
        format_ok = True
    except ContractError:
        format_ok = False
        # The label it opens with still answers the question, even without the separator.
        conclusion = match_label(answer.strip(), labels) if labels else None
    if conclusion is None:
        return None, False, format_ok
    correct = (conclusion == example.conclusion) if labels else _norm(conclusion) == _norm(example.conclusion)
    return conclusion, correct, format_ok


def score(candidate: Candidate, predictions: list[Prediction], labels: dict[str, TaskLabels],
          seconds: float) -> ModelScores:
    n = len(predictions)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"tp": 0, "fp": 0, "fn": 0, "support": 0})
    for p in predictions:
        task_labels = labels.get(p.task)
        if task_labels is None or task_labels.labels is None:
            continue
        counts[f"{p.task}/{p.reference}"]["support"] += 1
        if p.correct:
            counts[f"{p.task}/{p.reference}"]["tp"] += 1
            continue
        counts[f"{p.task}/{p.reference}"]["fn"] += 1
        if p.conclusion in task_labels.labels:
            counts[f"{p.task}/{p.conclusion}"]["fp"] += 1
    per_label = {}
    for key, c in sorted(counts.items()):
        precision = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0
        recall = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[key] = LabelScore(precision=precision, recall=recall, f1=f1, support=c["support"])
    return ModelScores(
        name=candidate.name, model=candidate.model, adapter=candidate.adapter, examples=n,
        accuracy=sum(p.correct for p in predictions) / n if n else 0.0,
        macro_f1=sum(s.f1 for s in per_label.values()) / len(per_label) if per_label else None,
        format_compliance=sum(p.format_ok for p in predictions) / n if n else 0.0,
        mean_generated_tokens=sum(p.tokens for p in predictions) / n if n else 0.0,
        per_label=per_label, seconds=seconds,
    )


def load_test_split(data_dir: Path, limit: int | None = None) -> tuple[Manifest, list[TrainingExample]]:
    manifest = Manifest.load(data_dir)
    path = Path(data_dir) / manifest.test_records
    examples = [ex for _, ex in read_jsonl(path, TrainingExample)] if path.is_file() else []
    if not examples:
        raise FinetuneError(f"{data_dir} has no test split: prepare it again with --test above 0")
    return manifest, examples[:limit] if limit else examples


def evaluate(
    data_dir: Path,
    candidates: list[Candidate],
    *,
    limit: int | None = None,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    quantization: Quantization = "none",
    on_progress: Callable[[str, int, int], None] | None = None,
) -> tuple[EvalReport, dict[str, list[Prediction]]]:
    """Generate an answer for each test example with each candidate, one model in memory at a time."""
    manifest, examples = load_test_split(data_dir, limit)
    return evaluate_examples(examples, manifest.prompt, manifest.tasks, candidates, source=str(data_dir),
                             max_new_tokens=max_new_tokens, batch_size=batch_size, quantization=quantization,
                             on_progress=on_progress)


def evaluate_examples(
    examples: list[TrainingExample],
    prompt: PromptFormat,
    labels: dict[str, TaskLabels],
    candidates: list[Candidate],
    *,
    source: str,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    quantization: Quantization = "none",
    on_progress: Callable[[str, int, int], None] | None = None,
) -> tuple[EvalReport, dict[str, list[Prediction]]]:
    """`evaluate` on any examples (e.g. a held-out set outside the prepared data), prompted as the
    run was trained (`prompt`) and judged against each example's conclusion; `labels` keyed
    "task/step", as Prediction.task; `source` names where the examples came from in the report."""
    from distillery.runtime import GenerationConfig, ModelRuntime

    config = GenerationConfig(max_new_tokens=max_new_tokens)  # the model's end-of-turn ends an answer
    scores, predictions = [], {}
    for candidate in candidates:
        started = time.monotonic()
        runtime = ModelRuntime.load(candidate.model, adapter=candidate.adapter, quantization=quantization)
        preds: list[Prediction] = []
        for start in range(0, len(examples), batch_size):
            preds += predict(runtime, examples[start:start + batch_size], prompt, labels, config)
            if on_progress:
                on_progress(candidate.name, len(preds), len(examples))
        del runtime
        gc.collect()  # the next model loads into the memory this one held
        scores.append(score(candidate, preds, labels, time.monotonic() - started))
        predictions[candidate.name] = preds
    report = EvalReport(data_dir=source, test_examples=len(examples), max_new_tokens=max_new_tokens,
                        labels=labels, models=scores)
    return report, predictions


def predict(runtime: ModelRuntime, batch: list[TrainingExample], prompt: PromptFormat,
            labels: dict[str, TaskLabels], config: GenerationConfig) -> list[Prediction]:
    """One batch answered by a loaded model, prompted as it was trained, each answer judged against
    its example's conclusion (eval's loop; the second round's student answers too)."""
    outs = runtime.generate([prompt.messages(ex.instruction, ex.input) for ex in batch], config)
    preds = []
    for ex, out in zip(batch, outs):
        key = f"{ex.task_name}/{ex.step}"
        task = labels.get(key)
        conclusion, correct, format_ok = judge(ex, out.text, out.finish_reason, task.labels if task else None)
        preds.append(Prediction(id=ex.annotation_id, task=key, reference=ex.conclusion, answer=out.text,
                                conclusion=conclusion, correct=correct, format_ok=format_ok,
                                tokens=out.completion_tokens, finish_reason=out.finish_reason))
    return preds


def write_report(report: EvalReport, predictions: dict[str, list[Prediction]], out_dir: Path) -> Path:
    """eval.json (the scores) and predictions-<name>.jsonl (every answer, to read the misses)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / REPORT_FILE
    path.write_text(report.model_dump_json(indent=2), encoding="utf-8")
    for name, preds in predictions.items():
        write_jsonl(out_dir / f"predictions-{name}.jsonl", preds)
    return path


def run_candidates(run_dir: Path, *, use_adapter: bool = False, base: bool = True) -> list[Candidate]:
    """What `eval` scores for a run: its base model (unless `base` is False) and the tuned model,
    merged when the run has a merged dir (else, or with `use_adapter`, base + adapter)."""
    from .config import MERGED_DIR, read_run

    settings = read_run(run_dir)
    base_model, adapter, merged = settings["model_name_or_path"], settings["output_dir"], Path(run_dir) / MERGED_DIR
    tuned = (Candidate(name="tuned", model=base_model, adapter=adapter) if use_adapter or not merged.is_dir()
             else Candidate(name="tuned", model=str(merged)))
    return ([Candidate(name="base", model=base_model)] if base else []) + [tuned]
