"""Serving figures through the product's own runtime (`ModelRuntime`) and engines (`Batcher`,
`ContinuousEngine`).

Random weights write no answer of their own, so every generate call here runs with `ForcedDecode`:
the end tokens are never chosen (each answer is exactly max_new_tokens long, as with vLLM's
ignore_eos), and where an early exit is measured the separator `####` is spelled at a chosen step,
so the stop string fires where a trained model's conclusion would end. The continuous engine
decodes through transformers' own manager, which takes no per-call logits processor: its answers
run to max_new_tokens unless the random weights happen to pick an end token (3 ids in 152k);
its tokens/s counts the tokens it did generate.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from distillery.continuous import ContinuousEngine
from distillery.engine import Batcher
from distillery.records import SEPARATOR
from distillery.runtime import GenerationConfig, ModelRuntime


class ForcedDecode(LogitsProcessor):
    """Never end early; spell `forced` starting at generated step `at` (one instance per generate call)."""

    def __init__(self, end_ids: list[int], forced: list[int], at: int) -> None:
        self.end_ids, self.forced, self.at = end_ids, forced, at
        self.prompt_width: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prompt_width is None:  # the first call comes right after the prompt
            self.prompt_width = input_ids.shape[1]
        step = input_ids.shape[1] - self.prompt_width
        scores[:, self.end_ids] = float("-inf")
        if self.at <= step < self.at + len(self.forced):
            scores[:] = float("-inf")
            scores[:, self.forced[step - self.at]] = 0.0
        return scores


def force_decoding(runtime: ModelRuntime, separator_at: int | None) -> None:
    """From now on every generate call of `runtime` runs with a fresh ForcedDecode (None: no separator)."""
    end_ids = sorted(runtime._end_ids)
    forced = runtime._encode(SEPARATOR) if separator_at is not None else []
    generate = getattr(runtime.model, "_unforced_generate", runtime.model.generate)
    runtime.model._unforced_generate = generate

    def forced_generate(*args: Any, **kwargs: Any) -> Any:
        processors = LogitsProcessorList([ForcedDecode(end_ids, forced, separator_at or 0)])
        return generate(*args, logits_processor=processors, **kwargs)

    runtime.model.generate = forced_generate


@dataclass(frozen=True)
class ServeShape:
    prompt_tokens: int  # about this many tokens of templated prompt per request
    decode_tokens: int  # answer length for batch-1 decode speed
    repeats: int  # timed generate calls per figure (the median is reported)
    clients: tuple[int, ...]  # concurrent clients for the aggregate figures
    client_tokens: int  # answer length under concurrency
    client_rounds: int  # requests per client
    conclusion_tokens: int  # where the separator is forced: the conclusion's length
    reasoning_tokens: int  # what a full answer adds after the separator


def messages(shape: ServeShape, salt: int = 0, *, shared_prefix: bool = False) -> list[dict]:
    # One byte is one token under the byte-level tokenizer; the salt keeps requests distinct. At
    # the end it leaves the rest a prefix every request shares, as a task's instruction is.
    text = "Is this text about personal data protection? " * (shape.prompt_tokens // 46 + 1)
    tag = f"Request {salt}. "
    body = text[: shape.prompt_tokens - len(tag)] + tag if shared_prefix else (tag + text)[: shape.prompt_tokens]
    return [{"role": "user", "content": body}]


def memory_figures(runtime: ModelRuntime) -> dict[str, float | None]:
    cuda = runtime.device.type == "cuda"
    return {"footprint_gb": runtime.footprint_bytes() / 1e9,
            "gpu_allocated_gb": torch.cuda.memory_allocated(runtime.device) / 1e9 if cuda else None,
            "gpu_peak_gb": torch.cuda.max_memory_allocated(runtime.device) / 1e9 if cuda else None}


def _timed(call: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def batch1_decode(runtime: ModelRuntime, shape: ServeShape, tokens: int | None = None) -> dict[str, float]:
    """Tokens/s of one request decoding alone, prefill taken out: (T - 1) tokens over the time a
    T-token answer takes beyond a 1-token one (medians of `repeats` calls after a warm-up)."""
    length = tokens or shape.decode_tokens
    prompt = [messages(shape)]

    def run(n: int) -> float:
        return _timed(lambda: runtime.generate(prompt, GenerationConfig(max_new_tokens=n)), runtime.device)

    run(length), run(1)  # warm-up: kernels, allocator, and for the compiled path the compile itself
    full = statistics.median(run(length) for _ in range(shape.repeats))
    first = statistics.median(run(1) for _ in range(shape.repeats))
    return {"tokens": length, "tokens_per_s": (length - 1) / (full - first), "prefill_plus_first_s": first,
            "request_s": full}


def concurrent_clients(runtime: ModelRuntime, shape: ServeShape, clients: int,
                       engine: Literal["static", "continuous"] = "static") -> dict[str, float]:
    """`clients` threads, each sending `client_rounds` requests back to back through one engine
    (serve's `batching.engine`): aggregate tokens/s and per-request latency percentiles. The
    continuous engine's prompts share all but their last few tokens, so prefix sharing shows."""
    batcher: Batcher | ContinuousEngine
    if engine == "continuous":
        batcher = ContinuousEngine(runtime, max_batch=clients, max_queue=max(64, clients * 2),
                                   kv_cache_tokens=clients * (shape.prompt_tokens + shape.client_tokens + 64))
    else:
        batcher = Batcher(runtime, max_batch=clients, max_wait_ms=10, max_queue=max(64, clients * 2))
    shared = engine == "continuous"
    config = GenerationConfig(max_new_tokens=shape.client_tokens)
    latencies: list[float] = []
    tokens: list[int] = []
    lock = threading.Lock()
    try:
        batcher.submit(messages(shape, shared_prefix=shared), config).result()  # warm-up

        def client(i: int) -> None:
            for r in range(shape.client_rounds):
                began = time.perf_counter()
                gen = batcher.submit(messages(shape, salt=i * 1000 + r, shared_prefix=shared), config).result()
                with lock:
                    latencies.append(time.perf_counter() - began)
                    tokens.append(gen.completion_tokens)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        mean_batch = batcher.stats.mean_size
    finally:
        batcher.close()
    if len(latencies) != clients * shape.client_rounds:
        raise RuntimeError(f"{clients * shape.client_rounds - len(latencies)} requests failed")
    latencies.sort()
    return {"engine": engine, "clients": clients, "requests": len(latencies), "tokens_per_s": sum(tokens) / wall,
            "p50_s": statistics.median(latencies), "p95_s": latencies[max(0, round(0.95 * len(latencies)) - 1)],
            "mean_batch": mean_batch}


def early_exit(runtime: ModelRuntime, shape: ServeShape) -> dict[str, float]:
    """Median latency of conclusion-only answers (stop at `####`, as ChatRest asks by default)
    against full answers (`"reasoning": true`: no stop, ~reasoning_tokens more), one at a time."""
    force_decoding(runtime, separator_at=shape.conclusion_tokens)
    length = shape.conclusion_tokens + len(runtime._encode(SEPARATOR)) + shape.reasoning_tokens
    batcher = Batcher(runtime, max_batch=1)
    try:
        def median_latency(config: GenerationConfig) -> tuple[float, int]:
            batcher.submit(messages(shape), config).result()  # warm-up
            times, lengths = [], []
            for r in range(shape.repeats):
                began = time.perf_counter()
                gen = batcher.submit(messages(shape, salt=r), config).result()
                times.append(time.perf_counter() - began)
                lengths.append(gen.completion_tokens)
            return statistics.median(times), max(lengths)

        short, short_tokens = median_latency(GenerationConfig(max_new_tokens=length, stop=[SEPARATOR]))
        full, full_tokens = median_latency(GenerationConfig(max_new_tokens=length))
    finally:
        batcher.close()
        force_decoding(runtime, separator_at=None)
    return {"conclusion_s": short, "conclusion_tokens": short_tokens, "full_s": full, "full_tokens": full_tokens,
            "speedup": full / short}


def copy_bandwidth(device: torch.device, gigabytes: float) -> float:
    """Bytes read plus written per second by a large device-to-device copy (median of 10)."""
    src = torch.randint(0, 255, (int(gigabytes * 1e9),), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = [_timed(lambda: dst.copy_(src), device) for _ in range(10)]
    return 2 * src.numel() / statistics.median(times)
