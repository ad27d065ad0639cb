"""The whole stage through its command line, for real: prepare -> llamafactory-cli train (LoRA of
SmolLM2 for a couple of steps, resumed once) -> llamafactory-cli export (merge) -> eval, then the
serving runtime loads the merged model and base + adapter and both answer alike."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

pytest.importorskip("llamafactory", reason="needs the model extra")

from distillery.jsonl import write_jsonl
from distillery.runtime import GenerationConfig, ModelRuntime, embedded_model_dir
from doubles.examples import sample_examples
from finetune.cli import main

pytestmark = [pytest.mark.model, pytest.mark.slow]

# CPU-sized: batch 4 at cutoff 256 (the sample's English examples are ~65 tokens), no activation
# recomputation, a checkpoint every step so the second call has one to resume from.
TINY = ["per_device_train_batch_size=4", "gradient_accumulation_steps=1", "logging_steps=1", "save_steps=1",
        "disable_gradient_checkpointing=true", "per_device_eval_batch_size=4"]


def cli(workspace: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["-w", str(workspace), *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, embedded_cache: Path) -> tuple[Path, str]:
    """A workspace whose approved records went through `prepare` (and that command's output)."""
    ws = tmp_path_factory.mktemp("ws")
    (ws / "exports").mkdir()
    write_jsonl(ws / "exports" / "approved.jsonl", sample_examples(8, 4, language="en"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILLERY_CACHE", str(embedded_cache))
        result = cli(ws, "prepare", "--model", "embedded", "--cutoff-len", "256")
    assert result.exit_code == 0, result.output
    return ws, result.output


@pytest.fixture(autouse=True)
def _cache_and_threads(embedded_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("DISTILLERY_CACHE", str(embedded_cache))
    # One OpenMP thread, here and in the llamafactory-cli children: on a 2-core box that anything
    # else is using, two spinning OpenMP threads ran SmolLM2 4x slower than one (measured).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_approved_records_to_an_evaluated_model(prepared: tuple[Path, str], embedded_cache: Path) -> None:
    workspace, output = prepared
    assert "LLaMA-Factory reads all 32 examples" in output and "distill-finetune train" in output

    run = workspace / "finetune" / "runs" / "sft-lora"
    sets = [arg for s in TINY for arg in ("--set", s)]
    # An interrupted run, as far as the next call can tell: it stopped after step 1 with a checkpoint.
    result = cli(workspace, "train", *sets, "--set", "max_steps=1", "--no-merge")
    assert result.exit_code == 0, result.output
    assert (run / "adapter" / "checkpoint-1" / "trainer_state.json").is_file()
    config = yaml.safe_load((run / "train.yaml").read_text())
    assert (config["template"], config["lora_target"], config["cutoff_len"], config["bf16"]) == ("qwen", "all", 256, False)

    result = cli(workspace, "train", *sets, "--set", "max_steps=2")
    assert result.exit_code == 0, result.output
    assert "checkpoint-1" in result.output  # resumed, not restarted
    state = json.loads((run / "adapter" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2]
    assert (run / "merged" / "model.safetensors").is_file()
    assert "resume_from_checkpoint" in (run / "train.log").read_text()

    result = cli(workspace, "train", *sets, "--set", "max_steps=2", "--no-merge")
    assert result.exit_code == 0 and "already trained with this exact train.yaml" in result.output

    result = cli(workspace, "eval", "--max-new-tokens", "12", "--batch-size", "4")
    assert result.exit_code == 0, result.output
    report = json.loads((run / "eval" / "eval.json").read_text())
    assert [m["name"] for m in report["models"]] == ["base", "tuned"] and report["test_examples"] == 4
    for model in report["models"]:
        assert 0 <= model["accuracy"] <= 1 and 0 <= model["format_compliance"] <= 1
        assert 0 < model["mean_generated_tokens"] <= 12
    assert report["models"][1]["model"] == str(run / "merged")
    assert "conclusion accuracy" in result.output and "change" in result.output
    assert len((run / "eval" / "predictions-tuned.jsonl").read_text().splitlines()) == 4

    # What serve does: load the merged dir, and base + adapter; greedy answers agree.
    messages = [[{"role": "system", "content": "You are a helpful assistant."},
                 {"role": "user", "content": sample_examples(8, 4, language="en")[0].instruction + "\nArticle 3."}]]
    gen = GenerationConfig(max_new_tokens=8, stop=["####"])
    merged = ModelRuntime.load(run / "merged").generate(messages, gen)[0]
    adapted = ModelRuntime.load(embedded_model_dir(embedded_cache), adapter=run / "adapter").generate(messages, gen)[0]
    assert merged.completion_tokens > 0 and merged.text == adapted.text


def test_dry_run_writes_the_yaml_and_deepspeed_files(prepared: tuple[Path, str]) -> None:
    workspace, _ = prepared
    result = cli(workspace, "train", "--run", "qlora-dry", "--method", "qlora", "--deepspeed", "2", "--dry-run")
    assert result.exit_code == 0, result.output
    run = workspace / "finetune" / "runs" / "qlora-dry"
    config = yaml.safe_load((run / "train.yaml").read_text())
    assert config["quantization_bit"] == 4 and config["deepspeed"] == str(run / "ds_z2.json")
    assert json.loads((run / "ds_z2.json").read_text())["zero_optimization"]["stage"] == 2
    assert not (run / "adapter").exists()


def test_a_wrong_model_path_is_one_sentence(prepared: tuple[Path, str], tmp_path: Path) -> None:
    workspace, _ = prepared
    result = CliRunner().invoke(main, ["-w", str(workspace), "train", "--run", "bad", "--model",
                                       str(tmp_path / "no-such-model"), *[a for s in TINY for a in ("--set", s)]])
    assert result.exit_code == 1
    assert f"cannot load the model '{tmp_path / 'no-such-model'}'" in result.output
    assert "pass --model with the local directory" in result.output and "Traceback" not in result.output


def test_missing_dataset_says_run_prepare(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["-w", str(tmp_path), "train"])
    assert result.exit_code == 1 and "run `distill-finetune prepare` first" in result.output
