"""Read a prepared dataset back through LLaMA-Factory's own loader, converter, processor and template.

LLaMA-Factory skips malformed examples with a log line and trains on the rest (STACK.md), so a
dataset that "loads" may silently be smaller than the one we wrote. Here every example of every
dataset is run through the same code training will run, with the stage that trains on it (sft,
rm for preference pairs, kto, ppo, pt), and any example it would drop, or whose answer the model
is to learn (not a rejected or undesirable one) breaks the `conclusion####reasoning` contract,
fails the check by name. The full (untruncated) token length
of every example is measured with the model's tokenizer and the training template, so examples
that `cutoff_len` would cut are reported before any GPU time is spent.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from distillery.records import SEPARATOR

from .workspace import FinetuneError, Manifest, SplitInfo, resolve_model

MAX_LISTED = 10  # problems named in the error; the rest are counted


class DatasetError(FinetuneError):
    """The prepared dataset would not train as written; the message names the examples."""

    def __init__(self, data_dir: Path, problems: list[str]) -> None:
        self.problems = problems
        listed = "; ".join(problems[:MAX_LISTED])
        more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        super().__init__(f"{data_dir}: {len(problems)} problem(s), it would not train as written: {listed}{more}. "
                         "Fix them at the source (the approved records) and run prepare again, or fix the file "
                         "and run `distill-finetune check`")


class OverCutoff(BaseModel):
    split: str
    id: str
    tokens: int


class CheckReport(BaseModel):
    examples: dict[str, int]  # dataset name -> examples LLaMA-Factory reads (all of them, or the check fails)
    cutoff_len: int
    over_cutoff: list[OverCutoff]
    longest: int


@contextlib.contextmanager
def _quiet_llamafactory() -> Iterator[None]:
    """LLaMA-Factory logs every loading step and warns per dropped example; the check reports
    what matters itself, by name. Levels are restored after: nothing leaks into later work."""
    import datasets
    from llamafactory.extras import logging as lf_logging

    lf_logging.get_logger()  # configures LLaMA-Factory's root logger (once), so our level sticks
    loggers = [logging.getLogger("llamafactory"), logging.getLogger("datasets")]
    levels = [lg.level for lg in loggers]
    bars = datasets.is_progress_bar_enabled()
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if bars:
            datasets.enable_progress_bars()


def _contract_problem(answer: Any) -> str | None:
    if not isinstance(answer, str) or not answer.strip():
        return "its answer is empty"
    conclusion, sep, _ = answer.partition(SEPARATOR)
    if not sep:
        return f"its answer has no '{SEPARATOR}' between conclusion and reasoning"
    if not conclusion.strip():
        return f"its answer has an empty conclusion before '{SEPARATOR}'"
    return None


def _example_name(row: dict[str, Any], index: int) -> str:
    return f"'{row['id']}' (row {index + 1})" if row.get("id") else f"row {index + 1} (no id)"


def check_dataset(
    data_dir: Path, manifest: Manifest | None = None, *, on_status: Callable[[str], None] | None = None
) -> CheckReport:
    """Check every split of a prepared dataset; raise DatasetError naming each bad example.

    On success the manifest is saved with `checked: true` and every example's token length.
    """
    data_dir = Path(data_dir)
    manifest = manifest or Manifest.load(data_dir)
    status = on_status or (lambda _msg: None)
    status("loading LLaMA-Factory")
    from datasets import load_dataset
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.data.parser import get_dataset_list
    from llamafactory.hparams import DataArguments, ModelArguments, TrainingArguments
    from llamafactory.model import load_tokenizer

    model = resolve_model(manifest.model)
    with _quiet_llamafactory(), tempfile.TemporaryDirectory(prefix="distillery-check-") as scratch:
        # A private datasets cache: a hand-edited file is never answered from a stale cache.
        model_args = ModelArguments(model_name_or_path=model, cache_dir=scratch)
        training_args = TrainingArguments(output_dir=scratch, report_to="none")
        status(f"loading the tokenizer of {manifest.model}")
        try:
            tokenizer_module = load_tokenizer(model_args)
        except (OSError, ValueError) as exc:
            raise FinetuneError(
                f"cannot load the tokenizer of '{manifest.model}' ({str(exc).splitlines()[0]}): pass --model "
                "with a local model directory (the one you will train), or `embedded` for SmolLM2"
            ) from exc
        tokenizer = tokenizer_module["tokenizer"]

        named = manifest.datasets()
        problems: list[str] = []
        over: list[OverCutoff] = []
        counts: dict[str, int] = {}
        for split, info in named.items():
            stage = info.stage
            data_args = DataArguments(template=manifest.prompt.template, dataset_dir=str(data_dir),
                                      dataset=info.dataset, cutoff_len=manifest.cutoff_len, overwrite_cache=True)
            template = get_template_and_fix_tokenizer(tokenizer, data_args)
            status(f"checking {info.file} through LLaMA-Factory")
            try:
                attr = get_dataset_list([info.dataset], str(data_dir))[0]
                rows = load_dataset("json", data_files=[str(data_dir / attr.dataset_name)], split="train",
                                    cache_dir=scratch)
            except Exception as exc:  # datasets raises many types for one cause: the file does not parse
                problem = f"{info.file}: LLaMA-Factory cannot load it: {str(exc).splitlines()[0]}"
                raise DatasetError(data_dir, [problem]) from exc
            lengths, dropped = _check_examples(rows, attr, stage, template, tokenizer, data_args, info, problems)
            info.token_lengths = lengths
            if stage != "pt":  # pre-training packs its text into cutoff_len blocks: nothing is cut off
                over += [OverCutoff(split=split, id=rows[i].get("id") or f"row {i + 1}", tokens=n)
                         for i, n in enumerate(lengths) if n > manifest.cutoff_len]
            # The authority: the exact call training makes. It must read every row we wrote.
            with contextlib.redirect_stdout(io.StringIO()):  # it prints a tokenized example
                try:
                    module = get_dataset(template, model_args, data_args, training_args, stage=stage,
                                         **tokenizer_module)
                    read = len(module["train_dataset"])
                except RuntimeError:  # "Cannot find valid samples": it dropped every row
                    read = 0
            counts[info.dataset] = read
            if read != len(rows) and not dropped:
                problems.append(f"{info.file}: LLaMA-Factory read {read} of {len(rows)} examples")

    if problems:
        manifest.checked = False
        manifest.save(data_dir)
        raise DatasetError(data_dir, problems)
    manifest.checked = True
    manifest.save(data_dir)
    all_lengths = [n for info in named.values() if info.stage != "pt" for n in info.token_lengths]
    return CheckReport(examples=counts, cutoff_len=manifest.cutoff_len, over_cutoff=over,
                       longest=max(all_lengths, default=0))


# What each loader stage's processor needs of a row, said when it drops one.
_NEEDS = {
    "sft": "one user turn then one assistant answer, as strings",
    "rm": "a user turn then a chosen and a rejected answer",
    "kto": "a user turn, one answer and a boolean kto_tag",
    "ppo": "a user turn",
    "pt": "a text",
}


def _check_examples(rows: Any, attr: Any, stage: str, template: Any, tokenizer: Any, data_args: Any, info: SplitInfo,
                    problems: list[str]) -> tuple[list[int], bool]:
    """Convert and tokenize each row alone, as LLaMA-Factory would, so a drop has a name.

    Returns the full token length of every row and whether any row was dropped.
    """
    from llamafactory.data.converter import get_dataset_converter
    from llamafactory.data.processor import (
        FeedbackDatasetProcessor,
        PairwiseDatasetProcessor,
        PretrainDatasetProcessor,
        SupervisedDatasetProcessor,
        UnsupervisedDatasetProcessor,
    )

    convert = get_dataset_converter(attr.formatting, attr, data_args)
    processor = {"sft": SupervisedDatasetProcessor, "rm": PairwiseDatasetProcessor, "kto": FeedbackDatasetProcessor,
                 "ppo": UnsupervisedDatasetProcessor, "pt": PretrainDatasetProcessor}[stage](
        template=template, tokenizer=tokenizer, processor=None, data_args=data_args)
    produced = "chosen_input_ids" if stage == "rm" else "input_ids"
    lengths: list[int] = []
    dropped = False
    for index, row in enumerate(rows):
        name = f"{info.file}: example {_example_name(row, index)}"
        aligned = convert(row)
        out = processor.preprocess_dataset({key: [value] for key, value in aligned.items()})
        prompt, response = aligned["_prompt"], aligned["_response"]
        if not out[produced]:
            dropped = True
            problems.append(f"{name} is dropped by LLaMA-Factory's reader (in {attr.formatting} format it needs "
                            f"{_NEEDS[stage]})")
            lengths.append(0)
            continue
        if stage == "pt":  # the whole text, untruncated, as it will be packed
            text = prompt[0]["content"]
            if not text.strip():
                problems.append(f"{name} has an empty text")
            lengths.append(len(tokenizer(text + tokenizer.eos_token, add_special_tokens=False)["input_ids"]))
            continue
        if not prompt[-1]["content"].strip():
            problems.append(f"{name} has an empty prompt (instruction and input are both empty)")
        # The answers to measure, and whether the first must keep the conclusion####reasoning contract.
        answers, contract = _answers(stage, response)
        if contract:
            problem = _contract_problem(answers[0]["content"])  # the answer, the chosen one, a desirable one
            if problem:
                problems.append(f"{name}: {problem}")
        if stage == "rm" and not str(answers[1]["content"]).strip():
            problems.append(f"{name}: its rejected answer is empty")
        if stage == "kto" and not contract and not str(answers[0]["content"]).strip():
            problems.append(f"{name}: its undesirable answer is empty")
        # Untruncated length: the longest answer after the prompt, as the processors count it.
        longest = 0
        for answer in answers:
            source, target = template.encode_oneturn(tokenizer, prompt + [answer], aligned["_system"], aligned["_tools"])
            longest = max(longest, len(source) + len(target) + (1 if template.efficient_eos else 0))
        lengths.append(longest)
    return lengths, dropped


def _answers(stage: str, response: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    """The answers a row trains on, and whether the first is one the model should learn to give."""
    if stage == "rm":
        return response[:2], True
    if stage == "kto":  # LLaMA-Factory's converter: the desirable answer first, else an empty one first
        desirable = bool(response[0]["content"])
        return [response[0] if desirable else response[1]], desirable
    if stage == "ppo":  # a prompt alone: the answer is generated in training
        return [{"role": "assistant", "content": ""}], False
    return response[:1], True
