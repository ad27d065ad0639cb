"""bench/gpu/check.py, the prepared GPU check, run end to end with --tiny on the CPU: the same code
that builds Qwen2-7B on a lent GPU, trains it through llamafactory-cli (LoRA and QLoRA), merges,
and serves it through ModelRuntime, the Batcher and gunicorn, on a tiny Qwen2. It cannot rot
between the rare runs on a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

CHECK_DIR = Path(__file__).resolve().parents[1] / "bench" / "gpu"
SECTIONS = ["device", "build", "serve_bf16", "continuous", "decode_compiled", "train_qlora", "train_lora", "merge_lora",
            "qlora_adapter", "http", "serve_int4", "serve_int8"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    for module in ("torch", "llamafactory", "bitsandbytes", "gunicorn", "flask"):
        pytest.importorskip(module, reason="needs the model and serve extras")
    root = tmp_path_factory.mktemp("gpu-check")
    out = root / "figures.json"
    result = subprocess.run([sys.executable, str(CHECK_DIR / "check.py"), "--tiny", "--out", str(out),
                             "--work", str(root / "work")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text()), result.stdout, root / "work"


@pytest.mark.model
@pytest.mark.slow
def test_every_section_runs_and_reports_its_figures(tiny_run: tuple[dict[str, Any], str, Path]) -> None:
    figures, _, work = tiny_run
    sections = figures["sections"]
    assert list(sections) == SECTIONS
    failed = {name: s.get("error") for name, s in sections.items() if s["status"] != "ok"}
    assert not failed
    assert sections["device"]["copy_bandwidth_gbs"] > 0
    for method in ("lora", "qlora"):
        train = sections[f"train_{method}"]
        assert train["steps"] == 3 and train["s_per_step"] > 0 and train["tokens_per_s"] > 0
        assert train["shortest_example_tokens"] > train["cutoff_len"]  # every step is full
        assert train["peak_memory_gb"] > 0
    # The QLoRA run really trained on a 4-bit base: the train.yaml the user's path wrote says so.
    assert "quantization_bit: 4" in (work / "run-qlora" / "train.yaml").read_text()
    assert sections["merge_lora"]["answer_tokens"] == 4 and sections["qlora_adapter"]["answer_tokens"] == 4
    served = sections["serve_bf16"]
    assert served["batch1_eager"]["tokens_per_s"] > 0 and served["ceiling_tokens_per_s"] > 0
    assert [c["clients"] for c in served["concurrency"]] == [8, 32]
    assert all(c["requests"] == c["clients"] and c["p95_s"] >= c["p50_s"] > 0 for c in served["concurrency"])
    # Forced lengths: the stop fires right after the forced separator, full answers run to the end.
    early = served["early_exit"]
    assert early["conclusion_tokens"] == 4 + 4 and early["full_tokens"] == 4 + 4 + 24
    crowds = sections["continuous"]["concurrency_continuous"]
    assert [(c["engine"], c["clients"], c["requests"]) for c in crowds] == [("continuous", 8, 8), ("continuous", 32, 32)]
    assert all(c["tokens_per_s"] > 0 and c["p95_s"] >= c["p50_s"] > 0 for c in crowds)
    compiled = sections["decode_compiled"]
    assert compiled["greedy_equal_to_eager"] is True and compiled["batch1_compiled"]["tokens_per_s"] > 0
    assert sections["http"]["http_status"] == 200 and sections["http"]["completion_tokens"] > 0
    for quantization in ("int4", "int8"):
        assert sections[f"serve_{quantization}"]["footprint_gb"] > 0


@pytest.mark.model
@pytest.mark.slow
def test_the_table_comes_last(tiny_run: tuple[dict[str, Any], str, Path]) -> None:
    _, stdout, _ = tiny_run
    table = stdout[stdout.rindex("\nfigures: "):]
    for name in SECTIONS:
        assert f"\n{name} " in table
    assert "batch-1 decode, compiled (static cache)" in table and "early exit" in table
    assert "FAILED" not in table and "SKIPPED" not in table


def test_a_failing_or_overlong_section_is_recorded_and_the_rest_run(tmp_path: Path) -> None:
    sys.path.insert(0, str(CHECK_DIR))
    try:
        from harness import Harness, Section
    finally:
        sys.path.remove(str(CHECK_DIR))

    def broken() -> tuple[dict, list]:
        raise ValueError("no GPU here")

    harness = Harness(out=tmp_path / "f.json", budget_s=60)
    harness.run_all([Section("broken", 1, broken), Section("too_long", 600, lambda: ({}, [])),
                     Section("fine", 1, lambda: ({"x": 1}, [("x", "1")]))])
    sections = json.loads((tmp_path / "f.json").read_text())["sections"]
    assert sections["broken"]["status"] == "failed" and "no GPU here" in sections["broken"]["error"]
    assert sections["too_long"]["status"] == "skipped" and "time budget" in sections["too_long"]["error"]
    assert sections["fine"] == {"x": 1, "status": "ok", "seconds": sections["fine"]["seconds"]}
    table = harness.table()
    assert "broken             FAILED: ValueError: no GPU here" in table and "SKIPPED" in table
