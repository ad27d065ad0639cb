"""A teacher-corrected second distillation round: the tuned student answers its own training prompts,
the teacher corrects what it got wrong, and each correction becomes a preference pair (DPO, ORPO, KTO).

    1. the training split's prompts of an SFT run (the approved records whose ids are in the train
       dataset the run trained on; never a validation or test prompt, which would leak into training)
    2. the student (base + the run's adapter, greedy, the full answer with its reasoning) answers
       each one, prompted exactly as it was trained; the answers are cached in
       <run>/second_round/student_answers.jsonl, keyed by record id and adapter hash, so a re-run
       after kill -9 does not generate them again
    3. an answer that breaks the `conclusion####reasoning` contract, or whose label differs from the
       approved one (a closed label set), is wrong without asking; any other answer (the approved
       label, or an open-ended conclusion however worded) goes to the teacher (one request, temperature 0), which answers "right", or "wrong" and a
       corrected answer
    4. every wrong answer becomes a stored record of origin "correction" on its prompt's chunk:
       its answer (chosen) is the teacher's correction, or the approved answer when there is none,
       it breaks the contract, or its conclusion is not the approved one (said in its derivation);
       the student's answer (rejected) is in derivation["student_answer"]

The records then go through qc like any other (check, sample, review, export); qc's export writes an
approved correction as a preference pair, and `prepare` puts it in the preference dataset.

A re-run pays nothing twice (the call ledger answers requests already paid for from the store) and
stores nothing twice (a correction's id is a hash of its prompt's record and the student's answer).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from distillery.growing import (
    GrowError,
    GrowStats,
    Seed,
    Teaching,
    approved_seeds,
    count_generated,
    generated_id,
    new_record,
    store_records,
)
from distillery.parsing import ContractError, parse_answer
from distillery.records import Annotation
from distillery.store import Store
from distillery.tasks import Task, TaskFileError, load_task, parse_task
from distillery.teacher import Message, Teacher
from distillery.teacher_config import JobConfig

from .config import read_run
from .evaluate import Prediction, _norm, predict
from .workspace import FinetuneError, Manifest

ORIGIN = "correction"
ROUND_DIR = "second_round"  # inside the run dir
ANSWERS_FILE = "student_answers.jsonl"
MAX_TOKENS = 1024  # the teacher's verdict and its corrected answer
Verdict = Literal["right", "wrong"]
# "wrong" etc. at the start of the verdict line, after any heading, markdown or label ("Verdict:", "判定：").
_VERDICT = re.compile(r"^[\s*#>`\"'“”「【\[(]*(?:verdict|judgement|judgment|判定|判断|结果|批改)?[\s*:：\]】]*"
                      r"(incorrect|not correct|correct|right|wrong|不正确|正确|错误)", re.IGNORECASE)
_WRONG = {"incorrect", "not correct", "wrong", "不正确", "错误"}

_PROMPTS = {
    "zh": {
        "system": "你是一名严格、公正的老师，负责批改学生模型的答案，并在答错时写出正确答案。",
        "user": (
            "## 任务\n{description}\n学生模型看到的指令：{instruction}\n\n## 原文\n{text}\n\n"
            "## 参考答案（已审核）\n结论：{conclusion}\n理由：{reasoning}\n\n## 学生的答案\n{student}\n\n"
            "## 批改要求\n判断学生的答案是否正确：结论与参考答案一致，理由有原文依据、没有编造或遗漏关键依据。\n"
            "第一行只写“正确”或“错误”。如果错误，从第二行起写出改正后的完整答案：先写结论{labels}，"
            "然后写“####”，再写理由。例如：\n错误\n{conclusion}####{example}"
        ),
        "labels": "（必须是以下之一：{labels}）",
        "example": "依据原文……",
    },
    "en": {
        "system": "You are a strict, fair teacher grading a student model's answers and writing the right answer "
                  "where the student is wrong.",
        "user": (
            "## Task\n{description}\nInstruction the student model saw: {instruction}\n\n## Source\n{text}\n\n"
            "## Reference answer (reviewed)\nConclusion: {conclusion}\nReasoning: {reasoning}\n\n"
            "## The student's answer\n{student}\n\n"
            "## How to grade\nDecide whether the student's answer is right: the conclusion agrees with the reference "
            "and the reasoning is supported by the source, with nothing made up and no key point missing.\n"
            "Write only 'right' or 'wrong' on the first line. If wrong, write the corrected full answer from the "
            "second line on: the conclusion{labels}, then '####', then the reasoning. Example:\n"
            "wrong\n{conclusion}####{example}"
        ),
        "labels": " (one of: {labels})",
        "example": "The source says ...",
    },
}


class SecondRoundStats(GrowStats):
    """What one second round did: the progress bars and the summary read these."""

    generator: str = "second-round"
    run: str = ""
    adapter: str = ""  # sha256 (first 16) of the adapter the student answered with
    answered: int = 0  # student answers generated by this run
    cached: int = 0  # student answers read from the cache (an earlier run generated them)
    right: int = 0  # the teacher found the answer right
    wrong: int = 0  # wrong conclusion (not asked), or the teacher found it wrong
    unreadable: int = 0  # the student's answer broke the conclusion####reasoning contract (or was cut off)
    judged: int = 0  # answers the teacher judged (paid now or reused from the ledger)
    verdict_unreadable: int = 0  # teacher answers with neither "right" nor "wrong": no record (a re-run reads the same answer)
    fallback: int = 0  # corrections whose chosen answer is the approved one although the teacher was asked
    corrections: int = 0  # correction records for this round's wrong answers (stored now or before)


class StudentAnswer(BaseModel):
    """One cached student answer: the record whose prompt it answered, with which adapter."""

    id: str
    adapter: str
    max_new_tokens: int
    prediction: Prediction


def round_dir(run_dir: Path) -> Path:
    return Path(run_dir) / ROUND_DIR


def adapter_hash(adapter_dir: Path) -> str:
    """The adapter's identity: the hash of its weights (a retrained run answers afresh)."""
    weights = Path(adapter_dir) / "adapter_model.safetensors"
    if not weights.is_file():
        raise FinetuneError(f"{weights} does not exist: train the run first (distill-finetune train)")
    digest = hashlib.sha256()
    with weights.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def train_ids(data_dir: Path, manifest: Manifest) -> set[str]:
    """The annotation ids of the rows in the data dir's training split (a repeated row's `id#2` too)."""
    info = manifest.splits.get("train")
    if info is None:
        raise FinetuneError(f"{data_dir} has no training split: run `distill-finetune prepare` first")
    text = (Path(data_dir) / info.file).read_text(encoding="utf-8")
    rows = json.loads(text) if manifest.file_type == "json" else [json.loads(line) for line in text.splitlines() if line]
    return {str(row["id"]).split("#")[0] for row in rows if row.get("id")}


def training_prompts(store: Store, run_dir: Path, approved: Path, *, limit: int | None = None
                     ) -> tuple[Manifest, list[Seed]]:
    """(the run's dataset manifest, the approved annotated records of its training split, in the
    approved file's order). Validation and test prompts are never among them."""
    settings = read_run(run_dir)
    data_dir = Path(settings["dataset_dir"])
    manifest = Manifest.load(data_dir)
    if settings.get("stage", "sft") != "sft":
        raise FinetuneError(f"run {Path(run_dir).name} is a {settings['stage']} run: a second round starts from an "
                            "SFT run (--run NAME of the run `distill-finetune train` made)")
    ids = train_ids(data_dir, manifest)
    seeds = [seed for seed in approved_seeds(store, approved) if seed.annotation.id in ids]
    if not seeds:
        raise GrowError(f"none of the records in {approved} is in the training split of {data_dir} "
                        f"(run {Path(run_dir).name}): export from the workspace the run was prepared from")
    return manifest, seeds[:limit] if limit else seeds


def read_cache(path: Path) -> dict[tuple[str, str, int], Prediction]:
    """The cached answers by (id, adapter, max_new_tokens); a line torn by kill -9 is skipped."""
    found: dict[tuple[str, str, int], Prediction] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                cached = StudentAnswer.model_validate_json(line)
            except ValidationError:
                continue
            found[(cached.id, cached.adapter, cached.max_new_tokens)] = cached.prediction
    return found


def student_answers(run_dir: Path, manifest: Manifest, seeds: list[Seed], *, max_new_tokens: int = 512,
                    batch_size: int = 8, stats: SecondRoundStats | None = None, stop: asyncio.Event | None = None,
                    on_progress: Callable[[int, int], None] | None = None) -> dict[str, Prediction]:
    """The tuned student's answer to each seed's prompt (greedy, whole answers), by record id: from
    the cache where it has them, else generated (base + the run's adapter) and appended batch by batch."""
    from distillery.runtime import GenerationConfig, ModelRuntime

    stats = stats or SecondRoundStats()
    settings = read_run(run_dir)
    adapter = str(settings["output_dir"])
    stats.adapter = adapter_hash(Path(adapter))
    cache = round_dir(run_dir) / ANSWERS_FILE
    known = read_cache(cache)
    out: dict[str, Prediction] = {}
    missing: list[Seed] = []
    for seed in seeds:
        hit = known.get((seed.annotation.id, stats.adapter, max_new_tokens))
        if hit is not None:
            out[seed.annotation.id] = hit
        else:
            missing.append(seed)
    stats.cached = len(out)
    report = on_progress or (lambda _done, _total: None)
    report(len(out), len(seeds))
    if not missing or (stop is not None and stop.is_set()):
        return out
    runtime = ModelRuntime.load(settings["model_name_or_path"], adapter=adapter)
    config = GenerationConfig(max_new_tokens=max_new_tokens)  # no stop string: the reasoning is part of the answer
    cache.parent.mkdir(parents=True, exist_ok=True)
    with cache.open("a", encoding="utf-8") as fh:
        for start in range(0, len(missing), batch_size):
            if stop is not None and stop.is_set():
                break
            batch = missing[start:start + batch_size]
            for seed, pred in zip(batch, predict(runtime, [s.example for s in batch], manifest.prompt,
                                                 manifest.tasks, config)):
                out[seed.annotation.id] = pred
                fh.write(StudentAnswer(id=seed.annotation.id, adapter=stats.adapter, max_new_tokens=max_new_tokens,
                                       prediction=pred).model_dump_json() + "\n")
            fh.flush()
            stats.answered += len(batch)
            report(len(out), len(seeds))
    return out


def judge_messages(task: Task, seed: Seed, student: str, texts: list[str | None]) -> list[Message]:
    """The teacher's request for one student answer; `texts` are (source, instruction, approved
    conclusion, approved reasoning, student answer) as the privacy screen let them out."""
    words = _PROMPTS[task.spec.language]
    source, instruction, conclusion, reasoning, answer = texts
    labels = task.labels(seed.example.step)
    hint = words["labels"].format(labels=("、" if task.spec.language == "zh" else ", ").join(labels)) if labels else ""
    user = words["user"].format(description=task.spec.description, instruction=instruction, text=source,
                                conclusion=conclusion, reasoning=reasoning, student=answer or student, labels=hint,
                                example=words["example"])
    return [{"role": "system", "content": words["system"]}, {"role": "user", "content": user}]


def read_verdict(content: str) -> tuple[Verdict | None, str]:
    """(right / wrong / None when neither can be read, the text after the verdict: the correction)."""
    text = content.strip()
    match = _VERDICT.search(text)
    if match is None:
        return None, text
    verdict: Verdict = "wrong" if match.group(1).casefold() in _WRONG else "right"
    rest = text[match.end():].lstrip(" \t*`\"'”」】]).:：。，,!！")
    return verdict, rest.strip()


def read_correction(rest: str, seed: Seed, labels: list[str] | None) -> tuple[str, str] | str:
    """(conclusion, reasoning) of the teacher's correction, or why it cannot be used."""
    if not rest:
        return "the teacher said wrong but wrote no corrected answer"
    try:
        parsed = parse_answer(rest, labels=labels)
    except ContractError as exc:
        return f"the teacher's correction breaks the answer contract: {exc}"
    approved = seed.example.conclusion
    same = parsed.conclusion == approved if labels else _norm(parsed.conclusion) == _norm(approved)
    if not same:
        return f"the teacher's corrected conclusion {parsed.conclusion!r} is not the approved {approved!r}"
    return parsed.conclusion, parsed.reasoning


class _Tasks:
    """Each record's task definition: the stored version (by hash), else the built-in one."""

    def __init__(self, store: Store) -> None:
        self.store, self.found = store, {}

    def of(self, ann: Annotation) -> Task:
        if ann.task_hash not in self.found:
            version = self.store.task(ann.task_hash)
            try:
                self.found[ann.task_hash] = (parse_task(version.body, f"store:{ann.task_name}") if version
                                             else load_task(ann.task_name))
            except TaskFileError as exc:
                raise FinetuneError(f"cannot load task {ann.task_name} of record {ann.id}: {exc}") from exc
        return self.found[ann.task_hash]


async def second_round(
    store: Store,
    run_dir: Path,
    approved: Path,
    config: JobConfig,
    *,
    limit: int | None = None,
    teacher: Teacher | None = None,
    stop: asyncio.Event | None = None,
    on_progress: Callable[[str, int, int, SecondRoundStats], None] | None = None,
    max_new_tokens: int = 512,
    batch_size: int = 8,
) -> SecondRoundStats:
    """Run the second round of an SFT run (see the module docstring); `on_progress(phase, done,
    total, stats)` with phase "student" (answers) then "teacher" (answers judged and stored)."""
    run_dir = Path(run_dir)
    stats = SecondRoundStats(run=run_dir.name)
    report = on_progress or (lambda _phase, _done, _total, _stats: None)
    manifest, seeds = training_prompts(store, run_dir, approved, limit=limit)
    stats.seeds = len(seeds)
    stats.before = count_generated(store, ORIGIN)
    stop = stop or asyncio.Event()
    answers = student_answers(run_dir, manifest, seeds, max_new_tokens=max_new_tokens, batch_size=batch_size,
                              stats=stats, stop=stop, on_progress=lambda done, total: report("student", done, total, stats))
    tasks = _Tasks(store)
    todo = [seed for seed in seeds if seed.annotation.id in answers]
    done = 0
    report("teacher", 0, len(todo), stats)
    async with Teaching(store, config, stats, teacher=teacher, stop=stop) as teaching:

        def record(seed: Seed, pred: Prediction, verdict: str, conclusion: str, reasoning: str, *,
                   chosen: str, why: str | None = None, paid: list | None = None) -> Annotation:
            derivation = {"student_answer": pred.answer, "verdict": verdict, "run": run_dir.name,
                          "adapter": stats.adapter, "student_conclusion": pred.conclusion,
                          "student_finish_reason": pred.finish_reason, "chosen": chosen}
            if why:
                derivation["why_approved"] = why
            return new_record(seed, origin=ORIGIN, record_id=generated_id(ORIGIN, seed.annotation.id, pred.answer),
                              conclusion=conclusion, reasoning=reasoning, derivation=derivation,
                              answers=paid or [], config=config if paid else None,
                              model=teaching.model if paid else None, provider=teaching.provider if paid else None)

        async def one(seed: Seed) -> None:
            nonlocal done
            pred = answers[seed.annotation.id]
            ex = seed.example
            approved_answer = (ex.conclusion, ex.reasoning)
            made: Annotation | None = None
            if not pred.answer.strip():
                stats.unreadable += 1
                stats.drop("the student answered nothing")
            elif not pred.format_ok:
                stats.unreadable += 1
                made = record(seed, pred, "unreadable", *approved_answer, chosen="approved",
                              why="the student's answer breaks the conclusion####reasoning contract")
            elif not pred.correct and tasks.of(seed.annotation).labels(ex.step):
                # A closed label set decides a wrong label without a call; an open-ended answer worded
                # otherwise may still be right, so the teacher judges it.
                stats.wrong += 1
                made = record(seed, pred, "wrong-conclusion", *approved_answer, chosen="approved",
                              why="the student's conclusion is not the approved one (not asked)")
            else:
                task = tasks.of(seed.annotation)
                screened = teaching.screen(ex.input, ex.instruction, ex.conclusion, ex.reasoning, pred.answer)
                if screened.blocked:
                    stats.drop(f"not sent: {screened.blocked}")
                else:
                    rid = generated_id(ORIGIN, seed.annotation.id, pred.answer)
                    result = await teaching.ask(rid, judge_messages(task, seed, pred.answer, screened.texts),
                                                temperature=0, max_tokens=MAX_TOKENS)
                    if result is not None:
                        stats.judged += 1
                        verdict, rest = read_verdict(screened.restore(result.content))
                        if verdict is None:
                            stats.verdict_unreadable += 1
                            stats.drop("the teacher's verdict is neither right nor wrong")
                        elif verdict == "right":
                            stats.right += 1
                        else:
                            stats.wrong += 1
                            fixed = read_correction(rest, seed, task.labels(ex.step))
                            if isinstance(fixed, str):
                                stats.fallback += 1
                                made = record(seed, pred, "wrong", *approved_answer, chosen="approved", why=fixed,
                                              paid=[result])
                            else:
                                made = record(seed, pred, "wrong", *fixed, chosen="teacher", paid=[result])
            if made is not None:
                stats.corrections += 1
                store_records(store, [made], stats)  # one by one: a kill keeps what was stored
            done += 1
            report("teacher", done, len(todo), stats)

        await asyncio.gather(*(one(seed) for seed in todo))
    stats.after = count_generated(store, ORIGIN)
    return stats

