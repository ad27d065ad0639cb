"""Serving benchmark: dynamic batching against one request at a time, the `####` early exit,
and memory per quantization. Every figure is printed with its ratio to a baseline measured in
the same run.

    .venv/bin/python bench/serve_bench.py --torch-threads 1          # CPU, SmolLM2 (~7 min, 2 cores)
    .venv/bin/python bench/serve_bench.py --quick                    # fewer requests

CPU mode (the embedded SmolLM2-135M-Instruct, greedy, each server a real `distill-serve
gunicorn` process on 127.0.0.1, started and stopped here, one at a time so they never share
the CPU):
1. throughput: closed-loop HTTP clients at concurrency 1, 8 and 32 on POST /algorithm/ChatRest;
   requests/s and p50/p95 latency with batching (max_batch 32) and with max_batch 1, which is
   the one-request-at-a-time design in the same process type. Answers are compared too: greedy
   answers must not depend on batching.
2. early exit: conclusion-only vs `"reasoning": true` on the same prompts. SmolLM2 was never
   trained on `conclusion####reasoning`, so each request carries two few-shot turns in
   `history` whose answers have that shape, and the model follows it (the bench counts how many
   full answers really contain `####`). Both modes send identical prompts; only the flag differs.
3. memory: model weights (/readyz footprint_bytes) and process RSS (/metrics) per quantization
   none/int8/int4, with the time per answer token of single requests.

The production shape (Qwen2-7B on a GPU) is measured by bench/gpu/ (its README).
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serve.process import ServerProcess

PROMPTS = [
    "What color is the sky?", "Name a fruit.", "Say hello in French.", "What is 2 + 2?",
    "Give me a synonym for happy.", "Why do cats purr?", "Write a haiku about rain.",
    "What is the capital of Japan?", "什么是碳排放？", "请用一句话介绍北京。", "List three colors.",
    "How many legs does a spider have?", "Explain gravity in one sentence.", "What do bees make?",
    "Translate 'thank you' to Spanish.", "Is the sun a star?",
]

# Two worked examples in the conclusion####reasoning shape, sent as ChatRest history.
FEW_SHOT = [
    {"query": "Is this text about finance? 'The central bank raised interest rates by half a point.'",
     "answer": "yes####The text is about a central bank changing interest rates. Interest rates, central banks "
               "and monetary policy are core finance topics, so the text is about finance."},
    {"query": "Is this text about finance? 'The cat slept on the warm windowsill all afternoon.'",
     "answer": "no####The text describes a cat sleeping in the sun. It mentions no money, markets, banks, prices "
               "or companies, so it is not about finance."},
]
EARLY_EXIT_TEXTS = [
    "Stock prices fell sharply after the quarterly earnings report.",
    "The children built a sandcastle at the beach.",
    "The company issued new bonds to raise capital for its factory.",
    "It rained all day in the mountains and the river rose.",
    "Inflation pushed the price of bread up by ten percent.",
    "The orchestra played Beethoven's ninth symphony.",
]


# -- CPU mode ----------------------------------------------------------------------------------


@dataclass
class Load:
    concurrency: int
    requests: int
    seconds: float
    latencies: list[float]
    errors: Counter[int]  # HTTP status -> how many non-200 answers
    answers: dict[str, str]
    completion_tokens: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_load(url: str, concurrency: int, total: int, bodies: list[dict[str, Any]]) -> Load:
    """`concurrency` clients, each sending its next request as soon as the last is answered,
    until `total` requests are done (request i uses bodies[i % len(bodies)])."""
    import httpx

    counter = iter(range(total))
    lock = threading.Lock()
    latencies: list[float] = []
    answers: dict[str, str] = {}
    errors: Counter[int] = Counter()
    tokens = 0

    def client() -> None:
        nonlocal tokens
        with httpx.Client(base_url=url, timeout=600) as http:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                body = bodies[i % len(bodies)]
                started = time.perf_counter()
                response = http.post("/algorithm/ChatRest", json=body)
                elapsed = time.perf_counter() - started
                with lock:
                    if response.status_code != 200:
                        errors[response.status_code] += 1
                        continue
                    data = response.json()["data"]
                    latencies.append(elapsed)
                    tokens += data["usage"]["completion_tokens"]
                    answers[repr(body)] = data["answer"]

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(client) for _ in range(concurrency)]:
            future.result()
    return Load(concurrency, total, time.perf_counter() - started, latencies, errors, answers, tokens)


def load_note() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) {five:.2f} (5 min) on {os.cpu_count()} cores"


def server(args: argparse.Namespace, log_dir: Path, name: str, *extra: str) -> ServerProcess:
    from serve.process import ServerProcess  # needs httpx, which the GPU mode does without

    # A time limit no request reaches: the bench measures how long answers take, not 504s.
    base = ["--max-new-tokens", str(args.max_new_tokens), "--max-queue", "128", "--timeout-s", "1800"]
    if args.torch_threads:
        base += ["--torch-threads", str(args.torch_threads)]
    return ServerProcess([*base, *extra], log=log_dir / f"{name}.log", env={"DISTILL_SERVE_API_KEY": ""})


def throughput(args: argparse.Namespace, log_dir: Path) -> None:
    bodies = [{"prompt": p} for p in PROMPTS]
    levels = [1, 8, 32]
    designs = {"batched": 32, "one-at-a-time": 1}
    results: dict[str, dict[int, Load]] = {d: {} for d in designs}
    # Both servers up at once (an idle one costs memory, not CPU), each level measured on both
    # back to back: on a shared machine the load drifts, and pairs see nearly the same load.
    with ExitStack() as stack:
        urls = {d: stack.enter_context(server(args, log_dir, d, "--max-batch", str(b))).url for d, b in designs.items()}
        for url in urls.values():
            run_load(url, 1, 2, bodies)  # warm-up: first-call allocations
        for c in levels:
            for design, url in urls.items():
                r = results[design][c] = run_load(url, c, max(args.requests, c * args.rounds), bodies)
                print(f"  {design:14s} c={c:<3d} {r.requests:4d} req in {r.seconds:6.1f} s  {r.rps:6.2f} req/s  "
                      f"p50 {r.pct(0.5):6.2f} s  p95 {r.pct(0.95):6.2f} s  errors {dict(r.errors) or 0}  "
                      f"({r.completion_tokens / r.seconds:.0f} tokens/s)  [{load_note()}]", flush=True)
    print("\n| concurrency | batched req/s | one-at-a-time req/s | speedup | batched p50 / p95 (s) | "
          "one-at-a-time p50 / p95 (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for c in levels:
        b, o = results["batched"][c], results["one-at-a-time"][c]
        print(f"| {c} | {b.rps:.2f} | {o.rps:.2f} | {b.rps / o.rps:.2f}x | {b.pct(0.5):.2f} / {b.pct(0.95):.2f} | "
              f"{o.pct(0.5):.2f} / {o.pct(0.95):.2f} |")
    same = sum(results["batched"][1].answers[k] == v for k, v in results["one-at-a-time"][1].answers.items())
    shared = [k for k in results["batched"][32].answers if k in results["one-at-a-time"][1].answers]
    same32 = sum(results["batched"][32].answers[k] == results["one-at-a-time"][1].answers[k] for k in shared)
    print(f"greedy answers equal across designs: {same}/{len(results['one-at-a-time'][1].answers)} at c=1, "
          f"{same32}/{len(shared)} batched c=32 vs one-at-a-time c=1; "
          f"non-200 answers: {sum(sum(r.errors.values()) for d in results.values() for r in d.values())}")


def early_exit(args: argparse.Namespace, log_dir: Path) -> None:
    def body(text: str, reasoning: bool) -> dict[str, Any]:
        return {"prompt": f"Is this text about finance? '{text}'", "history": FEW_SHOT, "reasoning": reasoning}

    with server(args, log_dir, "early-exit", "--max-new-tokens", str(args.early_exit_tokens)) as srv:
        run_load(srv.url, 1, 2, [body(EARLY_EXIT_TEXTS[0], True)])  # warm-up
        runs = {}
        for reasoning in (False, True):
            bodies = [body(t, reasoning) for t in EARLY_EXIT_TEXTS]
            runs[reasoning] = run_load(srv.url, 1, len(bodies) * args.early_exit_rounds, bodies)
    short, full = runs[False], runs[True]
    shaped = sum("####" in a for a in full.answers.values())
    print(f"  conclusion only: p50 {short.pct(0.5):.2f} s, "
          f"{short.completion_tokens / short.requests:.1f} tokens/answer")
    print(f"  full answer:     p50 {full.pct(0.5):.2f} s, {full.completion_tokens / full.requests:.1f} tokens/answer "
          f"({shaped}/{len(full.answers)} full answers contain '####')")
    print(f"  early exit: {full.pct(0.5) / short.pct(0.5):.1f}x lower p50 latency, "
          f"{full.completion_tokens / max(1, short.completion_tokens):.1f}x fewer tokens  [{load_note()}]")
    print(f"  e.g. conclusion {next(iter(short.answers.values()))!r} | full {next(iter(full.answers.values()))!r}")


def memory(args: argparse.Namespace, log_dir: Path) -> None:
    import httpx

    rows = []
    for quantization in ("none", "int8", "int4"):
        with server(args, log_dir, f"memory-{quantization}", "--quantization", quantization) as srv:
            ready = httpx.get(f"{srv.url}/readyz").json()
            single = run_load(srv.url, 1, 6, [{"prompt": p} for p in PROMPTS[:6]])
            metrics = httpx.get(f"{srv.url}/metrics").text
            rss = float(re.search(r"^process_resident_memory_bytes (\S+)$", metrics, re.M).group(1))
        # Quantization changes the answers, and so their lengths: compare time per token.
        per_token = single.seconds / single.completion_tokens
        rows.append((quantization, ready["footprint_bytes"], rss, ready["load_seconds"], per_token))
        print(f"  {quantization}: weights {ready['footprint_bytes'] / 1e6:.0f} MB, process RSS {rss / 1e6:.0f} MB, "
              f"load {ready['load_seconds']} s, {single.completion_tokens / single.requests:.1f} tokens/answer, "
              f"{per_token * 1000:.0f} ms/token  [{load_note()}]", flush=True)
    base = rows[0]
    print("\n| quantization | weights MB | vs none | process RSS MB | load s | ms per answer token (c=1) | vs none |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for q, weights, rss, load_s, per_token in rows:
        print(f"| {q} | {weights / 1e6:.0f} | {weights / base[1]:.2f}x | {rss / 1e6:.0f} | {load_s} | "
              f"{per_token * 1000:.0f} | {per_token / base[4]:.2f}x |")

def cpu_mode(args: argparse.Namespace) -> None:
    print(f"serve bench, CPU mode: SmolLM2-135M-Instruct, max_new_tokens {args.max_new_tokens}, torch threads "
          f"{args.torch_threads or 'default'}; {load_note()}")
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        log_dir = Path(args.log_dir) if args.log_dir else Path(tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        sections = {"throughput": throughput, "early-exit": early_exit, "memory": memory}
        for name in args.only or list(sections):
            print(f"\n## {name}", flush=True)
            sections[name](args, log_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Fewer requests per figure.")
    parser.add_argument("--only", action="append", choices=["throughput", "early-exit", "memory"],
                        help="Run only this section (repeatable).")
    parser.add_argument("--torch-threads", type=int, help="Server torch threads (CPU) [default: torch's].")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="CPU throughput answers' length bound.")
    parser.add_argument("--early-exit-tokens", type=int, default=96,
                        help="Bound for full answers in the early-exit run.")
    parser.add_argument("--log-dir", help="Keep the servers' logs here.")
    args = parser.parse_args()
    args.requests, args.rounds, args.early_exit_rounds = (8, 1, 1) if args.quick else (16, 2, 2)
    cpu_mode(args)


if __name__ == "__main__":
    main()
