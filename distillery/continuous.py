"""Continuous batching over the model runtime: requests join and leave the running batch between
decode steps, so a short answer never waits for a long one beside it, and answers can stream.

Built on transformers' own continuous-batching manager (paged KV cache, one generation thread);
this module adds what the runtime promises on top: chat templates and assistant prefixes, our stop
strings matched in the decoded text however tokens split them (the row is cancelled in the
manager at once, freeing its slot), admission control (max_batch running, max_queue waiting),
streaming text deltas, and cancellation. The manager samples greedily or not for all rows at
once, so sampling requests (temperature > 0) and `call(fn)` run on a static `Batcher` over the
same model instead.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import transformers
from transformers import GenerationConfig as HFGenerationConfig
from transformers import masking_utils
from transformers.generation.configuration_utils import ContinuousBatchingConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.integrations.sdpa_paged import sdpa_attention_paged_forward
from transformers.modeling_utils import AttentionInterface

from .engine import Batcher, BatcherStats, QueueFull
from .errors import DistilleryError
from .runtime import Generation, GenerationConfig, ModelRuntime

T = TypeVar("T")
log = logging.getLogger(__name__)

_PAGED = "paged|sdpa"


class StreamTimeout(DistilleryError, TimeoutError):
    """A streamed answer did not finish before its deadline; generation was stopped."""


def _paged_or_plain_sdpa(module, query, key, value, attention_mask, **kwargs):  # noqa: ANN001, ANN202
    # The manager switches the model to paged attention for good, but the static path (sampling,
    # scoring) still runs the same model with its own KV cache: only manager calls pass `cache`.
    if kwargs.get("cache") is not None:
        return sdpa_attention_paged_forward(module, query, key, value, attention_mask, **kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _share_model_between_paths() -> None:
    """Let one model serve the manager and ordinary generate(): under "paged|sdpa" transformers
    builds no causal mask (the manager brings its own 4-D one, which passes through untouched),
    so without this a static generate() on the switched model attends to the future."""
    AttentionInterface.register(_PAGED, _paged_or_plain_sdpa)
    masking_utils.AttentionMaskInterface.register(_PAGED, masking_utils.sdpa_mask)


def _count_every_kv_read() -> None:
    """Make the manager's per-step KV-read count exact under prefix sharing.

    transformers 5.6's scheduler counts a waiting row's cache reads before it looks for a shared
    prefix (so a row that reuses 160 cached tokens counts 0), and the step's inputs reset only that
    many columns of the reused attention-mask buffer: the columns past it keep the previous step's
    zeros, and rows then attend to other requests' keys (on 64 mixed requests, 4-6 greedy answers
    changed by 0.5-1.2 logits). The true count is every scheduled row's cached length, which is
    its position before this step.

    Returns whether the count is right: fixed upstream (5.17 counts after the match; checked
    with the closed-loop schedule of tests/test_continuous.py), corrected here (5.6), or neither
    on a transformers whose code differs from both, where prefix sharing then stays off."""
    try:
        from transformers.generation.continuous_batching.input_outputs import ContinuousBatchingIOs
        from transformers.generation.continuous_batching.scheduler import Scheduler
    except ImportError:
        return False
    if _counts_reads_after_prefix_match(Scheduler):
        return True  # fixed upstream (5.17 counts them after the match)
    prepare = ContinuousBatchingIOs.prepare_batch_tensors
    if getattr(prepare, "_distillery_exact", False):
        return True
    expected = ["self", "requests_in_batch", "logits_processors", "use_decode_fast_path", "num_q_tokens", "max_kv_read"]
    if list(inspect.signature(prepare).parameters) != expected:
        return False

    def exact(self, requests_in_batch, logits_processors, use_decode_fast_path, num_q_tokens, max_kv_read):  # noqa: ANN001, ANN202
        read = sum(future.state.position_offset for future in requests_in_batch)
        return prepare(self, requests_in_batch, logits_processors, use_decode_fast_path, num_q_tokens,
                       max(max_kv_read, read))

    exact._distillery_exact = True  # type: ignore[attr-defined]
    ContinuousBatchingIOs.prepare_batch_tensors = exact  # type: ignore[method-assign]
    return True


def _counts_reads_after_prefix_match(scheduler: type) -> bool:
    """Whether this transformers' scheduler looks for a shared prefix before it counts a row's
    cache reads (the order that makes the count right)."""
    try:
        source = inspect.getsource(scheduler._process_candidates)
    except (AttributeError, OSError, TypeError):
        return False
    match, count = source.find("self._infer_request_tokens("), source.find("read_cache_needed = state.current_len()")
    return -1 < match < count


# Per model (by id): engines running on it, and its attention before the first of them; the last
# one to close hands the model back as it was.
_engines_on: dict[int, tuple[int, str]] = {}
_engines_lock = threading.Lock()


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that could be the start of a stop string."""
    return max((n for s in stops for n in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:n])), default=0)


@dataclass(eq=False)  # identity: `req in pending` must not compare futures
class _Request:
    rid: str
    ids: list[int]
    config: GenerationConfig
    prefix: str
    future: concurrent.futures.Future[Generation] = field(default_factory=concurrent.futures.Future)
    # Streaming listeners get the safe-to-show text so far, then None when the answer is final.
    updates: queue.SimpleQueue[str | None] | None = None
    text: str = ""  # the text shown so far (never a possible stop-string start)

    @property
    def kv_tokens(self) -> int:
        """The KV cache the row may fill: its prompt and a full-length answer."""
        return len(self.ids) + self.config.max_new_tokens


@dataclass
class EngineStats(BatcherStats):
    running: int = 0  # rows in the running batch right now


class ContinuousEngine:
    """The Batcher's surface (`submit`, `call`, `stats`, `close`) plus `stream`, with continuous
    batching for greedy requests."""

    def __init__(
        self,
        runtime: ModelRuntime,
        *,
        max_batch: int = 16,
        max_queue: int = 64,
        kv_cache_tokens: int | None = None,
        block_size: int = 32,
        max_step_tokens: int = 512,
        prefix_sharing: bool = True,
    ) -> None:
        """`kv_cache_tokens`: paged KV cache size (default max_batch x 512 tokens). A request is
        admitted only while the running rows' prompts plus full-length answers fit in it, so the
        manager never has to evict a running row; a request that could never fit is refused.
        `max_step_tokens`: prompt tokens prefilled per step, which bounds how long one step holds
        up the decoding rows. `prefix_sharing`: a row reuses the KV blocks of a prompt prefix
        another row already computed (system prompt, instruction, few-shot turns) and prefills
        only the rest; greedy answers stay identical to one-at-a-time (see _count_every_kv_read)."""
        self.runtime = runtime
        self._max_batch, self._max_queue = max_batch, max_queue
        _share_model_between_paths()
        if prefix_sharing and not _count_every_kv_read():
            log.warning("prefix sharing is off: this transformers (%s) is not the one distillery's exactness "
                        "correction was written for (5.6)", transformers.__version__)
            prefix_sharing = False
        tokens = kv_cache_tokens or max_batch * 512
        self._kv_tokens = tokens
        cb_config = ContinuousBatchingConfig(
            block_size=block_size,
            num_blocks=-(-tokens // block_size),
            max_batch_tokens=max_step_tokens,
            allow_block_sharing=prefix_sharing,
        )
        hf_config = HFGenerationConfig(
            do_sample=False,
            eos_token_id=sorted(runtime._end_ids),
            pad_token_id=runtime.tokenizer.pad_token_id,
            max_new_tokens=256,
        )
        with _engines_lock:
            count, before = _engines_on.get(id(runtime.model), (0, runtime.model.config._attn_implementation))
            if not count and before != "sdpa":
                runtime.model.set_attn_implementation("sdpa")  # the paged kernel generate() can share
            _engines_on[id(runtime.model)] = (count + 1, before)
        self._manager = runtime.model.init_continuous_batching(
            generation_config=hf_config, continuous_batching_config=cb_config
        )
        self._static = Batcher(runtime, max_batch=max_batch, max_queue=max_queue)
        self._lock = threading.Lock()
        self._pending: deque[_Request] = deque()
        self._running: dict[str, _Request] = {}
        self._ids = itertools.count()
        self._closed = False
        self._stats = EngineStats()
        # Threads inherit daemon-ness from their creator: started from a daemon thread, the manager's
        # loop cannot hold up the exit of a process that never calls close() (a gunicorn worker).
        starter = threading.Thread(target=self._manager.start, name="distillery-continuous-start", daemon=True)
        starter.start()
        starter.join()
        self._router = threading.Thread(target=self._route, name="distillery-continuous", daemon=True)
        self._router.start()

    # -- public surface ---------------------------------------------------------------------

    @property
    def stats(self) -> EngineStats:
        """A "batch" here is one admission: the rows already running when a request joined."""
        with self._lock:
            static = self._static.stats
            return EngineStats(
                self._stats.batches + static.batches,
                self._stats.requests + static.requests,
                self._stats.sizes + static.sizes,
                len(self._pending) + static.waiting,
                running=len(self._running),
            )

    def active_rows(self) -> int:
        """Rows the manager holds right now (running or queued inside it): drops as soon as a
        row finishes, stops or is cancelled."""
        processor = self._manager.batch_processor
        if processor is None:
            return 0
        return len(processor.scheduler.active_requests) + len(processor.scheduler.waiting_requests)

    def submit(
        self, messages: list[dict], config: GenerationConfig, *, assistant_prefix: str | None = None
    ) -> concurrent.futures.Future[Generation]:
        """The whole answer. Cancelling the future stops its generation."""
        if config.temperature > 0:
            return self._static.submit(messages, config, assistant_prefix=assistant_prefix)
        return self._enqueue(self._request(messages, config, assistant_prefix)).future

    def stream(
        self,
        messages: list[dict],
        config: GenerationConfig,
        *,
        assistant_prefix: str | None = None,
        deadline: float | None = None,
    ) -> TextStream:
        """The answer as text deltas while it is generated (see TextStream)."""
        if config.temperature > 0:
            # The static batcher answers whole: the stream then has one delta.
            future = self._static.submit(messages, config, assistant_prefix=assistant_prefix)
            return TextStream(self, None, future, deadline)
        req = self._request(messages, config, assistant_prefix)
        req.updates = queue.SimpleQueue()
        self._enqueue(req)
        return TextStream(self, req, req.future, deadline)

    def call(self, fn: Callable[[ModelRuntime], T]) -> concurrent.futures.Future[T]:
        """Run fn(runtime) alone on the static batcher's thread (e.g. score_continuations)."""
        return self._static.call(fn)

    def close(self) -> None:
        """Refuse new requests, fail the waiting ones, let the running rows finish."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending, self._pending = list(self._pending), deque()
        for req in pending:
            self._fail(req, RuntimeError("engine closed before the request ran"))
        self._static.close()
        self._manager.stop(block=True)  # returns once the running rows are done
        self._router.join()
        with _engines_lock:
            count, before = _engines_on.pop(id(self.runtime.model))
            if count > 1:
                _engines_on[id(self.runtime.model)] = (count - 1, before)
            else:
                self.runtime.model.set_attn_implementation(before)  # the model as it was lent to us

    # -- admission --------------------------------------------------------------------------

    def _request(self, messages: list[dict], config: GenerationConfig, prefix: str | None) -> _Request:
        prompt = self.runtime.apply_chat_template(messages) + (prefix or "")
        req = _Request(rid=f"c{next(self._ids)}", ids=self.runtime._encode(prompt), config=config, prefix=prefix or "")
        if req.kv_tokens > self._kv_tokens:
            raise ValueError(f"the prompt ({len(req.ids)} tokens) and max_new_tokens ({config.max_new_tokens}) need "
                             f"{req.kv_tokens} tokens of KV cache; this engine holds {self._kv_tokens} "
                             "(kv_cache_tokens): shorten the prompt or the answer, or give the engine more cache")
        req.future.add_done_callback(lambda f, r=req: self._cancel(r) if f.cancelled() else None)
        return req

    def _enqueue(self, req: _Request) -> _Request:
        with self._lock:
            if self._closed or not self._manager.is_running():
                raise RuntimeError("engine is closed")
            if len(self._pending) >= self._max_queue:
                raise QueueFull(f"{len(self._pending)} requests already waiting (max_queue={self._max_queue})")
            self._pending.append(req)
            self._admit()
        return req

    def _admit(self) -> None:
        """Move waiting requests into the running batch while it has a slot and KV cache for them,
        in arrival order (lock held)."""
        while self._pending and len(self._running) < self._max_batch:
            req = self._pending[0]
            if req.future.cancelled():
                self._pending.popleft()
                continue
            if sum(r.kv_tokens for r in self._running.values()) + req.kv_tokens > self._kv_tokens:
                return  # it runs when enough rows have finished
            self._pending.popleft()
            self._stats.batches += 1
            self._stats.requests += 1
            self._stats.sizes[len(self._running) + 1] += 1
            self._running[req.rid] = req
            self._manager.add_request(req.ids, request_id=req.rid, max_new_tokens=req.config.max_new_tokens,
                                      streaming=True)

    def _cancel(self, req: _Request) -> None:
        with self._lock:
            if req in self._pending:
                self._pending.remove(req)
            elif self._running.pop(req.rid, None) is not None:
                self._manager.cancel_request(req.rid)
                self._admit()
        if req.updates is not None:
            req.updates.put(None)

    # -- results ----------------------------------------------------------------------------

    def _route(self) -> None:
        """Turn the manager's per-step outputs into stream updates and final answers."""
        while self._manager.is_running() or not self._manager.output_router.output_queue.empty():
            out = self._manager.get_result(timeout=0.1)
            if out is None:
                continue
            with self._lock:
                req = self._running.get(out.request_id)
            if req is None:
                continue  # cancelled: its last steps may still arrive
            if out.error is not None:
                self._finish(req, error=RuntimeError(f"generation failed: {out.error}"))
                continue
            tokens = list(out.generated_tokens)  # the manager keeps appending to its list
            gen = self.runtime._finish(tokens, len(req.ids), req.prefix, req.config.stop)
            if out.is_finished() or gen.stop_string is not None:
                self._finish(req, gen)
            elif req.updates is not None:
                shown = gen.text[: len(gen.text) - _held_back(gen.text, req.config.stop)]
                if len(shown) > len(req.text):
                    req.text = shown
                    req.updates.put(shown)
        # The manager's loop ended (closed, or a fatal error it already reported per running row):
        # nothing left here will ever be answered.
        with self._lock:
            left = [*self._pending, *self._running.values()]
            self._pending.clear()
            self._running.clear()
        for req in left:
            self._fail(req, RuntimeError("the generation loop stopped"))

    def _finish(self, req: _Request, gen: Generation | None = None, *, error: Exception | None = None) -> None:
        with self._lock:
            if self._running.pop(req.rid, None) is None:
                return
            if gen is not None and gen.stop_string is not None:
                self._manager.cancel_request(req.rid)  # a stop string: free the slot now, not at max_new_tokens
            self._admit()
        if error is not None:
            self._fail(req, error)
        elif req.future.set_running_or_notify_cancel():
            req.future.set_result(gen)
        if req.updates is not None:
            if gen is not None:
                req.updates.put(gen.text)
            req.updates.put(None)

    @staticmethod
    def _fail(req: _Request, error: Exception) -> None:
        if req.future.set_running_or_notify_cancel():
            req.future.set_exception(error)
        if req.updates is not None:
            req.updates.put(None)


class TextStream:
    """Text deltas of one answer as it is generated; `generation` has the whole answer once the
    iteration ends. Closing it early (the caller went away) stops the generation and frees the
    slot; passing `deadline` (time.monotonic()) stops it with StreamTimeout when it is due."""

    def __init__(
        self,
        engine: ContinuousEngine,
        req: _Request | None,
        future: concurrent.futures.Future[Generation],
        deadline: float | None,
    ) -> None:
        self._engine, self._req, self._future, self._deadline = engine, req, future, deadline
        self.generation: Generation | None = None

    def close(self) -> None:
        if not self._future.done():
            self._future.cancel()

    def __iter__(self) -> Iterator[str]:
        sent = ""
        try:
            if self._req is None or self._req.updates is None:
                self.generation = self._result()
                if self.generation.text:
                    yield self.generation.text
                return
            while True:
                text = self._next(self._req.updates)
                if text is None:
                    break
                if len(text) > len(sent):
                    yield text[len(sent) :]
                    sent = text
            self.generation = self._result()
        finally:
            self.close()

    def _left(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def _next(self, updates: queue.SimpleQueue[str | None]) -> str | None:
        try:
            return updates.get(timeout=self._left())
        except queue.Empty:
            self.close()
            raise StreamTimeout("the answer did not finish in time; its generation was stopped") from None

    def _result(self) -> Generation:
        try:
            return self._future.result(timeout=self._left())
        except concurrent.futures.TimeoutError:
            self.close()
            raise StreamTimeout("the answer did not finish in time; its generation was stopped") from None

