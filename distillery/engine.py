"""The engine over the model runtime: dynamic batching of concurrent callers on one worker thread.

One worker thread owns the model: every torch call goes through it, so callers on any thread
(or event loop) never race on the model or its threads. `serve` and the local teacher use it.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .runtime import Generation, GenerationConfig, ModelRuntime

T = TypeVar("T")


class QueueFull(RuntimeError):
    """The batcher already holds max_queue waiting requests: shed load, retry later."""


@dataclass
class BatcherStats:
    batches: int = 0
    requests: int = 0
    sizes: Counter[int] = field(default_factory=Counter)  # batch size -> how many batches
    waiting: int = 0  # requests queued right now

    @property
    def mean_size(self) -> float:
        return self.requests / self.batches if self.batches else 0.0


@dataclass
class _Job:
    key: object  # jobs with equal keys may share one generate() call; None never shares
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)
    arrived: float = 0.0  # monotonic time it was queued
    messages: list[dict] = field(default_factory=list)
    config: GenerationConfig | None = None
    prefix: str = ""
    call: Callable[[ModelRuntime], Any] | None = None


class Batcher:
    """Dynamic batching for a ModelRuntime: concurrent callers' requests that share a
    GenerationConfig are run as one generate call.

    One worker thread owns the model: every torch call goes through it, so callers on any
    thread (or event loop) never race on the model or its threads.
    """

    def __init__(
        self, runtime: ModelRuntime, *, max_batch: int = 8, max_wait_ms: float = 10, max_queue: int = 64
    ) -> None:
        self.runtime = runtime
        self._max_batch = max_batch
        self._max_wait_s = max_wait_ms / 1000
        self._max_queue = max_queue
        self._pending: list[_Job] = []
        self._cond = threading.Condition()
        self._closed = False
        self._stats = BatcherStats()
        self._worker = threading.Thread(target=self._run, name="distillery-batcher", daemon=True)
        self._worker.start()

    @property
    def stats(self) -> BatcherStats:
        with self._cond:
            return BatcherStats(
                self._stats.batches, self._stats.requests, Counter(self._stats.sizes), len(self._pending)
            )

    def submit(
        self, messages: list[dict], config: GenerationConfig, *, assistant_prefix: str | None = None
    ) -> concurrent.futures.Future[Generation]:
        # Rows with and without a prefix mix freely (an empty prefix is no prefix), so the
        # config alone decides who can share a batch.
        job = _Job(key=config, messages=messages, config=config, prefix=assistant_prefix or "")
        return self._enqueue(job)

    def call(self, fn: Callable[[ModelRuntime], T]) -> concurrent.futures.Future[T]:
        """Run fn(runtime) on the worker thread, alone, in queue order (e.g. score_continuations)."""
        return self._enqueue(_Job(key=None, call=fn))

    def _enqueue(self, job: _Job) -> concurrent.futures.Future[Any]:
        with self._cond:
            if self._closed:
                raise RuntimeError("batcher is closed")
            if len(self._pending) >= self._max_queue:
                raise QueueFull(f"{len(self._pending)} requests already waiting (max_queue={self._max_queue})")
            job.arrived = time.monotonic()
            self._pending.append(job)
            self._cond.notify()
        return job.future

    def close(self) -> None:
        with self._cond:
            self._closed = True
            pending, self._pending = self._pending, []
            self._cond.notify()
        for job in pending:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(RuntimeError("batcher closed before the request ran"))
        if threading.current_thread() is not self._worker:
            self._worker.join()  # lets the batch already running finish and deliver its results

    def _run(self) -> None:
        while True:
            jobs = self._next_jobs()
            if jobs is None:
                return
            live = [j for j in jobs if j.future.set_running_or_notify_cancel()]  # skip cancelled
            if live:
                self._execute(live)

    def _next_jobs(self) -> list[_Job] | None:
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            head = self._pending[0]
            if head.key is None:
                return [self._pending.pop(0)]
            # Wait for companions at most max_wait after the oldest request arrived: a request
            # that queued while the model was busy has waited already and goes at once.
            deadline = head.arrived + self._max_wait_s
            while not self._closed and self._count(head.key) < self._max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self._closed:
                return None
            taken = [j for j in self._pending if j.key == head.key][: self._max_batch]
            self._pending = [j for j in self._pending if not any(j is t for t in taken)]
            return taken

    def _count(self, key: object) -> int:
        return sum(1 for j in self._pending if j.key == key)

    def _execute(self, jobs: list[_Job]) -> None:
        if jobs[0].call is not None:
            self._settle(jobs[0], jobs[0].call)
            return
        with self._cond:
            self._stats.batches += 1
            self._stats.requests += len(jobs)
            self._stats.sizes[len(jobs)] += 1
        config = jobs[0].config
        assert config is not None
        try:
            results = self.runtime.generate(
                [j.messages for j in jobs], config, assistant_prefix=[j.prefix for j in jobs]
            )
        except Exception as exc:
            if len(jobs) == 1:
                jobs[0].future.set_exception(exc)
                return
            # One bad request must not fail its batch-mates: run each alone to isolate it.
            for job in jobs:
                self._settle(job, lambda rt, j=job: rt.generate([j.messages], config, assistant_prefix=[j.prefix])[0])
            return
        for job, result in zip(jobs, results):
            job.future.set_result(result)

    def _settle(self, job: _Job, fn: Callable[[ModelRuntime], Any]) -> None:
        try:
            job.future.set_result(fn(self.runtime))
        except Exception as exc:  # delivered to the caller, never kills the worker
            job.future.set_exception(exc)
