"""The qc command line end to end, on a workspace annotated by the real runner against fake Moonshot."""

import asyncio
import csv
import subprocess
import sys

import pytest
from click.testing import CliRunner

from annotate import runner
from distillery.records import TrainingExample
from distillery.tasks import load_task
from doubles.moonshot import FakeMoonshot
from helpers import ingested_store, openai_config
from qc.cli import main
from qc_fixtures import relevant_answers

KEY = "sk-qc-cli"
COMMANDS = [[], ["check"], ["sample"], ["samples"], ["review"], ["sheet"], ["sheet", "export"], ["sheet", "import"],
            ["report"], ["export"]]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_everywhere(cmd):
    result = CliRunner().invoke(main, [*cmd, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_python_dash_m_qc():
    done = subprocess.run([sys.executable, "-m", "qc", "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and "check" in done.stdout and "export" in done.stdout


def teacher(messages):
    """A plausible teacher: quotes the chunk; refuses on one, answers off-topic on another."""
    text = messages[-1]["content"].split("## 文本\n", 1)[1].strip()
    if "拒答" in text:
        return "不相关####抱歉，作为人工智能我无法判断这段文本。"
    if "跑题" in text:
        return "相关####该文本讨论了碳排放交易市场的建设进展与价格走势。"
    if "应当" in text:
        return f"相关####文本规定{text[4:30]}，直接涉及个人信息保护。"
    return f"不相关####文本是{text[:24]}，与个人信息保护无关。"


def test_check_sample_offline_review_report_export(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_MOONSHOT_KEY", KEY)
    texts = [a.text for a in relevant_answers(40, seed=21)] + ["第四十一条 拒答测试：处理者应当保存记录。",
                                                                "第四十二条 跑题测试：处理者应当公开规则。"]
    store = ingested_store(tmp_path, texts)
    task = load_task("relevance")
    with FakeMoonshot(api_key=KEY, responder=teacher) as server:
        config = openai_config(server.base_url, concurrency=4, rpm=60000)
        runner.plan(store, task, config)
        stats = asyncio.run(runner.run_job(store, task, config))
    assert stats.by_status == {"ok": 42}
    store.close()
    ws = tmp_path / "ws"
    cli = CliRunner()

    def qc(*args):
        result = cli.invoke(main, ["-w", str(ws), *map(str, args)], terminal_width=200)
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())

    out = qc("check", "--near", "0.8")  # the double fills one template with a slice of the chunk: near duplicates at 0.6
    assert "refusal" in out and "grounding" in out and "42 answered records checked" in out
    out = qc("sample", "--margin", "0.15", "--expected", "0.9", "--target", "0.6")
    # The refusal and the off-topic answer are flagged out; 17 records for an unlimited lot, 13 for these 40.
    assert "sample s1: 13 of 40 records" in out and "13 records instead of the 17" in out
    sheet = tmp_path / "s1.csv"
    qc("sheet", "export", sheet, "--reviewer", "lin")
    with sheet.open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row["verdict"] = "accept"
    rows[0] |= {"verdict": "fix", "fixed_reasoning": "改正：" + rows[0]["reasoning"]}
    with sheet.open("w", encoding="utf-8-sig", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert "13 verdicts imported" in qc("sheet", "import", sheet)
    out = qc("report")
    assert "Train on this lot: 92.3% accepted, and the 95% interval 66.7%-98.6% is at or above the target 60%" in out
    assert "by reviewer" in out and "lin" in out
    out = qc("export")
    assert "training examples │ 40" in out
    lines = (ws / "exports" / "approved.jsonl").read_text(encoding="utf-8").splitlines()
    examples = [TrainingExample.model_validate_json(line) for line in lines]
    assert len(examples) == 40 and sum(e.corrected for e in examples) == 1
    assert not any("拒答" in e.input or "跑题" in e.input for e in examples)
    assert all(e.output.count("####") == 1 and e.teacher_model == "moonshot-v1-8k" for e in examples)
    pairs = (ws / "exports" / "preference_pairs.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(pairs) == 1 and "改正：" in pairs[0]
