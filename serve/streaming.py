"""Answers sent as they are generated: server-sent events for both APIs (each writes its own
event bodies), from the continuous engine or an upstream engine.

One skeleton for both: the stream is closed however the response ends (a caller who hangs up
stops the generation and frees its slot), and the request's log line and token metrics are
written when it ends, not when its first byte went out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from flask import Response, current_app, g, stream_with_context

from distillery.runtime import Generation, GenerationConfig

from .edge import ApiError
from .service import ModelService
from .upstream import UpstreamService


class AnswerStream(Protocol):
    """Text deltas, then `generation` holds the whole answer; `close` stops it."""

    generation: Generation | None

    def __iter__(self) -> Iterator[str]: ...

    def close(self) -> None: ...


def open_stream(service: ModelService | UpstreamService, messages: list[dict],
                config: GenerationConfig) -> AnswerStream:
    """Start streaming an answer, or refuse with a 400 that says how to get one."""
    if not service.can_stream:
        raise ApiError(400, "'stream': this server's in-process model answers whole with the static batcher: "
                            "send stream=false (the default), or serve with batching.engine: continuous")
    service.count_prompt_tokens(messages)
    return service.stream(messages, config, started=g.started, rid=g.rid)


def sse(body: dict[str, Any] | str) -> str:
    """One server-sent event; a string goes as it is (OpenAI's `[DONE]`)."""
    data = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
    return f"data: {data}\n\n"


def event_stream(
    answer: AnswerStream,
    *,
    piece: Callable[[str], dict[str, Any]],
    closing: Callable[[Generation], Iterable[dict[str, Any] | str]],
    failure: Callable[[ApiError], dict[str, Any]],
    opening: Iterable[dict[str, Any]] = (),
) -> Response:
    """The response: `opening` events, one `piece` event per delta, then `closing` events for the
    whole answer; a failure after the status line went out is sent as a `failure` event."""
    observe = current_app.extensions["distillery.observe_stream"]

    def events() -> Iterator[str]:
        error = None
        try:
            for body in opening:
                yield sse(body)
            for text in answer:
                yield sse(piece(text))
            gen = answer.generation
            assert gen is not None
            for body in closing(gen):
                yield sse(body)
        except ApiError as err:
            error = err.message
            yield sse(failure(err))
        finally:  # also when the caller disconnects (GeneratorExit): the generation stops too
            answer.close()
            observe(answer.generation, error)

    return Response(stream_with_context(events()), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
