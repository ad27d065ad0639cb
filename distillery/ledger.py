"""The call ledger: a teacher request is paid for at most once, and a stop stops spending at once.

Every paid call goes through `Ledger.call`: hash the request (messages + model + params) ->
reuse the stored answer if there is one -> otherwise claim the call in the store atomically
(written as `sent`, with who holds it) -> send it -> commit the raw answer the moment it arrives.
A kill at any point loses at most the answers in flight; a re-run sends no request whose answer
is stored; two runs on one workspace never send the same request (the second skips what the
first holds, and takes over what a dead one left).

Right before a request goes on the wire (after the rate limiter let it through) the ledger's gate
checks the stop (Ctrl-C, a fatal teacher error) and the budget, reserving the request's worst-case
cost (its prompt, estimated, plus max_tokens of answer): requests queued behind the limiter are
cancelled unsent, and what is spent never passes the budget. The annotation job and qc's judge
both pay through here, so they share the budget and the ledger.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from datetime import datetime, timezone
from typing import NamedTuple

from pydantic import BaseModel

from .accounting import Price, cost, estimate_prompt_tokens
from .errors import DistilleryError
from .store import Store
from .teacher import ChatRequest, ChatResult, Teacher, TeacherError

HOST = socket.gethostname()
DOWN_AFTER = 3  # requests in a row without any answer (each after its retries): the teacher is down
_LIVE_TOKENS: set[str] = set()  # ledgers alive in this process: their claims are held


class JobStopped(DistilleryError):
    """The whole job must stop (quota, auth, budget, a stop asked for); the message says what to do."""


class CallHeld(DistilleryError):
    """Another live run has this request out; its answer will be stored, not paid for again."""

    def __init__(self, holder: str) -> None:
        super().__init__(f"another run ({holder}) is sending this request")
        self.holder = holder


class LedgerStats(BaseModel):
    """What the calls of one run cost; the progress bars and summaries read these."""

    calls_sent: int = 0
    calls_reused: int = 0  # answers found in the store: not paid again
    calls_held: int = 0  # requests another live run had out: left to it
    calls_cancelled: int = 0  # requests a stop cancelled before they left
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    currency: str = "CNY"


class Answer(NamedTuple):
    request_hash: str
    result: ChatResult
    reused: bool  # from the store, not paid for by this call


def holder_alive(owner: str, sent_at: str, *, lease_s: float) -> bool:
    """Whether the run that claimed a call may still answer it. On this host: its process exists
    (and, in this very process, its ledger is open). Elsewhere: it claimed within `lease_s`."""
    host, _, rest = owner.partition(":")
    pid, _, token = rest.partition(":")
    if host == HOST and pid.isdigit():
        if int(pid) == os.getpid():
            return token in _LIVE_TOKENS
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # exists, another user's
        return True
    age = datetime.now(timezone.utc) - datetime.fromisoformat(sent_at)
    return age.total_seconds() < lease_s


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
        stop: asyncio.Event | None = None,
        lease_s: float = 3600,
    ) -> None:
        self.store, self.teacher, self.model, self.base_url = store, teacher, model, base_url
        self.price, self.budget, self.lease_s = price, budget, lease_s
        self.stats = stats if stats is not None else LedgerStats(currency=price.currency)
        self.stop = stop if stop is not None else asyncio.Event()
        self.stopped_because = "stopped"  # what a set `stop` means, for the requests it cancels
        self.spent_before = store.spent()
        self.reserved = 0.0  # worst-case cost of the requests on the wire right now
        self.unreachable = 0  # requests in a row that got no answer at all (connection, timeout)
        token = uuid.uuid4().hex[:12]
        self.owner = f"{HOST}:{os.getpid()}:{token}"
        _LIVE_TOKENS.add(token)

    def close(self) -> None:
        """This ledger's claims are no longer held (a later run in this process may take them over)."""
        _LIVE_TOKENS.discard(self.owner.rsplit(":", 1)[1])

    def halt(self, why: str) -> None:
        """Stop: nothing more leaves; requests already on the wire finish and are stored."""
        if not self.stop.is_set():
            self.stopped_because = why
            self.stop.set()

    async def preflight(self) -> None:
        """One look at the teacher before a job (nothing paid): raises JobStopped when every request
        would fail (unreachable, rejected key), so none is sent."""
        problem = await self.teacher.probe()
        if problem is not None:
            self.halt(fatal_advice(problem) if problem.fatal else
                      f"cannot reach the teacher at {self.base_url}: {problem.message}; check --base-url and the "
                      "network, then run the same command again")
            raise JobStopped(self.stopped_because)

    async def call(self, annotation_id: str, request: ChatRequest) -> Answer:
        """The answer to `request`, paid for only if no answer is stored. Raises JobStopped at a
        stop, the budget or a fatal teacher error (quota, auth); CallHeld when another live run has
        it out; TeacherError on any other failure."""
        h = request.request_hash()
        stored = self.store.answered_call(h)
        if stored is None:
            if self.stop.is_set():
                raise JobStopped(self.stopped_because)
            claim = self.store.claim_call(
                h, owner=self.owner, annotation_id=annotation_id, provider=self.teacher.name, base_url=self.base_url,
                model=self.model, request=request.body(),
                holder_alive=lambda owner, sent_at: holder_alive(owner, sent_at, lease_s=self.lease_s))
            if claim.outcome == "held":
                self.stats.calls_held += 1
                raise CallHeld(claim.call.claimed_by if claim.call else "?")
            stored = claim.call
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
        return Answer(h, await self._send(h, request), False)

    def _worst_case(self, request: ChatRequest) -> float:
        return cost(self.price, estimate_prompt_tokens(request.messages), request.max_tokens)

    async def _send(self, h: str, request: ChatRequest) -> ChatResult:
        worst = self._worst_case(request)
        reserved = 0.0
        sent = False

        def gate() -> None:
            nonlocal reserved, sent
            self.reserved -= reserved  # a retry re-reserves
            reserved = 0.0
            if self.stop.is_set():
                raise JobStopped(self.stopped_because)
            if self.budget is not None and self.spent_before + self.stats.cost + self.reserved + worst > self.budget:
                spent = self.spent_before + self.stats.cost
                self.halt(f"budget of {self.budget:g} {self.price.currency} reached ({spent:.4f} spent, the next request "
                          f"may cost up to {worst:.4f}); raise --budget and run again to go on")
                raise JobStopped(self.stopped_because)
            reserved = worst
            self.reserved += worst
            if not sent:
                sent = True
                self.stats.calls_sent += 1

        try:
            result = await self.teacher.complete(request, gate=gate)
        except JobStopped as exc:
            self.stats.calls_cancelled += 1
            self.store.call_failed(h, kind="not_sent", error=f"cancelled before it was sent: {exc}", attempts=0)
            raise
        except TeacherError as exc:
            self.store.call_failed(h, kind=exc.kind, error=exc.message, attempts=exc.attempts)
            self.unreachable = self.unreachable + 1 if exc.kind in ("connection", "timeout") else 0
            if exc.fatal:
                self.halt(fatal_advice(exc))
                raise JobStopped(self.stopped_because) from exc
            if self.unreachable >= DOWN_AFTER:
                self.halt(f"the teacher at {self.base_url or 'the embedded model'} gave no answer to {self.unreachable} "
                          f"requests in a row, each after its retries ({exc.kind}: {exc.message}); check that it is up "
                          "and reachable, then run the same command again")
                raise JobStopped(self.stopped_because) from exc
            raise
        finally:
            self.reserved -= reserved
        self.unreachable = 0
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
        return result


def fatal_advice(exc: TeacherError) -> str:
    if exc.kind == "quota":
        return f"the provider says the account is out of quota/balance ({exc.message}); top it up and run the same command again to resume"
    return f"the provider rejected the API key ({exc.message}); check the key variable and run again"
