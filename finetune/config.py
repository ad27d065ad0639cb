"""The LLaMA-Factory training YAML as data: defaults (defaults.yaml) <- method/stage <- the user's
file <- `--set key=value`, checked against LLaMA-Factory's own argument names, written beside the
run so `llamafactory-cli train <run>/train.yaml` re-runs it by hand.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel

from distillery.config import load_mapping, parse_sets, read_mapping, yaml_value
from distillery.workspace import Workspace

from .workspace import FinetuneError, Manifest, resolve_model

TRAIN_YAML = "train.yaml"
ADAPTER_DIR = "adapter"  # LLaMA-Factory's output_dir: checkpoints, trainer_log.jsonl, the final adapter
MERGED_DIR = "merged"
DEEPSPEED_FILES = {2: "ds_z2.json", 3: "ds_z3.json"}
Precision = Literal["auto", "bf16", "fp16", "fp32"]


Stage = Literal["sft", "pt", "dpo", "kto", "rm", "ppo"]
# Stages that refine a tuned model: they start from the merged model of an SFT run (--from-run).
AFTER_SFT: tuple[Stage, ...] = ("dpo", "kto", "rm", "ppo")
# Each stage's training (and evaluation) dataset, by the manifest's kind, and the prepare option writing it.
STAGE_DATA: dict[Stage, tuple[str, str | None, str]] = {
    "sft": ("train", "validation", "prepare"),
    "pt": ("text_train", "text_validation", "prepare --also pt"),
    "dpo": ("preference", None, "qc export with reviewers' fixes, then prepare"),
    "rm": ("preference", None, "qc export with reviewers' fixes, then prepare"),
    "kto": ("kto", None, "prepare --also kto"),
    "ppo": ("prompts", None, "prepare --also ppo"),
}


class RunOptions(BaseModel):
    """What `distill-finetune train` decides; every other key is LLaMA-Factory's, in the YAML."""

    model: str  # a local model dir, a hub id, or `embedded`
    method: Literal["lora", "qlora"] = "lora"
    stage: Stage = "sft"
    reward_model: str | None = None  # ppo: the reward adapter (an rm run's adapter dir)
    precision: Precision = "auto"
    deepspeed: Literal[2, 3] | None = None  # put ds_z<N>.json into train.yaml (needs `pip install deepspeed`)


@cache
def _data(name: str) -> dict[str, Any]:
    text = (resources.files("finetune") / name).read_text(encoding="utf-8")
    return load_mapping(text, f"finetune/{name}", FinetuneError)


def defaults(method: str = "lora", stage: str = "sft") -> dict[str, Any]:
    """The default LLaMA-Factory keys for a method and stage (a fresh dict: callers may change it)."""
    data = _data("defaults.yaml")
    merged = dict(data["sft"])
    if method == "qlora":
        merged |= data["qlora"]
    if stage != "sft":
        merged |= data[stage]
    return merged


def resolve_precision(precision: Precision) -> dict[str, bool]:
    """bf16 where the GPU has it (Ampere and later), fp16 on older GPUs, fp32 on a CPU."""
    if precision == "auto":
        import torch

        if not torch.cuda.is_available():
            precision = "fp32"
        else:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def load_overrides(path: Path | None, sets: Sequence[str] = ()) -> dict[str, Any]:
    """A YAML file of LLaMA-Factory keys, then --set pairs on top. `2e-4` without a dot is a number
    here, as LLaMA-Factory's own loader (OmegaConf) reads it, not the string YAML 1.1 makes of it."""
    data = {k: yaml_value(v) for k, v in read_mapping(path, FinetuneError).items()} if path is not None else {}
    return data | parse_sets(sets, error=FinetuneError)


def llamafactory_keys() -> set[str]:
    """Every key `llamafactory-cli train` accepts (the fields of its argument dataclasses)."""
    import dataclasses

    from llamafactory.hparams import (
        DataArguments,
        FinetuningArguments,
        GeneratingArguments,
        ModelArguments,
        TrainingArguments,
    )

    classes = (ModelArguments, DataArguments, TrainingArguments, FinetuningArguments, GeneratingArguments)
    return {f.name for cls in classes for f in dataclasses.fields(cls)}


def build_config(
    options: RunOptions, *, data_dir: Path, manifest: Manifest, run_dir: Path, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The full LLaMA-Factory YAML for a run, as a dict. Raises FinetuneError on unknown keys."""
    config = defaults(options.method, options.stage)
    # The dataset was checked with this template and cutoff: train with the same unless told otherwise.
    config |= {"template": manifest.prompt.template, "cutoff_len": manifest.cutoff_len}
    config |= resolve_precision(options.precision)
    config |= {
        "model_name_or_path": resolve_model(options.model),
        "dataset_dir": str(Path(data_dir).resolve()),
        "output_dir": str((Path(run_dir) / ADAPTER_DIR).resolve()),
    }
    datasets = manifest.datasets()
    train, evaluation, writer = STAGE_DATA[options.stage]
    if train not in datasets:
        raise FinetuneError(f"{data_dir} has no {train} dataset, which --stage {options.stage} trains on: "
                            f"it comes from `{writer}`")
    config["dataset"] = datasets[train].dataset
    if evaluation in datasets:
        config["eval_dataset"] = datasets[evaluation].dataset
    elif evaluation is not None:
        config["eval_strategy"] = "no"
    if options.stage == "ppo":
        if options.reward_model is None:
            raise FinetuneError("--stage ppo scores its answers with a reward model: give --reward-run NAME (an rm run)")
        config["reward_model"] = options.reward_model
    if options.deepspeed:
        config["deepspeed"] = str((Path(run_dir) / DEEPSPEED_FILES[options.deepspeed]).resolve())
    config |= overrides or {}
    unknown = sorted(set(config) - llamafactory_keys())
    if unknown:
        raise FinetuneError(f"unknown LLaMA-Factory option(s): {', '.join(unknown)} "
                            "(see `llamafactory-cli train -h` for the names)")
    return config


def deepspeed_config(stage: Literal[2, 3]) -> dict[str, Any]:
    data = _data("deepspeed.yaml")
    return data["common"] | {"zero_optimization": data[f"zero{stage}"]}


def write_run(run_dir: Path, config: dict[str, Any]) -> Path:
    """Write train.yaml and the DeepSpeed configs into run_dir; returns the YAML's path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stage, name in DEEPSPEED_FILES.items():
        (run_dir / name).write_text(json.dumps(deepspeed_config(stage), indent=2) + "\n", encoding="utf-8")
    path = run_dir / TRAIN_YAML
    header = ("# Written by `distill-finetune train`. Re-run by hand:  llamafactory-cli train " + str(path) + "\n"
              "# Multi-GPU (all visible GPUs, DeepSpeed ZeRO-2):  FORCE_TORCHRUN=1 llamafactory-cli train "
              f"{path} deepspeed={(run_dir / DEEPSPEED_FILES[2]).resolve()}\n")
    path.write_text(header + yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def read_run(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / TRAIN_YAML
    if not path.is_file():
        raise FinetuneError(f"{path} does not exist: run `distill finetune train` first")
    return read_mapping(path, FinetuneError)


def write_train_config(workspace: Workspace, *, run_name: str | None = None, data_dir: Path | None = None,
                       model: str | None = None, method: str = "lora", stage: str = "sft", from_run: str | None = None,
                       reward_run: str | None = None, overrides: dict[str, Any] | None = None, precision: str = "auto",
                       deepspeed: int | None = None) -> tuple[Path, dict[str, Any], Manifest]:
    """Write a run's train.yaml from the prepared dataset: (run dir, the config, the dataset's manifest).
    The run is named `<stage>-<method>` unless named; DPO, KTO, rm and PPO start from `from_run`'s
    merged model (SFT may too: after a pt run); PPO scores with `reward_run`'s adapter."""
    data = data_dir or workspace.finetune_data
    run_dir = workspace.run(run_name or f"{stage}-{method}")
    manifest = Manifest.load(data)
    if not manifest.checked:
        raise FinetuneError(f"{data} failed its last check: fix it and run `distill finetune check`")
    if stage in AFTER_SFT and (not from_run or model):
        raise FinetuneError(f"--stage {stage} starts from the merged model of an SFT run: give --from-run NAME "
                            "(and no --model)")
    if from_run:
        if model:
            raise FinetuneError("give --from-run or --model, not both: the run's merged model is the model")
        model = str(workspace.run(from_run) / MERGED_DIR)
        if not Path(model, "config.json").is_file():
            raise FinetuneError(f"{model} does not exist: export run {from_run} first (distill finetune export --run {from_run})")
    reward = None
    if reward_run:
        reward = str(Path(read_run(workspace.run(reward_run))["output_dir"]))
        if not Path(reward, "adapter_config.json").is_file():
            raise FinetuneError(f"{reward} holds no finished reward adapter: train run {reward_run} first "
                                "(distill finetune train --stage rm)")
    options = RunOptions(model=model or manifest.model, method=method, stage=stage, precision=precision,  # type: ignore[arg-type]
                         deepspeed=deepspeed, reward_model=reward)  # type: ignore[arg-type]
    config = build_config(options, data_dir=data, manifest=manifest, run_dir=run_dir, overrides=overrides or {})
    write_run(run_dir, config)
    return run_dir, config, manifest
