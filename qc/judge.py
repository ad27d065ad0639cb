"""Optional LLM-as-judge: the teacher scores each record 1-10 with a short reason.

It goes through the same teacher client, limits and call ledger as annotation (`distillery.ledger`),
so judge calls are paced like annotation calls, count against the same budget, and a re-run never
pays for a judgement it already has (temperature 0: the same record asks the same request).
The score is stored (table `judgements`) and scores below the keep threshold become flags.
The judge reads the chunk and the answer, so the job's privacy policy applies to its requests as
to annotation's (`distillery.privacy`, the same placeholders), and its reason gets the values back.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

from pydantic import BaseModel, Field

from distillery.ledger import CallHeld, JobStopped, Ledger
from distillery.parsing import ContractError, parse_answer
from distillery.privacy import Privacy
from distillery.records import Flag, Judgement
from distillery.store import Store
from distillery.tasks import Task
from distillery.teacher import ChatRequest, Guide, Message, Teacher, TeacherError
from distillery.teacher_config import JobConfig, build_teacher

from .lot import Context, Contexts, answered

SCORES = [str(i) for i in range(1, 11)]
_SCORE = re.compile(r"(?<!\d)(10|[1-9])(?!\d)")
MAX_TOKENS = 256

_PROMPTS = {
    "zh": {
        "system": "你是一名严格、公正的数据质检员，负责检查教师模型为训练数据写出的答案。",
        "user": (
            "## 任务\n{description}\n学生模型将看到的指令：{instruction}\n\n## 原文\n{text}\n\n{question}"
            "## 待评答案\n结论：{conclusion}\n理由：{reasoning}\n\n"
            "## 评分要求\n给这个答案打1到10的整数分：10分表示结论正确、理由完全有原文依据；"
            "1分表示结论错误或理由与原文无关、编造内容。\n"
            "先写分数，然后写“####”，再用一句话说明理由。例如：8####结论正确，理由引用了原文第二款，但略显笼统。"
        ),
        "question": "## 问题\n{question}\n\n",
    },
    "en": {
        "system": "You are a strict, fair data quality reviewer checking a teacher model's answers for training data.",
        "user": (
            "## Task\n{description}\nInstruction the student model will see: {instruction}\n\n## Source\n{text}\n\n{question}"
            "## Answer to grade\nConclusion: {conclusion}\nReasoning: {reasoning}\n\n"
            "## How to grade\nScore the answer with an integer from 1 to 10: 10 means the conclusion is right and the "
            "reasoning is fully supported by the source; 1 means the conclusion is wrong or the reasoning is "
            "unrelated to the source or made up.\nWrite the score, then '####', then one sentence of reasons. "
            "Example: 8####Correct conclusion, cites the second clause, slightly vague."
        ),
        "question": "## Question\n{question}\n\n",
    },
}


class JudgeStats(BaseModel):
    judged: int = 0
    reused: int = 0  # answers found in the call ledger: not paid again
    unreadable: int = 0  # answers without a 1-10 score
    failed: int = 0  # requests that got no answer
    blocked: int = 0  # not sent: personal data and the privacy policy is block
    masked: dict[str, int] = Field(default_factory=dict)  # personal data replaced before sending, by kind
    low: int = 0  # scored below the threshold: flagged
    cost: float = 0.0
    currency: str = "CNY"
    stopped: str | None = None  # why the run ended early (quota, auth, budget)
    scores: dict[int, int] = Field(default_factory=dict)  # score -> records


def judge_messages(task: Task, *, text: str, instruction: str, question: str | None, conclusion: str,
                   reasoning: str) -> list[Message]:
    words = _PROMPTS[task.spec.language]
    asked = words["question"].format(question=question) if question else ""
    user = words["user"].format(description=task.spec.description, instruction=instruction, text=text,
                                question=asked, conclusion=conclusion, reasoning=reasoning)
    return [{"role": "system", "content": words["system"]}, {"role": "user", "content": user}]


def read_score(content: str) -> tuple[int | None, str]:
    """(score, reason) from a `score####reason` answer; tolerant of "8分" or "Score: 8/10"."""
    try:
        parsed = parse_answer(content, min_reasoning_chars=0)
        head, reason = parsed.conclusion, parsed.reasoning
    except ContractError:
        head, reason = content, ""
    match = _SCORE.search(head)
    if match is None:
        return None, f"no 1-10 score in the judge's answer: {content[:120]!r}"
    return int(match.group(1)), reason or content.strip()


def low_score_flags(store: Store, task_names: list[str], model: str, threshold: int) -> list[Flag]:
    return [
        Flag(annotation_id=aid, kind="judge_low", score=j.score,
             detail=f"judge {model} scored {j.score}/10 (keep threshold {threshold}): {j.reason[:160]}")
        for aid, js in store.judgements(task_names=task_names).items()
        for j in js
        if j.model == model and j.score is not None and j.score < threshold
    ]


async def judge_records(
    store: Store,
    task_names: list[str],
    config: JobConfig,
    *,
    threshold: int = 6,
    teacher: Teacher | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> JudgeStats:
    """Score every lot record of the tasks; store the scores and flag those below `threshold`."""
    contexts = Contexts(store)
    records = [contexts.of(a) for a in answered(store, task_names)]
    model = config.teacher.resolved_model()
    stats = JudgeStats()
    if not records:
        return stats
    teacher = teacher or build_teacher(config.teacher)
    stop = asyncio.Event()
    ledger = Ledger(store, teacher, model=model, base_url=config.teacher.resolved_base_url(), price=config.price(),
                    budget=config.budget, stop=stop, lease_s=config.teacher.lease_s())
    stats.currency = ledger.price.currency
    limit = asyncio.Semaphore(config.teacher.limits().concurrency)
    privacy = Privacy(store, config.privacy, local_teacher=config.teacher.resolved_provider() == "local")
    done = 0

    async def judge(ctx: Context) -> Judgement | None:
        nonlocal done
        ann = ctx.annotation
        screened = privacy.screen(ctx.source, ctx.instruction, ann.input, ann.conclusion, ann.reasoning or "")
        if screened.blocked:
            stats.blocked += 1
            return Judgement(annotation_id=ann.id, model=model, score=None, reason=f"not judged: {screened.blocked}")
        for kind, n in screened.found.items():
            stats.masked[kind] = stats.masked.get(kind, 0) + n
        text, instruction, question, conclusion, reasoning = screened.texts
        assert text is not None and instruction is not None and conclusion is not None and reasoning is not None
        messages = judge_messages(ctx.task, text=text, instruction=instruction, question=question, conclusion=conclusion,
                                  reasoning=reasoning)
        request = ChatRequest(messages=messages, model=model, temperature=0.0, max_tokens=MAX_TOKENS,
                              guide=Guide(labels=SCORES))
        async with limit:
            if stop.is_set():
                return None
            try:
                request_hash, result, _ = await ledger.call(ctx.annotation.id, request)
            except JobStopped as exc:
                stats.stopped = stats.stopped or str(exc)
                stop.set()
                return None
            except CallHeld:
                return None  # another run is asking this very judgement: its answer will be stored
            except TeacherError as exc:
                stats.failed += 1
                return Judgement(annotation_id=ctx.annotation.id, model=model, score=None,
                                 reason=f"{exc.kind}: {exc.message}")
            finally:
                done += 1
                if on_progress:
                    on_progress(done, len(records))
        score, reason = read_score(result.content)
        return Judgement(annotation_id=ctx.annotation.id, model=model, score=score, reason=screened.restore(reason),
                         request_hash=request_hash)

    try:
        await ledger.preflight()  # an unreachable judge, or a refused key, costs nothing and says so
        results = await asyncio.gather(*(judge(ctx) for ctx in records))
    except JobStopped as exc:
        stats.stopped = str(exc)
        return stats
    finally:
        ledger.close()
        await teacher.aclose()
    judgements = [j for j in results if j is not None]
    store.put_judgements(judgements)
    for j in judgements:
        if j.score is None:
            stats.unreadable += j.request_hash is not None
            continue
        stats.judged += 1
        stats.scores[j.score] = stats.scores.get(j.score, 0) + 1
    flags = low_score_flags(store, task_names, model, threshold)
    store.replace_flags(flags, task_names=task_names, kinds=("judge_low",))
    stats.low = len(flags)
    stats.cost, stats.reused = ledger.stats.cost, ledger.stats.calls_reused
    return stats
