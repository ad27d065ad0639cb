"""Approved records -> LLaMA-Factory dataset files, split by source document, checked by LLaMA-Factory.

    instruction = the task's student instruction, input = the source text,
    output = `conclusion####reasoning` (alpaca; sharegpt holds the same text as one user turn and
    one assistant turn), system = the prompt the tuned model will be served with.

No document is in two splits: chunks of one document share wording, and a test example whose
document was trained on measures memory, not skill. QC corrections become a `ranking: true`
preference dataset for DPO, restricted to training documents for the same reason.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field

from distillery import jsonl
from distillery.records import SEPARATOR, PreferencePair, TrainingExample
from distillery.workspace import Workspace

from .check import CheckReport, DatasetError, check_dataset
from .workspace import (
    DATASET_PREFIX,
    DEFAULT_SYSTEM,
    SPLITS,
    FinetuneError,
    Manifest,
    PromptFormat,
    Split,
    SplitInfo,
    TaskLabels,
    write_prompt_file,
)

M = TypeVar("M", bound=BaseModel)
# A task whose approved conclusions take at most this many distinct values, each used at least
# twice on average, is read as a closed label set when its definition cannot be found.
MAX_INFERRED_LABELS = 20


class PrepareOptions(BaseModel):
    format: Literal["alpaca", "sharegpt"] = "alpaca"
    file_type: Literal["json", "jsonl"] = "json"
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    seed: int = 42
    stratify: bool = False  # closed-label tasks: every split keeps each label's share of documents
    system: str = DEFAULT_SYSTEM
    template: str = "qwen"
    model: str  # whose tokenizer counts tokens in the check: the model you will train
    cutoff_len: int = Field(gt=0)


class PrepareReport(BaseModel):
    data_dir: Path
    splits: dict[str, SplitInfo]
    preference: SplitInfo | None  # the DPO pairs kept (training documents only)
    preference_excluded: dict[str, int]  # why pairs were left out -> how many
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


def _sft_row(ex: TrainingExample, fmt: str, prompt: PromptFormat) -> dict[str, Any]:
    base = {"id": ex.annotation_id, "task": ex.task_name, "system": prompt.system}
    if fmt == "alpaca":
        return base | {"instruction": ex.instruction, "input": ex.input, "output": ex.output}
    user = prompt.messages(ex.instruction, ex.input)[-1]["content"]
    return base | {"conversations": [{"from": "human", "value": user}, {"from": "gpt", "value": ex.output}]}


def _preference_row(pair: PreferencePair, fmt: str, prompt: PromptFormat) -> dict[str, Any]:
    base = {"id": pair.annotation_id, "system": prompt.system}
    if fmt == "alpaca":
        return base | {"instruction": pair.instruction, "input": pair.input, "chosen": pair.chosen,
                       "rejected": pair.rejected}
    user = prompt.messages(pair.instruction, pair.input)[-1]["content"]
    return base | {"conversations": [{"from": "human", "value": user}],
                   "chosen": {"from": "gpt", "value": pair.chosen},
                   "rejected": {"from": "gpt", "value": pair.rejected}}


def _dataset_info(file: str, fmt: str, ranking: bool) -> dict[str, Any]:
    if fmt == "alpaca":
        answer = {"chosen": "chosen", "rejected": "rejected"} if ranking else {"response": "output"}
        columns = {"prompt": "instruction", "query": "input", "system": "system"} | answer
    else:
        columns = {"messages": "conversations", "system": "system"}
        columns |= {"chosen": "chosen", "rejected": "rejected"} if ranking else {}
    info: dict[str, Any] = {"file_name": file, "formatting": fmt, "columns": columns}
    return info | {"ranking": True} if ranking else info


def _write_rows(path: Path, rows: Iterable[dict[str, Any]], file_type: str) -> None:
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    # One example per line in both types, so a line number in a check error is easy to find.
    text = "\n".join(lines) + "\n" if file_type == "jsonl" else "[\n" + ",\n".join(lines) + "\n]\n"
    path.write_text(text, encoding="utf-8")


def prepare(
    approved: Path,
    data_dir: Path,
    options: PrepareOptions,
    *,
    preferences: Path | None = None,
    workspace: Path | None = None,
    on_status: Callable[[str], None] | None = None,
) -> PrepareReport:
    """Write the dataset into data_dir (replacing what was there only once it passed its check)."""
    status = on_status or (lambda _msg: None)
    status(f"reading {approved}")
    examples = read_approved(approved)
    labels = task_labels(examples, workspace)
    closed = {key for key, task in labels.items() if task.labels}
    label_of = (lambda ex: ex.conclusion if f"{ex.task_name}/{ex.step}" in closed else None) if options.stratify else None
    splits = split_by_document(examples, val_fraction=options.val_fraction, test_fraction=options.test_fraction,
                               seed=options.seed, label_of=label_of)
    prompt = PromptFormat(template=options.template, system=options.system)
    split_of = {ex.annotation_id: split for split, exs in splits.items() for ex in exs}

    pairs: list[PreferencePair] = []
    excluded: Counter[str] = Counter()
    if preferences is not None and preferences.is_file():
        for _, pair in read_jsonl(preferences, PreferencePair):
            where = split_of.get(pair.annotation_id)
            if where == "train":
                pairs.append(pair)
            else:  # a pair from a held-out document would leak it into DPO training
                excluded["from validation/test documents" if where else "record not among the approved ones"] += 1

    data_dir = Path(data_dir)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    # Built aside and swapped in whole: a failed prepare leaves the last good dataset untouched.
    staging = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.staging-", dir=data_dir.parent))
    try:
        info: dict[str, Any] = {}
        infos: dict[Split, SplitInfo] = {}
        for split, exs in splits.items():
            if not exs:
                continue
            name, file = f"{DATASET_PREFIX}{split}", f"{split}.{options.file_type}"
            _write_rows(staging / file, (_sft_row(ex, options.format, prompt) for ex in exs), options.file_type)
            info[name] = _dataset_info(file, options.format, ranking=False)
            infos[split] = SplitInfo(dataset=name, file=file, examples=len(exs),
                                     documents=len({ex.document_id for ex in exs}))
        pref_info = None
        if pairs:
            name, file = f"{DATASET_PREFIX}preference", f"preference.{options.file_type}"
            _write_rows(staging / file, (_preference_row(p, options.format, prompt) for p in pairs), options.file_type)
            info[name] = _dataset_info(file, options.format, ranking=True)
            doc_of = {ex.annotation_id: ex.document_id for ex in splits["train"]}
            pref_info = SplitInfo(dataset=name, file=file, examples=len(pairs),
                                  documents=len({doc_of[p.annotation_id] for p in pairs}))
        (staging / "dataset_info.json").write_text(json.dumps(info, ensure_ascii=False, indent=2), encoding="utf-8")
        manifest = Manifest(format=options.format, file_type=options.file_type, prompt=prompt, model=options.model,
                            cutoff_len=options.cutoff_len, seed=options.seed, approved=str(approved),
                            splits=infos, preference=pref_info, tasks=labels)
        with (staging / manifest.test_records).open("w", encoding="utf-8") as fh:
            for ex in splits["test"]:
                fh.write(ex.model_dump_json() + "\n")
        manifest.save(staging)
        write_prompt_file(staging, prompt)
        try:
            report = check_dataset(staging, manifest, on_status=on_status)
        except DatasetError as exc:
            rejected = data_dir.with_name(f"{data_dir.name}.rejected")
            shutil.rmtree(rejected, ignore_errors=True)
            staging.rename(rejected)
            raise DatasetError(rejected, exc.problems) from None
        if data_dir.exists():
            shutil.rmtree(data_dir)
        staging.rename(data_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return PrepareReport(data_dir=data_dir, splits=manifest.splits, preference=manifest.preference,
                         preference_excluded=dict(excluded), tasks=manifest.tasks, check=report)
