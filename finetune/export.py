"""Merge a run's LoRA adapter into its base model with `llamafactory-cli export`.

The merged directory is a plain HF model (config, weights, tokenizer) that `ModelRuntime.load`
and `serve` load like any base model; the adapter directory also stays usable as base + adapter.
A QLoRA adapter is merged into the unquantized base (merging into 4-bit weights is not possible).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml

from . import lfcli
from .config import MERGED_DIR, read_run
from .workspace import FinetuneError, read_prompt_file, write_prompt_file

EXPORT_YAML = "export.yaml"
LOG_FILE = "export.log"


def export(run_dir: Path, *, out_dir: Path | None = None, on_line: Callable[[str], None] | None = None) -> Path:
    """Write export.yaml beside train.yaml, run it, and return the merged model's directory."""
    run_dir = Path(run_dir)
    settings = read_run(run_dir)
    adapter = Path(settings["output_dir"])
    if not (adapter / "adapter_config.json").is_file():
        raise FinetuneError(f"{adapter} holds no finished adapter: train the run first (distill-finetune train)")
    target = Path(out_dir) if out_dir else run_dir / MERGED_DIR
    config = {
        "model_name_or_path": settings["model_name_or_path"],
        "adapter_name_or_path": str(adapter),
        "template": settings["template"],
        "finetuning_type": settings.get("finetuning_type", "lora"),
        "trust_remote_code": settings.get("trust_remote_code", False),
        "export_dir": str(target.resolve()),
        "export_size": 5,  # GB per safetensors shard
        "export_device": "auto",  # the GPU when there is one: a 7B merge on CPU takes minutes
        "export_legacy_format": False,
    }
    path = run_dir / EXPORT_YAML
    path.write_text(f"# Written by `distill-finetune export`. Re-run by hand:  llamafactory-cli export {path}\n"
                    + yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    lfcli.run("export", path, run_dir / LOG_FILE, on_line=on_line, settings=config)
    prompt = read_prompt_file(adapter)
    if prompt is not None:
        write_prompt_file(target, prompt)
    return target
