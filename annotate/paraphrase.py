"""Back-translation: an approved record's text paraphrased through another language by the teacher.

Per seed, three paid calls: the text translated (zh -> en, or en -> zh; temperature 0), translated
back (temperature 0), then the task's own annotation request on the paraphrase. The paraphrase is
kept (origin "back_translation") only when the teacher's new conclusion is the seed's: its label
then holds for the new text, and its reasoning is the teacher's new one. Everything leaves through
the workspace's privacy screen (masked before sending, the values put back in what is stored).

Resuming: the record's id is a hash of its seed, so a stored one is skipped; every request is a
function of the stored seed, so a re-run sends the same ones and the call ledger answers those
already paid for from the store.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

from distillery.growing import GrowStats, Seed, Teaching, count_generated, generated_id, new_record, store_records
from distillery.parsing import ContractError
from distillery.records import Annotation
from distillery.store import Store
from distillery.tasks import Task, parse_task
from distillery.teacher import ChatResult, Guide, Message, Teacher
from distillery.teacher_config import JobConfig

from .augment import language_of

ORIGIN = "back_translation"
LANGUAGE_NAMES = {"zh": ("Chinese", "中文"), "en": ("English", "英文")}
TRANSLATION_MAX_TOKENS = 2048


def pivot_of(language: str) -> str:
    """The language a text goes through: English for Chinese, Chinese for anything else."""
    return "en" if language == "zh" else "zh"


def translation_messages(text: str, source: str, target: str) -> list[Message]:
    """A short translation prompt, in the target language; placeholders ([PHONE_1]) kept as written."""
    if target == "zh":
        system = "你是一名专业翻译。"
        user = (f"把下面的{LANGUAGE_NAMES[source][1]}翻译成中文。只输出译文，不要解释，不要加引号；"
                f"方括号里的占位符（如 [PHONE_1]）原样保留。\n\n{text}")
    else:
        system = "You are a professional translator."
        user = (f"Translate the following {LANGUAGE_NAMES[source][0]} text into English. Output only the "
                f"translation: no explanation, no quotes; keep placeholders in brackets (like [PHONE_1]) as they are."
                f"\n\n{text}")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


_FENCE = re.compile(r"^```[\w-]*\n?|\n?```$")
_LEAD = re.compile(r"^(?:translation|译文|翻译)\s*[:：]\s*", re.IGNORECASE)
_QUOTES = [("\"", "\""), ("“", "”"), ("「", "」"), ("'", "'")]


def clean_translation(content: str | None) -> str:
    """The translation alone: fences, a 'Translation:' lead and wrapping quotes removed."""
    text = _LEAD.sub("", _FENCE.sub("", (content or "").strip()).strip()).strip()
    for left, right in _QUOTES:
        if len(text) >= 2 and text.startswith(left) and text.endswith(right) and text.count(left) <= 2:
            text = text[len(left):-len(right)].strip()
    return text


def _same(a: str, b: str) -> bool:
    return "".join(a.split()) == "".join(b.split())


class _BackTranslation:
    def __init__(self, store: Store, teaching: Teaching, stats: GrowStats, config: JobConfig,
                 on_progress: Callable[[GrowStats], None] | None) -> None:
        self.store, self.teaching, self.stats, self.config = store, teaching, stats, config
        self.on_progress = on_progress
        self.tasks: dict[str, Task | None] = {}

    def task(self, ann: Annotation) -> Task | None:
        if ann.task_hash not in self.tasks:
            version = self.store.task(ann.task_hash)
            self.tasks[ann.task_hash] = parse_task(version.body, f"stored task {version.name}") if version else None
        return self.tasks[ann.task_hash]

    async def one(self, seed: Seed) -> None:
        try:
            record = await self._paraphrase(seed)
            if record is not None:
                store_records(self.store, [record], self.stats)  # at once: a kill loses nothing answered
        finally:
            if self.on_progress:
                self.on_progress(self.stats)

    async def _paraphrase(self, seed: Seed) -> Annotation | None:
        origin = seed.annotation
        record_id = generated_id(ORIGIN, origin.id)
        if self.store.annotation(record_id) is not None or self.teaching.stop.is_set():
            return None
        task = self.task(origin)
        if task is None:
            self.stats.drop("its task is not stored")
            return None
        language = language_of(seed.text, default=task.spec.language)
        pivot = pivot_of(language)
        screened = self.teaching.screen(seed.text, origin.input)
        if screened.blocked:
            self.stats.drop("blocked by the privacy policy")
            return None
        source, question = screened.texts
        assert source is not None
        answers: list[ChatResult] = []

        async def translate(text: str, src: str, dst: str) -> str | None:
            result = await self.teaching.ask(record_id, translation_messages(text, src, dst), temperature=0,
                                             max_tokens=max(TRANSLATION_MAX_TOKENS, self.config.teacher.max_tokens))
            if result is None:
                return None
            answers.append(result)
            out = clean_translation(result.content)
            if not out or result.finish_reason == "length":
                self.stats.drop("translation empty or cut off")
                return None
            return out

        intermediate = await translate(source, language, pivot)
        if intermediate is None:
            return None
        paraphrase = await translate(intermediate, pivot, language)
        if paraphrase is None:
            return None
        if _same(paraphrase, source):
            self.stats.drop("paraphrase identical to the source")
            return None
        if any(p not in paraphrase for p in screened.originals):
            self.stats.drop("personal data placeholder lost in translation")
            return None
        parsed = await self._annotate(record_id, task, origin, paraphrase, question, screened.restore, answers)
        if parsed is None:
            return None
        conclusion, reasoning = parsed
        if conclusion.strip() != seed.example.conclusion.strip():
            self.stats.drop("conclusion changed")
            return None
        return new_record(seed, origin=ORIGIN, record_id=record_id, conclusion=seed.example.conclusion,
                          reasoning=reasoning, text=screened.restore(paraphrase),
                          derivation={"via": pivot, "language": language, "intermediate": screened.restore(intermediate),
                                      "documents": []},
                          answers=answers, config=self.config, model=self.teaching.model,
                          provider=self.teaching.provider)

    async def _annotate(self, record_id: str, task: Task, origin: Annotation, text: str, question: str | None,
                        restore: Callable[[str], str], answers: list[ChatResult]) -> tuple[str, str] | None:
        """The task's own request on the paraphrase, re-asked with the error stated as annotation does."""
        messages = task.messages(origin.step, text, question=question)
        labels, cues = task.labels(origin.step), task.label_cues(origin.step)
        # The guide annotation gives an embedded teacher (annotate.runner.teacher_request): the label cues
        # condition the paraphrase itself.
        guide = Guide(labels=labels, cues=cues, source=text if cues else None) if labels else None
        for attempt in range(task.spec.contract.max_reasks + 1):
            result = await self.teaching.ask(record_id, messages, guide=guide)
            if result is None:
                return None
            answers.append(result)
            try:
                parsed = task.parse(origin.step, restore(result.content), result.finish_reason)
            except ContractError as exc:
                if attempt < task.spec.contract.max_reasks:
                    messages = [*messages, {"role": "assistant", "content": result.content}, task.reask(str(exc))]
                continue
            return parsed.conclusion, parsed.reasoning
        self.stats.drop("contract broken")
        return None


async def back_translate(store: Store, seeds: list[Seed], config: JobConfig, *, teacher: Teacher | None = None,
                         stop: asyncio.Event | None = None,
                         on_progress: Callable[[GrowStats], None] | None = None) -> GrowStats:
    """Paraphrase each seed through another language (zh <-> en) with the job's teacher and store the
    paraphrases whose re-asked conclusion is the seed's (origin "back_translation"). Seeds whose
    record is stored are skipped; requests already paid for are answered from the ledger."""
    stats = GrowStats(generator=ORIGIN, seeds=len(seeds), before=count_generated(store, ORIGIN))
    async with Teaching(store, config, stats, teacher=teacher, stop=stop) as teaching:
        work = _BackTranslation(store, teaching, stats, config, on_progress)
        if not teaching.stop.is_set():
            await asyncio.gather(*(work.one(s) for s in seeds))
    stats.after = count_generated(store, ORIGIN)
    return stats
