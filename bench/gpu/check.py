"""The prepared GPU check (issue #10): Qwen2-7B-Instruct's architecture with random weights, trained
and served through the product's own code, in one run under a time budget, one table printed last.

    python bench/gpu/check.py --out figures.json                 # a GPU host: everything (~9 min budget)
    python bench/gpu/check.py --out f.json --part train          # or half of it per call
    python bench/gpu/check.py --out f.json --tiny                # CPU smoke check (CI): a tiny Qwen2

bench/gpu/README.md says how to run it on a lent machine, what each figure means and the targets.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Before anything imports transformers or llamafactory (and for the llamafactory-cli children):
os.environ.setdefault("PYTHONUNBUFFERED", "1")
os.environ.setdefault("DISABLE_VERSION_CHECK", "1")  # the GPU host's transformers is newer than llamafactory's pin
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[2]
sys.path[1:1] = [str(ROOT), str(ROOT / "tests")]  # the product, and the synthetic examples' double

import qwen2  # noqa: E402
import serving  # noqa: E402
import torch  # noqa: E402
import training  # noqa: E402
from harness import Figures, Harness, Rows, Section  # noqa: E402

from finetune.config import ADAPTER_DIR  # noqa: E402

# How long the check may run on a lent machine: 9 minutes per call, less the wheel install and slack.
DEFAULT_BUDGET_S = 500


@dataclass(frozen=True)
class Profile:
    shape: dict[str, Any]
    train: training.TrainShape
    serve: serving.ServeShape
    copy_gb: float  # size of the bandwidth probe: several times any cache
    quantized_decode_tokens: int


PROFILES = {
    "qwen2-7b": Profile(qwen2.QWEN2_7B, training.TrainShape(steps=24, batch=2, cutoff=2048),
                        serving.ServeShape(prompt_tokens=1000, decode_tokens=128, repeats=3, clients=(8, 32),
                                           client_tokens=64, client_rounds=2, conclusion_tokens=8,
                                           reasoning_tokens=150),
                        copy_gb=2.0, quantized_decode_tokens=48),
    "tiny": Profile(qwen2.TINY, training.TrainShape(steps=3, batch=1, cutoff=256),
                    serving.ServeShape(prompt_tokens=100, decode_tokens=16, repeats=2, clients=(8, 32),
                                       client_tokens=8, client_rounds=1, conclusion_tokens=4, reasoning_tokens=24),
                    copy_gb=0.05, quantized_decode_tokens=16),
}


class Check:
    """The sections and what they share: the model directory, the loaded bf16 runtime, the runs."""

    def __init__(self, profile: Profile, work: Path, device: torch.device) -> None:
        self.p, self.work, self.device = profile, work, device
        self.dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.base = work / "base"
        self.bandwidth: float | None = None
        self.runtime: serving.ModelRuntime | None = None
        self.dataset: tuple[Path, Any] | None = None

    def sections(self, part: str, only: set[str] | None = None) -> list[Section]:
        train = [Section("train_qlora", 100, lambda: self.train("qlora")),
                 Section("train_lora", 70, lambda: self.train("lora")),
                 Section("merge_lora", 80, self.merge_lora),
                 Section("qlora_adapter", 30, self.qlora_adapter)]
        serve = [Section("serve_bf16", 120, self.serve_bf16),
                 Section("continuous", 60, self.continuous),
                 Section("decode_compiled", 120, self.decode_compiled),
                 Section("http", 50, self.http),
                 Section("serve_int4", 45, lambda: self.serve_quantized("int4")),
                 Section("serve_int8", 60, lambda: self.serve_quantized("int8"))]
        first = [Section("device", 10, self.measure_device), Section("build", 60, self.build)]
        # In one run the bf16 serving figures come first (the decode and early-exit targets), then
        # training (the QLoRA memory target), then the rest of serving.
        chosen = {"train": train, "serve": serve, "all": serve[:3] + train + serve[3:]}[part]
        return first + [s for s in chosen if only is None or s.name in only]

    # -- setup -------------------------------------------------------------------------------------
    def measure_device(self) -> tuple[Figures, Rows]:
        self.bandwidth = serving.copy_bandwidth(self.device, self.p.copy_gb)
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else platform.processor() or "cpu"
        figures = {"device": name, "copy_bandwidth_gbs": self.bandwidth / 1e9}
        if self.device.type == "cuda":
            figures["gpu_memory_gb"] = torch.cuda.get_device_properties(self.device).total_memory / 1e9
        return figures, [(name, f"copy {self.bandwidth / 1e9:.0f} GB/s (read + write)")]

    def build(self) -> tuple[Figures, Rows]:
        if (self.base / "config.json").is_file():  # a second call on the same machine and --work dir
            return {"reused": str(self.base)}, [("model dir from an earlier call, reused", str(self.base))]
        figures = qwen2.write_random_model(self.base, self.p.shape, self.device, self.dtype)
        return figures, [(f"{figures['params_b']:.2f} B params, {self.dtype}".replace("torch.", ""),
                          f"{figures['weight_gb']:.1f} GB, init {figures['init_s']:.0f} s, save {figures['save_s']:.0f} s")]

    # -- training ----------------------------------------------------------------------------------
    def train(self, method: str) -> tuple[Figures, Rows]:
        if self.dataset is None:
            self.dataset = training.prepare_dataset(self.work, self.base, self.p.train)
        return training.train_run(self.work, self.base, *self.dataset, method, self.p.train, self.device)

    def merge_lora(self) -> tuple[Figures, Rows]:
        merged, merge_s = training.merge(self._run("lora"))
        load_s, figures = self._load_and_answer(merged)
        return ({"merge_s": merge_s, "merged_load_s": load_s, **figures},
                [("llamafactory-cli export (merge + save)", f"{merge_s:.0f} s"),
                 ("merged model: runtime load + answer", f"{load_s:.1f} s, {figures['answer_tokens']} tokens")])

    def qlora_adapter(self) -> tuple[Figures, Rows]:
        adapter = self._run("qlora") / ADAPTER_DIR
        load_s, figures = self._load_and_answer(self.base, adapter=adapter)
        return ({"load_s": load_s, **figures},
                [("base + QLoRA adapter: runtime load + answer", f"{load_s:.1f} s, {figures['answer_tokens']} tokens")])

    def _run(self, method: str) -> Path:
        run = training.run_dir(self.work, method)
        if not (run / ADAPTER_DIR / "adapter_config.json").is_file():
            raise RuntimeError(f"no finished {method} adapter in {run}: train_{method} did not finish")
        return run

    def _load_and_answer(self, model: Path, **kwargs: Any) -> tuple[float, Figures]:
        """The serving runtime loads it and answers one request."""
        runtime, load_s = self._load(model, **kwargs)
        try:
            gen = runtime.generate([serving.messages(self.p.serve)], serving.GenerationConfig(max_new_tokens=4))[0]
        finally:
            self._release(runtime)
        return load_s, {"answer_tokens": gen.completion_tokens}

    # -- serving -----------------------------------------------------------------------------------
    def _load(self, model: Path, **kwargs: Any) -> tuple[serving.ModelRuntime, float]:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        started = time.monotonic()
        runtime = serving.ModelRuntime.load(model, device=self.device.type, **kwargs)
        load_s = time.monotonic() - started
        serving.force_decoding(runtime, separator_at=None)
        return runtime, load_s

    def _release(self, runtime: serving.ModelRuntime) -> None:
        """Give the weights back before the next section loads its own (compiled graphs hold them too)."""
        del runtime.model
        torch._dynamo.reset()
        gc.collect()  # force_decoding's wrapper and the model refer to each other
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _ceiling(self, runtime: serving.ModelRuntime) -> float | None:
        """Batch-1 decode reads every weight once per token, except the input embedding (one row of
        it): bandwidth / those bytes."""
        embedding = runtime.model.get_input_embeddings().weight
        read = runtime.footprint_bytes() - embedding.numel() * embedding.element_size()
        return self.bandwidth / read if self.bandwidth else None

    def serve_bf16(self) -> tuple[Figures, Rows]:
        self.runtime, load_s = self._load(self.base)
        rt, shape = self.runtime, self.p.serve
        ceiling = self._ceiling(rt)
        eager = serving.batch1_decode(rt, shape)
        crowds = [serving.concurrent_clients(rt, shape, n) for n in shape.clients]
        exit_ = serving.early_exit(rt, shape)
        figures = {"load_s": load_s, **serving.memory_figures(rt), "ceiling_tokens_per_s": ceiling,
                   "batch1_eager": eager, "concurrency": crowds, "early_exit": exit_}
        rows = [("load", f"{load_s:.1f} s, {figures['footprint_gb']:.1f} GB"),
                ("batch-1 decode, eager", _vs_ceiling(eager["tokens_per_s"], ceiling))]
        rows += [(f"{c['clients']} clients: aggregate, p50/p95",
                  f"{c['tokens_per_s']:.0f} tok/s ({c['tokens_per_s'] / eager['tokens_per_s']:.1f}x batch-1), "
                  f"{c['p50_s']:.2f}/{c['p95_s']:.2f} s, mean batch {c['mean_batch']:.1f}") for c in crowds]
        rows.append(("early exit: conclusion vs full (median)",
                     f"{exit_['conclusion_s']:.2f} s ({exit_['conclusion_tokens']} tok) vs {exit_['full_s']:.2f} s "
                     f"({exit_['full_tokens']} tok): {exit_['speedup']:.1f}x"))
        return figures, rows

    def continuous(self) -> tuple[Figures, Rows]:
        """The same crowds through serve's continuous engine (prefix sharing on, the prompts sharing
        all but their last tokens), beside the static Batcher's figures from serve_bf16."""
        if self.runtime is None:
            raise RuntimeError("serve_bf16 did not load the model")
        crowds = [serving.concurrent_clients(self.runtime, self.p.serve, n, engine="continuous")
                  for n in self.p.serve.clients]
        return ({"concurrency_continuous": crowds},
                [(f"{c['clients']} clients, continuous: aggregate, p50/p95",
                  f"{c['tokens_per_s']:.0f} tok/s, {c['p50_s']:.2f}/{c['p95_s']:.2f} s") for c in crowds])

    def decode_compiled(self) -> tuple[Figures, Rows]:
        if self.runtime is None:
            raise RuntimeError("serve_bf16 did not load the model")
        rt, shape = self.runtime, self.p.serve
        ceiling = self._ceiling(rt)
        try:
            reference = rt.generate([serving.messages(shape)], serving.GenerationConfig(max_new_tokens=shape.decode_tokens))
            rt.decode = "compiled"
            started = time.monotonic()
            compiled_answer = rt.generate([serving.messages(shape)],
                                          serving.GenerationConfig(max_new_tokens=shape.decode_tokens))
            first_call_s = time.monotonic() - started
            compiled = serving.batch1_decode(rt, shape)
        finally:
            rt.decode = "eager"
            self._release(rt)
            self.runtime = None
        same = compiled_answer[0].text == reference[0].text
        return ({"batch1_compiled": compiled, "first_call_s": first_call_s, "greedy_equal_to_eager": same,
                 "ceiling_tokens_per_s": ceiling},
                [("batch-1 decode, compiled (static cache)", _vs_ceiling(compiled["tokens_per_s"], ceiling)),
                 ("first call (compile) / greedy = eager", f"{first_call_s:.0f} s / {same}")])

    def serve_quantized(self, quantization: str) -> tuple[Figures, Rows]:
        rt, load_s = self._load(self.base, quantization=quantization)
        try:
            memory = serving.memory_figures(rt)
            ceiling = self._ceiling(rt)
            decode = serving.batch1_decode(rt, self.p.serve, tokens=self.p.quantized_decode_tokens)
        finally:
            self._release(rt)
        return ({"load_s": load_s, **memory, "ceiling_tokens_per_s": ceiling, "batch1_eager": decode},
                [("load", f"{load_s:.1f} s, {memory['footprint_gb']:.1f} GB"),
                 ("batch-1 decode, eager", _vs_ceiling(decode["tokens_per_s"], ceiling))])

    def http(self) -> tuple[Figures, Rows]:
        import httpx

        from serve.process import ServerProcess

        args = ["--model", str(self.base), "--max-new-tokens", "16", "--timeout-s", "300"]
        started = time.monotonic()
        # The server imports this checkout's serve/ and distillery/ whatever its working directory.
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        with ServerProcess(args, env=env, log=self.work / "gunicorn.log", ready_timeout_s=300) as server:
            ready_s = time.monotonic() - started
            began = time.monotonic()
            response = httpx.post(f"{server.url}/algorithm/ChatRest", timeout=300,
                                  json={"prompt": serving.messages(self.p.serve)[0]["content"]})
            round_trip_s = time.monotonic() - began
        body = response.json()
        if response.status_code != 200 or body.get("sucess") is not True:
            raise RuntimeError(f"ChatRest answered {response.status_code}: {response.text[:300]}")
        usage = body["data"]["usage"]
        return ({"ready_s": ready_s, "round_trip_s": round_trip_s, "http_status": response.status_code, **usage},
                [("gunicorn: start + load until /readyz", f"{ready_s:.0f} s"),
                 ("ChatRest round trip", f"{round_trip_s:.2f} s, 200, {usage['completion_tokens']} tokens")])


def _vs_ceiling(tokens_per_s: float, ceiling: float | None) -> str:
    if not ceiling:
        return f"{tokens_per_s:.1f} tok/s"
    return f"{tokens_per_s:.1f} tok/s = {tokens_per_s / ceiling:.0%} of the {ceiling:.0f} tok/s ceiling"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="where the full figures go (JSON)")
    parser.add_argument("--part", choices=["all", "train", "serve"], default="all")
    parser.add_argument("--only", type=lambda text: set(text.split(",")),
                        help="comma-separated sections to run (device and build always run), e.g. a second "
                             "call for what the first skipped: --only merge_lora,http,serve_int4")
    parser.add_argument("--tiny", action="store_true", help="a tiny Qwen2 on the CPU (or GPU): the CI smoke check")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help="stop starting sections that would run past this; the table comes out regardless")
    parser.add_argument("--work", type=Path, help="scratch dir (model, datasets, runs; a model already there is "
                        "reused) [default: a temp dir]")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.tiny and device.type != "cuda":
        sys.exit("the full check needs a CUDA GPU (this machine has none): add --tiny for the CPU smoke check")
    import transformers

    harness = Harness(out=args.out, budget_s=args.budget_s, check_estimates=not args.tiny)
    harness.meta = {"profile": "tiny" if args.tiny else "qwen2-7b", "part": args.part, "budget_s": args.budget_s,
                    "python": platform.python_version(), "torch": torch.__version__,
                    "transformers": transformers.__version__, "device_type": device.type}
    work = args.work or Path(tempfile.mkdtemp(prefix="distillery-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    harness.log(f"profile {harness.meta['profile']}, part {args.part}, device {device}, work dir {work}, "
                f"torch {torch.__version__}, transformers {transformers.__version__}")
    check = Check(PROFILES[harness.meta["profile"]], work, device)
    harness.run_all(check.sections(args.part, args.only))


if __name__ == "__main__":
    main()
