"""Self-Instruct (Wang et al. 2022): the teacher writes new tasks from the approved ones.

Each request shows the teacher k=6 seed tasks (approved records: instruction, input, output) and up to
2 tasks it wrote in earlier rounds, and asks, in the task's language, for a few new ones in sections
(### 指令 / ### 输入 / ### 输出, or ### Instruction / Input / Output), the output in our contract
`conclusion####reasoning`. A new task is kept only when it parses, keeps the contract, has an
instruction of a sensible length that a text model can carry out (no images, drawings, audio), and is
not like anything the workspace has (`annotate.similarity.Pool`: ROUGE-L >= 0.7 on Chinese words, or
a near duplicate) nor like a task kept before it. Each round's kept tasks join the pool and are the
machine examples of the next round; `rounds` bounds the run.

A re-run (after kill -9, a stop) builds the same requests: the examples are drawn with
random.Random(f"{seed}:{round}:{request}") from seeds read alike and from tasks kept in earlier rounds,
which it re-derives from the ledger's stored answers; the pool leaves out this generator's own stored
records, so it sees the workspace as the first run did. A round is stored only when every one of its
requests was answered or failed for good; a stop in the middle leaves it to the re-run.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from distillery.errors import DistilleryError
from distillery.growing import GrowError, GrowStats, Seed, Teaching, count_generated, generated_id, new_record, store_records
from distillery.parsing import parse_answer
from distillery.records import Annotation
from distillery.store import Store
from distillery.teacher import ChatResult, Message, Teacher
from distillery.teacher_config import JobConfig

from .similarity import Pool, language, tokens

ORIGIN = "self_instruct"
SEED_EXAMPLES = 6  # human-written tasks per request (Self-Instruct: 6)
MACHINE_EXAMPLES = 2  # tasks written in earlier rounds per request (Self-Instruct: 2)
MIN_TOKENS, MAX_TOKENS = 3, 150  # an instruction's length in words (Self-Instruct: 3 < words <= 150)
# Tasks a text-only model cannot carry out (Self-Instruct's list, and its Chinese words): whole words.
UNSUITABLE = frozenset({
    "image", "images", "graph", "graphs", "picture", "pictures", "photo", "photos", "draw", "drawing", "plot",
    "video", "videos", "audio", "music", "flowchart", "diagram", "diagrams", "map", "maps", "sketch",
    "图片", "图像", "画", "画出", "画图", "绘制", "绘画", "作画", "照片", "视频", "音频", "音乐", "流程图", "示意图",
    "图表", "地图", "录音", "素描",
})  # fmt: skip
NO_INPUT = {"", "<无输入>", "无输入", "无", "<noinput>", "<no input>", "noinput", "none", "n/a", "(none)", "（无）"}

_NAMES = {"指令": "instruction", "输入": "input", "输出": "output",
          "instruction": "instruction", "input": "input", "output": "output"}
_HEADER = re.compile(r"^\s*(?:#{1,4}\s*(?:\*\*)?\s*(指令|输入|输出|instruction|input|output)\s*(?:\*\*)?\s*[:：]?"
                     r"|(?:\*\*)?\s*(指令|输入|输出|instruction|input|output)\s*(?:\*\*)?\s*[:：](?:\*\*)?)\s*(.*)$",
                     re.IGNORECASE)
_SEPARATOR = re.compile(r"^\s*(?:#{1,4}\s*)?(?:\*\*)?\s*(?:任务|task)\s*\d+\s*[:：.]?\s*(?:\*\*)?\s*$", re.IGNORECASE)


@dataclass
class Task:
    instruction: str
    input: str
    output: str
    id: str = ""  # the record it became
    documents: list[str] = field(default_factory=list)  # every document it drew on


@dataclass
class _Parsed:
    instruction: str | None = None
    input: str | None = None
    output: str | None = None
    lines: dict[str, list[str]] = field(default_factory=dict)


def parse_tasks(text: str) -> tuple[list[Task], int]:
    """The tasks in a teacher's answer, and how many sections could not be read (no instruction or
    no output)."""
    found: list[_Parsed] = []
    current: _Parsed | None = None
    part: str | None = None

    def close() -> None:
        nonlocal current, part
        if current is not None and current.lines:
            found.append(current)
        current, part = None, None

    for line in text.replace("\r\n", "\n").split("\n"):
        if _SEPARATOR.match(line):
            close()
            continue
        m = _HEADER.match(line)
        if m:
            name = _NAMES[(m.group(1) or m.group(2)).lower()]
            if current is None or (name == "instruction" and "instruction" in current.lines) or name in current.lines:
                close()
                current = _Parsed()
            part = name
            current.lines[part] = [m.group(3)] if m.group(3).strip() else []
            continue
        if current is not None and part is not None:
            current.lines[part].append(line)
    close()
    tasks, broken = [], 0
    for p in found:
        parts = {k: "\n".join(v).strip().strip("`").strip() for k, v in p.lines.items()}
        if not parts.get("instruction") or not parts.get("output"):
            broken += 1
            continue
        given = parts.get("input", "")
        tasks.append(Task(parts["instruction"], "" if given.strip().casefold() in NO_INPUT else given, parts["output"]))
    return tasks, broken


def _prompt(lang: str, examples: list[tuple[str, str, str]], n: int) -> str:
    if lang == "zh":
        head = (f"你是一名任务设计者。请参考下面的{len(examples)}个示例任务，再写出{n}个新的、彼此不同的任务。\n要求：\n"
                "1. 每个任务包含“### 指令”“### 输入”“### 输出”三部分，任务之间用“任务 N”一行分隔。\n"
                "2. 指令要多样：换用不同的动词和问法，不要照抄示例；用中文书写；任务必须能由只处理文字的语言模型完成"
                "（不要涉及图片、图像、画图、音频或视频）。\n"
                "3. 输入是指令所处理的文本，要具体、真实；不需要输入时写“<无输入>”。\n"
                "4. 输出先写结论，再写####，然后写理由，例如：相关####该条款规定了……\n\n")
        names, none, tail = ("任务", "指令", "输入", "输出"), "<无输入>", f"请从任务 {len(examples) + 1} 开始，写出{n}个新任务。"
    else:
        head = (f"You are designing tasks. Study the {len(examples)} example tasks below, then write {n} new, diverse tasks.\n"
                "Requirements:\n1. Each task has the sections \"### Instruction\", \"### Input\" and \"### Output\"; put a "
                "line \"Task N\" before each task.\n2. Vary the instructions: other verbs and kinds of question, never the "
                "examples' wording. A language model that reads and writes only text must be able to do each task (no "
                "images, drawing, audio or video).\n3. The input is the text the instruction works on, concrete and "
                "realistic; write \"<noinput>\" when none is needed.\n4. The output gives the conclusion first, then ####, "
                "then the reasoning, e.g.: relevant####The clause requires ...\n\n")
        names, none, tail = ("Task", "Instruction", "Input", "Output"), "<noinput>", \
            f"Start at Task {len(examples) + 1} and write {n} new tasks."
    body = "".join(f"{names[0]} {i}\n### {names[1]}\n{ins}\n### {names[2]}\n{inp or none}\n### {names[3]}\n{out}\n\n"
                   for i, (ins, inp, out) in enumerate(examples, 1))
    return head + body + tail


def _unsuitable(instruction: str) -> str | None:
    words = set(tokens(instruction))
    hit = sorted(words & UNSUITABLE)
    return hit[0] if hit else None


@dataclass
class _Request:
    round: int
    index: int
    seeds: list[Seed]
    machine: list[Task]
    lang: str
    texts: list[str]  # the examples' texts, in order: instruction, input, output per example

    @property
    def call_id(self) -> str:
        return generated_id(ORIGIN, "request", *self.texts)


def _request(seeds: list[Seed], machine: list[Task], seed: int, rnd: int, i: int) -> _Request:
    rng = random.Random(f"{seed}:{rnd}:{i}")
    shown = rng.sample(seeds, min(SEED_EXAMPLES, len(seeds)))
    ours = rng.sample(machine, min(MACHINE_EXAMPLES, len(machine))) if machine else []
    texts = [t for s in shown for t in (s.example.instruction, s.text, s.answer)]
    texts += [t for m in ours for t in (m.instruction, m.input, m.output)]
    return _Request(rnd, i, shown, ours, language(" ".join(s.example.instruction for s in shown)), texts)


def _check(task: Task, pool: Pool, stats: GrowStats) -> bool:
    try:
        parse_answer(task.output)
    except DistilleryError:
        stats.drop("output breaks the contract")
        return False
    n = len(tokens(task.instruction))
    if n < MIN_TOKENS:
        stats.drop("instruction too short")
        return False
    if n > MAX_TOKENS:
        stats.drop("instruction too long")
        return False
    if _unsuitable(task.instruction):
        stats.drop("unsuitable for a text model")
        return False
    verdict = pool.too_similar(task.instruction, task.input)
    if verdict.similar:
        stats.drop("duplicate of a generated task" if verdict.what.startswith("generated")
                   else "too similar to the workspace")
        return False
    return True


async def self_instruct(store: Store, seeds: list[Seed], config: JobConfig, *, rounds: int = 2, per_round: int = 8,
                        per_request: int = 4, seed: int = 0, teacher: Teacher | None = None,
                        stop: asyncio.Event | None = None,
                        on_progress: Callable[[GrowStats], None] | None = None) -> GrowStats:
    """Run `rounds` rounds of `per_round` requests, each asking for `per_request` new tasks; store the
    kept ones as records of origin self_instruct. Returns what it did."""
    if not seeds:
        raise GrowError("self-instruct needs approved records to start from")
    if rounds < 1 or per_round < 1 or per_request < 1:
        raise GrowError("rounds, per_round and per_request must be at least 1")
    stats = GrowStats(generator=ORIGIN, seeds=len(seeds), before=count_generated(store, ORIGIN))
    pool = Pool.of_workspace(store, seeds, exclude_origins=[ORIGIN])
    machine: list[Task] = []
    async with Teaching(store, config, stats, teacher=teacher, stop=stop) as teaching:

        async def ask(req: _Request) -> tuple[ChatResult | None, object]:
            screened = teaching.screen(*req.texts)
            if screened.blocked:
                stats.drop("blocked by the privacy policy")
                return None, screened
            shown = screened.texts
            examples = [(shown[j] or "", shown[j + 1] or "", shown[j + 2] or "") for j in range(0, len(shown), 3)]
            messages = [Message(role="user", content=_prompt(req.lang, examples, per_request))]
            return await teaching.ask(req.call_id, messages), screened

        for rnd in range(rounds):
            if teaching.stop.is_set():
                break
            requests = list({r.call_id: r for r in (_request(seeds, machine, seed, rnd, i)
                                                    for i in range(per_round))}.values())  # the same examples: asked once
            answers = await asyncio.gather(*(ask(req) for req in requests))
            if teaching.stop.is_set():
                break  # an incomplete round: the re-run completes it from the ledger
            stats.rounds += 1
            records: list[Annotation] = []
            kept: list[Task] = []
            for req, (result, screened) in zip(requests, answers):
                if result is None:
                    continue
                tasks, broken = parse_tasks(screened.restore(result.content))  # type: ignore[attr-defined]
                if broken or not tasks:
                    stats.drop("unparsable", broken or 1)
                paid = [result]  # the answer's figures go on its first record
                for task in tasks[:per_request]:
                    if not _check(task, pool, stats):
                        continue
                    pool.add("generated", task.instruction, task.input)
                    parsed = parse_answer(task.output)
                    docs = [s.example.document_id for s in req.seeds] + [d for m in req.machine for d in m.documents]
                    task.documents = list(dict.fromkeys(docs))
                    task.id = generated_id(ORIGIN, task.instruction, task.input, task.output)
                    kept.append(task)
                    records.append(new_record(
                        req.seeds[0], origin=ORIGIN, record_id=task.id, conclusion=parsed.conclusion,
                        reasoning=parsed.reasoning, text=task.input, instruction=task.instruction,
                        derivation={"round": rnd, "seeds": [s.annotation.id for s in req.seeds],
                                    "machine_seeds": [m.id for m in req.machine], "documents": task.documents},
                        answers=paid, config=config, model=teaching.model, provider=teaching.provider))
                    paid = []
            store_records(store, records, stats)
            machine += kept
            if on_progress:
                on_progress(stats)
    stats.after = count_generated(store, ORIGIN)
    return stats
