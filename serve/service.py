"""The model behind the HTTP routes: one per process, loaded in the background, fed through the
shared runtime's engine (the static Batcher, or the ContinuousEngine that also streams), with
its outcomes turned into answers or ApiErrors.

Loading in the background lets the process answer /healthz at once and /readyz honestly while
a 7B model takes a minute to load, and keeps gunicorn's worker-boot timeout out of the picture.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import jinja2
import torch
from transformers.utils import logging as hf_logging

from distillery.continuous import ContinuousEngine, StreamTimeout, TextStream
from distillery.engine import Batcher, QueueFull
from distillery.runtime import Generation, GenerationConfig, ModelRuntime

from .config import ServeConfig
from .edge import ApiError
from .metrics import ModelSnapshot

log = logging.getLogger("serve")

State = Literal["loading", "ready", "failed"]


class ModelService:
    def __init__(self, config: ServeConfig, *, runtime: ModelRuntime | None = None) -> None:
        """With `runtime`, serve that already-loaded model (tests, embedding); else load
        `config.model` in a background thread on start()."""
        self.config = config
        self._runtime = runtime
        self._batcher: Batcher | ContinuousEngine | None = None
        self._state: State = "loading"
        self._error: str | None = None
        self._lock = threading.Lock()
        self.max_prompt_tokens = config.max_prompt_tokens
        self.load_seconds: float | None = None

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._runtime is not None:
            self._become_ready(self._runtime, 0.0)
            return
        threading.Thread(target=self._load, name="distillery-serve-load", daemon=True).start()

    def _load(self) -> None:
        cfg = self.config
        started = time.monotonic()
        log.info("loading %s", describe_model(cfg))
        hf_logging.disable_progress_bar()  # a tqdm bar is noise in a server log
        try:
            if cfg.torch_threads is not None:
                torch.set_num_threads(cfg.torch_threads)  # process-wide; the batcher thread inherits it
            runtime = ModelRuntime.load(cfg.model, adapter=cfg.adapter, quantization=cfg.quantization,
                                        device=cfg.device, decode=cfg.decode)
        except Exception as exc:  # every load failure leaves a process that says why, not a dead one
            log.exception("the model failed to load")
            with self._lock:
                self._state, self._error = "failed", f"{type(exc).__name__}: {exc}"
            return
        self._become_ready(runtime, time.monotonic() - started)

    def _become_ready(self, runtime: ModelRuntime, seconds: float) -> None:
        cfg = self.config
        batching = cfg.batching
        max_new = cfg.generation.max_new_tokens
        limit = cfg.max_prompt_tokens
        if runtime.context_length is not None:
            # Prompt and answer share the context window; keep room for a full-length answer.
            room = runtime.context_length - max_new
            if room < limit:
                log.warning("max_prompt_tokens %d lowered to %d: the model's context is %d tokens and "
                            "max_new_tokens is %d", limit, room, runtime.context_length, max_new)
                limit = room
        batcher: Batcher | ContinuousEngine
        if batching.engine == "continuous":
            kv_tokens = batching.kv_cache_tokens or max(batching.max_batch * 512, limit + max_new)
            if kv_tokens - max_new < limit:  # a longest prompt must fit with a longest answer
                log.warning("max_prompt_tokens %d lowered to %d: batching.kv_cache_tokens is %d and "
                            "max_new_tokens is %d", limit, kv_tokens - max_new, kv_tokens, max_new)
                limit = kv_tokens - max_new
            batcher = ContinuousEngine(runtime, max_batch=batching.max_batch, max_queue=batching.max_queue,
                                       kv_cache_tokens=kv_tokens, prefix_sharing=batching.prefix_sharing)
        else:
            batcher = Batcher(runtime, max_batch=batching.max_batch, max_wait_ms=batching.max_wait_ms,
                              max_queue=batching.max_queue)
        with self._lock:
            self._runtime, self._batcher = runtime, batcher
            self.max_prompt_tokens = max(1, limit)
            self.load_seconds = seconds
            self._state = "ready"
        log.info("model ready in %.1f s on %s: %.0f MB of weights, quantization %s, %s engine, max_batch %d, "
                 "max_queue %d", seconds, runtime.device, runtime.footprint_bytes() / 1e6, runtime.quantization,
                 batching.engine, batching.max_batch, batching.max_queue)

    def close(self) -> None:
        """Refuse new requests, fail the queued ones, let the running batch finish."""
        with self._lock:
            batcher, self._batcher = self._batcher, None
            if self._state == "ready":
                self._state, self._error = "failed", "the server is shutting down"
        if batcher is not None:
            batcher.close()

    # -- state ------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def batcher(self) -> Batcher | ContinuousEngine | None:
        """The engine feeding the model (None until it is loaded)."""
        return self._batcher

    @property
    def can_stream(self) -> bool:
        """Whether `stream` works: the continuous engine streams, the static batcher answers whole."""
        return self.config.batching.engine == "continuous"

    def describe(self) -> dict[str, object]:
        """What /readyz reports: enough to tell which model a replica is serving, and how."""
        info: dict[str, object] = {"ready": self._state == "ready", "state": self._state}
        if self._error:
            info["error"] = self._error
        runtime = self._runtime
        cfg = self.config
        info["model"] = cfg.model or "embedded:smollm2-135m-instruct"
        info["adapter"] = cfg.adapter
        info["quantization"] = cfg.quantization
        if runtime is not None and self._state == "ready":
            info |= {
                "device": str(runtime.device),
                "footprint_bytes": runtime.footprint_bytes(),
                "load_seconds": round(self.load_seconds or 0.0, 2),
                "max_prompt_tokens": self.max_prompt_tokens,
                "max_new_tokens": cfg.generation.max_new_tokens,
                "batching": cfg.batching.model_dump(),
            }
        return info

    def snapshot(self) -> ModelSnapshot:
        ready = self._state == "ready" and self._runtime is not None
        return ModelSnapshot(
            ready=ready,
            footprint_bytes=self._runtime.footprint_bytes() if ready and self._runtime else None,
            batcher=self._batcher.stats if self._batcher is not None else None,
        )

    def _ready(self) -> tuple[ModelRuntime, Batcher | ContinuousEngine]:
        runtime, batcher = self._runtime, self._batcher
        if self._state == "ready" and runtime is not None and batcher is not None:
            return runtime, batcher
        if self._state == "loading":
            raise ApiError(503, "the model is still loading; retry shortly (GET /readyz says when it is ready)",
                           kind="server_not_ready", headers={"Retry-After": "5"})
        raise ApiError(503, f"the model is not available: {self._error}", kind="server_not_ready")

    # -- requests ---------------------------------------------------------------------------

    def generation_config(self, *, max_new_tokens: int | None = None, temperature: float | None = None,
                          top_p: float | None = None, stop: list[str] | None = None,
                          seed: int | None = None) -> GenerationConfig:
        """The configured defaults, with what a request may change; a request never gets more
        new tokens than the configured bound."""
        gen = self.config.generation
        if max_new_tokens is not None and max_new_tokens > gen.max_new_tokens:
            raise ApiError(400, f"at most {gen.max_new_tokens} new tokens per answer on this server "
                                f"(asked for {max_new_tokens})")
        return GenerationConfig(
            max_new_tokens=max_new_tokens or gen.max_new_tokens,
            temperature=gen.temperature if temperature is None else temperature,
            top_p=gen.top_p if top_p is None else top_p,
            stop=stop or [],
            seed=seed,
        )

    def count_prompt_tokens(self, messages: list[dict]) -> int:
        """Tokens of the templated conversation; an ApiError when it is over the limit."""
        runtime, _ = self._ready()
        try:
            text = runtime.apply_chat_template(messages)
        except jinja2.TemplateError as exc:  # e.g. a template that insists roles alternate
            raise ApiError(400, f"the model's chat template rejects these messages: {exc}") from None
        n = runtime.count_tokens(text)
        if n > self.max_prompt_tokens:
            raise ApiError(400, f"the conversation is {n} tokens (system + history + prompt, as the model sees "
                                f"it); this server accepts at most {self.max_prompt_tokens}",
                           kind="context_length_exceeded")
        return n

    def generate(self, messages: list[dict], config: GenerationConfig, *, started: float, rid: str) -> Generation:
        """Queue the conversation for the batcher and wait for its answer until `timeout_s`
        after `started` (time.monotonic() when the request arrived)."""
        _, batcher = self._ready()
        with _admission():
            future = batcher.submit(messages, config)
        timeout = self.config.timeout_s
        try:
            return future.result(timeout=max(0.0, timeout - (time.monotonic() - started)))
        except TimeoutError:
            # Cancelling stops the request: the continuous engine drops it even mid-answer; the
            # static batcher only while it is queued (its batch-mates still get their answers).
            dropped = future.cancel()
            log.warning("rid=%s timed out after %.0f s (%s)", rid, timeout,
                        "stopped" if dropped else "its batch still runs")
            raise ApiError(504, f"no answer within {timeout:g} s; retry later or with a shorter prompt",
                           kind="timeout") from None
        except Exception:
            log.exception("rid=%s generation failed", rid)
            raise ApiError(500, f"generation failed (request id {rid}); the server log has the details",
                           kind="server_error") from None

    def stream(self, messages: list[dict], config: GenerationConfig, *, started: float, rid: str) -> ModelStream:
        """The answer as it is generated (continuous engine only: see `can_stream`). Errors before
        the first delta raise here; after it, iterating raises them as ApiErrors."""
        _, engine = self._ready()
        if not isinstance(engine, ContinuousEngine):
            raise ApiError(400, "'stream': this server runs the static batcher; set batching.engine: continuous")
        with _admission():
            text = engine.stream(messages, config, deadline=started + self.config.timeout_s)
        return ModelStream(text, rid=rid, timeout_s=self.config.timeout_s)


class ModelStream:
    """An in-process answer with UpstreamStream's shape (iterate text deltas, then `generation`;
    `close` stops it), so the OpenAI route streams both the same way."""

    def __init__(self, text: TextStream, *, rid: str, timeout_s: float) -> None:
        self._text, self._rid, self._timeout_s = text, rid, timeout_s

    @property
    def generation(self) -> Generation | None:
        return self._text.generation

    def close(self) -> None:
        self._text.close()

    def __iter__(self) -> Iterator[str]:
        try:
            yield from self._text
        except StreamTimeout:
            log.warning("rid=%s timed out after %.0f s (stopped mid-stream)", self._rid, self._timeout_s)
            raise ApiError(504, f"no answer within {self._timeout_s:g} s; retry later or with a shorter prompt",
                           kind="timeout") from None
        except concurrent.futures.CancelledError:
            raise  # the caller closed the stream itself
        except Exception:
            log.exception("rid=%s generation failed", self._rid)
            raise ApiError(500, f"generation failed (request id {self._rid}); the server log has the details",
                           kind="server_error") from None


@contextmanager
def _admission() -> Iterator[None]:
    """An engine's refusals to queue a request, as the 503s a client can act on."""
    try:
        yield
    except QueueFull as exc:
        raise ApiError(503, f"the server is at capacity ({exc}); retry shortly", kind="server_busy",
                       headers={"Retry-After": "1"}) from None
    except RuntimeError as exc:  # closed: shutting down
        raise ApiError(503, f"the server is not accepting requests: {exc}", kind="server_not_ready") from None


def describe_model(config: ServeConfig) -> str:
    """A one-line name for logs and the CLI."""
    name = config.model or "the embedded SmolLM2-135M-Instruct"
    adapter = f" + adapter {config.adapter}" if config.adapter else ""
    return f"{name}{adapter} (quantization {config.quantization})"
