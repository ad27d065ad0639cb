"""The OpenAI chat-completions wire shapes that distillery writes: the embedded teacher's raw
answer, the server's `/v1/chat/completions` and `/v1/models`, and the test doubles' answers."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any


def chat_completion(
    *,
    id: str,
    model: str,
    content: str,
    finish_reason: str | None,
    prompt_tokens: int,
    completion_tokens: int,
    created: int | None = None,
) -> dict[str, Any]:
    """A non-streamed `chat.completion` object with one choice and its usage."""
    return {
        "id": id,
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": finish_reason,
            "logprobs": None,
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def chat_completion_chunk(
    *,
    id: str,
    model: str,
    created: int,
    delta: dict[str, Any] | None,
    finish_reason: str | None = None,
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One streamed `chat.completion.chunk`: a delta of the single choice, or (delta None) the
    closing usage chunk OpenAI sends when `stream_options.include_usage` is set."""
    chunk: dict[str, Any] = {"id": id, "object": "chat.completion.chunk", "created": created, "model": model}
    if delta is None:
        chunk["choices"] = []
    else:
        chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
    if usage is not None:
        chunk["usage"] = usage | {"total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}
    return chunk


def model_list(ids: Iterable[str], owned_by: str) -> dict[str, Any]:
    """The body of `GET /v1/models`."""
    return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": owned_by} for m in ids]}
