"""Training as a user runs it: `finetune.prepare` writes a synthetic dataset whose examples all
reach the cutoff, `finetune.config` the same train.yaml `distill-finetune train` writes (LoRA or
QLoRA defaults; only the step count, batch and logging overridden), `finetune.train.train` runs
`llamafactory-cli train` on it, and `finetune.export.export` merges the LoRA adapter.
"""

from __future__ import annotations

import itertools
import math
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from harness import Figures, Rows

from distillery.jsonl import write_jsonl
from doubles.examples import sample_examples
from finetune.config import RunOptions, build_config, write_run
from finetune.export import export
from finetune.prepare import PrepareOptions, prepare
from finetune.train import TrainProgress, train
from finetune.workspace import Manifest


@dataclass(frozen=True)
class TrainShape:
    steps: int
    batch: int  # per device; gradient accumulation 1, so one step is batch x cutoff tokens
    cutoff: int


def prepare_dataset(work: Path, model_dir: Path, shape: TrainShape) -> tuple[Path, Manifest]:
    """steps x batch Chinese examples (one per document), each padded past the cutoff."""
    def chars(padding: int) -> int:
        ex = sample_examples(documents=1, per_document=1, padding=padding)[0]
        return len((ex.instruction + ex.input + ex.output).encode())

    # Bytes are tokens under the byte-level tokenizer: pad until every example exceeds the cutoff.
    padding = math.ceil(shape.cutoff / (chars(1) - chars(0))) + 1
    approved = work / "approved.jsonl"
    write_jsonl(approved, sample_examples(documents=shape.steps * shape.batch, per_document=1, padding=padding))
    data = work / "data"
    prepare(approved, data, PrepareOptions(model=str(model_dir), cutoff_len=shape.cutoff, val_fraction=0,
                                           test_fraction=0))
    return data, Manifest.load(data)


class PeakMemory:
    """The most memory in use while a child trains, above what was in use before: device-wide on
    a GPU (the trainer is another process), its processes' resident memory on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._baseline = self._used()

    def _used(self) -> int:
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            return total - free
        rss = 0
        for child in psutil.Process().children(recursive=True):
            try:
                rss += child.memory_info().rss
            except psutil.Error:  # exited between listing and reading
                pass
        return rss

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self._used() - self._baseline)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_dir(work: Path, method: str) -> Path:
    return work / f"run-{method}"


def train_run(work: Path, model_dir: Path, data: Path, manifest: Manifest, method: str, shape: TrainShape,
              device: torch.device) -> tuple[Figures, Rows]:
    """One `llamafactory-cli train` run, from scratch: (figures, table rows)."""
    run = run_dir(work, method)
    overrides = {"max_steps": shape.steps, "per_device_train_batch_size": shape.batch,
                 "gradient_accumulation_steps": 1, "logging_steps": 1, "save_steps": 100_000,
                 "eval_strategy": "no", "plot_loss": False}
    config = build_config(RunOptions(model=str(model_dir), method=method), data_dir=data, manifest=manifest,  # type: ignore[arg-type]
                          run_dir=run, overrides=overrides)
    write_run(run, config)
    stamps: dict[int, float] = {}

    def on_progress(p: TrainProgress) -> None:
        if p.stage == "training":  # from the Trainer's first bar on: process start-up stays out of step times
            stamps.setdefault(p.step, time.monotonic())

    started = time.monotonic()
    with PeakMemory(device) as memory:
        result = train(run, fresh=True, on_progress=on_progress)
    total = time.monotonic() - started
    steps = sorted(s for s in stamps if s > 0)
    # The first step (allocation, kernel selection) is left out of the median.
    gaps = [stamps[b] - stamps[a] for a, b in itertools.pairwise(steps) if b == a + 1]
    if not gaps:
        raise RuntimeError(f"too few training steps observed to time ({steps}); the log is {run / 'train.log'}")
    per_step = statistics.median(gaps)
    lengths = manifest.splits["train"].token_lengths
    figures = {"method": method, "precision": "bf16" if config.get("bf16") else "fp16" if config.get("fp16") else "fp32",
               "steps": result.steps, "batch": shape.batch, "cutoff_len": shape.cutoff,
               "shortest_example_tokens": min(lengths) if lengths else None,
               "s_per_step": per_step, "tokens_per_s": shape.batch * shape.cutoff / per_step,
               "first_step_s": stamps[steps[0]] - stamps[0] if 0 in stamps else None,
               "peak_memory_gb": memory.peak / 1e9, "memory_measured": "GPU, device-wide" if device.type == "cuda"
               else "host RSS of the trainer", "total_s": total, "final_loss": result.loss,
               "adapter_dir": str(result.adapter_dir)}
    rows = [(f"{method} s/step (batch {shape.batch} x {shape.cutoff})", f"{per_step:.2f} s"),
            ("tokens/s", f"{figures['tokens_per_s']:.0f}"),
            ("peak memory" + (" (GPU)" if device.type == "cuda" else " (host RSS)"), f"{memory.peak / 1e9:.1f} GB"),
            ("whole run (process start, load, save)", f"{total:.0f} s")]
    return figures, rows


def merge(run: Path) -> tuple[Path, float]:
    """`llamafactory-cli export` of the run's adapter into its base: (merged dir, seconds)."""
    started = time.monotonic()
    merged = export(run)
    return merged, time.monotonic() - started
