"""The teacher interface: what the annotation runner sends and gets back.

Two implementations speak it: `distillery.client.OpenAIChatClient` (Kimi or any
OpenAI-compatible API over HTTP) and `distillery.local_teacher.LocalTeacher` (the
embedded model run by `distillery.runtime`). The runner only sees this module.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field, model_validator

from .errors import DistilleryError

Message = dict[str, Any]  # {"role": "system"|"user"|"assistant", "content": str, ...}

ErrorKind = Literal[
    "rate_limit",  # 429 RPM/TPM/concurrency or engine overloaded: retried
    "server",  # 5xx: retried
    "timeout",  # read/connect timeout: retried
    "connection",  # reset, refused, truncated body: retried
    "malformed",  # 2xx whose body is not a chat completion: retried
    "quota",  # out of balance: stop the job, resume after a top-up
    "auth",  # bad key: stop the job
    "content_filter",  # provider refused the input: record as refused
    "context_overflow",  # input too long for the model: record, name the chunk
    "bad_request",  # any other 4xx: record, not retried
]

RETRYABLE: frozenset[str] = frozenset({"rate_limit", "server", "timeout", "connection", "malformed"})
FATAL: frozenset[str] = frozenset({"quota", "auth"})  # the whole job stops


# Guide fields that came after stores held answers: the hash covers them only when set.
_ADDED_LATER = ("cues", "source")


class Guide(BaseModel):
    """Hints a local model can use to keep the output contract; remote APIs ignore them."""

    labels: list[str] | None = None
    separator: str = "####"
    # Channel scoring: one cue per label (same order) that would precede `source`, the chunk
    # text; the label whose cue makes the source likeliest wins.
    cues: list[str] | None = None
    source: str | None = None

    @model_validator(mode="after")
    def _cues_match_labels(self) -> Guide:
        if self.cues is not None and (self.source is None or len(self.cues) != len(self.labels or [])):
            raise ValueError("cues need a source and exactly one cue per label")
        return self

    def identity(self) -> dict[str, Any]:
        """What the request hash covers: requests without the later fields keep the hashes
        their stored answers are filed under."""
        return self.model_dump(exclude={name for name in _ADDED_LATER if getattr(self, name) is None})


class ChatRequest(BaseModel):
    messages: list[Message]
    model: str
    temperature: float = 0.3
    max_tokens: int = 1024
    extra: dict[str, Any] = Field(default_factory=dict)  # other body fields, sent as-is
    guide: Guide | None = None

    def body(self) -> dict[str, Any]:
        """The JSON body of POST /chat/completions."""
        return {
            "model": self.model,
            "messages": self.messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            **self.extra,
        }

    def request_hash(self) -> str:
        """Identity of a paid request: same messages + model + params => same hash."""
        canonical = json.dumps(
            {"body": self.body(), "guide": self.guide.identity() if self.guide else None},
            sort_keys=True,
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ChatResult(BaseModel):
    content: str
    finish_reason: str | None = None  # "stop" | "length" | provider-specific
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str | None = None  # as the provider reports it
    raw: dict[str, Any] = Field(default_factory=dict)  # the provider's whole JSON answer
    latency_s: float = 0.0  # of the successful attempt
    attempts: int = 1  # HTTP attempts it took (retries included)


class TeacherError(DistilleryError):
    """A request that ended without an answer, classified so the runner knows what to do."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind: ErrorKind = kind
        self.message = message
        self.status = status
        self.retry_after_s = retry_after_s
        self.attempts = attempts

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE

    @property
    def fatal(self) -> bool:
        return self.kind in FATAL


Gate = Callable[[], None]


class Teacher(Protocol):
    """Anything that answers chat requests. `complete` retries internally and raises TeacherError.

    `gate`, when given, is called right before each attempt goes on the wire (after any rate
    limiter let it through); whatever it raises cancels the request unsent. That is how a stop
    (Ctrl-C, a fatal error, the budget) reaches requests already queued behind the limiter."""

    name: str  # "openai" | "local": stored on every record as the provider

    async def complete(self, request: ChatRequest, *, gate: Gate | None = None) -> ChatResult: ...

    async def probe(self) -> TeacherError | None:
        """One quick look before a job: an error that would fail every request (unreachable,
        rejected key), else None. Nothing is paid for."""
        ...

    async def aclose(self) -> None: ...
