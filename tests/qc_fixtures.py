"""Workspaces for the qc tests: real SQLite stores filled through annotate's own store API."""

from __future__ import annotations

import hashlib
import itertools
import random
from pathlib import Path

from pydantic import BaseModel

from annotate.runner import annotation_id
from distillery.records import Annotation, Chunk, Document
from distillery.store import Store
from distillery.tasks import load_task
from qc.checks import CheckConfig
from qc.text import jaccard, shingles

MODEL = "moonshot-v1-8k"
_NEAR = CheckConfig().near_duplicate

_SUBJECTS = ["个人信息处理者", "网络运营者", "数据出境方", "关键信息基础设施运营者", "平台经营者", "医疗机构", "金融机构",
             "教育机构", "应用程序开发者", "快递企业", "物业公司", "招聘平台"]
_ACTIONS = ["告知处理目的和方式", "取得个人的单独同意", "开展个人信息保护影响评估", "指定个人信息保护负责人",
            "采取加密和去标识化措施", "在境内存储数据", "及时删除过期数据", "建立投诉举报渠道", "定期开展合规审计",
            "向主管部门报送安全事件"]
_DETAILS = ["违反者由主管部门责令改正", "情节严重的处五十万元以下罚款", "并应当记录处理情况", "涉及未成年人的从严处理",
            "法律另有规定的除外", "确保数据的完整性和可用性", "并向社会公开处理规则", "保存期限不少于三年"]
_DEPTS = ["行政部", "工会", "人力资源部", "市场部", "研发中心", "财务部", "后勤处", "团委"]
_EVENTS = ["篮球赛", "读书会", "登山活动", "消防演练", "年终联欢会", "羽毛球比赛", "摄影展", "志愿者活动", "健康讲座"]
_PLACES = ["体育馆", "三楼会议室", "员工食堂", "园区广场", "图书馆", "报告厅"]
_DAYS = ["周一", "周三", "周五", "周六上午", "下月初", "本周日"]
# Off-topic answers in several wordings: one template with a slot changed is a near duplicate.
_OFF_REASONS = ["文本是{dept}{day}在{place}举办{event}的通知，与个人信息保护无关。",
                "这是{dept}关于{event}的安排：{day}，{place}。与个人信息保护无关。",
                "{event}将由{dept}{day}在{place}举行，此类活动通知与个人信息保护无关。",
                "通知只说明了{event}的时间（{day}）和地点（{place}），主办方是{dept}，与个人信息保护无关。"]
_REASONS = ["文本是{dept}{day}在{place}举办{event}的通知，与个人信息保护无关。",
                "这是一则活动通知：{event}由{dept}组织，{day}在{place}进行，不涉及个人信息。",
                "{dept}请大家{day}到{place}参加{event}；内容与数据安全和隐私保护没有关系。",
                "通知只说明了{event}的时间（{day}）和地点（{place}），主办方是{dept}，与主题无关。"]
_REASONS = ["第{n}条要求{s}{a}，{d}，属于个人信息保护义务。", "文本规定{s}须{a}（第{n}条），{d}，与数据安全直接相关。",
            "依据第{n}条，{s}负有{a}的义务，{d}。"]


class Answer(BaseModel):
    text: str  # the chunk
    conclusion: str
    reasoning: str
    doc: str = "doc0"  # documents group chunks
    question: str | None = None  # QA answers
    status: str = "ok"


def relevant_answers(n: int, *, seed: int = 7, docs: int = 4) -> list[Answer]:
    """n varied, grounded relevance answers, no two near-duplicates: ~70% relevant."""
    rng = random.Random(seed)
    on = list(itertools.product(range(len(_REASONS)), _SUBJECTS, _ACTIONS, _DETAILS))
    off = list(itertools.product(_DEPTS, _EVENTS, _PLACES))
    rng.shuffle(on)
    rng.shuffle(off)
    out: list[Answer] = []
    seen: list[set[str]] = []  # the answers' shingles, to keep out near duplicates
    for i in range(n):
        relevant, day = rng.random() < 0.7, None
        if not relevant:
            day = rng.choice(_DAYS)
        while True:  # the next combination of this label that is no near duplicate of an earlier answer
            if relevant:
                t, subject, action, detail = on.pop()
                text = f"第{i + 1}条 {subject}应当{action}，{detail}。"
                answer = Answer(text=text, conclusion="相关", reasoning=_REASONS[t].format(n=i + 1, s=subject, a=action, d=detail),
                                doc=f"doc{i % docs}")
            else:
                (dept, event, place), wording = off.pop(), _OFF_REASONS[len(off) % len(_OFF_REASONS)]
                text = f"{dept}将于{day}在{place}举办{event}，请各位同事准时参加。"
                answer = Answer(text=text, conclusion="不相关", doc=f"doc{i % docs}",
                                reasoning=wording.format(dept=dept, day=day, place=place, event=event))
            own = shingles(f"{answer.conclusion} {answer.reasoning}", 3)
            if all(jaccard(own, other) < _NEAR for other in seen):
                break
        seen.append(own)
        out.append(answer)
    return out


def _sha(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()


def add_answers(store: Store, task_name: str, answers: list[Answer]) -> list[str]:
    """Store the answers as annotation records of a built-in task; returns their ids in order."""
    task = load_task(task_name)
    store.put_task(task.version())
    docs: dict[str, list[Answer]] = {}
    for a in answers:
        docs.setdefault(a.doc, []).append(a)
    chunk_of: dict[int, Chunk] = {}
    for name, group in docs.items():
        doc = Document(id=_sha("doc", name), path=f"docs/{name}.txt", kind="txt", n_chars=sum(len(a.text) for a in group))
        chunks, pos = [], 0
        for seq, a in enumerate(dict.fromkeys(a.text for a in group)):
            chunks.append(Chunk(id=_sha(doc.id, a), document_id=doc.id, seq=seq, text=a, char_start=pos,
                                char_end=pos + len(a), size=len(a)))
            pos += len(a)
        store.add_document(doc, chunks)
        by_text = {c.text: c for c in chunks}
        for a in group:
            chunk_of[id(a)] = by_text[a.text]
    ids, records = [], []
    for i, a in enumerate(answers):
        chunk = chunk_of[id(a)]
        parent = None
        if a.question is not None:
            parent = Annotation(id=annotation_id(chunk.id, task.hash, MODEL, "questions", None, 0), chunk_id=chunk.id,
                                task_hash=task.hash, task_name=task.name, step="questions", status="ok",
                                conclusion=a.question, reasoning="问题覆盖了文本要点。", model=MODEL, provider="openai")
            records.append(parent)
        step = "answer" if a.question is not None else "main"
        rec = Annotation(id=annotation_id(chunk.id, task.hash, MODEL, step, parent.id if parent else None, i),
                         chunk_id=chunk.id, task_hash=task.hash, task_name=task.name, step=step,
                         parent_id=parent.id if parent else None, item_index=i, input=a.question, status=a.status,
                         conclusion=a.conclusion if a.status == "ok" else None,
                         reasoning=a.reasoning if a.status == "ok" else None,
                         raw_text=f"{a.conclusion}####{a.reasoning}" if a.status == "ok" else a.reasoning,
                         error=None if a.status == "ok" else "contract broken after 3 answers: no '####'",
                         model=MODEL, provider="openai", prompt_tokens=100, completion_tokens=30)
        records.append(rec)
        ids.append(rec.id)
    store.plan(records)
    return ids


def workspace(tmp_path: Path, n: int = 60, *, task: str = "relevance", seed: int = 7) -> Path:
    """A workspace directory whose store holds n relevance answers."""
    ws = tmp_path / "ws"
    with Store.open(ws) as store:
        add_answers(store, task, relevant_answers(n, seed=seed))
    return ws
