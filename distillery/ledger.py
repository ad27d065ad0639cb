"""The call ledger: a teacher request is paid for at most once.

Every paid call goes through `Ledger.call`: hash the request (messages + model + params) ->
reuse the stored answer if there is one -> otherwise check the budget, write the call as `sent`
before it leaves, send it, and commit the raw answer the moment it arrives. A kill at any point
loses at most the answers in flight; a re-run sends no request whose answer is stored. The
annotation job and qc's judge both pay through here, so they share the budget and the ledger.
"""

from __future__ import annotations

from typing import NamedTuple

from pydantic import BaseModel

from .accounting import Price, cost
from .errors import DistilleryError
from .store import Store
from .teacher import ChatRequest, ChatResult, Teacher, TeacherError


class JobStopped(DistilleryError):
    """The whole job must stop (quota, auth, budget); the message says what to do."""


class LedgerStats(BaseModel):
    """What the calls of one run cost; the progress bars and summaries read these."""

    calls_sent: int = 0
    calls_reused: int = 0  # answers found in the store: not paid again
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    currency: str = "CNY"


class Answer(NamedTuple):
    request_hash: str
    result: ChatResult
    reused: bool  # from the store, not paid for by this call


class Ledger:
    def __init__(
        self,
        store: Store,
        teacher: Teacher,
        *,
        model: str,
        base_url: str | None,
        price: Price,
        budget: float | None = None,
        stats: LedgerStats | None = None,
    ) -> None:
        self.store, self.teacher, self.model, self.base_url = store, teacher, model, base_url
        self.price, self.budget = price, budget
        self.stats = stats if stats is not None else LedgerStats(currency=price.currency)
        self.spent_before = store.spent()

    async def call(self, annotation_id: str, request: ChatRequest) -> Answer:
        """The answer to `request`, paid for only if no answer is stored; raises JobStopped at the
        budget or on a fatal teacher error (quota, auth), TeacherError on any other failure."""
        h = request.request_hash()
        stored = self.store.answered_call(h)
        if stored is not None:
            self.stats.calls_reused += 1
            return Answer(h, ChatResult(
                content=stored.content or "",
                finish_reason=stored.finish_reason,
                prompt_tokens=stored.prompt_tokens or 0,
                completion_tokens=stored.completion_tokens or 0,
                latency_s=stored.latency_s or 0.0,
                attempts=0,
            ), True)
        if self.budget is not None and self.spent_before + self.stats.cost >= self.budget:
            raise JobStopped(f"budget of {self.budget:g} {self.price.currency} reached; raise --budget and run again to go on")
        self.store.call_sent(h, annotation_id=annotation_id, provider=self.teacher.name, base_url=self.base_url,
                             model=self.model, request=request.body())
        self.stats.calls_sent += 1
        try:
            result = await self.teacher.complete(request)
        except TeacherError as exc:
            self.store.call_failed(h, kind=exc.kind, error=exc.message, attempts=exc.attempts)
            if exc.fatal:
                raise JobStopped(fatal_advice(exc)) from exc
            raise
        paid = cost(self.price, result.prompt_tokens, result.completion_tokens)
        self.store.call_answered(
            h,
            response=result.raw,
            content=result.content,
            finish_reason=result.finish_reason,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            cost=paid,
            latency_s=result.latency_s,
            attempts=result.attempts,
        )
        self.stats.prompt_tokens += result.prompt_tokens
        self.stats.completion_tokens += result.completion_tokens
        self.stats.cost += paid
        return Answer(h, result, False)


def fatal_advice(exc: TeacherError) -> str:
    if exc.kind == "quota":
        return f"the provider says the account is out of quota/balance ({exc.message}); top it up and run the same command again to resume"
    return f"the provider rejected the API key ({exc.message}); check the key variable and run again"
