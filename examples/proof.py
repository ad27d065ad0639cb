"""The proof that the student learned the teacher's task, read from what the stages left behind.

- format: share of test answers that follow `conclusion####reasoning` with a valid label,
  base vs tuned (`distill-finetune eval`, eval.json);
- fidelity: accuracy and macro-F1 of the student's conclusions against the teacher's on the
  test split, base vs tuned, with the majority-label baseline (what always answering the
  commonest label scores), and, when the author's labels are given, how often the teacher
  itself was right;
- early exit: the tuned student served by `distill-serve`, median latency of conclusion-only
  ChatRest answers vs full ones on the same inputs, asked one at a time;
- cost: teacher tokens and cost, student training time, serving tokens/s.
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
from pydantic import BaseModel

from distillery.accounting import DEFAULT_PRICES, cost
from distillery.store import Store
from finetune.evaluate import EvalReport, ModelScores
from qc.report import pct
from qc.stats import wilson

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
KIMI_PRICE_MODEL = "moonshot-v1-8k"  # what the same job's tokens would cost at this list price


class TeacherFigures(BaseModel):
    model: str
    records: int  # answers that passed the contract
    invalid: int  # answers that broke it after the re-asks
    prompt_tokens: int
    completion_tokens: int
    cost: float
    currency: str
    kimi_list_cost_cny: float  # the same token counts at moonshot-v1-8k prices
    gold_accuracy: float | None  # teacher vs the author's labels, when given
    gold_records: int
    wall_s: float


class QCFigures(BaseModel):
    sample: str
    sample_size: int
    lot_size: int
    verdicts: dict[str, int]
    decision: str
    reviewer: str  # who gave the verdicts (the demo's script, or people)
    flagged: int
    approved: int  # records exported for training


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


class EarlyExitFigures(BaseModel):
    inputs: int
    median_conclusion_s: float
    median_full_s: float
    speedup: float  # median full / median conclusion-only
    mean_conclusion_tokens: float
    mean_full_tokens: float
    tokens_per_s: float  # generated tokens / seconds over the full answers
    example_request: dict
    example_response: dict


class TrainingFigures(BaseModel):
    wall_s: float  # the whole `distill-finetune train`: load, train, merge
    train_runtime_s: float | None  # the trainer's own figure
    steps: int | None
    train_loss: float | None


class Target(BaseModel):
    name: str
    wanted: str
    got: str
    met: bool


class ProofReport(BaseModel):
    workspace: str
    generated_at: str
    teacher: TeacherFigures
    qc: QCFigures
    training: TrainingFigures
    fidelity: FidelityFigures
    early_exit: EarlyExitFigures
    targets: list[Target]


# -- reading the stages' outputs ---------------------------------------------------------------


def read_gold(path: Path) -> dict[str, str]:
    """file name (relative to the documents folder) -> the author's label."""
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"file", "label"} <= set(rows[0]):
        raise ValueError(f"{path}: needs a header 'file,label' and one row per document")
    return {row["file"].strip(): row["label"].strip() for row in rows}


def teacher_figures(store: Store, task_name: str, model: str, currency: str, wall_s: float,
                    documents: Path, gold: dict[str, str] | None) -> TeacherFigures:
    counts = store.counts(task_name=task_name)
    tokens_in = sum(c["prompt_tokens"] for c in counts.values())
    tokens_out = sum(c["completion_tokens"] for c in counts.values())
    right = seen = 0
    if gold:
        root = documents.resolve()
        for _, ann in store.annotations(task_name=task_name, status="ok"):
            chunk = store.chunk(ann.chunk_id)
            doc = store.document(chunk.document_id) if chunk else None
            if doc is None:
                continue
            try:
                name = Path(doc.path).resolve().relative_to(root).as_posix()
            except ValueError:
                continue  # a document from elsewhere in the workspace
            if name in gold:
                seen += 1
                right += ann.conclusion == gold[name]
    return TeacherFigures(
        model=model, records=counts.get("ok", {}).get("records", 0),
        invalid=counts.get("invalid", {}).get("records", 0),
        prompt_tokens=tokens_in, completion_tokens=tokens_out,
        cost=sum(c["cost"] for c in counts.values()), currency=currency,
        kimi_list_cost_cny=cost(DEFAULT_PRICES[KIMI_PRICE_MODEL], tokens_in, tokens_out),
        gold_accuracy=right / seen if seen else None, gold_records=seen, wall_s=wall_s,
    )


def _student(scores: ModelScores) -> StudentFigures:
    ci = wilson(round(scores.accuracy * scores.examples), scores.examples)
    return StudentFigures(name=scores.name, format_compliance=scores.format_compliance, accuracy=scores.accuracy,
                          accuracy_ci=(ci.low, ci.high), macro_f1=scores.macro_f1,
                          mean_generated_tokens=scores.mean_generated_tokens)


def fidelity_figures(report: EvalReport, references: list[str], train_examples: int) -> FidelityFigures:
    by_name = {m.name: m for m in report.models}
    if not {"base", "tuned"} <= set(by_name):
        raise ValueError(f"eval.json has {sorted(by_name)}: run `distill-finetune eval` with the base model too")
    common = Counter(references).most_common(1)
    return FidelityFigures(
        test_examples=report.test_examples, train_examples=train_examples,
        majority_label=common[0][0] if common else None,
        majority_baseline=common[0][1] / len(references) if common else 0.0,
        base=_student(by_name["base"]), tuned=_student(by_name["tuned"]),
    )


# -- early exit, measured against the running server -------------------------------------------


def _completion_tokens(client: httpx.Client) -> float:
    """Tokens the server has generated so far, from its Prometheus counter."""
    text = client.get("/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("distill_serve_tokens_total{") and 'kind="completion"' in line)


def measure_early_exit(url: str, prompts: list[str], count_tokens: Callable[[str], int],
                       timeout_s: float = 600) -> EarlyExitFigures:
    """Ask every prompt twice, one request at a time: conclusion only, then with the reasoning.

    The order alternates per input so neither mode always runs on a warmer cache.
    """
    if not prompts:
        raise ValueError("no prompts to measure early exit with")
    timings: dict[bool, list[float]] = {False: [], True: []}
    tokens: dict[bool, list[int]] = {False: [], True: []}
    example: tuple[dict, dict] | None = None
    full_generated = 0.0
    with httpx.Client(base_url=url, timeout=timeout_s) as client:
        body = {"prompt": prompts[0]}
        client.post("/algorithm/ChatRest", json=body).raise_for_status()  # warm-up, not counted
        for i, prompt in enumerate(prompts):
            for reasoning in ((False, True) if i % 2 == 0 else (True, False)):
                body = {"prompt": prompt, "reasoning": reasoning}
                before = _completion_tokens(client) if reasoning else 0.0
                started = time.perf_counter()
                response = client.post("/algorithm/ChatRest", json=body)
                timings[reasoning].append(time.perf_counter() - started)
                response.raise_for_status()
                payload = response.json()
                if not payload.get("sucess"):
                    raise RuntimeError(f"ChatRest refused the request: {payload}")
                tokens[reasoning].append(count_tokens(payload["data"]["answer"]))
                if reasoning:
                    full_generated += _completion_tokens(client) - before
                if example is None and not reasoning:
                    example = (body, payload)
    concl, full = statistics.median(timings[False]), statistics.median(timings[True])
    assert example is not None
    return EarlyExitFigures(
        inputs=len(prompts), median_conclusion_s=concl, median_full_s=full, speedup=full / concl,
        mean_conclusion_tokens=statistics.fmean(tokens[False]), mean_full_tokens=statistics.fmean(tokens[True]),
        tokens_per_s=full_generated / sum(timings[True]), example_request=example[0], example_response=example[1],
    )


# -- targets and the written report ----------------------------------------------------------


def check_targets(fidelity: FidelityFigures, early_exit: EarlyExitFigures, *, min_format: float,
                  min_speedup: float, min_gain: float) -> list[Target]:
    """The issue's targets: format >= 95% after tuning, early exit >= 3x, fidelity well above base
    (here: tuned accuracy at least `min_gain` above both the base's and the majority baseline)."""
    tuned, base = fidelity.tuned, fidelity.base
    floor = max(base.accuracy, fidelity.majority_baseline)
    return [
        Target(name="format compliance after tuning", wanted=f">= {pct(min_format)}",
               got=f"{pct(tuned.format_compliance)} (base {pct(base.format_compliance)})",
               met=tuned.format_compliance >= min_format),
        Target(name="fidelity to the teacher", wanted=f"accuracy >= {pct(floor + min_gain)} (base/majority + {pct(min_gain)})",
               got=f"{pct(tuned.accuracy)}, macro-F1 {pct(tuned.macro_f1)} (base {pct(base.accuracy)}, "
                   f"majority {pct(fidelity.majority_baseline)})",
               met=tuned.accuracy >= floor + min_gain),
        Target(name="early-exit speedup", wanted=f">= {min_speedup:g}x", got=f"{early_exit.speedup:.1f}x",
               met=early_exit.speedup >= min_speedup),
    ]


def render_markdown(report: ProofReport) -> str:
    t, q, tr, f, e = report.teacher, report.qc, report.training, report.fidelity, report.early_exit
    rows = [
        "# Distillation proof report", "",
        f"Workspace `{report.workspace}`, written {report.generated_at}.", "",
        "## Targets", "", "| target | wanted | got | met |", "| --- | --- | --- | --- |",
        *[f"| {x.name} | {x.wanted} | {x.got} | {'yes' if x.met else 'NO'} |" for x in report.targets], "",
        "## Student before and after tuning (test split, against the teacher's answers)", "",
        f"{f.test_examples} held-out examples from documents the student never trained on "
        f"({f.train_examples} training examples). Majority baseline: always `{f.majority_label}` scores "
        f"{pct(f.majority_baseline)}.", "",
        "| model | format compliance | accuracy [95% CI] | macro-F1 | generated tokens |", "| --- | --- | --- | --- | --- |",
        *[f"| {s.name} | {pct(s.format_compliance)} | {pct(s.accuracy)} [{pct(s.accuracy_ci[0])}, {pct(s.accuracy_ci[1])}] "
          f"| {pct(s.macro_f1)} | {s.mean_generated_tokens:.0f} |" for s in (f.base, f.tuned)], "",
        "## Early exit (tuned student behind `distill-serve`, one request at a time)", "",
        f"{e.inputs} inputs. Conclusion only: median {e.median_conclusion_s:.2f} s, {e.mean_conclusion_tokens:.0f} tokens "
        f"in the answer. With the reasoning: median {e.median_full_s:.2f} s, {e.mean_full_tokens:.0f} tokens. "
        f"**{e.speedup:.1f}x** faster. Serving: {e.tokens_per_s:.1f} generated tokens/s.", "",
        "## Teacher, review and training", "",
        f"- teacher `{t.model}`: {t.records} answers kept, {t.invalid} broke the format; {t.prompt_tokens:,} prompt + "
        f"{t.completion_tokens:,} completion tokens, cost {t.cost:.4f} {t.currency} in {t.wall_s:.0f} s "
        f"(at {KIMI_PRICE_MODEL} list prices these token counts would cost {t.kimi_list_cost_cny:.4f} CNY)",
        (f"- the teacher agreed with the author's labels on {pct(t.gold_accuracy)} of {t.gold_records} documents "
         "(fidelity above measures the student against the teacher, right or wrong)" if t.gold_accuracy is not None
         else "- no author labels given: the teacher's own accuracy is unknown"),
        f"- QC: {q.flagged} records flagged by the checks; sample {q.sample} of {q.sample_size} from a lot of {q.lot_size}, "
        f"verdicts {q.verdicts} by {q.reviewer}. {q.decision.rstrip('.')}. {q.approved} records approved for training",
        f"- training: {tr.steps} steps, {tr.train_runtime_s or 0:.0f} s in the trainer, {tr.wall_s:.0f} s for the whole "
        f"command (load, train, merge); mean train loss {'n/a' if tr.train_loss is None else f'{tr.train_loss:.3f}'}",
        "", "## One ChatRest exchange", "", "```json",
        json.dumps(e.example_request, ensure_ascii=False), json.dumps(e.example_response, ensure_ascii=False), "```", "",
    ]
    return "\n".join(rows)


def write_report(report: ProofReport, workspace: Path) -> tuple[Path, Path]:
    json_path, md_path = workspace / REPORT_JSON, workspace / REPORT_MD
    json_path.write_text(report.model_dump_json(indent=2), encoding="utf-8")
    md_path.write_text(render_markdown(report), encoding="utf-8")
    return json_path, md_path
