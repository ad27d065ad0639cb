"""Instruction backtranslation (Li et al. 2023, Humpback): self-augmentation and self-curation on the
chunks no approved record covers.

Humpback's backward model writes the instruction a web text would answer. Adapted to our contract:
for each unlabeled chunk (no approved record on it; near-duplicate chunks are skipped, their text is
another chunk's), the teacher writes (a) an instruction for which the chunk is the input and (b) the
answer, `conclusion####reasoning`. Self-curation: a second call asks the teacher to rate the
(instruction, input, answer) on Humpback's 5-point scale; the record is kept when the score reaches
`threshold` (4 by default), the score stored in its derivation.

The records have no approved seed: each is an annotation on its own chunk (`chunk_record`), of the
seeds' task (so qc finds them in that task's lot), its own instruction, its chunk as input (text
None), and goes to its chunk's document split.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable

from distillery.accounting import cost
from distillery.errors import DistilleryError
from distillery.growing import GrowError, GrowStats, Seed, Teaching, count_generated, generated_id, store_records
from distillery.parsing import parse_answer
from distillery.records import Annotation, Chunk
from distillery.store import Store
from distillery.teacher import ChatResult, Message, Teacher
from distillery.teacher_config import JobConfig

from .self_instruct import parse_tasks
from .similarity import language

ORIGIN = "instruction_backtranslation"

AUGMENT = {
    "zh": ("下面是一段文本。请设想一条指令：用户把这段文本作为输入交给AI助手，并给出这条指令，而这段文本正是完成该指令所需的材料。"
           "先写出这条指令（不要复述文本），再写出AI助手对该指令的回答，回答先写结论，再写####，然后写理由。\n"
           "按以下格式输出：\n### 指令\n<指令>\n### 输出\n<结论>####<理由>\n\n文本：\n{text}"),
    "en": ("Below is a text. Imagine an instruction a user would give an AI assistant together with this text as its "
           "input, the text being exactly what the instruction needs. First write that instruction (do not restate the "
           "text), then the assistant's answer to it: the conclusion first, then ####, then the reasoning.\n"
           "Answer in this format:\n### Instruction\n<instruction>\n### Output\n<conclusion>####<reasoning>\n\n"
           "Text:\n{text}"),
}
CURATE = {
    "en": ("Below is an instruction from an user, the input it goes with, and a candidate answer. Evaluate whether or not "
           "the answer is a good example of how AI Assistant should respond to the user's instruction. Please assign a "
           "score using the following 5-point scale:\n"
           "1: It means the answer is incomplete, vague, off-topic, controversial, or not exactly what the user asked for.\n"
           "2: It means the answer addresses most of the asks from the user. It does not directly address the user's "
           "question.\n"
           "3: It means the answer is helpful but not written by an AI Assistant. It addresses all the basic asks from "
           "the user. It is complete and self contained with the drawback that the response is not written from an AI "
           "assistant's perspective.\n"
           "4: It means the answer is written from an AI assistant's perspective with a clear focus of addressing the "
           "instruction. It is complete, clear, and comprehensive, well organized, self-contained.\n"
           "5: It means it is a perfect answer from an AI Assistant. It has a clear focus on being a helpful AI "
           "Assistant, where the response looks like intentionally written to address the user's question and "
           "instruction without any irrelevant sentences.\n"
           "Please first provide a brief reasoning you used to derive the rating score, and then write "
           "\"Score: <rating>\" in the last line.\n\nInstruction:\n{instruction}\n\nInput:\n{text}\n\nAnswer:\n{answer}"),
    "zh": ("下面是用户的一条指令、指令所附的输入文本，以及一个候选回答。请评估该回答是否是AI助手回应该指令的好范例，"
           "并按以下5分制打分：\n"
           "1：回答不完整、含糊、跑题、有争议，或不是用户所要的。\n"
           "2：回答涉及了用户的大部分要求，但没有直接回应用户的问题。\n"
           "3：回答有帮助，涵盖了用户的基本要求，完整自洽，但不像AI助手的口吻。\n"
           "4：回答以AI助手的口吻写成，紧扣指令，完整、清楚、全面，条理分明，自洽。\n"
           "5：完美的AI助手回答，专注于帮助用户，每句话都在回应用户的问题和指令，没有无关内容。\n"
           "请先简要写出你打分的理由，然后在最后一行写“Score: <分数>”。\n\n指令：\n{instruction}\n\n输入：\n{text}\n\n"
           "回答：\n{answer}"),
}
_SCORE = re.compile(r"(?:score|分数|评分|得分)\s*[:：]?\s*\**\s*([1-5])(?![\d.])", re.IGNORECASE)


def read_score(text: str) -> int | None:
    """The last 'Score: n' (1-5) in a rating, or None."""
    found = _SCORE.findall(text)
    return int(found[-1]) if found else None


def chunk_record(chunk: Chunk, *, task_hash: str, task_name: str, record_id: str, instruction: str, conclusion: str,
                 reasoning: str, derivation: dict, answers: list[ChatResult], config: JobConfig, model: str,
                 provider: str) -> Annotation:
    """A generated record on its own chunk (no seed record): the chunk is its input, `ok`."""
    return Annotation(
        id=record_id, chunk_id=chunk.id, task_hash=task_hash, task_name=task_name, step="main", status="ok",
        origin=ORIGIN, instruction=instruction, text=None, conclusion=conclusion, reasoning=reasoning,
        derivation={"documents": [chunk.document_id], **derivation}, raw_text=answers[0].content if answers else None,
        provider=provider, model=model, attempts=len(answers),
        prompt_tokens=sum(r.prompt_tokens for r in answers), completion_tokens=sum(r.completion_tokens for r in answers),
        cost=sum(cost(config.price(), r.prompt_tokens, r.completion_tokens) for r in answers),
        latency_s=sum(r.latency_s for r in answers),
    )  # fmt: skip


def unlabeled_chunks(store: Store, seeds: list[Seed], limit: int | None = None) -> list[Chunk]:
    """The chunks no approved record covers, in document order (near duplicates are never listed)."""
    covered = {s.annotation.chunk_id for s in seeds}
    out: list[Chunk] = []
    for chunk_id in store.chunk_ids():
        if chunk_id in covered:
            continue
        chunk = store.chunk(chunk_id)
        if chunk is None or chunk.duplicate_of is not None or not chunk.text.strip():
            continue
        out.append(chunk)
        if limit is not None and len(out) >= limit:
            break
    return out


async def instruction_backtranslation(store: Store, seeds: list[Seed], config: JobConfig, *, limit: int | None = None,
                                      threshold: int = 4, teacher: Teacher | None = None,
                                      stop: asyncio.Event | None = None,
                                      on_progress: Callable[[GrowStats], None] | None = None) -> GrowStats:
    """Write and rate an instruction for each unlabeled chunk (the first `limit`); store those rated
    `threshold` or more as records of origin instruction_backtranslation. Returns what it did."""
    if not seeds:
        raise GrowError("instruction backtranslation needs approved records (their task names the records' task)")
    if not 1 <= threshold <= 5:
        raise GrowError("threshold is a score from 1 to 5")
    (task_hash, task_name), _ = Counter((s.annotation.task_hash, s.annotation.task_name) for s in seeds).most_common(1)[0]
    chunks = unlabeled_chunks(store, seeds, limit)
    stats = GrowStats(generator=ORIGIN, seeds=len(chunks), before=count_generated(store, ORIGIN))
    async with Teaching(store, config, stats, teacher=teacher, stop=stop) as teaching:

        async def one(chunk: Chunk) -> None:
            lang = language(chunk.text)
            call_id = generated_id(ORIGIN, chunk.id)
            screened = teaching.screen(chunk.text)
            if screened.blocked:
                stats.drop("blocked by the privacy policy")
                return
            written = await teaching.ask(call_id, [Message(role="user", content=AUGMENT[lang].format(
                text=screened.texts[0]))])
            if written is None:
                return
            tasks, _ = parse_tasks(screened.restore(written.content))
            if not tasks:
                stats.drop("unparsable")
                return
            task = tasks[0]
            try:
                parsed = parse_answer(task.output)
            except DistilleryError:
                stats.drop("output breaks the contract")
                return
            rated = teaching.screen(chunk.text, task.instruction, task.output)
            judged = await teaching.ask(call_id, [Message(role="user", content=CURATE[lang].format(
                text=rated.texts[0], instruction=rated.texts[1], answer=rated.texts[2]))], temperature=0.0)
            if judged is None:
                return
            score = read_score(judged.content)
            if score is None:
                stats.drop("unreadable score")
                return
            if score < threshold:
                stats.drop(f"scored below {threshold}")
                return
            store_records(store, [chunk_record(
                chunk, task_hash=task_hash, task_name=task_name,
                record_id=generated_id(ORIGIN, chunk.id, task.instruction, task.output), instruction=task.instruction,
                conclusion=parsed.conclusion, reasoning=parsed.reasoning, derivation={"score": score},
                answers=[written, judged], config=config, model=teaching.model, provider=teaching.provider)], stats)
            if on_progress:
                on_progress(stats)

        await asyncio.gather(*(one(c) for c in chunks))
    stats.after = count_generated(store, ORIGIN)
    return stats
