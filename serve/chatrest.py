"""POST /algorithm/ChatRest: the endpoint existing apps call, answered exactly as they expect.

    request:  {"prompt": "...", "history": [{"query": "...", "answer": "..."}], "reasoning": false}
    success:  {"sucess": true, "code": "200", "msg": "解析成功", "data": {"query": ..., "answer": ...}}
    failure:  {"sucess": false, "code": "<HTTP status>", "msg": "<what is wrong>", "data": null}

With `"stream": true` (opt-in; the continuous engine or an upstream engine) the answer comes as
server-sent events, each one such envelope: `data: {"delta": "..."}` while it is generated, then
the envelope a whole answer gets; a failure after the first event is a failure envelope event.

`sucess` is misspelled on purpose: that is the key the apps read. By default the answer stops
at the separator (`####`), so a model trained on `conclusion####reasoning` answers with the
conclusion alone and spends no time on the reasoning; `"reasoning": true` returns both parts.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, g, jsonify, request
from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr, field_validator
from pydantic_core import PydanticCustomError

from distillery.runtime import Generation

from .edge import ApiError, parse, read_json_object
from .service import ModelService
from .streaming import event_stream, open_stream
from .upstream import UpstreamService

PATH = "/algorithm/ChatRest"
OK_MSG = "解析成功"
_EXAMPLE = '{"prompt": "...", "history": [{"query": "...", "answer": "..."}]}'


def envelope(status: int, msg: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"sucess": status == 200, "code": str(status), "msg": msg, "data": data}


def error_response(err: ApiError) -> Response:
    response = jsonify(envelope(err.status, err.message))
    response.status_code = err.status
    response.headers.update(err.headers)
    return response


def _not_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("string_too_short", "empty")
    return value


class Turn(BaseModel):
    """One earlier exchange: the user's query and the model's answer to it."""

    model_config = ConfigDict(extra="ignore")
    query: StrictStr
    answer: StrictStr


class ChatRestRequest(BaseModel):
    # Apps may send fields the old endpoint ignored; so does this one.
    model_config = ConfigDict(extra="ignore")
    prompt: StrictStr
    history: list[Turn] | None = None
    reasoning: StrictBool = False  # also return the reasoning after the separator
    stream: StrictBool = False  # server-sent events as the answer is generated

    _prompt_not_blank = field_validator("prompt")(_not_blank)


def to_messages(req: ChatRestRequest, system_prompt: str | None) -> list[dict[str, str]]:
    """History pairs become alternating user/assistant turns (the model's earlier answers are
    its own turns, not system text), then the prompt; the chat template does the rest."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for turn in req.history or []:
        messages += [{"role": "user", "content": turn.query}, {"role": "assistant", "content": turn.answer}]
    messages.append({"role": "user", "content": req.prompt})
    return messages


def blueprint(service: ModelService | UpstreamService) -> Blueprint:
    bp = Blueprint("chatrest", __name__)
    sep = service.config.separator
    # Built once: equal configs are what lets the batcher put concurrent requests in one batch.
    early_exit = service.generation_config(stop=[sep])
    full = service.generation_config()

    def answer_data(req: ChatRestRequest, gen: Generation) -> dict[str, Any]:
        if req.reasoning:
            head, found, tail = gen.text.partition(sep)
            conclusion, reasoning = head.strip(), (tail.strip() if found else None)
            answer = gen.text.strip()
        else:
            conclusion = answer = gen.text.strip()
            reasoning = None
        data = {
            "query": req.prompt,
            "answer": answer,
            "conclusion": conclusion,
            "reasoning": reasoning,
            # stop: EOS or the separator (early exit); length: cut at max_new_tokens
            "finish_reason": gen.finish_reason,
            "usage": {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens},
            "request_id": g.rid,
            "latency_ms": round((time.monotonic() - g.started) * 1000, 1),
        }
        if gen.note:
            data["note"] = gen.note
        return data

    @bp.post(PATH)
    def chat_rest() -> Response:
        req = parse(ChatRestRequest, read_json_object(request, _EXAMPLE))
        messages = to_messages(req, service.config.system_prompt)
        config = full if req.reasoning else early_exit
        if req.stream:
            return event_stream(open_stream(service, messages, config),
                                piece=lambda text: envelope(200, OK_MSG, {"delta": text}),
                                closing=lambda gen: [envelope(200, OK_MSG, answer_data(req, gen))],
                                failure=lambda err: envelope(err.status, err.message))
        service.count_prompt_tokens(messages)
        gen = service.generate(messages, config, started=g.started, rid=g.rid)
        data = answer_data(req, gen)
        g.generation = gen
        g.texts = {"prompt": req.prompt, "answer": data["answer"]}
        return jsonify(envelope(200, OK_MSG, data))

    return bp
