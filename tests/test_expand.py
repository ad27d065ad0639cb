"""The instruction generators (Self-Instruct, Evol-Instruct, instruction backtranslation) against the
fake Moonshot server, on Chinese seeds: filters, elimination rules, self-curation, resume after kill -9."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from grow_fixtures import approved_workspace

from annotate.evol_instruct import evol_instruct
from annotate.ingest import ChunkingConfig, ingest
from annotate.instruction_backtranslation import instruction_backtranslation, read_score
from annotate.self_instruct import parse_tasks, self_instruct
from annotate.similarity import Pool, language, similarity, tokens
from distillery.growing import approved_seeds
from distillery.store import Store
from distillery.workspace import Workspace
from doubles.moonshot import FakeMoonshot
from helpers import openai_config, write_docs

KEY = "sk-test-expand"
ROOT = Path(__file__).resolve().parents[1]

# Distinct new tasks the fake teacher writes (no two alike under ROUGE-L on words).
DIVERSE = [
    "列出文本中提到的所有义务主体", "概括这段通知的主要内容", "指出文本规定的处罚措施", "判断文本是否涉及未成年人保护",
    "提取文本中的时间和地点信息", "将这段条款改写成通俗易懂的说明", "评估该规定对中小企业的影响", "找出需要取得个人同意的情形",
    "比较两种数据处理方式各自的风险", "为这条规定拟一个简短标题", "说明违反该条款可能承担的法律责任", "指出活动通知的主办部门",
    "根据文本回答数据应当保存多久", "列举文本中出现的机构类型", "找出这段话里的关键术语并逐一解释",
    "判断这条规定属于事前监管还是事后监管", "提出三条落实该义务的具体建议", "识别文本涉及的敏感信息类别",
    "判断通知是否要求员工提前报名", "把文本内容翻译成英文", "找出文本中前后矛盾的地方", "估计该活动需要准备哪些物资",
]


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:12], 16)


def _task(instruction: str, input: str, output: str) -> str:
    return f"### 指令\n{instruction}\n### 输入\n{input}\n### 输出\n{output}\n"


def self_instruct_answer(prompt: str) -> str:
    """New tasks, deterministic from the prompt: two good ones, and one of each kind a filter removes."""
    h = _h(prompt)
    first_seed = re.search(r"### 指令\n(.+)\n", prompt).group(1)
    a, b = DIVERSE[h % len(DIVERSE)], DIVERSE[(h // len(DIVERSE)) % len(DIVERSE)]
    parts = [
        _task(a, f"第{h % 97}条 网络运营者应当及时删除过期数据。", f"相关####{a}：该条规定了网络运营者的删除义务。"),
        _task(b, "<无输入>", f"不相关####{b}，无需依据具体文本。"),
        _task(first_seed.replace("以下", "下面的"), "员工食堂下月起调整早餐时间。", "不相关####与个人信息无关。"),  # a seed, edited
        _task(a + "吧", f"第{h % 97}条 网络运营者应当及时删除过期数据。", "相关####同上。"),  # the first task, edited
        _task("根据文本内容画一幅示意图", "第3条 个人信息处理者应当告知处理目的。", "相关####图示义务。"),  # not for a text model
        _task("说明这段文字的写作目的", "公司将于周五举办读书会。", "这是一则通知，没有分隔符"),  # breaks the contract
        "### 输入\n只有输入，没有指令和输出\n",  # unparsable
        _task("好", "第9条 数据。", "相关####太短。"),  # instruction too short
    ]
    return "".join(f"任务 {7 + i}\n{p}\n" for i, p in enumerate(parts))


EVOL_KINDS = ("copy", "same", "equal", "refuse", "good", "good")
KIND_OF: dict[str, str] = {}  # seed input -> how the fake teacher evolves its instruction (set by the test)


def evol_kind(text: str) -> str:
    return KIND_OF.get(text, "good")


def evol_answer(prompt: str) -> str:
    given = re.search(r"#给定指令#：\n(.*?)\n#输入#：\n(.*?)\n#", prompt, re.S)
    instruction, text = given.group(1), given.group(2)
    kind = evol_kind(text)
    if kind == "copy":
        return f"{instruction}，并按给定指令的要求作答"  # rule 3: the prompt's words
    if kind == "same":
        return instruction + "。"  # rule 1: nothing gained (similar)
    if kind == "equal":
        return f"{instruction}（同义改写，要求不变，请认真回答）"  # rule 1: the teacher finds it equal
    if kind == "refuse":
        return f"{instruction}（需要拒答），并逐条列出所依据的条款原文"  # rule 2: the answer refuses
    return f"{instruction}，并逐条列出所依据的原文，第{prompt.count('#')}步"


def answer_for(prompt: str) -> str:
    if "（需要拒答）" in prompt:
        return "抱歉####我无法回答这个问题。"
    return "相关####该指令要求逐条分析文本，文本规定的义务与个人信息保护直接相关，依据原文如上。"


def humpback_score(text: str) -> int:
    return 1 + _h(text) % 5


def responder(messages: list[dict]) -> str:
    prompt = messages[-1]["content"]
    if "任务设计者" in prompt:
        return self_instruct_answer(prompt)
    if "指令改写者" in prompt or "指令创作者" in prompt:
        return evol_answer(prompt)
    if "判断它们是否相同" in prompt:
        return "相同" if "同义改写" in prompt else "不相同"
    if "请设想一条指令" in prompt:
        text = prompt.split("文本：\n", 1)[1]
        return _task(f"请概括文本中与“{text[:6]}”有关的要求", "", f"相关####文本开头为{text[:10]}，其要求已概括。")
    if "5分制" in prompt:
        text = prompt.split("输入：\n", 1)[1].split("\n\n回答：", 1)[0]
        return f"回答完整清楚。\nScore: {humpback_score(text)}"
    return answer_for(prompt)


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("FAKE_MOONSHOT_KEY", KEY)
    with FakeMoonshot(api_key=KEY, responder=responder) as srv:
        yield srv


def _seeds(store: Store, ws: Path):
    return approved_seeds(store, Workspace(ws).approved)


def _records(store: Store, origin: str):
    return [a for _, a in store.annotations(origin=origin)]


# -- similarity ----------------------------------------------------------------------------------

def test_similarity_works_on_chinese_words_and_never_drops_non_ascii():
    assert tokens("判断以下文本是否与个人信息保护相关") == ["判断", "以下", "文本", "是否", "与", "个人信息", "保护", "相关"]
    assert tokens("Summarize the GDPR, Article 4.") == ["summarize", "the", "gdpr", "article", "4"]
    assert language("判断以下文本") == "zh" and language("Summarize this") == "en"
    assert similarity("判断以下文本是否与个人信息保护相关", "判断下面的文本是否与个人信息保护有关") >= 0.7
    assert similarity("判断以下文本是否与个人信息保护相关", "概括这段通知的主要内容") < 0.3
    pool = Pool()
    pool.add("seed", "判断以下文本是否与个人信息保护相关", "第1条 个人信息处理者应当告知处理目的。")
    assert not pool.too_similar("概括这段通知的主要内容").similar  # Chinese, starting non-ASCII: kept
    assert not pool.too_similar("「重要」列出文本中的义务主体").similar
    near = pool.too_similar("判断以下文本是否与个人信息保护有关")
    assert near.similar and near.score >= 0.7 and near.what.startswith("seed")
    exact = pool.too_similar("判断以下文本是否与个人信息保护相关", "第1条 个人信息处理者应当告知处理目的。")
    assert exact.similar


def test_the_pool_is_fast_enough_for_thousands_of_entries():
    pool = Pool()
    for i in range(3000):
        pool.add("stored record", f"{DIVERSE[i % len(DIVERSE)]}，编号{i}，范围{i * 7 % 13}", f"第{i}条 文本内容{i}")
    start = time.perf_counter()
    for i in range(20):
        pool.too_similar(f"新的任务{i}：列出所有主体并说明其义务", "一段输入")
    assert time.perf_counter() - start < 5


def test_parse_tasks_reads_sections_robustly():
    text = ("任务 7\n### 指令：概括要点\n### 输入\n<无输入>\n### 输出\n相关####理由\n\n**Task 8**\n"
            "## Instruction\nSummarize it\n## Input\nA text.\n## Output\nrelevant####because\n### 输入\n孤立的输入\n")
    tasks, broken = parse_tasks(text)
    assert [(t.instruction, t.input, t.output) for t in tasks] == [
        ("概括要点", "", "相关####理由"), ("Summarize it", "A text.", "relevant####because")]
    assert broken == 1


# -- Self-Instruct --------------------------------------------------------------------------------

def test_self_instruct_keeps_chinese_tasks_and_counts_every_filter(tmp_path, server):
    ws = approved_workspace(tmp_path, 10, english=True)
    config = openai_config(server.base_url)
    with Store.open(ws) as store:
        seeds = _seeds(store, ws)
        stats = asyncio.run(self_instruct(store, seeds, config, rounds=2, per_round=4, per_request=8, seed=1))
        records = _records(store, "self_instruct")
    assert stats.rounds == 2 and stats.made == len(records) > 0
    assert len(server.chat_hashes()) == 8  # bounded: rounds x per_round requests
    for reason in ("too similar to the workspace", "duplicate of a generated task", "unsuitable for a text model",
                   "output breaks the contract", "unparsable", "instruction too short"):
        assert stats.dropped.get(reason, 0) >= 1, (reason, stats.dropped)
    assert stats.dropped["too similar to the workspace"] >= 8  # the edited seed in every answer
    assert stats.dropped["unsuitable for a text model"] == 8
    instructions = [r.instruction for r in records]
    assert all(language(i) == "zh" for i in instructions)  # Chinese tasks survive
    assert len(set(instructions)) == len(instructions)
    assert all(i in DIVERSE for i in instructions)  # no planted duplicate got through
    seed_docs = {s.example.document_id for s in seeds}
    for r in records:
        assert r.origin == "self_instruct" and r.status == "ok" and r.derivation["round"] in (0, 1)
        assert set(r.derivation["documents"]) <= seed_docs and r.derivation["seeds"]
        assert r.answer and "####" in r.answer
    # a second run stores nothing new and pays for nothing
    sent = len(server.chat_hashes())
    with Store.open(ws) as store:
        again = asyncio.run(self_instruct(store, _seeds(store, ws), config, rounds=2, per_round=4, per_request=8, seed=1))
    assert again.made == 0 and again.after == len(records) and len(server.chat_hashes()) == sent


# -- Evol-Instruct --------------------------------------------------------------------------------

def test_evol_instruct_applies_each_elimination_rule_and_bounds_rounds(tmp_path, server):
    ws = approved_workspace(tmp_path, 12, english=True)
    with Store.open(ws) as store:
        seeds = _seeds(store, ws)
        KIND_OF.update({s.text: EVOL_KINDS[i % len(EVOL_KINDS)] for i, s in enumerate(seeds)})
        stats = asyncio.run(evol_instruct(store, seeds, openai_config(server.base_url), rounds=2, seed=3))
        records = _records(store, "evol_instruct")
    kinds = [evol_kind(s.text) for s in seeds]
    assert {"copy", "same", "equal", "refuse", "good"} <= set(kinds), kinds  # the fixture covers every rule
    assert stats.dropped["copies the prompt's words"] == kinds.count("copy")
    assert stats.dropped["no information gained (similar)"] == kinds.count("same")
    assert stats.dropped.get("no information gained (teacher: equal)", 0) + stats.dropped.get("answer is a refusal", 0) \
        >= 1
    assert stats.dropped.get("answer is a refusal", 0) >= 1
    # an in-breadth evolution skips the equality question: the "equal" lineages fail only in depth
    assert stats.dropped.get("no information gained (teacher: equal)", 0) >= 1
    good = [s for s, k in zip(seeds, kinds) if k == "good"]
    assert stats.rounds == 2
    by_id = {r.id: r for r in records}
    seed_ids = {s.annotation.id for s in seeds}
    for r in records:
        assert r.derivation["round"] in (1, 2) and r.derivation["operation"]
        parent = r.derivation["parent"]
        assert (parent in seed_ids) if r.derivation["round"] == 1 else (by_id[parent].derivation["round"] == 1)
        assert r.text is not None and r.instruction and r.derivation["documents"]
    assert len(records) == 2 * len(good)  # every good lineage evolved twice, no further
    assert all(r.instruction != s.example.instruction for r in records for s in seeds)


# -- instruction backtranslation --------------------------------------------------------------------

def test_humpback_keeps_only_records_scored_at_the_threshold(tmp_path, server):
    ws = approved_workspace(tmp_path, 6)
    texts = [f"第{i}条 {w}应当建立个人信息保护制度，定期开展第{i}次合规审计。" for i, w in
             enumerate(["医疗机构", "快递企业", "物业公司", "招聘平台", "金融机构", "教育机构", "网络运营者", "平台经营者"])]
    with Store.open(ws) as store:
        ingest(store, [write_docs(tmp_path / "more", texts)], config=ChunkingConfig(max_size=200, overlap=0))
        seeds = _seeds(store, ws)
        task = seeds[0].annotation
        stats = asyncio.run(instruction_backtranslation(store, seeds, openai_config(server.base_url), threshold=4))
        records = _records(store, "instruction_backtranslation")
        chunks = {r.chunk_id: store.chunk(r.chunk_id) for r in records}
    scores = [humpback_score(t) for t in texts]
    assert stats.seeds == len(texts)  # the approved chunks are not unlabeled
    assert len(records) == sum(s >= 4 for s in scores) > 0
    assert stats.dropped["scored below 4"] == sum(s < 4 for s in scores) > 0
    for r in records:
        assert r.derivation["score"] >= 4 and r.text is None and r.instruction.startswith("请概括")
        assert (r.task_hash, r.task_name, r.step, r.status) == (task.task_hash, task.task_name, "main", "ok")
        assert r.derivation["documents"] == [chunks[r.chunk_id].document_id]
    assert read_score("理由……\nScore: 5") == 5 and read_score("评分：2分") == 2 and read_score("no score") is None


# -- kill -9, then resume ---------------------------------------------------------------------------

SCRIPT = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, {tests!r})
    from annotate.self_instruct import self_instruct
    from distillery.growing import approved_seeds
    from distillery.store import Store
    from distillery.workspace import Workspace
    from helpers import openai_config
    ws = sys.argv[1]
    with Store.open(ws) as store:
        seeds = approved_seeds(store, Workspace(ws).approved)
        stats = asyncio.run(self_instruct(store, seeds, openai_config(sys.argv[2], concurrency=2), rounds=3,
                                          per_round=6, per_request=8, seed=5))
    print("made", stats.made, "after", stats.after)
""")


def _run(script: Path, ws: Path, url: str) -> subprocess.Popen:
    env = {**os.environ, "FAKE_MOONSHOT_KEY": KEY, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(script), str(ws), url], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _ok_calls(db: Path) -> set[str]:
    with sqlite3.connect(db) as con:
        return {r[0] for r in con.execute("SELECT request FROM calls WHERE status = 'ok'")}


def _generated(db: Path) -> set[tuple]:
    with sqlite3.connect(db) as con:
        return set(con.execute("SELECT id, chunk_id, instruction, text, conclusion, reasoning, derivation FROM annotations "
                               "WHERE origin = 'self_instruct'").fetchall())


def test_kill_9_during_self_instruct_then_rerun_pays_nothing_twice_and_ends_alike(tmp_path):
    script = tmp_path / "grow.py"
    script.write_text(SCRIPT.format(tests=str(ROOT / "tests")), encoding="utf-8")
    killed, fresh = approved_workspace(tmp_path / "a", 10), approved_workspace(tmp_path / "b", 10)
    db = killed / "distillery.db"
    with FakeMoonshot(api_key=KEY, responder=responder, latency_s=0.25) as server:
        proc = _run(script, killed, server.base_url)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not db.exists() or len(_ok_calls(db)) < 8):
            time.sleep(0.03)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stored = _ok_calls(db)
        assert 8 <= len(stored) < 18, "the kill must land mid-run"
        seen = len(server.requests)
        out, _ = _run(script, killed, server.base_url).communicate(timeout=60)
        assert "made" in out, out
        resent = [r["body"] for r in server.requests[seen:] if r["path"].endswith("/chat/completions")]
    stored_keys = {json.dumps(json.loads(s), ensure_ascii=False) for s in stored}
    assert not {json.dumps(b, ensure_ascii=False) for b in resent} & stored_keys, "a stored answer was paid again"
    assert len(resent) == 18 - len(stored)
    with FakeMoonshot(api_key=KEY, responder=responder) as server:
        out, _ = _run(script, fresh, server.base_url).communicate(timeout=60)
        assert "made" in out, out
    assert _generated(db) == _generated(fresh / "distillery.db") != set()


# -- the command line ---------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "origin"), [("self-instruct", "self_instruct"), ("evol-instruct", "evol_instruct"),
                                                ("instruction-backtranslation", "instruction_backtranslation")])
def test_grow_command_runs_each_generator_and_a_rerun_pays_nothing(tmp_path, server, method, origin):
    from click.testing import CliRunner

    from annotate.cli import main

    ws = approved_workspace(tmp_path, 8, docs=4)
    if method == "instruction-backtranslation":  # it needs chunks no approved record covers
        with Store.open(ws) as store:
            ingest(store, [write_docs(tmp_path / "more", ["第九条 网络运营者应当制定网络安全事件应急预案。",
                                                          "下周三下午两点在报告厅召开安全生产会议。"])],
                   config=ChunkingConfig(max_size=200, overlap=0))
    args = ["-w", str(ws), "grow", method, "--provider", "openai", "--base-url", server.base_url,
            "--api-key-env", "FAKE_MOONSHOT_KEY", "--rounds", "1", "--per-round", "2", "--threshold", "1"]
    first = CliRunner().invoke(main, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    with Store.open(ws) as store:
        made = len(_records(store, origin))
    assert made > 0 and "calls sent" in first.output and "next: review" in first.output
    sent = len(server.chat_hashes())
    again = CliRunner().invoke(main, args, catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert len(server.chat_hashes()) == sent  # every answer came from the ledger
    with Store.open(ws) as store:
        assert len(_records(store, origin)) == made
