"""annotate's step of `distill run`: documents -> chunks -> the teacher's answers.

The `annotate:` section of the project config:

    documents: docs            # a folder (or file) of documents
    task: tasks/topic.yaml     # a built-in task name, or a task YAML
    vars: {}                   # task variables
    teacher: local.yaml        # an annotate job config file (its teacher, budget, prices), or inline
                               # teacher settings: {provider: openai, model: moonshot-v1-8k, ...}
    budget: null               # stop once the workspace has spent this much (overrides the file's)
    privacy: null              # personal data bound for an external teacher (overrides the file's):
                               # {policy: mask|block|allow, patterns: {kind: regex}, names: [...]}
    gold_labels: null          # file,label CSV of the author's labels: the report says how often
                               # the teacher was right
    chunking: {max_size: 800, overlap: 80, near_duplicate: 0.9}   # near_duplicate: a chunk this similar
                               # to a stored one is linked to it, not annotated (1.0: the same text only)
    allow_partial: false       # true: go on when some documents cannot be read (they are listed);
                               # false: the step stops before the teacher is paid for a partial set
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from distillery.accounting import DEFAULT_PRICES, cost
from distillery.config import validate
from distillery.errors import ConfigError
from distillery.pipeline import RunContext, StepResult
from distillery.privacy import describe_found
from distillery.stages import Stage
from distillery.store import Store
from distillery.tasks import TaskFileError, builtin_names, load_task
from distillery.teacher_config import JobConfig, PrivacyConfig, TeacherConfig, load_job_config

from .cli import ingest_with_status, main, plan_job, run_planned_job
from .ingest import ChunkingConfig

KIMI_PRICE_MODEL = "moonshot-v1-8k"  # what the same job's tokens would cost at this list price


class AnnotateSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    documents: Path
    task: str = "relevance"
    vars: dict[str, Any] = Field(default_factory=dict)
    teacher: TeacherConfig | Path = Field(default_factory=TeacherConfig)
    budget: float | None = Field(None, gt=0)
    privacy: PrivacyConfig | None = None
    gold_labels: Path | None = None
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig)
    allow_partial: bool = False


class AnnotateSettings(BaseModel):
    documents: Path
    job: JobConfig
    chunking: ChunkingConfig
    gold: dict[str, str] | None
    allow_partial: bool = False


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


def read_gold(path: Path) -> dict[str, str]:
    """file name (relative to the documents folder) -> the author's label."""
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"file", "label"} <= set(rows[0]):
        raise ValueError(f"{path}: needs a header 'file,label' and one row per document")
    return {row["file"].strip(): row["label"].strip() for row in rows}


def configure(section: dict[str, Any], ctx: RunContext) -> AnnotateSettings:
    s = validate(AnnotateSection, section, None, section="annotate")
    documents = ctx.resolve(s.documents)
    if not documents.exists():
        raise ConfigError(f"annotate.documents: {documents} does not exist; fix the path (relative paths are "
                          "relative to the config file)")
    task = s.task if s.task in builtin_names() else str(ctx.resolve(s.task))
    try:
        job = load_job_config(ctx.resolve(s.teacher)) if isinstance(s.teacher, Path) else JobConfig(teacher=s.teacher)
    except ConfigError as exc:
        raise ConfigError(f"annotate.teacher: {exc}") from exc
    job = job.model_copy(update={"task": task, "vars": {**job.vars, **s.vars}, "budget": s.budget or job.budget,
                                 "privacy": s.privacy or job.privacy})
    try:
        load_task(job.task, overrides=job.vars or None)
    except TaskFileError as exc:
        raise ConfigError(f"annotate.task: {exc}") from exc
    gold = None
    if s.gold_labels is not None:
        try:
            gold = read_gold(ctx.resolve(s.gold_labels))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"annotate.gold_labels: {exc}") from exc
    return AnnotateSettings(documents=documents, job=job, chunking=s.chunking, gold=gold, allow_partial=s.allow_partial)


def run(ctx: RunContext, settings: AnnotateSettings) -> StepResult:
    ws, job = ctx.workspace, settings.job
    chunking = settings.chunking
    ctx.command("annotate", "ingest", settings.documents, "--max-size", str(chunking.max_size),
                "--overlap", str(chunking.overlap), "--unit", chunking.unit, "--near-duplicate", str(chunking.near_duplicate),
                *(["--allow-partial"] if settings.allow_partial else []))
    job_file = ws.root / "annotate-job.yaml"  # the effective job config, so the command below is exact
    job_file.parent.mkdir(parents=True, exist_ok=True)
    job_file.write_text(yaml.safe_dump(job.model_dump(mode="json", exclude_defaults=True), allow_unicode=True,
                                       sort_keys=False), encoding="utf-8")
    task = load_task(job.task, overrides=job.vars or None)
    with Store.open(ws.root) as store:
        report = ingest_with_status(store, [settings.documents], chunking)
        if not settings.allow_partial:
            report.require_complete("set annotate.allow_partial: true (or --set annotate.allow_partial=true)")
        if store.totals()["chunks"] == 0:
            raise ConfigError(f"annotate.documents: no readable document in {settings.documents}")
        ctx.command("annotate", "run", "-c", job_file)
        pending = plan_job(store, task, job)
        stats = run_planned_job(store, task, job, pending)
        figures = teacher_figures(store, task.name, job, settings.documents, settings.gold,
                                  wall_s=stats.elapsed_s if stats else 0.0)
    ctx.handoff.task = task.name
    return StepResult(
        figures=figures.model_dump(mode="json"),
        markdown=markdown(figures),
        summary=[f"teacher: {figures.prompt_tokens + figures.completion_tokens:,} tokens, "
                 f"{figures.cost:.2f} {figures.currency}, {figures.records} answers kept"]
                + ([f"masked before sending: {describe_found(stats.masked)}"] if stats and stats.masked else []),
        outputs={"store (documents, answers, verdicts)": ws.db, "effective annotate job config": job_file},
    )


def teacher_figures(store: Store, task_name: str, job: JobConfig, documents: Path, gold: dict[str, str] | None,
                    *, wall_s: float) -> TeacherFigures:
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
        model=job.teacher.resolved_model(), records=counts.get("ok", {}).get("records", 0),
        invalid=counts.get("invalid", {}).get("records", 0),
        prompt_tokens=tokens_in, completion_tokens=tokens_out,
        cost=sum(c["cost"] for c in counts.values()), currency=job.price().currency,
        kimi_list_cost_cny=cost(DEFAULT_PRICES[KIMI_PRICE_MODEL], tokens_in, tokens_out),
        gold_accuracy=right / seen if seen else None, gold_records=seen, wall_s=wall_s,
    )


def markdown(t: TeacherFigures) -> list[str]:
    return [
        "## Teacher", "",
        f"- `{t.model}`: {t.records} answers kept, {t.invalid} broke the format; {t.prompt_tokens:,} prompt + "
        f"{t.completion_tokens:,} completion tokens, cost {t.cost:.4f} {t.currency} in {t.wall_s:.0f} s "
        f"(at {KIMI_PRICE_MODEL} list prices these token counts would cost {t.kimi_list_cost_cny:.4f} CNY)",
        (f"- it agreed with the author's labels on {t.gold_accuracy:.1%} of {t.gold_records} documents "
         "(fidelity below measures the student against the teacher, right or wrong)" if t.gold_accuracy is not None
         else "- no author labels given: the teacher's own accuracy is unknown"),
    ]


STAGE = Stage(name="annotate", help="documents -> chunks -> the teacher's answers", command=main,
              configure=configure, run=run)
