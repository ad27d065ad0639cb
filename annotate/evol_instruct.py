"""Evol-Instruct (Xu et al. 2023, WizardLM): the teacher rewrites approved instructions into harder or
new ones, then answers them.

Per approved record, `rounds` times: an operation is drawn (random.Random(f"{seed}:{record}:{round}"))
among the in-depth ones (add a constraint, deepen, concretize, more reasoning steps, complicate the
input) or, rarer, in-breadth (a new instruction of the same domain); the teacher rewrites the
instruction with WizardLM's template (Chinese or English, after the task's language), then answers
the evolved instruction on the record's input in our contract `conclusion####reasoning`. The input
itself never changes.

Elimination (WizardLM's rules), each counted in `GrowStats.dropped`:
  1. no information gained: the evolved instruction is nearly the parent's (ROUGE-L >= 0.9 on
     CJK-aware words), or the teacher, asked WizardLM's equality question, says they are equal;
  2. the answer is a refusal ("sorry", "抱歉", "无法") or too short, or breaks the contract;
  3. the evolved instruction copies the prompt's own words ("#Rewritten Prompt#", "重写后的指令", ...).
A failed evolution ends that lineage; the next round evolves the last survivor, which is what a
re-run rebuilds from the ledger's answers.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from distillery.errors import DistilleryError
from distillery.growing import GrowError, GrowStats, Seed, Teaching, count_generated, generated_id, new_record, store_records
from distillery.parsing import parse_answer
from distillery.store import Store
from distillery.teacher import ChatResult, Message, Teacher
from distillery.teacher_config import JobConfig

from .similarity import language, similarity, tokens

ORIGIN = "evol_instruct"
DEPTH = ("add_constraints", "deepen", "concretize", "increase_reasoning", "complicate_input")
BREADTH = "breadth"
BREADTH_SHARE = 1 / 6  # in-breadth is drawn this often (WizardLM: 1 of its 6 operations)
SAME_THRESHOLD = 0.9  # ROUGE-L with the parent at or above: nothing gained
MIN_ANSWER_TOKENS = 5

METHODS = {
    "en": {
        "add_constraints": "Please add one more constraint or requirement into #The Given Prompt#.",
        "deepen": "If #The Given Prompt# contains inquiries about certain issues, the depth and breadth of the inquiry "
                  "can be increased.",
        "concretize": "Please replace general concepts with more specific concepts.",
        "increase_reasoning": "If #The Given Prompt# can be solved with just a few simple thinking processes, you can "
                              "rewrite it to explicitly request multiple-step reasoning.",
        "complicate_input": "Require the answer to work through the input in a more demanding way: part by part, "
                            "comparing its parts, or citing the exact passages it relies on.",
    },
    "zh": {
        "add_constraints": "请在#给定指令#中再增加一条约束或要求。",
        "deepen": "如果#给定指令#询问了某些问题，可以加深、拓宽这些问题的深度和广度。",
        "concretize": "请把笼统的概念替换为更具体的概念。",
        "increase_reasoning": "如果#给定指令#只需几步简单思考就能完成，请把它改写为明确要求多步推理。",
        "complicate_input": "要求回答以更高的要求处理输入文本：逐部分分析、比较其中各部分，或引用所依据的原文。",
    },
}
DEPTH_TEMPLATE = {
    "en": ("I want you act as a Prompt Rewriter. Your objective is to rewrite a given prompt into a more complex "
           "version to make those famous AI systems (e.g., chatgpt and GPT4) a bit harder to handle. But the rewritten "
           "prompt must be reasonable and must be understood and responded by humans. The prompt is applied to the "
           "input shown below, which stays as it is: rewrite only the prompt.\nYou SHOULD complicate the given prompt "
           "using the following method:\n{method}\nYou should try your best not to make the #Rewritten Prompt# become "
           "verbose, #Rewritten Prompt# can only add 10 to 20 words into #The Given Prompt#.\n'#The Given Prompt#', "
           "'#Rewritten Prompt#', 'given prompt' and 'rewritten prompt' are not allowed to appear in #Rewritten Prompt#"
           "\n#The Given Prompt#:\n{instruction}\n#Input#:\n{input}\n#Rewritten Prompt#:\n"),
    "zh": ("请你扮演指令改写者。你的目标是把给定的指令改写成更复杂的版本，让知名的AI系统（如ChatGPT和GPT-4）更难处理。"
           "但改写后的指令必须合理，人能理解并作答。指令作用于下面的输入文本，输入保持不变：只改写指令。\n"
           "你应当用下面的方法让指令更复杂：\n{method}\n尽量不要让#改写后的指令#变得冗长，它只能比#给定指令#多10到20个字词。"
           "\n“#给定指令#”“#改写后的指令#”“给定指令”“改写后的指令”这些字样不允许出现在#改写后的指令#中。"
           "\n#给定指令#：\n{instruction}\n#输入#：\n{input}\n#改写后的指令#：\n"),
}
BREADTH_TEMPLATE = {
    "en": ("I want you act as a Prompt Creator. Your goal is to draw inspiration from the #Given Prompt# to create a "
           "brand new prompt. This new prompt should belong to the same domain as the #Given Prompt# but be even more "
           "rare. It is applied to the input shown below, which stays as it is. The LENGTH and complexity of the "
           "#Created Prompt# should be similar to that of the #Given Prompt#. The #Created Prompt# must be reasonable "
           "and must be understood and responded by humans.\n'#Given Prompt#', '#Created Prompt#', 'given prompt' and "
           "'created prompt' are not allowed to appear in #Created Prompt#\n#Given Prompt#:\n{instruction}\n#Input#:\n"
           "{input}\n#Created Prompt#:\n"),
    "zh": ("请你扮演指令创作者。你的目标是从#给定指令#中获得灵感，创作一条全新的指令。新指令应与#给定指令#属于同一领域，"
           "但更少见。它作用于下面的输入文本，输入保持不变。#创作的指令#的长度和复杂度应与#给定指令#相近，必须合理，人能理解并作答。"
           "\n“#给定指令#”“#创作的指令#”“给定指令”“创作的指令”这些字样不允许出现在#创作的指令#中。"
           "\n#给定指令#：\n{instruction}\n#输入#：\n{input}\n#创作的指令#：\n"),
}
EQUAL_TEMPLATE = {
    "en": ("Here are two Instructions to ChatGPT AI, do you think they are equal to each other, which meet the following "
           "requirements:\n1. They have same constraints and requirments.\n2. They have same depth and breadth of the "
           "inquiry.\nThe First Prompt: {first}\nThe Second Prompt: {second}\nYour Judgement (Just answer: Equal or Not "
           "Equal. No need to explain the reason.):"),
    "zh": ("下面是给AI的两条指令，请判断它们是否相同，即同时满足：\n1. 约束和要求相同。\n2. 询问的深度和广度相同。\n"
           "第一条指令：{first}\n第二条指令：{second}\n你的判断（只回答：相同 或 不相同，不需要解释理由）："),
}
ANSWER_TEMPLATE = {
    "en": "{instruction}\n\nInput:\n{input}\n\nGive the conclusion first, then ####, then your reasoning.",
    "zh": "{instruction}\n\n输入：\n{input}\n\n先写结论，再写####，然后写理由。",
}
PROMPT_WORDS = ("#rewritten prompt#", "#given prompt#", "#the given prompt#", "#created prompt#", "given prompt",
                "rewritten prompt", "created prompt", "#改写后的指令#", "#给定指令#", "#创作的指令#", "改写后的指令",
                "给定指令", "创作的指令", "重写后的指令")
REFUSALS = ("sorry", "i cannot", "i can't", "as an ai", "抱歉", "对不起", "无法回答", "无法提供", "我不能", "作为一个ai",
            "作为ai")
_NOT_EQUAL = re.compile(r"not\s+equal|不相同|不同|不一样|不等", re.IGNORECASE)
_EQUAL = re.compile(r"equal|相同|一样|相等", re.IGNORECASE)


@dataclass
class _Node:
    id: str  # the record (the seed's approved record at round 0)
    instruction: str


def pick_operation(seed: int, record_id: str, rnd: int) -> str:
    rng = random.Random(f"{seed}:{record_id}:{rnd}")
    return BREADTH if rng.random() < BREADTH_SHARE else rng.choice(DEPTH)


def copies_prompt_words(instruction: str) -> bool:
    low = instruction.casefold()
    return any(w in low for w in PROMPT_WORDS)


def refusal(conclusion: str, reasoning: str) -> str | None:
    """Why the answer is no answer (WizardLM's rule 2), or None."""
    low = f"{conclusion} {reasoning}".casefold()
    if any(w in low for w in REFUSALS):
        return "answer is a refusal"
    if len(tokens(f"{conclusion} {reasoning}")) < MIN_ANSWER_TOKENS:
        return "answer too short"
    return None


def _clean(text: str) -> str:
    text = text.strip().strip("`").strip()
    return re.sub(r"^(?:#?\s*(?:rewritten prompt|created prompt|改写后的指令|创作的指令)\s*#?\s*[:：])\s*", "", text,
                  flags=re.IGNORECASE).strip()


async def evol_instruct(store: Store, seeds: list[Seed], config: JobConfig, *, rounds: int = 2, seed: int = 0,
                        teacher: Teacher | None = None, stop: asyncio.Event | None = None,
                        on_progress: Callable[[GrowStats], None] | None = None) -> GrowStats:
    """Evolve every seed's instruction `rounds` times (a lineage ends at its first failed evolution);
    store the survivors as records of origin evol_instruct. Returns what it did."""
    if not seeds:
        raise GrowError("evol-instruct needs approved records to start from")
    if rounds < 1:
        raise GrowError("rounds must be at least 1")
    stats = GrowStats(generator=ORIGIN, seeds=len(seeds), before=count_generated(store, ORIGIN))
    async with Teaching(store, config, stats, teacher=teacher, stop=stop) as teaching:

        async def call(record_id: str, prompt: str, screened: object, **kw: object) -> tuple[ChatResult | None, str]:
            result = await teaching.ask(record_id, [Message(role="user", content=prompt)], **kw)  # type: ignore[arg-type]
            return result, (screened.restore(result.content) if result is not None else "")  # type: ignore[attr-defined]

        async def evolve(s: Seed, node: _Node, rnd: int) -> _Node | None:
            lang = language(s.example.instruction)
            op = pick_operation(seed, s.annotation.id, rnd)
            screened = teaching.screen(node.instruction, s.text)
            if screened.blocked:
                stats.drop("blocked by the privacy policy")
                return None
            ins, text = screened.texts[0] or "", screened.texts[1] or ""
            prompt = (BREADTH_TEMPLATE[lang].format(instruction=ins, input=text) if op == BREADTH else
                      DEPTH_TEMPLATE[lang].format(method=METHODS[lang][op], instruction=ins, input=text))
            call_id = generated_id(ORIGIN, node.id, str(rnd), op)
            result, evolved = await call(call_id, prompt, screened)
            paid = [result]
            if result is None:
                return None
            evolved = _clean(evolved)
            if not evolved:
                stats.drop("empty evolution")
                return None
            if copies_prompt_words(evolved):
                stats.drop("copies the prompt's words")
                return None
            if similarity(evolved, node.instruction) >= SAME_THRESHOLD:
                stats.drop("no information gained (similar)")
                return None
            if op != BREADTH:  # WizardLM asks whether a deeper instruction differs; a new one differs by design
                both = teaching.screen(node.instruction, evolved)
                judged, verdict = await call(call_id, EQUAL_TEMPLATE[lang].format(
                    first=both.texts[0], second=both.texts[1]), both, temperature=0.0, max_tokens=16)
                if judged is None:
                    return None
                paid.append(judged)
                if not _NOT_EQUAL.search(verdict) and _EQUAL.search(verdict):
                    stats.drop("no information gained (teacher: equal)")
                    return None
            asked = teaching.screen(evolved, s.text)
            answered, answer = await call(call_id, ANSWER_TEMPLATE[lang].format(
                instruction=asked.texts[0], input=asked.texts[1]), asked)
            if answered is None:
                return None
            try:
                parsed = parse_answer(answer)
            except DistilleryError:
                stats.drop("answer breaks the contract")
                return None
            why = refusal(parsed.conclusion, parsed.reasoning)
            if why:
                stats.drop(why)
                return None
            record_id = generated_id(ORIGIN, node.id, str(rnd), op, evolved)
            store_records(store, [new_record(
                s, origin=ORIGIN, record_id=record_id, conclusion=parsed.conclusion, reasoning=parsed.reasoning,
                text=s.text, instruction=evolved,
                derivation={"round": rnd + 1, "operation": op, "parent": node.id,
                            "documents": [s.example.document_id]},
                answers=[r for r in (*paid, answered) if r is not None], config=config, model=teaching.model,
                provider=teaching.provider)], stats)
            if on_progress:
                on_progress(stats)
            return _Node(record_id, evolved)

        async def lineage(s: Seed) -> int:
            node, done = _Node(s.annotation.id, s.example.instruction), 0
            for rnd in range(rounds):
                if teaching.stop.is_set():
                    break
                nxt = await evolve(s, node, rnd)
                done = rnd + 1
                if nxt is None:
                    break
                node = nxt
            return done

        done = await asyncio.gather(*(lineage(s) for s in seeds))
        stats.rounds = max(done, default=0)
    stats.after = count_generated(store, ORIGIN)
    return stats
