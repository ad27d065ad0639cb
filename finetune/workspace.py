"""What the finetune stage's steps hand each other (the paths are `distillery.workspace`'s):

    finetune/data/manifest.json     `prepare`'s record of the dataset, read by check, train and eval
    <model dir>/distillery_prompt.json   how the tuned model must be prompted (eval and serve read it)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from distillery.errors import DistilleryError

DEFAULT_MODEL = "Qwen/Qwen2-7B-Instruct"
EMBEDDED = "embedded"  # --model value meaning the embedded SmolLM2-135M-Instruct (trains on a CPU)
# Qwen2-7B-Instruct's own chat template puts this system prompt in front when none is given, so a
# server that sends no system prompt to the tuned Qwen2 sees exactly the prompt it was trained on.
DEFAULT_SYSTEM = "You are a helpful assistant."

Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")
DATASET_PREFIX = "distillery_"  # dataset_info.json names: distillery_train, ..., distillery_preference
MANIFEST = "manifest.json"
PROMPT_FILE = "distillery_prompt.json"  # beside an adapter or a merged model: how to prompt it


class FinetuneError(DistilleryError):
    """A failure stated in one sentence that names the file or setting and says what to do."""


def resolve_model(model: str) -> str:
    """A model path or hub id as LLaMA-Factory takes it; `embedded` is the offline SmolLM2 dir."""
    if model == EMBEDDED:
        from distillery.runtime import embedded_model_dir  # converts the GGUF once, then a cache hit

        return str(embedded_model_dir())
    return model


class PromptFormat(BaseModel):
    """How the tuned model must be prompted: the prompt it saw in training, for eval and serve."""

    template: str  # LLaMA-Factory template name (qwen: ChatML)
    system: str
    separator: str = "####"

    def messages(self, instruction: str, input: str) -> list[dict[str, str]]:
        # LLaMA-Factory's alpaca reader joins the non-empty parts of instruction and input with a
        # newline into one user turn; the sharegpt files we write hold that same text.
        user = "\n".join(part for part in (instruction, input) if part)
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


# The stage LLaMA-Factory's loader reads a dataset with (DPO, ORPO and SimPO read their pairs as rm).
LoaderStage = Literal["sft", "rm", "kto", "ppo", "pt"]


class SplitInfo(BaseModel):
    dataset: str  # the name in dataset_info.json
    file: str  # relative to the data dir
    examples: int
    documents: int
    stage: LoaderStage = "sft"
    token_lengths: list[int] = Field(default_factory=list)  # full prompt+answer, in file order (after check)


class TaskLabels(BaseModel):
    labels: list[str] | None  # None: open-ended answers (QA, summaries)
    source: str  # where the label set came from, shown in the eval report


class Manifest(BaseModel):
    """`prepare`'s record of a prepared dataset; `check`, `train` and `eval` read it."""

    format: Literal["alpaca", "sharegpt"]
    file_type: Literal["json", "jsonl"]
    prompt: PromptFormat
    model: str  # whose tokenizer the check counted tokens with
    cutoff_len: int
    seed: int
    approved: str  # the approved JSONL it was built from
    splits: dict[Split, SplitInfo]
    preference: SplitInfo | None = None
    # Datasets for the other stages, by kind: kto, prompts (PPO), text_train and text_validation (pt).
    extra: dict[str, SplitInfo] = Field(default_factory=dict)
    flat: list[str] = Field(default_factory=list)  # the CSV files for other trainers (not LLaMA-Factory's)
    test_records: str = "test_records.jsonl"  # the test split as TrainingExample lines, for eval
    tasks: dict[str, TaskLabels] = Field(default_factory=dict)
    checked: bool = False  # set once LLaMA-Factory's own loader read every example back

    @classmethod
    def load(cls, data_dir: Path) -> Manifest:
        path = Path(data_dir) / MANIFEST
        if not path.is_file():
            raise FinetuneError(f"{path} does not exist: run `distill-finetune prepare` first")
        try:
            return cls.model_validate_json(path.read_text(encoding="utf-8"))
        except ValidationError as exc:
            raise FinetuneError(f"{path} is not a manifest written by `distill-finetune prepare` "
                                f"({exc.errors()[0]['msg']}): run prepare again") from exc

    @model_validator(mode="after")
    def _pairs_read_as_rm(self) -> Manifest:
        if self.preference is not None:  # manifests from before `stage` was recorded: pairs are ranking data
            self.preference.stage = "rm"
        return self

    def datasets(self) -> dict[str, SplitInfo]:
        """Every dataset LLaMA-Factory reads, by kind: the SFT splits, preference, then the extras."""
        pairs = {"preference": self.preference} if self.preference else {}
        return {**self.splits, **pairs, **self.extra}

    def save(self, data_dir: Path) -> None:
        (Path(data_dir) / MANIFEST).write_text(self.model_dump_json(indent=2), encoding="utf-8")


def write_prompt_file(directory: Path, prompt: PromptFormat) -> None:
    Path(directory, PROMPT_FILE).write_text(prompt.model_dump_json(indent=2), encoding="utf-8")


def read_prompt_file(directory: Path) -> PromptFormat | None:
    path = Path(directory, PROMPT_FILE)
    return PromptFormat.model_validate(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None
