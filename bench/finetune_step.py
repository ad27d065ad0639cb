"""Seconds per training step (and, on a GPU, peak memory) for the finetune stage.

    .venv/bin/python bench/finetune_step.py                       # SmolLM2-135M, CPU, batch 4, cutoff 256
    .venv/bin/python bench/finetune_step.py --steps 8             # more steps, steadier median
    python bench/finetune_step.py qwen2-7b                        # GPU: Qwen2-7B architecture, LoRA vs QLoRA

`smollm2` runs the real thing: a prepared dataset whose examples all reach the cutoff, the
default LoRA config, `llamafactory-cli train` as a subprocess, and step times taken from the
progress our train() reports (the Trainer's per-step bar). The first step (allocations, warm
caches) is reported apart from the median of the rest.

`qwen2-7b` builds the Qwen2-7B-Instruct architecture with random weights from its config (no
download reaches a GPU host), writes it once to a scratch dir, loads it as LLaMA-Factory would
(bf16 for LoRA; bitsandbytes NF4 for QLoRA), puts LoRA on every linear layer with gradient
checkpointing, and times optimizer steps on random tokens; peak memory is torch's allocator peak.
Needs a CUDA GPU, torch, transformers, peft and (for QLoRA) bitsandbytes.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))  # the test doubles (synthetic examples) live there, not in the product

QWEN2_7B = {"hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
            "intermediate_size": 18944, "vocab_size": 152064, "rope_theta": 1_000_000.0,
            "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "tie_word_embeddings": False}


def load_figures() -> str:
    try:
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs"
    except OSError:
        return "load average unknown"


def bench_smollm2(args: argparse.Namespace) -> None:
    from distillery.jsonl import write_jsonl
    from doubles.examples import sample_examples
    from finetune.config import RunOptions, build_config, write_run
    from finetune.prepare import PrepareOptions, prepare
    from finetune.train import TrainProgress, train
    from finetune.workspace import Manifest

    with tempfile.TemporaryDirectory(prefix="distillery-bench-") as tmp:
        ws = Path(tmp)
        approved = ws / "approved.jsonl"
        # Chinese passages repeated past the cutoff: every example is exactly cutoff_len tokens.
        n = args.batch * (args.steps + 1)
        write_jsonl(approved, sample_examples(documents=n, per_document=1, padding=6))
        data = ws / "data"
        prepare(approved, data, PrepareOptions(model="embedded", cutoff_len=args.cutoff, val_fraction=0,
                                               test_fraction=0))
        manifest = Manifest.load(data)
        lengths = manifest.splits["train"].token_lengths
        run = ws / "run"
        overrides = {"max_steps": args.steps, "per_device_train_batch_size": args.batch,
                     "gradient_accumulation_steps": 1, "logging_steps": 1, "save_steps": 10_000,
                     "eval_strategy": "no", "plot_loss": False}
        write_run(run, build_config(RunOptions(model="embedded"), data_dir=data, manifest=manifest, run_dir=run,
                                    overrides=overrides))
        if args.threads:
            os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the llamafactory-cli child inherits it
        stamps: dict[int, float] = {}

        def on_progress(p: TrainProgress) -> None:
            if p.stage == "training":  # from the Trainer's first bar on: no process start-up in the figures
                stamps.setdefault(p.step, time.monotonic())

        print(f"SmolLM2-135M LoRA (rank 16, all linear), batch {args.batch}, cutoff {args.cutoff} "
              f"(examples {min(lengths)}-{max(lengths)} tokens before the cut), {args.steps} steps, "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; {load_figures()}")
        started = time.monotonic()
        result = train(run, on_progress=on_progress)
        total = time.monotonic() - started
    steps = sorted(s for s in stamps if s > 0)
    if 0 not in stamps or len(steps) < 2:
        sys.exit(f"too few steps observed ({steps}): raise --steps")
    times = [stamps[b] - stamps[a] for a, b in itertools.pairwise(steps) if b == a + 1]
    print(f"  first step (incl. warm-up)   {stamps[steps[0]] - stamps[0]:.1f} s  (from the Trainer's first bar)")
    print(f"  seconds per step (median)    {statistics.median(times):.1f} s  over steps 2-{steps[-1]} "
          f"(min {min(times):.1f}, max {max(times):.1f})")
    print(f"  tokens per second            {args.batch * args.cutoff / statistics.median(times):.0f}")
    print(f"  whole run, process included  {total:.0f} s (final loss {result.loss})")
    print(f"  {load_figures()} after the run")


def bench_qwen2_7b(args: argparse.Namespace) -> None:
    import torch

    if not torch.cuda.is_available():
        sys.exit("the qwen2-7b mode needs a CUDA GPU and this machine has none: run it on a GPU host "
                 "(python bench/finetune_step.py qwen2-7b); the smollm2 mode runs on a CPU")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, Qwen2Config

    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="qwen2-7b-random-"))
    if not (scratch / "config.json").is_file():
        print(f"writing random Qwen2-7B weights to {scratch} (once, ~15 GB)…", flush=True)
        config = Qwen2Config(**QWEN2_7B)
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(scratch)
        del model
        torch.cuda.empty_cache()
    print(f"{torch.cuda.get_device_name()}; batch {args.batch} x {args.seq} tokens, LoRA rank 16 on all linear "
          f"layers, gradient checkpointing, {args.steps} steps")
    for method in args.methods:
        torch.cuda.reset_peak_memory_stats()
        kwargs = {"dtype": torch.bfloat16, "device_map": {"": 0}}
        if method == "qlora":
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(scratch, **kwargs)
        # As LLaMA-Factory prepares both (not peft's prepare_model_for_kbit_training, which would also
        # upcast the 152k-row embedding and LM head to fp32): checkpointing, inputs that carry grads.
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        tokens = torch.randint(0, QWEN2_7B["vocab_size"], (args.batch, args.seq), device="cuda")
        times = []
        for _ in range(args.steps):
            torch.cuda.synchronize()
            t = time.perf_counter()
            loss = model(input_ids=tokens, labels=tokens).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        peak = torch.cuda.max_memory_allocated() / 2**30
        steady = times[1:] or times
        print(f"  {method:6s} step {statistics.median(steady):.2f} s (median of steps 2-{len(times)}; first "
              f"{times[0]:.2f} s), {args.batch * args.seq / statistics.median(steady):.0f} tokens/s, "
              f"peak memory {peak:.1f} GiB")
        del model, optimizer, loss
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=["smollm2", "qwen2-7b"], default="smollm2")
    parser.add_argument("--steps", type=int, default=5, help="training steps to time (the first is reported apart)")
    parser.add_argument("--batch", type=int, help="per-device batch [smollm2: 4, qwen2-7b: 2]")
    parser.add_argument("--cutoff", type=int, default=256, help="smollm2: cutoff_len in tokens")
    parser.add_argument("--seq", type=int, default=1024, help="qwen2-7b: tokens per sequence")
    parser.add_argument("--threads", type=int, help="smollm2: OMP_NUM_THREADS for the training process "
                        "[default: torch's, one per core]; on a busy shared box 1 beats 2 by far")
    parser.add_argument("--methods", nargs="+", choices=["lora", "qlora"], default=["lora", "qlora"])
    parser.add_argument("--scratch", help="qwen2-7b: dir for the random weights (reused when it holds them)")
    args = parser.parse_args()
    args.batch = args.batch or (4 if args.mode == "smollm2" else 2)
    (bench_smollm2 if args.mode == "smollm2" else bench_qwen2_7b)(args)


if __name__ == "__main__":
    main()
