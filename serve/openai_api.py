"""An OpenAI-compatible `POST /v1/chat/completions` (and `GET /v1/models`) on the same model,
so apps can use the OpenAI SDK: `OpenAI(base_url="http://host:8000/v1", api_key=...)`.

`stop` is honoured whatever tokens spell it (`"stop": ["####"]` is the early exit here too).
`stream: true` streams server-sent events as OpenAI's API does (usage in a last chunk when
`stream_options.include_usage` is set) in front of an upstream engine (`serve --upstream`) and
in-process with `batching.engine: continuous`; the static batcher answers whole, so there it is
refused with a 400, as `n` > 1 is.
Sampling fields other than temperature/top_p/seed (penalties, logit_bias...) are ignored.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Literal

from flask import Blueprint, Response, g, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

from distillery.completions import chat_completion, chat_completion_chunk, model_list
from distillery.runtime import Generation

from .edge import ApiError, json_type, parse, read_json_object
from .service import ModelService
from .streaming import AnswerStream, event_stream, open_stream
from .upstream import UpstreamService

PREFIX = "/v1/"
_EXAMPLE = '{"model": "distillery", "messages": [{"role": "user", "content": "..."}]}'
_MAX_STOPS = 4  # as OpenAI's API


def error_response(err: ApiError) -> Response:
    """OpenAI's error shape, which the SDK turns into its typed exceptions."""
    response = jsonify({"error": {"message": err.message, "type": err.kind, "param": None, "code": None}})
    response.status_code = err.status
    response.headers.update(err.headers)
    return response


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> str:
        """A string, or the SDK's list of parts of which only text parts are understood."""
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                           and isinstance(p.get("text"), str) for p in value):
            return "".join(p["text"] for p in value)
        raise ValueError(f"must be a string or a list of {{\"type\": \"text\", \"text\": ...}} parts, "
                         f"not {json_type(value)}")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: StrictBool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: StrictStr | None = None  # any name is accepted: this server has one model
    messages: list[Message] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)  # the SDK's newer name for it
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: list[str] | None = None
    seed: StrictInt | None = None
    n: StrictInt = 1
    stream: StrictBool = False
    stream_options: StreamOptions | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: Any) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise ValueError("must be a non-empty string or a list of non-empty strings")
        if len(stops) > _MAX_STOPS:
            raise ValueError(f"at most {_MAX_STOPS} stop strings")
        return stops

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is supported")
        return value



def blueprint(service: ModelService | UpstreamService) -> Blueprint:
    bp = Blueprint("openai", __name__)
    model_name = service.config.model_name

    @bp.post("/v1/chat/completions")
    def chat_completions() -> Response:
        req = parse(ChatCompletionRequest, read_json_object(request, _EXAMPLE))
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.content} for m in req.messages]
        config = service.generation_config(max_new_tokens=req.max_completion_tokens or req.max_tokens,
                                           temperature=req.temperature, top_p=req.top_p, stop=req.stop, seed=req.seed)
        if req.stream:
            return _streamed(open_stream(service, messages, config), model_name,
                             include_usage=bool(req.stream_options and req.stream_options.include_usage))
        service.count_prompt_tokens(messages)
        gen = service.generate(messages, config, started=g.started, rid=g.rid)
        g.generation = gen
        g.texts = {"prompt": messages[-1]["content"], "answer": gen.text}
        body = chat_completion(id=f"chatcmpl-{g.rid}", model=model_name, content=gen.text,
                               finish_reason=gen.finish_reason, prompt_tokens=gen.prompt_tokens,
                               completion_tokens=gen.completion_tokens)
        if gen.note:
            body["note"] = gen.note
        return jsonify(body)

    def _streamed(answer: AnswerStream, model: str, *, include_usage: bool) -> Response:
        rid, created = f"chatcmpl-{g.rid}", int(time.time())

        def chunk(delta: dict | None, finish: str | None = None, usage: dict | None = None) -> dict[str, Any]:
            return chat_completion_chunk(id=rid, model=model, created=created, delta=delta, finish_reason=finish,
                                         usage=usage)

        def closing(gen: Generation) -> Iterator[dict[str, Any] | str]:
            yield chunk({}, gen.finish_reason)
            if include_usage:
                yield chunk(None, usage={"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens})
            yield "[DONE]"

        # The SDK raises on an error event: the status line is already sent.
        return event_stream(answer, opening=[chunk({"role": "assistant", "content": ""})],
                            piece=lambda text: chunk({"content": text}), closing=closing,
                            failure=lambda err: {"error": {"message": err.message, "type": err.kind}})

    @bp.get("/v1/models")
    def models() -> Response:
        return jsonify(model_list([model_name], owned_by="distillery"))

    return bp
