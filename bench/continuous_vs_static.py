"""Continuous batching against today's static Batcher on mixed traffic, in one process, on the
same loaded model: 16 closed-loop clients, 75% conclusion-only requests (stop "####": a short
answer) and 25% full answers (long). Both engines get the same requests in the same order.

    .venv/bin/python bench/continuous_vs_static.py --torch-threads 2       # CPU, SmolLM2
    .venv/bin/python bench/continuous_vs_static.py --quick                 # fewer requests

Prints p50/p95 latency of the conclusion-only requests, aggregate generated tokens/s, time to
the first streamed token (the static batcher cannot stream: its first token comes with the whole
answer), and whether every greedy answer is identical between the two engines (any that differ
are checked against one-at-a-time generate(), the reference both must match).

Targets (issue #10): conclusion-only p50 <= 1/3 of static; aggregate tokens/s >= static.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_bench import EARLY_EXIT_TEXTS, FEW_SHOT  # noqa: E402  (bench/ is not a package)

from distillery.continuous import ContinuousEngine  # noqa: E402
from distillery.engine import Batcher  # noqa: E402
from distillery.runtime import Generation, GenerationConfig, ModelRuntime  # noqa: E402

CLIENTS = 16
MAX_NEW = 128
SHORT = GenerationConfig(max_new_tokens=MAX_NEW, stop=["####"])  # the early exit: conclusion only
FULL = GenerationConfig(max_new_tokens=MAX_NEW)  # conclusion####reasoning, whole


@dataclass
class Request:
    messages: list[dict]
    config: GenerationConfig

    @property
    def short(self) -> bool:
        return bool(self.config.stop)


@dataclass
class Outcome:
    latency: float
    first_token: float
    generation: Generation


def requests(count: int) -> list[Request]:
    """Every 4th request asks for the full answer; the rest stop at the conclusion."""
    shots = []
    for shot in FEW_SHOT:
        shots += [{"role": "user", "content": shot["query"]}, {"role": "assistant", "content": shot["answer"]}]
    out = []
    for i in range(count):
        text = EARLY_EXIT_TEXTS[i % len(EARLY_EXIT_TEXTS)]
        messages = [*shots, {"role": "user", "content": f"Is this text about finance? '{text}' (case {i})"}]
        out.append(Request(messages, FULL if i % 4 == 3 else SHORT))
    return out


def run_static(batcher: Batcher, req: Request) -> Outcome:
    started = time.perf_counter()
    gen = batcher.submit(req.messages, req.config).result()
    latency = time.perf_counter() - started
    return Outcome(latency, latency, gen)


def run_continuous(engine: ContinuousEngine, req: Request) -> Outcome:
    started = time.perf_counter()
    first = None
    stream = engine.stream(req.messages, req.config)
    for _ in stream:
        first = first if first is not None else time.perf_counter() - started
    latency = time.perf_counter() - started
    assert stream.generation is not None
    return Outcome(latency, latency if first is None else first, stream.generation)


def load(work: list[Request], run) -> tuple[list[Outcome], float]:  # noqa: ANN001
    """CLIENTS closed-loop clients take the requests in order; each sends its next when answered."""
    outcomes: list[Outcome | None] = [None] * len(work)
    cursor = iter(range(len(work)))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                i = next(cursor, None)
            if i is None:
                return
            outcomes[i] = run(work[i])

    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        for f in [pool.submit(client) for _ in range(CLIENTS)]:
            f.result()
    return [o for o in outcomes if o is not None], time.perf_counter() - started


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def summary(work: list[Request], outcomes: list[Outcome], wall: float) -> dict[str, float]:
    short = [o.latency for r, o in zip(work, outcomes) if r.short]
    full = [o.latency for r, o in zip(work, outcomes) if not r.short]
    firsts = [o.first_token for o in outcomes]
    tokens = sum(o.generation.completion_tokens for o in outcomes)
    return {"short_p50": pct(short, 50), "short_p95": pct(short, 95), "full_p50": pct(full, 50),
            "tok_s": tokens / wall, "ttft_p50": pct(firsts, 50), "ttft_p95": pct(firsts, 95), "wall": wall,
            "tokens": tokens}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=64, help="requests per engine (default 64)")
    parser.add_argument("--quick", action="store_true", help="32 requests per engine")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-prefix-sharing", action="store_true",
                        help="the continuous engine prefills every prompt whole (no shared prefix blocks)")
    parser.add_argument("--continuous-first", action="store_true",
                        help="run the continuous engine first (a check that the order does not favour it)")
    args = parser.parse_args()

    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    count = 32 if args.quick else args.requests
    work = requests(count)
    runtime = ModelRuntime.load()
    print(f"SmolLM2-135M on {runtime.device}, {torch.get_num_threads()} torch threads, {CLIENTS} clients, "
          f"{count} requests ({sum(r.short for r in work)} conclusion-only, max_new_tokens {MAX_NEW})", flush=True)

    def static_run() -> tuple[list[Outcome], float]:
        batcher = Batcher(runtime, max_batch=CLIENTS, max_wait_ms=10, max_queue=256)
        batcher.submit(work[0].messages, SHORT).result()  # warm-up
        try:
            return load(work, lambda r: run_static(batcher, r))
        finally:
            batcher.close()

    def continuous_run() -> tuple[list[Outcome], float]:
        engine = ContinuousEngine(runtime, max_batch=CLIENTS, max_queue=256, prefix_sharing=not args.no_prefix_sharing)
        engine.submit(work[0].messages, SHORT).result()  # warm-up
        try:
            return load(work, lambda r: run_continuous(engine, r))
        finally:
            engine.close()

    results = {}
    for name, run in sorted({"static": static_run, "continuous": continuous_run}.items(),
                            reverse=not args.continuous_first):
        results[name] = run()
        print(f"{name} done in {results[name][1]:.1f} s (load average {os.getloadavg()[0]:.1f})", flush=True)
    static_out, cont_out = results["static"][0], results["continuous"][0]
    static, cont = summary(work, *results["static"]), summary(work, *results["continuous"])

    differ = [i for i, (s, c) in enumerate(zip(static_out, cont_out)) if s.generation.text != c.generation.text]
    wrong = {"static": 0, "continuous": 0}
    for i in differ:  # the arbiter: one-at-a-time generate()
        alone = runtime.generate([work[i].messages], work[i].config)[0].text
        wrong["static"] += static_out[i].generation.text != alone
        wrong["continuous"] += cont_out[i].generation.text != alone
    stopped = sum(1 for r, o in zip(work, cont_out) if r.short and o.generation.stop_string == "####")

    rows = [("conclusion-only p50 latency (s)", "short_p50", False), ("conclusion-only p95 latency (s)", "short_p95", False),
            ("full answer p50 latency (s)", "full_p50", False), ("aggregate tokens/s", "tok_s", True),
            ("time to first token p50 (s)", "ttft_p50", False), ("time to first token p95 (s)", "ttft_p95", False),
            ("wall time (s)", "wall", False), ("tokens generated", "tokens", True)]
    print("\n| figure | static Batcher | continuous | continuous / static |")
    print("| --- | --- | --- | --- |")
    for label, key, _ in rows:
        print(f"| {label} | {static[key]:.2f} | {cont[key]:.2f} | {cont[key] / static[key]:.2f} |")
    print(f"\nanswers identical between engines: {count - len(differ)}/{count}; differing from one-at-a-time: "
          f"static {wrong['static']}, continuous {wrong['continuous']}; conclusion-only answers that hit '####': "
          f"{stopped}/{sum(r.short for r in work)}")
    p50_ok = cont["short_p50"] <= static["short_p50"] / 3
    tps_ok = cont["tok_s"] >= static["tok_s"]
    print(f"targets: conclusion-only p50 <= 1/3 of static: {'met' if p50_ok else 'MISSED'} "
          f"({cont['short_p50'] / static['short_p50']:.2f}); aggregate tokens/s >= static: "
          f"{'met' if tps_ok else 'MISSED'} ({cont['tok_s'] / static['tok_s']:.2f})")
    return 0 if wrong["continuous"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
