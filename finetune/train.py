"""Run `llamafactory-cli train` on a run directory's train.yaml, with progress, resume and plain errors.

Progress comes from two places LLaMA-Factory writes anyway: the HF Trainer's tqdm bar in its
output (every step) and `trainer_log.jsonl` in the output dir (loss, at every logging step).
A run resumes from its last `checkpoint-N` by itself; a run that already finished with the same
train.yaml is not trained again.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from . import lfcli
from .config import MERGED_DIR, TRAIN_YAML, read_run
from .workspace import FinetuneError, read_prompt_file, write_prompt_file

DONE_FILE = "train.done"  # sha256 of the train.yaml that finished: a re-run of it has nothing to do
LOG_FILE = "train.log"
# The Trainer's bar has no description ("  40%|████      | 2/5 [00:04<00:06,  2.1s/it]"); the
# datasets bars LLaMA-Factory shows before it all start with one ("Running tokenizer on dataset: ").
_TRAIN_BAR = re.compile(r"^\s*\d+%\|[^|]*\|\s*(\d+)/(\d+) \[")


class TrainProgress(BaseModel):
    step: int = 0
    total: int | None = None
    loss: float | None = None
    eval_loss: float | None = None
    epoch: float | None = None
    stage: str = "starting"  # starting -> training -> done


class TrainResult(BaseModel):
    run_dir: Path
    adapter_dir: Path
    steps: int
    total_steps: int | None
    loss: float | None  # the last logged training loss
    eval_loss: float | None
    elapsed_s: float
    resumed_from: str | None = None
    skipped: bool = False  # already trained with this exact train.yaml


def last_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete `checkpoint-N` (the Trainer writes trainer_state.json last)."""
    found = [p for p in Path(output_dir).glob("checkpoint-*")
             if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
    return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)


def _yaml_hash(run_dir: Path) -> str:
    return hashlib.sha256((run_dir / TRAIN_YAML).read_bytes()).hexdigest()


class _LogFollower:
    """Reads new lines of trainer_log.jsonl as LLaMA-Factory appends them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.is_file() else 0  # a resumed run's old lines are history

    def update(self, progress: TrainProgress) -> bool:
        if not self.path.is_file() or self.path.stat().st_size == self.offset:
            return False
        with self.path.open(encoding="utf-8") as fh:
            fh.seek(self.offset)
            text = fh.read()
        complete, _, _ = text.rpartition("\n")  # a line still being written waits for the next call
        self.offset += len(complete.encode("utf-8")) + (1 if complete else 0)
        for line in complete.splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            progress.step = max(progress.step, entry.get("current_steps", 0))
            progress.total = entry.get("total_steps") or progress.total
            progress.loss = entry.get("loss", progress.loss)
            progress.eval_loss = entry.get("eval_loss", progress.eval_loss)
            progress.epoch = entry.get("epoch", progress.epoch)
        return bool(complete)


def train(
    run_dir: Path, *, fresh: bool = False, on_progress: Callable[[TrainProgress], None] | None = None
) -> TrainResult:
    """Train the run in run_dir (its train.yaml, as written by `build_config` or edited by hand)."""
    run_dir = Path(run_dir)
    settings = read_run(run_dir)
    if not settings.get("output_dir"):
        raise FinetuneError(f"{run_dir / TRAIN_YAML}: output_dir is not set")
    output_dir = Path(settings["output_dir"])
    done = run_dir / DONE_FILE
    if fresh:
        shutil.rmtree(output_dir, ignore_errors=True)
        done.unlink(missing_ok=True)
    elif done.is_file() and done.read_text().strip() == _yaml_hash(run_dir):
        return _result(run_dir, output_dir, TrainProgress(), 0.0, None, skipped=True)

    resume = last_checkpoint(output_dir)
    if resume is None and (output_dir / "adapter_model.safetensors").is_file():
        # A finished adapter without checkpoints: LLaMA-Factory would refuse the non-empty dir.
        raise FinetuneError(f"{output_dir} holds a finished adapter from a different train.yaml and no checkpoint "
                            "to resume: run train with --fresh to train again from scratch")
    progress = TrainProgress(step=_checkpoint_step(resume))
    follower = _LogFollower(output_dir / "trainer_log.jsonl")
    report = on_progress or (lambda _p: None)
    total_seen: list[int] = []

    def on_line(line: str) -> None:
        changed = follower.update(progress)
        bar = _TRAIN_BAR.match(line)
        if bar:
            step, total = int(bar.group(1)), int(bar.group(2))
            # The first undescribed bar is training's; evaluation bars (other totals) come later.
            total_seen[:] = total_seen or [total]
            if total == total_seen[0]:
                progress.step, progress.total = max(progress.step, step), total
                progress.stage = "training"
                changed = True
        if changed:
            report(progress)

    started = time.monotonic()
    report(progress)
    # Explicit, so the log says where it resumed; LLaMA-Factory would find the same checkpoint itself.
    overrides = [f"resume_from_checkpoint={resume}"] if resume else []
    lfcli.run("train", run_dir / TRAIN_YAML, run_dir / LOG_FILE, overrides=overrides, on_line=on_line,
              settings=settings)
    follower.update(progress)
    progress.stage = "done"
    report(progress)
    done.write_text(_yaml_hash(run_dir))
    # A merged model from before this training no longer matches the adapter: eval and serve must
    # not pick it up (eval falls back to base + adapter until it is exported again).
    shutil.rmtree(run_dir / MERGED_DIR, ignore_errors=True)
    prompt = read_prompt_file(Path(settings["dataset_dir"]))
    if prompt is not None:  # serve and eval read how to prompt the adapter from beside it
        write_prompt_file(output_dir, prompt)
    return _result(run_dir, output_dir, progress, time.monotonic() - started, resume)


def _checkpoint_step(checkpoint: Path | None) -> int:
    return int(checkpoint.name.split("-")[-1]) if checkpoint else 0


def _result(run_dir: Path, output_dir: Path, progress: TrainProgress, elapsed: float, resume: Path | None,
            *, skipped: bool = False) -> TrainResult:
    state_file = output_dir / "trainer_state.json"
    if state_file.is_file():  # the finished run's own account beats what we parsed on the way
        state = json.loads(state_file.read_text(encoding="utf-8"))
        progress.step, progress.total = state.get("global_step", progress.step), state.get("max_steps", progress.total)
        losses = [e for e in state.get("log_history", []) if "loss" in e]
        evals = [e for e in state.get("log_history", []) if "eval_loss" in e]
        progress.loss = losses[-1]["loss"] if losses else progress.loss
        progress.eval_loss = evals[-1]["eval_loss"] if evals else progress.eval_loss
    return TrainResult(run_dir=run_dir, adapter_dir=output_dir, steps=progress.step, total_steps=progress.total,
                       loss=progress.loss, eval_loss=progress.eval_loss, elapsed_s=elapsed,
                       resumed_from=resume.name if resume else None, skipped=skipped)
