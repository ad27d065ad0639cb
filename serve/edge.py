"""What crosses the HTTP edge: the JSON body, its validation, and errors that say what is wrong.

Both APIs (ChatRest and the OpenAI-compatible one) read bodies and report problems through
here; each renders an ApiError in its own envelope.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from flask import Request
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    """A request that cannot be answered: HTTP status, a message for the caller, and a kind
    (the OpenAI error `type`; ChatRest shows only the status and the message)."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.headers = headers or {}


def json_type(value: Any) -> str:
    """The JSON name of a value's type, as a caller who sent it would say it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def read_json_object(request: Request, example: str) -> dict[str, Any]:
    """The body as a JSON object, or an ApiError naming what is wrong with it.

    `example` is a minimal valid body, quoted in the messages so a caller can fix theirs."""
    if not request.is_json:
        got = request.content_type or "none"
        raise ApiError(415, f"Content-Type must be application/json (got {got}); send a JSON body like {example}")
    body = request.get_data(cache=False)  # over max_body_bytes: werkzeug raises 413 here
    if not body.strip():
        raise ApiError(400, f"the request body is empty; send a JSON object like {example}")
    try:
        data = json.loads(body)  # bytes: UTF-8/16/32 are detected as RFC 8259 allows
    except UnicodeDecodeError:
        raise ApiError(400, "the request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "the request body nests arrays or objects too deeply to be a request") from None
    try:
        # Valid JSON may escape half of a UTF-16 pair (clients that slice strings do): no text
        # holds such a thing, and the tokenizer cannot encode it.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, "the request body holds a lone surrogate escape (like \\ud800), half of a character: "
                            "send whole characters") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object like {example}, not {json_type(data)}")
    return data


def parse(model: type[M], data: dict[str, Any]) -> M:
    """Validate `data` as `model`; every problem is named by its JSON path in one message."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, "; ".join(_describe(e) for e in exc.errors())) from None


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# pydantic error type -> what to tell a caller who writes JSON, not Python.
_PHRASES = {
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "list_type": "must be an array",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
}


def _describe(err: Any) -> str:
    loc = tuple(err["loc"])
    where = f"'{_path(loc)}'" if loc else "the body"
    kind = err["type"]
    if kind == "missing":
        return f"{where} is required"
    if kind == "string_too_short":
        return f"{where} is empty"
    if kind in _PHRASES:
        return f"{where} {_PHRASES[kind]}, not {json_type(err.get('input'))}"
    # Custom checks raise ValueError with a caller-ready message; pydantic prefixes it.
    return f"{where}: {err['msg'].removeprefix('Value error, ')}"
