"""The annotation job: every planned chunk x task through the teacher, exactly once.

Flow per record: render the task's messages -> pay for the request through the call ledger
(`distillery.ledger`: a stored answer is reused, a new one committed on arrival) -> parse
`conclusion####reasoning` -> re-ask with the error stated, a bounded number of times.
A kill at any point loses at most the answers in flight; a re-run sends no request whose
answer is stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Iterator

from pydantic import BaseModel, Field

from distillery.accounting import Price, cost, estimate_prompt_tokens
from distillery.ledger import CallHeld, JobStopped, Ledger, LedgerStats
from distillery.parsing import ContractError
from distillery.privacy import Privacy
from distillery.records import Annotation, Step
from distillery.store import Store
from distillery.tasks import Task
from distillery.teacher import ChatRequest, ChatResult, Guide, Message, Teacher, TeacherError
from distillery.teacher_config import JobConfig, build_teacher


class JobStats(LedgerStats):
    """Live figures of one run (the ledger's calls, tokens and cost, and the records');
    the progress bar and the final summary read these."""

    total: int = 0  # records this run will work on (grows when QA questions fan out)
    done: int = 0
    by_status: dict[str, int] = Field(default_factory=dict)
    retries: int = 0  # HTTP attempts retried inside the client (429, 5xx, resets...)
    resent_after_timeout: int = 0  # of those, sent again because no answer came in time: each may be charged
    reasks: int = 0  # answers that broke the contract and were asked again
    elapsed_s: float = 0.0
    stopped: str | None = None  # why the run ended early, if it did
    masked: dict[str, int] = Field(default_factory=dict)  # personal data replaced before sending, by kind (per chunk)
    errors: list[str] = Field(default_factory=list)  # the first few record-level errors


class Estimate(BaseModel):
    pending: int  # records the job would start with (what `plan` returns)
    records: int  # with the answers a QA job's questions fan out into
    prompt_tokens: int
    completion_tokens: int
    cost: float
    currency: str
    priced: bool  # False when the model has no price in the table
    note: str = ""


def annotation_id(chunk_id: str, task_hash: str, model: str, step: str, parent_id: str | None, index: int) -> str:
    key = "\x00".join([chunk_id, task_hash, model, step, parent_id or "", str(index)])
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def _planned(task: Task, model: str, provider: str, chunk_ids: Iterator[str]) -> Iterator[Annotation]:
    step = task.first_step
    for cid in chunk_ids:
        yield Annotation(
            id=annotation_id(cid, task.hash, model, step, None, 0),
            chunk_id=cid,
            task_hash=task.hash,
            task_name=task.name,
            step=step,
            model=model,
            provider=provider,
        )


def plan(
    store: Store,
    task: Task,
    config: JobConfig,
    *,
    limit: int | None = None,
    shard: tuple[int, int] | None = None,
    retry: tuple[str, ...] = (),
) -> int:
    """Select the job's chunks and plan a pending record for each new one. Returns pending count."""
    store.put_task(task.version())
    store.select_job_chunks(shard=shard, limit=limit)
    model, provider = config.teacher.resolved_model(), config.teacher.resolved_provider()
    store.plan(_planned(task, model, provider, store.job_chunks_without(task_hash=task.hash, model=model, step=task.first_step)))
    store.reset_job(task_hash=task.hash, model=model, statuses=retry)
    return store.job_count(task_hash=task.hash, model=model)


def estimate(
    store: Store,
    task: Task,
    config: JobConfig,
    *,
    limit: int | None = None,
    shard: tuple[int, int] | None = None,
    retry: tuple[str, ...] = (),
) -> Estimate:
    """Tokens and money the job `plan` would set up will take (the dry run). Nothing is written:
    the records `plan` would add or reset are worked out, so a dry run leaves no trace in `status`."""
    store.select_job_chunks(shard=shard, limit=limit)  # a temporary table of this connection only
    price = config.price()
    fan = task.spec.max_questions if task.spec.kind == "qa" else 0
    pending = fanned = prompt = 0
    for ann in _to_do(store, task, config, retry):
        chunk = store.chunk(ann.chunk_id)
        assert chunk is not None
        # A questions record fans out into up to `fan` answers, each about as long to ask.
        extra = fan if ann.step == "questions" else 0
        pending += 1
        fanned += extra
        prompt += estimate_prompt_tokens(task.messages(ann.step, chunk.text, question=ann.input)) * (1 + extra)
    records = pending + fanned
    completion = records * config.expected_completion_tokens
    note = f"includes up to {fan} answers per chunk (qa fan-out)" if fanned else ""
    return Estimate(
        pending=pending,
        records=records,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost=cost(price, prompt, completion),
        currency=price.currency,
        priced=config.has_price(),
        note=note,
    )


def _to_do(store: Store, task: Task, config: JobConfig, retry: tuple[str, ...]) -> Iterator[Annotation]:
    """The records `plan` would leave pending, read only: the stored ones that are pending or in a
    `retry` state, then the ones it would create."""
    model, provider = config.teacher.resolved_model(), config.teacher.resolved_provider()
    after = 0
    while page := store.job_pending(task_hash=task.hash, model=model, after_rowid=after, limit=512,
                                    statuses=("pending", *retry)):
        for after, ann in page:
            yield ann
    yield from _planned(task, model, provider, store.job_chunks_without(task_hash=task.hash, model=model, step=task.first_step))


def teacher_request(task: Task, config: JobConfig, messages: list[Message], step: Step, text: str) -> ChatRequest:
    """What a job asks its teacher about `text` (a chunk): shared with evaluations that ask it
    about documents outside a workspace, so both get the same answer for the same text."""
    labels, cues = task.labels(step), task.label_cues(step)
    # The cues condition the chunk itself (`text`), not the rendered prompt around it.
    guide = Guide(labels=labels, cues=cues, source=text if cues else None) if labels else None
    return ChatRequest(
        messages=messages,
        model=config.teacher.resolved_model(),
        temperature=config.teacher.temperature,
        max_tokens=config.teacher.max_tokens,
        guide=guide,
    )


class Job:
    def __init__(self, store: Store, task: Task, config: JobConfig, *, teacher: Teacher | None = None,
                 stop: asyncio.Event | None = None) -> None:
        self.store, self.task, self.config = store, task, config
        self.teacher = teacher or build_teacher(config.teacher, on_retry=self.on_retry)
        self.model = config.teacher.resolved_model()
        self.price: Price = config.price()
        self.stats = JobStats(currency=self.price.currency)
        self.stop = stop or asyncio.Event()
        self.ledger = Ledger(store, self.teacher, model=self.model, base_url=config.teacher.resolved_base_url(),
                             price=self.price, budget=config.budget, stats=self.stats, stop=self.stop,
                             lease_s=config.teacher.lease_s())
        self.ledger.stopped_because = "stopped on request; run the same command again to resume"
        self.privacy = Privacy(store, config.privacy, local_teacher=config.teacher.resolved_provider() == "local")
        self.masked_chunks: set[str] = set()  # chunks whose masked values this run has counted

    # -- one call, paid at most once ------------------------------------------------------

    def _request(self, messages: list[Message], step: Step, text: str) -> ChatRequest:
        return teacher_request(self.task, self.config, messages, step, text)

    # -- one record -------------------------------------------------------------------------

    def _where(self, ann: Annotation) -> str:
        chunk = self.store.chunk(ann.chunk_id)
        doc = self.store.document(chunk.document_id) if chunk else None
        return f"chunk {ann.chunk_id[:12]} ({doc.path if doc else '?'} #{chunk.seq if chunk else '?'})"

    async def annotate(self, ann: Annotation) -> None:
        chunk = self.store.chunk(ann.chunk_id)
        assert chunk is not None
        # What leaves is masked (or blocked) by the workspace's privacy policy; the same chunk always
        # masks alike, so a re-run builds the same request and the ledger reuses its answer.
        screened = self.privacy.screen(chunk.text, ann.input)
        if screened.blocked:
            ann.status = "blocked"
            ann.error = (f"{screened.blocked} [{self._where(ann)}]; to send it masked, run again with --privacy mask "
                         "--retry blocked (privacy.policy in the job config)")
            self._finish(ann, [])
            return
        if ann.chunk_id not in self.masked_chunks:
            self.masked_chunks.add(ann.chunk_id)
            for kind, n in screened.found.items():
                self.stats.masked[kind] = self.stats.masked.get(kind, 0) + n
        text, question = screened.texts
        assert text is not None
        messages = self.task.messages(ann.step, text, question=question)
        ann.provider, ann.params = self.teacher.name, {
            "temperature": self.config.teacher.temperature,
            "max_tokens": self.config.teacher.max_tokens,
        }
        error = ""
        # The conversation is replayed from the ledger as far as it was stored (free), then goes on
        # with re-asks: the bound counts the answers paid for in this run, so `--retry invalid`
        # asks again (stating the error) instead of replaying the same broken answers.
        chain: list[ChatResult] = []
        new_answers = 0
        while new_answers <= self.task.spec.contract.max_reasks:
            try:
                h, result, reused = await self.ledger.call(ann.id, self._request(messages, ann.step, text))
            except CallHeld:
                return  # another run has this record's request out: it stays pending for that run
            except TeacherError as exc:
                ann.status = {"content_filter": "refused", "context_overflow": "too_long"}.get(exc.kind, "failed")
                ann.error = f"{exc.kind}: {exc.message} [{self._where(ann)}]"
                self._finish(ann, chain)
                return
            chain.append(result)
            new_answers += not reused
            ann.request_hash, ann.raw_text = h, result.content
            try:
                # The ledger keeps the answer as received; the record (and the questions it fans out
                # into) gets the values back, so its training example reads like its source chunk.
                parsed = self.task.parse(ann.step, screened.restore(result.content), result.finish_reason)
                questions = self.task.questions(parsed) if ann.step == "questions" else []
            except ContractError as exc:
                error = str(exc)
                if new_answers <= self.task.spec.contract.max_reasks:
                    self.stats.reasks += not reused
                    messages = [*messages, {"role": "assistant", "content": result.content}, self.task.reask(error)]
                continue
            ann.status, ann.conclusion, ann.reasoning, ann.error = "ok", parsed.conclusion, parsed.reasoning, None
            self._finish(ann, chain)
            if questions:
                self._fan_out(ann, questions)
            return
        ann.status, ann.error = "invalid", f"contract broken after {len(chain)} answers: {error}"
        self._finish(ann, chain)

    def _fan_out(self, parent: Annotation, questions: list[str]) -> None:
        children = [
            Annotation(
                id=annotation_id(parent.chunk_id, self.task.hash, self.model, "answer", parent.id, i),
                chunk_id=parent.chunk_id,
                task_hash=self.task.hash,
                task_name=self.task.name,
                step="answer",
                parent_id=parent.id,
                item_index=i,
                input=q,
                model=self.model,
                provider=self.teacher.name,
            )
            for i, q in enumerate(questions)
        ]
        self.stats.total += self.store.plan(children)

    def _finish(self, ann: Annotation, chain: list[ChatResult]) -> None:
        """Store the record with the figures of every answer in its conversation, each once (a
        replayed answer is the same call, whether this run or an earlier one paid for it)."""
        ann.attempts = len(chain)
        ann.prompt_tokens = sum(r.prompt_tokens for r in chain)
        ann.completion_tokens = sum(r.completion_tokens for r in chain)
        ann.cost = sum(cost(self.price, r.prompt_tokens, r.completion_tokens) for r in chain)
        ann.latency_s = sum(r.latency_s for r in chain)
        self.store.save_annotation(ann)
        self.stats.done += 1
        self.stats.by_status[ann.status] = self.stats.by_status.get(ann.status, 0) + 1
        if ann.error and len(self.stats.errors) < 5:
            self.stats.errors.append(ann.error)

    # -- the job ------------------------------------------------------------------------------

    async def run(self, *, concurrency: int, on_progress: Callable[[JobStats], None] | None = None) -> JobStats:
        started = time.monotonic()
        queue: asyncio.Queue[Annotation | None] = asyncio.Queue(maxsize=concurrency * 2)

        async def worker() -> None:
            while (ann := await queue.get()) is not None:
                try:
                    if not self.stop.is_set():
                        await self.annotate(ann)
                except JobStopped as exc:
                    if not self.stats.stopped:
                        self.stats.stopped = str(exc)
                    self.stop.set()
                finally:
                    queue.task_done()
                    self.stats.elapsed_s = time.monotonic() - started
                    if on_progress:
                        on_progress(self.stats)

        workers: list[asyncio.Task[None]] = []
        try:
            await self.ledger.preflight()
            self.stats.total = self.store.job_count(task_hash=self.task.hash, model=self.model)
            workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
            after = 0
            while not self.stop.is_set():
                page = self.store.job_pending(task_hash=self.task.hash, model=self.model, after_rowid=after)
                if not page:
                    await queue.join()  # in-flight records may fan out into new pending ones
                    page = self.store.job_pending(task_hash=self.task.hash, model=self.model, after_rowid=after)
                    if not page:
                        break
                for after, ann in page:
                    if self.stop.is_set():
                        break
                    await queue.put(ann)
        except JobStopped as exc:  # the preflight: nothing was sent
            self.stats.stopped = str(exc)
        finally:
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers, return_exceptions=True)
            self.ledger.close()
            await self.teacher.aclose()
        self.stats.elapsed_s = time.monotonic() - started
        return self.stats

    def on_retry(self, error: TeacherError) -> None:
        self.stats.retries += 1
        self.stats.resent_after_timeout += error.kind == "timeout"


async def run_job(
    store: Store,
    task: Task,
    config: JobConfig,
    *,
    teacher: Teacher | None = None,
    on_progress: Callable[[JobStats], None] | None = None,
    stop: asyncio.Event | None = None,
) -> JobStats:
    """Run the planned job (see `plan`) to the end, or until a fatal error, the budget or `stop`."""
    job = Job(store, task, config, teacher=teacher, stop=stop)
    return await job.run(concurrency=config.teacher.limits().concurrency, on_progress=on_progress)
