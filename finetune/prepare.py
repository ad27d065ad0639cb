"""Approved records -> LLaMA-Factory dataset files, split by source document, checked by LLaMA-Factory.

    instruction = the task's student instruction, input = the source text,
    output = `conclusion####reasoning` (alpaca; sharegpt holds the same text as one user turn and
    one assistant turn), system = the prompt the tuned model will be served with.

No document is in two splits: chunks of one document share wording, and a test example whose
document was trained on measures memory, not skill. Everything trained on besides the SFT
training split comes from training documents only, for the same reason: QC corrections become a
`ranking: true` preference dataset (DPO, ORPO, SimPO, reward models), and on request (`also`)
reviewers' verdicts become KTO rows, the training prompts a PPO prompt set, the stored chunks
pre-training text, and everything flat CSV for other trainers.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError

from distillery import jsonl
from distillery.records import NEW_TASK_ORIGINS, SEPARATOR, PreferencePair, TrainingExample
from distillery.workspace import Workspace

from .budget import model_size
from .check import CheckReport, DatasetError, check_dataset
from .config import defaults
from .flat import write_flat
from .mixing import Composition, MixOptions, Row, mix
from .pretrain import document_chunks
from .rows import Feedback, Layout, Prompted, dataset_entry, kto_row, pair_row, prompt_row, sft_row, write_rows
from .workspace import (
    DATASET_PREFIX,
    DEFAULT_SYSTEM,
    SPLITS,
    FinetuneError,
    LoaderStage,
    Manifest,
    PromptFormat,
    Split,
    SplitInfo,
    TaskLabels,
    resolve_model,
    write_prompt_file,
)

M = TypeVar("M", bound=BaseModel)
# A task whose approved conclusions take at most this many distinct values, each used at least
# twice on average, is read as a closed label set when its definition cannot be found.
MAX_INFERRED_LABELS = 20
# What prepare can write besides the SFT splits and preference pairs (see the module docstring).
Also = Literal["kto", "ppo", "pt", "csv"]


class PrepareOptions(BaseModel):
    format: Layout = "alpaca"
    file_type: Literal["json", "jsonl"] = "json"
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    seed: int = 42
    stratify: bool = False  # closed-label tasks: every split keeps each label's share of documents
    system: str = DEFAULT_SYSTEM
    template: str = "qwen"
    model: str  # whose tokenizer counts tokens in the check: the model you will train
    cutoff_len: int = Field(gt=0)
    also: list[Also] = Field(default_factory=list)
    mix: MixOptions = Field(default_factory=MixOptions)


def prepare_options(**values: Any) -> PrepareOptions:
    """PrepareOptions from plain values (mixing ones under `mix`); a bad value is a FinetuneError
    naming its field."""
    try:
        return PrepareOptions.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise FinetuneError(f"prepare option '{where}': {error['msg']} (given {error['input']!r})") from None


class PrepareReport(BaseModel):
    data_dir: Path
    splits: dict[str, SplitInfo]
    preference: SplitInfo | None  # the DPO pairs kept (training documents only)
    preference_excluded: dict[str, int]  # why pairs were left out -> how many
    extra: dict[str, SplitInfo]  # the datasets asked for with `also`, by kind
    kto_excluded: dict[str, int]  # why rejected records were left out of KTO -> how many
    generated: dict[str, int] = {}  # generated records in the training split, by origin
    generated_excluded: dict[str, int] = {}  # why generated records were left out -> how many
    flat: list[str]  # the CSV files written
    composition: Composition  # the training split, and its tokens against the model's size
    tasks: dict[str, TaskLabels]
    check: CheckReport


def read_jsonl(path: Path, model: type[M]) -> list[tuple[int, M]]:
    """`distillery.jsonl.read_jsonl` with finetune's error type."""
    return jsonl.read_jsonl(path, model, FinetuneError)


def read_approved(path: Path) -> list[TrainingExample]:
    """Approved records, each one checked against the output contract before anything is written."""
    lines = read_jsonl(path, TrainingExample)
    if not lines:
        raise FinetuneError(f"{path} holds no approved records: run qc export first")
    seen: dict[str, int] = {}
    for lineno, ex in lines:
        where = f"{path} line {lineno} (annotation {ex.annotation_id})"
        if ex.annotation_id in seen:
            raise FinetuneError(f"{where}: the same annotation is already on line {seen[ex.annotation_id]}")
        seen[ex.annotation_id] = lineno
        if not ex.instruction.strip():
            raise FinetuneError(f"{where}: field 'instruction' is empty: the student would learn from no instruction")
        if not ex.conclusion.strip():
            raise FinetuneError(f"{where}: field 'conclusion' is empty")
        if SEPARATOR in ex.conclusion:
            raise FinetuneError(f"{where}: field 'conclusion' contains '{SEPARATOR}', which must only separate "
                                "conclusion from reasoning")
    return [ex for _, ex in lines]


def split_by_document(
    examples: list[TrainingExample], *, val_fraction: float, test_fraction: float, seed: int,
    label_of: Callable[[TrainingExample], str | None] | None = None,
) -> dict[Split, list[TrainingExample]]:
    """Whole documents to each split, seeded: test, then validation, take documents until they hold
    their share of the examples, but every split keeps at least one document. With `label_of`,
    stratified: each label keeps about its share of documents in every split."""
    by_doc: dict[str, list[TrainingExample]] = defaultdict(list)
    for ex in examples:
        by_doc[ex.document_id].append(ex)
    docs = sorted(by_doc)  # a fixed order before the seeded shuffle: same input + seed, same split
    random.Random(seed).shuffle(docs)
    if label_of is not None:
        docs = _spread_labels(docs, by_doc, label_of)
    wanted: list[tuple[Split, float]] = [("test", test_fraction), ("validation", val_fraction)]
    needed = 1 + sum(1 for _, f in wanted if f > 0)
    if len(docs) < needed:
        raise FinetuneError(f"the approved records come from {len(docs)} document(s), too few to split by document "
                            f"into {needed} parts: add documents, or set --val 0 / --test 0")
    out: dict[Split, list[TrainingExample]] = {s: [] for s in SPLITS}
    left = docs
    for i, (split, fraction) in enumerate(wanted):
        # Every split still to fill (and train) keeps at least one document.
        keep = 1 + sum(1 for _, f in wanted[i + 1:] if f > 0)
        while fraction > 0 and len(out[split]) < max(fraction * len(examples), 1) and len(left) > keep:
            out[split] += by_doc[left[0]]
            left = left[1:]
    for doc in left:
        out["train"] += by_doc[doc]
    return out


def _spread_labels(docs: list[str], by_doc: dict[str, list[TrainingExample]],
                   label_of: Callable[[TrainingExample], str | None]) -> list[str]:
    """The documents reordered so that any front part holds each label in its overall share (a
    document counts under its commonest label); within a label the shuffled order stays."""
    groups: dict[str, list[str]] = defaultdict(list)
    for doc in docs:
        label = Counter(label_of(ex) for ex in by_doc[doc]).most_common(1)[0][0]
        groups[str(label)].append(doc)
    # The i-th of n documents of a label sits at (i + 0.5) / n of the way through the order.
    ranked = sorted(((i + 0.5) / len(group), g, doc)
                    for g, group in enumerate(groups[k] for k in sorted(groups)) for i, doc in enumerate(group))
    return [doc for _, _, doc in ranked]


def task_labels(examples: list[TrainingExample], workspace: Path | None) -> dict[str, TaskLabels]:
    """The closed label set of each task, from its definition when it can be found.

    Lookup order: the workspace store (the exact task version, by hash), a built-in task with the
    same hash, else the approved conclusions themselves when they look like a small closed set.
    """
    from distillery.tasks import TaskFileError, load_task, parse_task

    stored: dict[str, str] = {}
    if workspace is not None and Workspace(workspace).exists():
        from distillery.store import Store

        with Store.open(workspace) as store:
            for task_hash in {ex.task_hash for ex in examples}:
                version = store.task(task_hash)
                if version is not None:
                    stored[task_hash] = version.body
    out: dict[str, TaskLabels] = {}
    for ex in examples:
        key = f"{ex.task_name}/{ex.step}"
        if key in out:
            continue
        try:
            if ex.task_hash in stored:
                task, source = parse_task(stored[ex.task_hash], f"store:{ex.task_name}"), "task definition (workspace)"
            else:
                task, source = load_task(ex.task_name), "built-in task definition"
                if task.hash != ex.task_hash:
                    raise TaskFileError("a different version")
            out[key] = TaskLabels(labels=task.labels(ex.step), source=source)
            continue
        except TaskFileError:
            pass
        conclusions = Counter(e.conclusion for e in examples if e.task_name == ex.task_name and e.step == ex.step)
        closed = len(conclusions) <= MAX_INFERRED_LABELS and sum(conclusions.values()) >= 2 * len(conclusions)
        out[key] = (TaskLabels(labels=sorted(conclusions), source="inferred from the approved conclusions")
                    if closed else TaskLabels(labels=None, source="open-ended (no closed label set found)"))
    return out


def _add_generated(splits: dict[Split, list[TrainingExample]], generated: list[TrainingExample]) -> Counter[str]:
    """Generated records join the training split when every document they drew on is a training
    document; one that drew on a validation or test document would leak it, and evaluation measures
    annotated records only, so it is left out (counted)."""
    train_docs = {ex.document_id for ex in splits["train"]}
    held_out = {ex.document_id for split in ("validation", "test") for ex in splits[split]}
    excluded: Counter[str] = Counter()
    for ex in generated:
        docs = ex.derived_from or [ex.document_id]
        if all(doc in train_docs for doc in docs):
            splits["train"].append(ex)
        else:
            excluded["drew on validation/test documents" if held_out & set(docs)
                     else "its origin is not among the approved records"] += 1
    return excluded


def _training_pairs(path: Path | None, split_of: dict[str, Split]) -> tuple[list[PreferencePair], Counter[str]]:
    """The QC fixes of training records; a pair from a held-out document would leak it into training."""
    pairs: list[PreferencePair] = []
    excluded: Counter[str] = Counter()
    if path is not None and path.is_file():
        for _, pair in read_jsonl(path, PreferencePair):
            where = split_of.get(pair.origin_id or pair.annotation_id)
            if where == "train":
                pairs.append(pair)
            else:
                excluded["from validation/test documents" if where else "record not among the approved ones"] += 1
    return pairs, excluded


def _feedback(train: list[TrainingExample], pairs: list[PreferencePair], rejected: Path | None,
              held_out: set[str]) -> tuple[list[Feedback], Counter[str]]:
    """Approved training answers (desirable), the teacher's answers reviewers fixed or rejected (not)."""
    approved = {ex.annotation_id: ex for ex in train}
    out = [Feedback(prompted=Prompted.of(ex), answer=ex.output, desirable=True, document_id=ex.document_id)
           for ex in train]
    out += [Feedback(prompted=Prompted.of(approved[p.origin_id or p.annotation_id],
                                          f"{p.annotation_id}#{'student' if p.origin == 'correction' else 'teacher'}"),
                     answer=p.rejected, desirable=False, document_id=approved[p.origin_id or p.annotation_id].document_id)
            for p in pairs]
    excluded: Counter[str] = Counter()
    for _, ex in read_jsonl(rejected, TrainingExample) if rejected is not None and rejected.is_file() else []:
        if ex.document_id in held_out:  # its document is in validation or test: never trained on
            excluded["from validation/test documents"] += 1
        else:
            out.append(Feedback(prompted=Prompted.of(ex), answer=ex.output, desirable=False, document_id=ex.document_id))
    return out, excluded


class _Staging:
    """Writes the dataset files into the staging directory and keeps their dataset_info entries."""

    def __init__(self, root: Path, options: PrepareOptions, prompt: PromptFormat) -> None:
        self.root, self.options, self.prompt = root, options, prompt
        self.info: dict[str, Any] = {}

    def dataset(self, kind: str, rows: list[dict[str, Any]], documents: int, stage: LoaderStage) -> SplitInfo:
        name, file = f"{DATASET_PREFIX}{kind}", f"{kind}.{self.options.file_type}"
        write_rows(self.root / file, rows, self.options.file_type)
        history = any(row.get("history") for row in rows)
        self.info[name] = dataset_entry(file, self.options.format, stage, history=history)
        return SplitInfo(dataset=name, file=file, examples=len(rows), documents=documents, stage=stage)

    def chat(self, kind: str, prompted: list[Prompted], answers: list[str], documents: int) -> SplitInfo:
        rows = [sft_row(p, a, self.options.format, self.prompt) for p, a in zip(prompted, answers)]
        return self.dataset(kind, rows, documents, "sft")


def prepare(
    approved: Path,
    data_dir: Path,
    options: PrepareOptions,
    *,
    preferences: Path | None = None,
    rejected: Path | None = None,
    workspace: Path | None = None,
    on_status: Callable[[str], None] | None = None,
) -> PrepareReport:
    """Write the dataset into data_dir (replacing what was there only once it passed its check).

    Always the SFT splits (the training split mixed by `options.mix`) and, from QC fixes, the
    preference pairs; `options.also` adds KTO, PPO prompts, pre-training text and the CSV forms.
    """
    status = on_status or (lambda _msg: None)
    status(f"reading {approved}")
    examples = read_approved(approved)
    labels = task_labels(examples, workspace)
    closed = {key for key, task in labels.items() if task.labels}
    label_of = lambda ex: (ex.conclusion if f"{ex.task_name}/{ex.step}" in closed and ex.origin not in NEW_TASK_ORIGINS
                           else None)
    # The split is drawn on the annotated records alone, so growing the data never moves a document
    # between splits; a generated record then trains only when every document it drew on trains.
    splits = split_by_document([ex for ex in examples if ex.origin is None], val_fraction=options.val_fraction,
                               test_fraction=options.test_fraction, seed=options.seed,
                               label_of=label_of if options.stratify else None)
    generated_excluded = _add_generated(splits, [ex for ex in examples if ex.origin is not None])
    prompt = PromptFormat(template=options.template, system=options.system)
    split_of = {ex.annotation_id: split for split, exs in splits.items() for ex in exs}
    held_out = {ex.document_id for split in ("validation", "test") for ex in splits[split]}
    pairs, excluded = _training_pairs(preferences, split_of)
    train_rows, composition = mix(splits["train"], options.mix, label_of=label_of, prompt=prompt, seed=options.seed)
    feedback, kto_excluded = (_feedback(splits["train"], pairs, rejected, held_out)
                              if {"kto", "csv"} & set(options.also) else ([], Counter[str]()))

    data_dir = Path(data_dir)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    # Built aside and swapped in whole: a failed prepare leaves the last good dataset untouched.
    staging = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.staging-", dir=data_dir.parent))
    try:
        out = _Staging(staging, options, prompt)
        infos: dict[Split, SplitInfo] = {}
        for split, exs in splits.items():
            if not exs:
                continue
            shown = train_rows if split == "train" else [Row(example=ex, prompted=Prompted.of(ex), answer=ex.output)
                                                          for ex in exs]
            infos[split] = out.chat(split, [r.prompted for r in shown], [r.answer for r in shown],
                                    len({ex.document_id for ex in exs}))
        pref_info = None
        if pairs:
            doc_of = {ex.annotation_id: ex.document_id for ex in splits["train"]}
            rows = [pair_row(Prompted(p.annotation_id, p.instruction, p.input), p.chosen, p.rejected, options.format,
                             prompt) for p in pairs]
            pref_info = out.dataset("preference", rows, len({doc_of[p.origin_id or p.annotation_id] for p in pairs}), "rm")
        extra = _extra_datasets(out, options, splits, feedback, held_out, workspace)
        flat = write_flat(staging, {split: [r.example for r in train_rows] if split == "train" else exs
                                    for split, exs in splits.items() if exs},
                          feedback, prompt) if "csv" in options.also else []
        (staging / "dataset_info.json").write_text(json.dumps(out.info, ensure_ascii=False, indent=2), encoding="utf-8")
        manifest = Manifest(format=options.format, file_type=options.file_type, prompt=prompt, model=options.model,
                            cutoff_len=options.cutoff_len, seed=options.seed, approved=str(approved),
                            splits=infos, preference=pref_info, extra=extra, flat=flat, tasks=labels)
        with (staging / manifest.test_records).open("w", encoding="utf-8") as fh:
            for ex in splits["test"]:
                fh.write(ex.model_dump_json() + "\n")
        manifest.save(staging)
        write_prompt_file(staging, prompt)
        try:
            report = check_dataset(staging, manifest, on_status=on_status)
        except DatasetError as exc:
            rejected_dir = data_dir.with_name(f"{data_dir.name}.rejected")
            shutil.rmtree(rejected_dir, ignore_errors=True)
            staging.rename(rejected_dir)
            raise DatasetError(rejected_dir, exc.problems) from None
        if data_dir.exists():
            shutil.rmtree(data_dir)
        staging.rename(data_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    status("sizing the model")
    composition.tokens = sum(manifest.splits["train"].token_lengths)
    composition.lora_rank = defaults()["lora_rank"]
    size = model_size(resolve_model(options.model), composition.lora_rank)
    if size is not None:
        composition.model_parameters, composition.lora_parameters = size.parameters, size.lora_parameters
    return PrepareReport(data_dir=data_dir, splits=manifest.splits, preference=manifest.preference,
                         preference_excluded=dict(excluded), extra=manifest.extra, kto_excluded=dict(kto_excluded),
                         generated=dict(Counter(ex.origin for ex in splits["train"] if ex.origin)),
                         generated_excluded=dict(generated_excluded),
                         flat=flat, composition=composition, tasks=manifest.tasks, check=report)


def _extra_datasets(out: _Staging, options: PrepareOptions, splits: dict[Split, list[TrainingExample]],
                    feedback: list[Feedback], held_out: set[str], workspace: Path | None) -> dict[str, SplitInfo]:
    """The datasets `options.also` asks for: kto, prompts (PPO) and the pre-training text."""
    extra: dict[str, SplitInfo] = {}
    if "kto" in options.also:
        rows = [kto_row(f.prompted, f.answer, f.desirable, options.format, out.prompt) for f in feedback]
        extra["kto"] = out.dataset("kto", rows, len({f.document_id for f in feedback}), "kto")
    if "ppo" in options.also:
        unique = {(ex.instruction, ex.input): ex for ex in splits["train"]}  # a prompt once, however many answers
        rows = [prompt_row(Prompted.of(ex), out.prompt) for ex in unique.values()]
        extra["prompts"] = out.dataset("prompts", rows, len({ex.document_id for ex in unique.values()}), "ppo")
    if "pt" in options.also:
        chunks = document_chunks(workspace)
        validation = {ex.document_id for ex in splits["validation"]}
        parts = {"text_train": sorted(set(chunks) - held_out), "text_validation": sorted(validation & set(chunks))}
        for kind, docs in parts.items():
            if docs:
                rows = [{"id": f"{doc[:12]}-{i}", "text": text} for doc in docs for i, text in enumerate(chunks[doc])]
                extra[kind] = out.dataset(kind, rows, len(docs), "pt")
        if "text_train" not in extra:
            raise FinetuneError("every stored document is held out for validation or test: no text is left to "
                                "pre-train on (lower --val / --test, or ingest more documents)")
    return extra
