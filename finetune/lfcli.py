"""Running `llamafactory-cli` as a subprocess: its output goes to a log file and, line by line, to a
callback; a failure becomes one sentence that says what went wrong and what to do.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .workspace import FinetuneError

_LINE_BREAK = re.compile(rb"[\r\n]")  # tqdm redraws with \r: each redraw is a line to us


class LlamaFactoryFailed(FinetuneError):
    def __init__(self, sentence: str, log: Path) -> None:
        super().__init__(f"{sentence} (full log: {log})")
        self.log = log


def executable() -> str:
    """llamafactory-cli from this interpreter's environment (a venv need not be activated), else PATH."""
    beside = Path(sys.executable).with_name("llamafactory-cli")
    found = str(beside) if beside.is_file() else shutil.which("llamafactory-cli")
    if not found:
        raise FinetuneError("llamafactory-cli is not installed: pip install 'distillery[model]'")
    return found


def run(
    command: str,
    config: Path,
    log: Path,
    *,
    overrides: Sequence[str] = (),
    env: dict[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
    settings: dict[str, Any] | None = None,
) -> None:
    """`llamafactory-cli COMMAND CONFIG key=value...`; raises LlamaFactoryFailed with the reason.

    `settings` (the config as a dict) lets the failure sentence quote the values to change.
    """
    argv = [executable(), command, str(config), *overrides]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:
        sink.write(f"\n$ {' '.join(argv)}\n".encode())
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
        assert proc.stdout is not None
        pending = b""
        try:
            while chunk := proc.stdout.read1(65536):
                sink.write(chunk)
                sink.flush()
                *lines, pending = _LINE_BREAK.split(pending + chunk)
                if on_line:
                    for line in lines:
                        on_line(line.decode("utf-8", "replace"))
            code = proc.wait()
        except KeyboardInterrupt:
            # The child got the same Ctrl-C (same process group); let it exit, never leave it running.
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
    if code != 0:
        text = log.read_text(encoding="utf-8", errors="replace")
        raise LlamaFactoryFailed(explain(text, code, settings or {}), log)


def _last_error(text: str) -> str:
    errors = re.findall(r"^(?:[\w.]+\.)?\w*(?:Error|Exception)\b.*$", text, re.MULTILINE)
    return errors[-1].strip()[:300] if errors else "no error line in the output"


def explain(text: str, code: int, settings: dict[str, Any]) -> str:
    """The usual ways a LLaMA-Factory run dies, each as one sentence with the fix."""
    model = settings.get("model_name_or_path", "?")
    batch = settings.get("per_device_train_batch_size", "?")
    cutoff = settings.get("cutoff_len", "?")
    if re.search(r"CUDA out of memory|OutOfMemoryError|CUDA error: out of memory", text):
        return (f"the GPU ran out of memory: lower per_device_train_batch_size (now {batch}; raise "
                f"gradient_accumulation_steps to keep the effective batch) or cutoff_len (now {cutoff}), "
                "or train with --method qlora")
    if code in (-signal.SIGKILL, 128 + signal.SIGKILL) or "DefaultCPUAllocator: can't allocate memory" in text:
        return (f"the process was killed, most likely out of host memory: lower per_device_train_batch_size "
                f"(now {batch}) or cutoff_len (now {cutoff}), or use a machine with more RAM")
    dataset = re.search(r"Cannot open (\S+dataset_info\.json)|Undefined dataset (\S+?) in|File (\S+) not found", text)
    if dataset:
        what = next(g for g in dataset.groups() if g)
        return (f"LLaMA-Factory cannot find the dataset ({what}): run `distill-finetune prepare` first, or fix "
                f"dataset_dir / dataset in the YAML (dataset_dir is {settings.get('dataset_dir', '?')})")
    if re.search(r"is not a local folder and is not a valid model identifier|Repository Not Found|"
                 r"does not appear to have a file named config\.json|Incorrect path_or_model_id|"
                 r"couldn't connect to 'https://huggingface\.co'|LocalEntryNotFoundError|"
                 r"outgoing traffic has been disabled|Can't load (?:the )?(?:tokenizer|config)|"
                 r"Repo id must be in the form|Failed to load tokenizer", text):
        return (f"cannot load the model '{model}': it is not a model directory here (config.json + weights) and "
                "could not be downloaded; pass --model with the local directory, or download it first "
                "(huggingface-cli download Qwen/Qwen2-7B-Instruct --local-dir DIR)")
    unused = re.search(r"Some keys are not used by the HfArgumentParser: (\[.*?\])", text)
    if unused:
        return f"LLaMA-Factory does not know the option(s) {unused.group(1)}: fix their names in the YAML"
    if "No module named 'deepspeed'" in text:
        return "DeepSpeed is not installed: pip install deepspeed (or run without --deepspeed)"
    if re.search(r"doesn't support bf16|bf16.*(?:not supported|requires)", text, re.IGNORECASE):
        return "this hardware has no bf16: run with --precision fp16 (GPU) or --precision fp32 (CPU)"
    return f"llamafactory-cli exited with code {code}: {_last_error(text)}"
