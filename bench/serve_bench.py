"""Serving benchmark: dynamic batching against one request at a time, the `####` early exit,
and memory per quantization. Every figure is printed with its ratio to a baseline measured in
the same run.

    .venv/bin/python bench/serve_bench.py --torch-threads 1          # CPU, SmolLM2 (~7 min, 2 cores)
    .venv/bin/python bench/serve_bench.py --quick                    # fewer requests
    python bench/serve_bench.py --gpu                                # CUDA: Qwen2-7B shape, random weights

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

GPU mode builds the Qwen2-7B-Instruct architecture from its config with random weights (no
weights can be downloaded there), loads it through the same ModelRuntime at bf16, int8 and int4,
and reports decode tokens/s at batch 1, 8 and 32 and through the Batcher under 32 concurrent
callers, against the memory-bandwidth ceiling (weights bytes / bandwidth per token at batch 1).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
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


# -- GPU mode ----------------------------------------------------------------------------------

QWEN2_7B = dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                intermediate_size=18944, vocab_size=152064, rope_theta=1e6, max_position_embeddings=32768,
                tie_word_embeddings=False, bos_token_id=None, eos_token_id=None)
# Peak HBM bandwidth, bytes/s (STACK.md): the batch-1 decode ceiling is this / weight bytes.
BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12}
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_random_qwen2(target: Path, shape: dict[str, Any] = QWEN2_7B, device: str = "cuda") -> Path:
    """The Qwen2-7B-Instruct architecture with random bf16 weights, saved as a model dir that
    ModelRuntime.load (and so bitsandbytes quantization) reads like a real checkpoint.

    No EOS token in the config: random weights could emit it at any step, and every figure
    assumes every row decodes exactly max_new_tokens. The tokenizer is a byte-level stand-in
    with ChatML markers (Qwen2's own files cannot be downloaded there); tokens/s are decode
    steps, which do not depend on it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

    if (target / "config.json").is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    raw = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                        additional_special_tokens=["<|im_start|>"])
    tokenizer.chat_template = CHATML
    with torch.device(device):  # random init of 7.6B parameters: seconds on the GPU, minutes on CPU
        model = AutoModelForCausalLM.from_config(Qwen2Config(**shape), dtype=torch.bfloat16)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    del model
    torch.cuda.empty_cache()
    return target


def gpu_mode(args: argparse.Namespace) -> None:
    import torch

    if not torch.cuda.is_available():
        sys.exit(f"--gpu needs a CUDA GPU, and torch.cuda.is_available() is False here (torch {torch.__version__}, "
                 f"built for CUDA {torch.version.cuda or 'none'}). Run it on a GPU host: see serve/README.md, "
                 "'Benchmark on a GPU'.")
    from distillery.engine import Batcher
    from distillery.runtime import GenerationConfig, ModelRuntime

    name = torch.cuda.get_device_name()
    bandwidth = args.bandwidth_tbs * 1e12 if args.bandwidth_tbs else next(
        (bw for key, bw in BANDWIDTH.items() if key in name), None)
    if bandwidth is None:
        sys.exit(f"unknown peak bandwidth for {name}: pass --bandwidth-tbs")
    print(f"serve bench, GPU mode: {name}, peak bandwidth {bandwidth / 1e12:.2f} TB/s; Qwen2-7B shape, random weights")
    model_dir = build_random_qwen2(Path(args.work_dir))
    new = args.gpu_new_tokens
    config = GenerationConfig(max_new_tokens=new)
    prompt = [{"role": "user", "content": "x" * 120}]  # ~130 tokens with the template
    rows = []
    for quantization in ("none", "int8", "int4"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        runtime = ModelRuntime.load(model_dir, quantization=quantization)
        weights = runtime.footprint_bytes()
        runtime.generate([prompt], GenerationConfig(max_new_tokens=8))  # warm-up: kernels, allocator
        figures = {}
        for batch in (1, 8, 32):
            torch.cuda.synchronize()
            started = time.perf_counter()
            out = runtime.generate([prompt] * batch, config)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            assert all(g.completion_tokens <= new for g in out)
            figures[batch] = batch * new / seconds  # every row decodes `new` steps: no EOS in the config
        # Under load: 32 callers through the Batcher, as the server's threads would submit.
        batcher = Batcher(runtime, max_batch=32, max_wait_ms=10, max_queue=256)
        started = time.perf_counter()
        with ThreadPoolExecutor(32) as pool:
            futures = [pool.submit(lambda b=batcher: b.submit(prompt, config).result()) for _ in range(64)]
            for f in futures:
                f.result()
        loaded = 64 * new / (time.perf_counter() - started)
        mean_batch = batcher.stats.mean_size
        batcher.close()
        ceiling = bandwidth / weights
        label = "bf16" if quantization == "none" else quantization
        rows.append((label, weights, torch.cuda.max_memory_allocated(), figures, loaded, mean_batch, ceiling))
        print(f"  {label}: weights {weights / 1e9:.1f} GB, batch-1 {figures[1]:.0f} tokens/s = "
              f"{figures[1] / ceiling:.0%} of its ceiling {ceiling:.0f}; under load {loaded:.0f} tokens/s", flush=True)
        del runtime
    bf16_ceiling = rows[0][6]
    print(f"\n| weights | GB | peak GPU GB | batch 1 tok/s | ceiling tok/s | of ceiling | of bf16 ceiling "
          f"({bf16_ceiling:.0f}) | batch 8 tok/s | batch 32 tok/s | 32 callers via Batcher tok/s (mean batch) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, weights, peak, figures, loaded, mean_batch, ceiling in rows:
        print(f"| {label} | {weights / 1e9:.1f} | {peak / 1e9:.1f} | {figures[1]:.0f} | {ceiling:.0f} | "
              f"{figures[1] / ceiling:.0%} | {figures[1] / bf16_ceiling:.0%} | {figures[8]:.0f} | {figures[32]:.0f} | "
              f"{loaded:.0f} ({mean_batch:.1f}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="GPU mode: Qwen2-7B shape, random weights (needs CUDA).")
    parser.add_argument("--quick", action="store_true", help="Fewer requests per figure.")
    parser.add_argument("--only", action="append", choices=["throughput", "early-exit", "memory"],
                        help="CPU mode: run only this section (repeatable).")
    parser.add_argument("--torch-threads", type=int, help="Server torch threads (CPU) [default: torch's].")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="CPU throughput answers' length bound.")
    parser.add_argument("--early-exit-tokens", type=int, default=96,
                        help="Bound for full answers in the early-exit run.")
    parser.add_argument("--log-dir", help="Keep the servers' logs here.")
    parser.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "distillery-qwen2-7b-random"),
                        help="GPU mode: where the random Qwen2-7B checkpoint is written once (~15 GB).")
    parser.add_argument("--gpu-new-tokens", type=int, default=256, help="GPU mode: decode steps per row.")
    parser.add_argument("--bandwidth-tbs", type=float, help="GPU mode: peak memory bandwidth, TB/s [H100/H200 known].")
    args = parser.parse_args()
    args.requests, args.rounds, args.early_exit_rounds = (8, 1, 1) if args.quick else (16, 2, 2)
    gpu_mode(args) if args.gpu else cpu_mode(args)


if __name__ == "__main__":
    main()
