"""Seconds per training step for the finetune stage (SmolLM2 on a CPU).

    .venv/bin/python bench/finetune_step.py                       # SmolLM2-135M, CPU, batch 4, cutoff 256
    .venv/bin/python bench/finetune_step.py --steps 8             # more steps, steadier median

It runs the real thing: a prepared dataset whose examples all reach the cutoff, the
default LoRA config, `llamafactory-cli train` as a subprocess, and step times taken from the
progress our train() reports (the Trainer's per-step bar). The first step (allocations, warm
caches) is reported apart from the median of the rest.

Qwen2-7B LoRA/QLoRA on a GPU is measured by bench/gpu/ (its README), through the same train path.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="training steps to time (the first is reported apart)")
    parser.add_argument("--batch", type=int, default=4, help="per-device batch")
    parser.add_argument("--cutoff", type=int, default=256, help="cutoff_len in tokens")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the training process "
                        "[default: torch's, one per core]; on a busy shared box 1 beats 2 by far")
    args = parser.parse_args()
    bench_smollm2(args)


if __name__ == "__main__":
    main()
