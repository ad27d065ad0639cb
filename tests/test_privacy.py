"""Personal data stays home: planted values are all found, look-alikes are left alone, and a job
against a real HTTP teacher sends placeholders only, gets the values back into its records, pays
nothing twice, blocks by policy, and leaks no value into its logs or exports."""

from __future__ import annotations

import asyncio
import json
import random
import re

import pytest
from click.testing import CliRunner

from annotate import runner
from annotate.cli import main as annotate_main
from distillery.errors import ConfigError
from distillery.privacy import Detector, Privacy
from distillery.store import Store
from distillery.tasks import load_task
from distillery.teacher_config import PrivacyConfig, load_job_config
from doubles.moonshot import FakeMoonshot
from doubles.personal_data import LOOK_ALIKES, TEMPLATES, luhn_complete, mistyped, planted
from helpers import ingested_store, openai_config, write_docs
from qc.cli import main as qc_main

KEY = "sk-test-privacy"
PLACEHOLDER = re.compile(r"\[[A-Z_]+_\d+\]")


def test_every_planted_value_is_found_in_chinese_and_english_text():
    rng = random.Random(2024)
    detector = Detector(PrivacyConfig())
    missed, wrong = [], []
    counts: dict[str, int] = {}
    for _ in range(1500):
        kind, value = planted(rng)
        counts[kind] = counts.get(kind, 0) + 1
        text = rng.choice(TEMPLATES).format(v=value)
        found = [(text[f.start:f.end], f.kind) for f in detector.find(text)]
        if (value, kind) not in found:
            missed.append((kind, text, found))
        elif len(found) != 1:
            wrong.append((text, found))  # the template's own date or words found as well
    assert missed == [] and wrong == [], (missed[:5], wrong[:5])
    assert min(counts.values()) > 150  # every kind planted often


def test_full_width_digits_and_names_and_own_patterns_are_found():
    detector = Detector(PrivacyConfig(names=["张三", "欧阳娜娜", "John Smith"], patterns={"employee_id": r"EMP-\d{6}"}))
    text = "员工张三（工号EMP-004211）电话：１３８１２３４５６７８，同事欧阳娜娜与John Smith在场；Johnson Smithers不在。"
    found = [(text[f.start:f.end], f.kind) for f in detector.find(text)]
    assert found == [("张三", "name"), ("EMP-004211", "employee_id"), ("１３８１２３４５６７８", "phone"), ("欧阳娜娜", "name"),
                     ("John Smith", "name")]


def test_look_alikes_are_left_alone():
    detector = Detector(PrivacyConfig())
    assert {text: [text[f.start:f.end] for f in detector.find(text)] for text in LOOK_ALIKES} == {t: [] for t in LOOK_ALIKES}


def test_numbers_that_fail_their_check_are_left_alone():
    rng = random.Random(7)
    detector = Detector(PrivacyConfig())
    hits = []
    for _ in range(300):
        for value in mistyped(rng):
            text = f"编号{value}，请核对。"
            hits += [(value, text[f.start:f.end], f.kind) for f in detector.find(text)]
    assert hits == []


def test_a_card_number_without_an_issuer_prefix_needs_a_card_word_nearby():
    rng = random.Random(3)
    number = luhn_complete("9558", 19, rng)  # a domestic 955x card: no international scheme prefix
    detector = Detector(PrivacyConfig())
    assert detector.find(f"流水号{number}") == []
    assert [(f.kind, f.value) for f in detector.find(f"工资卡卡号：{number}")] == [("bank_card", number)]


# -- masking: consistent, persistent, reversible ------------------------------------------------------

def test_the_same_value_gets_the_same_placeholder_across_chunks_formats_and_restarts(tmp_path):
    with Store.open(tmp_path / "ws") as store:
        privacy = Privacy(store, PrivacyConfig(), local_teacher=False)
        first = privacy.screen("客户手机13812345678，邮箱Li.Na@Example.com。")
        second = privacy.screen("请回拨+86 138-1234-5678或联系li.na@example.com，另一位是13912345678。")
    assert first.texts == ["客户手机[PHONE_1]，邮箱[EMAIL_1]。"]
    assert second.texts == ["请回拨[PHONE_1]或联系[EMAIL_1]，另一位是[PHONE_2]。"]
    # each request gets the values back as its own text wrote them
    assert second.restore("回拨[PHONE_1]，备用[PHONE_2]") == "回拨+86 138-1234-5678，备用13912345678"
    assert first.restore("见[PHONE_1]与[PHONE_2]") == "见13812345678与[PHONE_2]"  # not this chunk's: left as is
    with Store.open(tmp_path / "ws") as store:  # a new process (after kill -9): the same numbers, byte for byte
        again = Privacy(store, PrivacyConfig(), local_teacher=False).screen("请回拨+86 138-1234-5678或联系li.na@example.com，另一位是13912345678。")
        assert again.texts == second.texts
        assert store.placeholder_numbers([("phone", "+8613912345678"), ("phone", "+8613700000000")]) == {
            ("phone", "+8613912345678"): 2, ("phone", "+8613700000000"): 3}


def test_two_stores_on_one_workspace_agree_on_numbers(tmp_path):
    with Store.open(tmp_path / "ws") as a, Store.open(tmp_path / "ws") as b:
        assert a.placeholder_numbers([("email", "x@example.com")]) == {("email", "x@example.com"): 1}
        assert b.placeholder_numbers([("email", "y@example.com"), ("email", "x@example.com"), ("name", "张三")]) == {
            ("email", "y@example.com"): 2, ("email", "x@example.com"): 1, ("name", "张三"): 1}


def test_a_value_the_chunk_revealed_is_masked_in_what_goes_with_it(tmp_path):
    number = luhn_complete("9558", 19, random.Random(3))
    with Store.open(tmp_path / "ws") as store:
        screened = Privacy(store, PrivacyConfig(), local_teacher=False).screen(f"工资卡卡号{number}。", f"答案：{number}已冻结")
    assert screened.texts == ["工资卡卡号[BANK_CARD_1]。", "答案：[BANK_CARD_1]已冻结"]


def test_the_embedded_teacher_sees_the_original_unless_told_otherwise(tmp_path):
    text = "手机13812345678"
    with Store.open(tmp_path / "ws") as store:
        assert Privacy(store, PrivacyConfig(), local_teacher=True).screen(text).texts == [text]
        assert Privacy(store, PrivacyConfig(policy="allow"), local_teacher=False).screen(text).texts == [text]
        strict = PrivacyConfig(local_sees_original=False)
        assert Privacy(store, strict, local_teacher=True).screen(text).texts == ["手机[PHONE_1]"]
        blocked = Privacy(store, PrivacyConfig(policy="block"), local_teacher=False).screen(text)
        assert blocked.blocked and "1 phone" in blocked.blocked and "13812345678" not in blocked.blocked


def test_bad_privacy_settings_are_named():
    with pytest.raises(ConfigError, match=r"privacy\.patterns.*Staff"):
        load_job_config(None, {"privacy.patterns": {"Staff": r"S\d+"}})
    with pytest.raises(ConfigError, match=r"privacy\.patterns.*not a regular expression"):
        load_job_config(None, {"privacy.patterns": {"staff": r"S(\d+"}})
    with pytest.raises(ConfigError, match=r"privacy\.policy"):
        load_job_config(None, {"privacy.policy": "hide"})
    with pytest.raises(ConfigError, match="XX"):
        Detector(PrivacyConfig(phone_regions=["CN", "XX"]))


# -- end to end: annotate run (and the judge) against a real HTTP teacher ---------------------------

DOCS = [
    "第一条 请联系张三，手机13812345678，身份证号11010519491231002X，邮箱zhangsan@example.com。",
    "第二条 张三的手机号是138-1234-5678（同上），工资卡卡号6222 0212 3456 7890 128。",
    "第三条 本办法自发布之日起施行。",
    "Contact John Smith at (415) 555-2671 or john.smith@example.org, employee EMP-004211, SSN 536-22-1234.",
]
# Every value planted above, as written and as digits: none may reach the teacher.
SECRETS = ["张三", "13812345678", "138-1234-5678", "11010519491231002X", "zhangsan@example.com", "6222 0212 3456 7890 128",
           "6222021234567890128", "John Smith", "(415) 555-2671", "4155552671", "john.smith@example.org", "EMP-004211",
           "536-22-1234", "536221234"]
JOB = """
privacy:
  names: [张三, John Smith]
  patterns: {employee_id: 'EMP-\\d{6}'}
"""


def teacher(messages):
    """Quotes back every placeholder it was shown, as a teacher writing about the text would."""
    user = messages[-1]["content"]
    seen = "、".join(dict.fromkeys(PLACEHOLDER.findall(user)))
    if "数据质检员" in messages[0]["content"]:  # the judge
        return f"8####理由提到了{seen}。" if seen else "8####理由充分。"
    return f"相关####原文写明了{seen}。" if seen else "不相关####原文没有个人信息。"


def annotate(ws, server, *args):
    cmd = ["-w", str(ws), "run", "--provider", "openai", "--base-url", server.base_url, "--api-key-env", "PRIVACY_KEY",
           "--concurrency", "2", *args]
    return CliRunner().invoke(annotate_main, [str(a) for a in cmd], env={"PRIVACY_KEY": KEY, "COLUMNS": "200"},
                              catch_exceptions=False)


def sent(server) -> list[str]:
    return [json.dumps(r["body"], ensure_ascii=False) for r in server.requests if r["path"].endswith("/chat/completions")]


def by_doc(store: Store) -> dict[int, object]:
    return {int(store.document(store.chunk(a.chunk_id).document_id).path[-7:-4]): a for _, a in store.annotations()}


@pytest.fixture
def workspace(tmp_path):
    ws = tmp_path / "ws"
    CliRunner().invoke(annotate_main, ["-w", str(ws), "ingest", str(write_docs(tmp_path / "docs", DOCS))], catch_exceptions=False)
    (tmp_path / "job.yaml").write_text(JOB, encoding="utf-8")
    return ws, tmp_path / "job.yaml"


def test_mask_sends_placeholders_only_and_records_get_the_values_back(workspace, tmp_path):
    ws, job = workspace
    with FakeMoonshot(api_key=KEY, responder=teacher) as server:
        result = annotate(ws, server, "-c", job)
        assert result.exit_code == 0, result.output
        bodies = sent(server)
        assert len(bodies) == len(DOCS)
        assert [s for s in SECRETS if any(s in b for b in bodies)] == []
        # consistent across chunks: the same person and phone carry the same placeholder in both requests
        first, second = (next(b for b in bodies if marker in b) for marker in ("第一条", "第二条"))
        assert "[NAME_1]" in first and "[NAME_1]" in second and "[PHONE_1]" in first and "[PHONE_1]" in second
        summary = result.output.split("personal data masked before sending", 1)[1].splitlines()[0]
        assert "3 name, 3 phone, 2 email, 1 bank_card, 1 employee_id, 1 id_card, 1 ssn" in summary
        assert [s for s in SECRETS if s in result.output] == []  # nor into the logs

        # a re-run pays nothing: the masked requests are the same, their answers reused
        again = annotate(ws, server, "-c", job, "--retry", "ok")
        assert again.exit_code == 0 and len(sent(server)) == len(DOCS)
        assert re.search(r"answers reused \(not paid again\)\s*│?\s*4", again.output), again.output

        # the judge reads chunk and answer: masked alike, its reason restored
        judged = CliRunner().invoke(qc_main, ["-w", str(ws), "check", "--judge", "-c", str(job), "--base-url",
                                              server.base_url, "--api-key-env", "PRIVACY_KEY", "--model", "moonshot-v1-8k"],
                                    env={"PRIVACY_KEY": KEY, "COLUMNS": "200"}, catch_exceptions=False)
        assert judged.exit_code == 0, judged.output
        judge_bodies = sent(server)[len(DOCS):]
        assert len(judge_bodies) == len(DOCS) and [s for s in SECRETS if any(s in b for b in judge_bodies)] == []
        assert "masked before sending" in judged.output

    with Store.open(ws) as store:
        records = by_doc(store)
        assert "13812345678" in records[0].reasoning and "11010519491231002X" in records[0].reasoning
        assert "138-1234-5678" in records[1].reasoning and "6222 0212 3456 7890 128" in records[1].reasoning
        assert "[PHONE_1]" in records[0].raw_text  # the answer as received stays verbatim
        assert not any(PLACEHOLDER.search(a.reasoning) for a in records.values())
        reasons = [j.reason for js in store.judgements().values() for j in js]
        assert any("13812345678" in r for r in reasons) and not any(PLACEHOLDER.search(r) for r in reasons)

    out = tmp_path / "approved.jsonl"
    exported = CliRunner().invoke(qc_main, ["-w", str(ws), "export", "--force", "-o", str(out)], catch_exceptions=False)
    assert exported.exit_code == 0, exported.output
    lines = out.read_text(encoding="utf-8")
    examples = {e["input"][:3]: e for e in map(json.loads, lines.splitlines())}
    assert "13812345678" in examples["第一条"]["reasoning"]  # the training target reads like its source
    assert not PLACEHOLDER.search(lines)  # no placeholder, so no trace of the mapping


def test_block_sends_no_chunk_with_personal_data_and_says_why(workspace):
    ws, job = workspace
    with FakeMoonshot(api_key=KEY, responder=teacher) as server:
        result = annotate(ws, server, "-c", job, "--privacy", "block")
        assert result.exit_code == 0, result.output
        bodies = sent(server)
        assert len(bodies) == 1 and "第三条" in bodies[0]
        with Store.open(ws) as store:
            records = by_doc(store)
            assert [records[i].status for i in range(4)] == ["blocked", "blocked", "ok", "blocked"]
            assert "personal data found (1 bank_card, 1 name, 1 phone)" in records[1].error  # kinds and counts, no values
            assert "--retry blocked" in records[1].error and not any(s in records[1].error for s in SECRETS)
        status = CliRunner().invoke(annotate_main, ["-w", str(ws), "status"], env={"COLUMNS": "200"})
        assert re.search(r"blocked\s*│\s*3", status.output), status.output
        assert [s for s in SECRETS if s in result.output + status.output] == []

        unblocked = annotate(ws, server, "-c", job, "--privacy", "mask", "--retry", "blocked")
        assert unblocked.exit_code == 0, unblocked.output
        later = sent(server)[1:]
        assert len(later) == 3 and [s for s in SECRETS if any(s in b for b in later)] == []
    with Store.open(ws) as store:
        assert {a.status for a in by_doc(store).values()} == {"ok"}


def test_qa_questions_come_back_with_values_and_go_out_masked_again(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_MOONSHOT_KEY", KEY)
    store = ingested_store(tmp_path, [DOCS[1]])
    task = load_task("qa")

    def qa_teacher(messages):
        if any("出题专家" in m["content"] for m in messages):
            return "[NAME_1]的手机号是多少？\n[NAME_1]的工资卡卡号是什么？####覆盖了联系方式和卡号。"
        return "[PHONE_1]####文本写明[NAME_1]的手机号是[PHONE_1]。"

    with FakeMoonshot(api_key=KEY, responder=qa_teacher) as server:
        config = openai_config(server.base_url).model_copy(update={"privacy": PrivacyConfig(names=["张三"])})
        runner.plan(store, task, config)
        stats = asyncio.run(runner.run_job(store, task, config))
        bodies = sent(server)
    assert stats.by_status == {"ok": 3} and len(bodies) == 3
    assert [s for s in SECRETS if any(s in b for b in bodies)] == []
    # the answer requests ask the question as the teacher wrote it, placeholders and all
    assert sum("## 问题\\n[NAME_1]的手机号是多少？" in b for b in bodies) == 1
    answers = {a.input: a for _, a in store.annotations(step="answer")}
    assert set(answers) == {"张三的手机号是多少？", "张三的工资卡卡号是什么？"}
    assert answers["张三的手机号是多少？"].conclusion == "138-1234-5678"
    assert answers["张三的手机号是多少？"].reasoning == "文本写明张三的手机号是138-1234-5678。"
    assert stats.masked == {"name": 1, "phone": 1, "bank_card": 1}  # the chunk counted once, not per question
