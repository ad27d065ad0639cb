"""The second distillation round, for real: a tiny SFT run of SmolLM2 answers its training prompts,
a fake teacher judges and corrects, the corrections are stored, exported by qc as preference pairs,
prepared, and a DPO run of one step starts from the SFT run's merged model."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

pytest.importorskip("llamafactory", reason="needs the model extra")

from grow_fixtures import approved_workspace, export_records

from distillery.store import Store
from distillery.workspace import Workspace
from doubles.moonshot import FakeMoonshot
from finetune.cli import main
from finetune.config import read_run
from finetune.evaluate import Prediction
from finetune.second_round import (
    ANSWERS_FILE,
    StudentAnswer,
    adapter_hash,
    read_correction,
    read_verdict,
    round_dir,
    second_round,
    train_ids,
)
from finetune.workspace import Manifest
from helpers import openai_config

pytestmark = [pytest.mark.model, pytest.mark.slow]

KEY = "sk-second-round"
TINY = ["per_device_train_batch_size=2", "gradient_accumulation_steps=1", "logging_steps=1", "save_steps=1",
        "disable_gradient_checkpointing=true", "max_steps=1"]
SETS = [arg for s in TINY for arg in ("--set", s)]


def cli(workspace: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["-w", str(workspace), *args], catch_exceptions=False)


@pytest.fixture(autouse=True)
def _env(embedded_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("DISTILLERY_CACHE", str(embedded_cache))
    monkeypatch.setenv("FAKE_MOONSHOT_KEY", KEY)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory: pytest.TempPathFactory, embedded_cache: Path) -> Path:
    """A workspace with approved relevance records, prepared and tuned for one step (sft-lora, merged)."""
    ws = approved_workspace(tmp_path_factory.mktemp("round2"), n=12, docs=4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILLERY_CACHE", str(embedded_cache))
        mp.setenv("OMP_NUM_THREADS", "1")
        result = cli(ws, "prepare", "--model", "embedded", "--cutoff-len", "512")
        assert result.exit_code == 0, result.output
        result = cli(ws, "train", *SETS)
        assert result.exit_code == 0, result.output
    assert (ws / "finetune" / "runs" / "sft-lora" / "merged" / "config.json").is_file()
    return ws


def teacher_says(messages: list[dict[str, Any]]) -> str:
    """right for the planted answer marked RIGHT; a correction otherwise (BADFIX: with the wrong label)."""
    user = messages[-1]["content"]
    if "PLANT-RIGHT" in user:
        return "正确"
    conclusion = user.split("## 参考答案（已审核）\n结论：", 1)[1].split("\n", 1)[0]
    if "PLANT-BADFIX" in user:
        other = "不相关" if conclusion == "相关" else "相关"
        return f"错误\n{other}####改正：结论应当相反。"
    return f"**错误**\n{conclusion}####教师改正：依据原文的规定，结论为{conclusion}，学生的理由不完整。"


def plant(ws: Path, run: Path, marks: list[str]) -> dict[str, str]:
    """Cache answers with the approved conclusion for the first training prompts (id -> mark)."""
    settings = read_run(run)
    data = Path(settings["dataset_dir"])
    ids = train_ids(data, Manifest.load(data))
    approved = [json.loads(line) for line in Workspace(ws).approved.read_text(encoding="utf-8").splitlines()]
    chosen = [ex for ex in approved if ex["annotation_id"] in ids][:len(marks)]
    adapter = adapter_hash(Path(settings["output_dir"]))
    path = round_dir(run) / ANSWERS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        for ex, mark in zip(chosen, marks):
            pred = Prediction(id=ex["annotation_id"], task="relevance/main", reference=ex["conclusion"],
                              answer=f"{ex['conclusion']}####{mark} 学生的理由。", conclusion=ex["conclusion"],
                              correct=True, format_ok=True, tokens=10)
            fh.write(StudentAnswer(id=pred.id, adapter=adapter, max_new_tokens=24, prediction=pred).model_dump_json() + "\n")
    return {ex["annotation_id"]: mark for ex, mark in zip(chosen, marks)}


def test_reading_the_teachers_verdict() -> None:
    assert read_verdict("正确") == ("right", "")
    assert read_verdict("**Wrong**\nrelevant####because")[0] == "wrong"
    assert read_verdict("判定：错误\n相关####理由") == ("wrong", "相关####理由")
    assert read_verdict("Verdict: incorrect. relevant####x")[0] == "wrong"
    assert read_verdict("not sure")[0] is None


def test_student_answers_teacher_corrects_pairs_train_dpo(sft_run: Path) -> None:
    ws = sft_run
    run = ws / "finetune" / "runs" / "sft-lora"
    planted = plant(ws, run, ["PLANT-RIGHT", "PLANT-WRONG", "PLANT-BADFIX"])
    paths = Workspace(ws)
    with FakeMoonshot(api_key=KEY, responder=teacher_says) as server:
        config = openai_config(server.base_url, model="moonshot-v1-8k", concurrency=2)
        with Store.open(ws) as store:
            stats = asyncio.run(second_round(store, run, paths.approved, config, max_new_tokens=24, batch_size=4))
            chats = [r for r in server.requests if r["path"].endswith("/chat/completions")]
            records = [ann for _, ann in store.annotations(origin="correction")]
            # Again: every student answer from the cache, every verdict from the ledger, nothing stored twice.
            again = asyncio.run(second_round(store, run, paths.approved, config, max_new_tokens=24, batch_size=4))
            assert len([r for r in server.requests if r["path"].endswith("/chat/completions")]) == len(chats)
            assert again.made == 0 and again.answered == 0 and again.cached == stats.seeds
            assert again.corrections == stats.corrections and again.calls_sent == 0
            assert len(list(store.annotations(origin="correction"))) == len(records)
            export_records(store, ws)

    train = train_ids(Path(read_run(run)["dataset_dir"]), Manifest.load(Path(read_run(run)["dataset_dir"])))
    assert stats.seeds == len([i for i in train]) and stats.cached == 3 and stats.answered == stats.seeds - 3
    assert stats.judged == 3 and len(chats) == 3 and stats.right == 1 and stats.fallback == 1
    assert stats.right + stats.wrong + stats.unreadable == stats.seeds
    assert stats.corrections == stats.made == len(records) == stats.seeds - 1
    by_of = {r.derivation["of"]: r for r in records}
    assert set(by_of) <= train and set(by_of) == train - {i for i, m in planted.items() if m == "PLANT-RIGHT"}
    for r in records:
        assert r.origin == "correction" and r.derivation["run"] == "sft-lora" and r.derivation["student_answer"]
        assert r.derivation["verdict"] in {"wrong", "wrong-conclusion", "unreadable"}
    fixed = next(r for i, r in by_of.items() if planted.get(i) == "PLANT-WRONG")
    assert fixed.derivation["chosen"] == "teacher" and fixed.reasoning.startswith("教师改正") and fixed.cost >= 0
    bad = next(r for i, r in by_of.items() if planted.get(i) == "PLANT-BADFIX")
    assert bad.derivation["chosen"] == "approved" and "not the approved" in bad.derivation["why_approved"]
    real = [r for i, r in by_of.items() if i not in planted]
    assert real and all(r.derivation["chosen"] == "approved" for r in real)  # SmolLM2 after one step: wrong or unreadable

    pairs = [json.loads(line) for line in paths.preferences.read_text(encoding="utf-8").splitlines()]
    assert len(pairs) == len(records) and {p["origin"] for p in pairs} == {"correction"}
    assert {p["origin_id"] for p in pairs} <= train
    assert {p["rejected"] for p in pairs} == {r.derivation["student_answer"] for r in records}

    result = cli(ws, "prepare", "--model", "embedded", "--cutoff-len", "512")
    assert result.exit_code == 0, result.output
    manifest = Manifest.load(paths.finetune_data)
    assert manifest.preference is not None and manifest.preference.examples == len(pairs) and manifest.checked
    assert train_ids(paths.finetune_data, manifest) == train  # the split did not move

    result = cli(ws, "train", "--stage", "dpo", "--from-run", "sft-lora", *SETS, "--no-merge")
    assert result.exit_code == 0, result.output
    dpo = ws / "finetune" / "runs" / "dpo-lora"
    config = yaml.safe_load((dpo / "train.yaml").read_text())
    assert config["stage"] == "dpo" and config["model_name_or_path"] == str(run / "merged")
    assert config["dataset"] == "distillery_preference"
    assert (dpo / "adapter" / "adapter_model.safetensors").is_file()
    state = json.loads((dpo / "adapter" / "trainer_state.json").read_text())
    assert state["global_step"] == 1


def test_read_correction_falls_back_on_a_broken_answer() -> None:
    from distillery.growing import Seed

    class _Ex:
        conclusion, reasoning, step = "相关", "理由", "main"

    seed = Seed(example=_Ex(), annotation=None)  # type: ignore[arg-type]
    assert read_correction("相关####更好的理由", seed, ["相关", "不相关"]) == ("相关", "更好的理由")
    assert "contract" in read_correction("只有理由没有分隔符", seed, ["相关", "不相关"])
    assert "not the approved" in read_correction("不相关####x", seed, ["相关", "不相关"])
    assert "no corrected answer" in read_correction("", seed, None)


def test_the_command_shows_the_round_and_the_next_steps(sft_run: Path, tmp_path: Path) -> None:
    with FakeMoonshot(api_key=KEY, responder=teacher_says) as server:
        job = tmp_path / "job.yaml"
        job.write_text(yaml.safe_dump({"teacher": {"provider": "openai", "base_url": server.base_url,
                                                   "api_key_env": "FAKE_MOONSHOT_KEY", "model": "moonshot-v1-8k"}}))
        result = cli(sft_run, "second-round", "--run", "sft-lora", "-c", str(job), "--limit", "2",
                     "--max-new-tokens", "24")
    assert result.exit_code == 0, result.output
    assert "student right" in result.output and "corrections" in result.output and "cost" in result.output
    assert "distill-qc check" in result.output and "train --stage dpo --from-run sft-lora" in result.output
    result = cli(sft_run, "second-round", "--run", "no-such-run")
    assert result.exit_code == 1 and "does not exist" in result.output and "Traceback" not in result.output
