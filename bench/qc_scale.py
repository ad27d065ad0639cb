"""QC at scale: `check`, `sample` and `export` on N generated records, time and peak memory.

    nice .venv/bin/python bench/qc_scale.py                     # 1,000,000 records (~8 min to build, ~14 to run)
    nice .venv/bin/python bench/qc_scale.py --records 100000    # quicker
    .venv/bin/python bench/qc_scale.py --records 100000 --keep ws100k   # keep the workspace

Builds a real workspace (distillery.store.Store: documents, chunks, the relevance task, N answered
records), then runs each step through the library API the CLI uses (qc.checks.run_checks,
qc.sampling.create_sample, qc.export.export_approved), each in a fresh process so that its peak
RSS is its own. Prints seconds, records/s and peak RSS per step.

The answers are Chinese (80%) and English (20%) relevance answers composed from several hundred
thousand phrase combinations, so that any two share the topic's words as real answers do; among
them, planted: 1% exact copies, 1% near copies (5% character edits), and 0.1% each of decoding
damage, looping answers, prompt echoes and refusals.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distillery.records import Annotation, Chunk, Document
from distillery.store import Store
from distillery.tasks import load_task

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the edit model lives with the tests
from qc_texts import edit  # noqa: E402

PER_DOCUMENT = 50
BATCH = 5000

_ZH = {
    "org": [a + b for a in ("网络", "平台", "数据", "金融", "医疗", "教育", "物流", "电信", "保险", "零售", "出行", "政务",
                            "能源", "汽车", "游戏") for b in ("运营者", "经营者", "处理者", "机构", "企业", "服务商", "开发者",
                                                       "公司", "单位", "平台方", "受托方", "提供者")],
    "verb": ["应当建立", "应当定期评估", "负责组织实施", "不得擅自变更", "应当及时报告", "依法承担", "应当妥善保存", "应当公开",
             "应当审核", "应当记录", "应当告知个人", "应当删除", "应当加密存储", "不得向第三方提供", "应当每年审计", "应当指定专人管理",
             "应当备案", "应当限制访问", "应当脱敏展示", "应当单独同意后处理", "应当评估出境风险", "应当留存日志", "应当通知监管部门",
             "应当开展培训", "应当制定预案"],
    "object": [a + b for a in ("用户", "员工", "客户", "患者", "学生", "乘客", "会员", "访客", "未成年人", "求职者", "投保人",
                               "商户", "驾驶员", "住户", "老年人", "消费者", "供应商", "考生", "租户", "储户")
               for b in ("的身份信息", "的位置轨迹", "的通讯记录", "的交易明细", "的健康档案", "的生物特征", "的浏览记录",
                         "的账户密码", "的家庭住址", "的人脸图像", "的信用报告", "的行程信息", "的聊天内容", "的设备标识",
                         "的消费偏好", "的社保信息", "的教育经历", "的联系方式", "的收入证明", "的车辆信息")],
    "tail": ["违反者由主管部门责令改正", "情节严重的处五十万元以下罚款", "并应当记录处理情况", "涉及未成年人的从严处理",
             "法律另有规定的除外", "确保数据的完整性和可用性", "并向社会公开处理规则", "保存期限不少于三年", "并在三十日内完成整改",
             "造成损害的依法承担赔偿责任", "拒不改正的暂停相关业务", "并接受社会监督", "具体办法由国务院制定", "必要时可以委托专业机构",
             "对直接负责的主管人员处以罚款", "并向个人提供便捷的撤回方式", "不得以拒绝提供服务相要挟", "跨境传输的还应当通过安全评估"],
    "why": ["属于个人信息保护义务", "与数据安全直接相关", "是个人信息处理规则的一部分", "涉及个人信息权益", "明确了处理者的责任",
            "规定了违法处理的后果", "属于数据合规的核心要求", "直接关系到个人隐私", "是对处理活动的具体约束", "体现了最小必要原则"],
}
_EN = {
    "org": [f"{a} {b}" for a in ("network", "platform", "data", "financial", "medical", "education", "logistics", "telecom",
                                 "insurance", "retail", "travel", "energy") for b in ("operator", "provider", "controller",
                                                                                      "processor", "company", "contractor",
                                                                                      "institution", "developer", "vendor")],
    "verb": ["must document", "shall review", "must encrypt", "shall delete", "must report", "shall disclose", "must audit",
             "shall restrict access to", "must keep a log of", "shall notify the regulator about", "must minimise",
             "shall obtain separate consent for", "must assess the transfer of", "shall pseudonymise", "must back up"],
    "object": [f"{a} {b}" for a in ("customer", "employee", "patient", "student", "passenger", "member", "visitor", "minor",
                                    "applicant", "policyholder", "tenant", "consumer", "supplier", "driver", "resident")
               for b in ("identity records", "location history", "call records", "transactions", "health files",
                         "biometric data", "browsing history", "passwords", "home addresses", "face images",
                         "credit reports", "travel plans", "chat messages", "device identifiers", "purchase history")],
    "tail": ["or face a corrective order", "with fines of up to 4% of turnover for serious breaches",
             "and keep a record of the processing", "with stricter rules where minors are concerned",
             "unless another law provides otherwise", "so that the data stays complete and available",
             "and publish the processing rules", "and keep them for at least three years", "within thirty days",
             "and compensate any damage caused", "or have the service suspended", "under public supervision"],
    "why": ["which is a data protection duty", "so it bears directly on privacy", "which governs how personal data is processed",
            "and sets the consequences of unlawful processing", "which is a core compliance requirement",
            "and reflects the principle of data minimisation"],
}
_CITIES = ["北京", "上海", "广州", "深圳", "杭州", "成都", "武汉", "西安", "南京", "天津", "重庆", "苏州", "长沙", "郑州", "青岛",
           "沈阳", "宁波", "厦门", "合肥", "昆明", "大连", "福州", "济南", "哈尔滨", "南宁", "贵阳", "兰州", "太原", "海口", "拉萨"]
_EN_PLACES = ["Berlin", "Paris", "Madrid", "Rome", "Vienna", "Dublin", "Lisbon", "Warsaw", "Prague", "Athens", "Oslo",
              "Helsinki", "Brussels", "Amsterdam", "Copenhagen", "Stockholm", "Budapest", "Sofia", "Riga", "Tallinn"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November",
           "December"]
_REFUSAL = "抱歉，我无法判断这段文本是否与个人信息保护相关。"


def _sha(*parts: object) -> str:
    return hashlib.sha256("\x00".join(map(str, parts)).encode("utf-8")).hexdigest()


def _chunk_and_answer(rng: random.Random, i: int) -> tuple[str, str, str]:
    """(chunk text, conclusion, reasoning) of one generated record."""
    art, year, month = rng.randint(1, 900), rng.randint(2012, 2025), rng.randint(1, 12)
    if rng.random() < 0.8:
        w = {k: rng.choice(v) for k, v in _ZH.items()}
        city = rng.choice(_CITIES)
        text = f"第{art}条 {w['org']}{w['verb']}{w['object']}，{w['tail']}。本条自{year}年{month}月起在{city}施行。"
        how = rng.randrange(3)
        if how == 0:
            reasoning = f"第{art}条要求{w['org']}{w['verb']}{w['object']}，{w['tail']}（{city}，{year}年{month}月起），{w['why']}。"
        elif how == 1:
            reasoning = (f"文本规定{w['org']}须{w['verb'].removeprefix('应当')}{w['object']}（第{art}条，{year}年{month}月起在{city}"
                         f"施行），{w['why']}。")
        else:
            reasoning = f"依据第{art}条，{city}的{w['org']}自{year}年{month}月起对{w['object']}负有义务：{w['verb']}，{w['tail']}。"
        return text, "相关", reasoning
    w = {k: rng.choice(v) for k, v in _EN.items()}
    place, when = rng.choice(_EN_PLACES), f"{_MONTHS[month - 1]} {year}"
    text = f"Article {art}. From {when}, the {w['org']} in {place} {w['verb']} {w['object']} {w['tail']}."
    if rng.random() < 0.5:
        reasoning = f"Article {art} says that from {when} the {w['org']} in {place} {w['verb']} {w['object']} {w['tail']}, {w['why']}."
    else:
        reasoning = f"Under article {art}, in force in {place} since {when}, {w['object']} is protected: the {w['org']} {w['verb']} it."
    return text, "相关", reasoning  # the relevance task's label set is Chinese


def _damage(rng: random.Random, text: str, conclusion: str, reasoning: str, task_example: str) -> tuple[str, str]:
    """One planted fault (decoding damage, a loop, a prompt echo or a refusal) in an answer."""
    kind = rng.randrange(4)
    if kind == 0:
        return conclusion, reasoning[:10] + "\ufffd\ufffd" + reasoning[10:]
    if kind == 1:
        return conclusion, reasoning + ("这一点非常重要，需要认真遵守。" * 8)
    if kind == 2:
        return conclusion, task_example
    return conclusion, _REFUSAL


def build(workspace: Path, records: int, seed: int = 1) -> None:
    """A workspace with `records` answered relevance records (one chunk each)."""
    rng = random.Random(seed)
    task = load_task("relevance")
    example = task.output_example("main", text="", question=None).split("####", 1)[1]
    kept: list[tuple[str, str]] = []  # answers earlier records may copy (a bounded reservoir)
    with Store.open(workspace) as store:
        store.put_task(task.version())
        anns: list[Annotation] = []
        for d in range(0, records, PER_DOCUMENT):
            doc = Document(id=_sha("doc", d), path=f"docs/{d // PER_DOCUMENT:06d}.txt", kind="txt", n_chars=0)
            chunks = []
            for i in range(d, min(records, d + PER_DOCUMENT)):
                text, conclusion, reasoning = _chunk_and_answer(rng, i)
                roll = rng.random()
                if roll < 0.01 and kept:
                    conclusion, reasoning = rng.choice(kept)
                elif roll < 0.02 and kept:
                    conclusion, reasoning = rng.choice(kept)
                    reasoning = edit(reasoning, 0.05, rng)
                elif roll < 0.024:
                    conclusion, reasoning = _damage(rng, text, conclusion, reasoning, example)
                if len(kept) < 10_000:
                    kept.append((conclusion, reasoning))
                else:
                    kept[rng.randrange(len(kept))] = (conclusion, reasoning)
                chunk = Chunk(id=_sha(doc.id, i), document_id=doc.id, seq=i - d, text=text, char_start=0,
                              char_end=len(text), size=len(text))
                chunks.append(chunk)
                anns.append(Annotation(id=_sha("ann", i), chunk_id=chunk.id, task_hash=task.hash, task_name=task.name,
                                       status="ok", conclusion=conclusion, reasoning=reasoning,
                                       raw_text=f"{conclusion}####{reasoning}", model="bench-teacher", provider="openai"))
            store.add_document(doc, chunks)
            if len(anns) >= BATCH:
                store.plan(anns)
                anns = []
        store.plan(anns)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_step(step: str, workspace: Path) -> dict[str, float]:
    """One step as the CLI runs it; returns its figures."""
    from qc.checks import CheckConfig, run_checks
    from qc.export import export_approved
    from qc.lot import resolve_tasks
    from qc.sampling import SampleSpec, create_sample

    start = time.perf_counter()
    with Store.open(workspace) as store:
        names = resolve_tasks(store)
        if step == "check":
            summary = run_checks(store, names, CheckConfig())
            extra = {"records": summary.records, "flagged": summary.flagged, **summary.by_kind}
        elif step == "sample":
            sample, plan = create_sample(store, SampleSpec(tasks=names))
            extra = {"records": sample.lot_size, "sample": sample.size}
        else:
            sample = store.samples()[-1]
            out = workspace / "exports"
            summary = export_approved(store, sample=sample, task_names=names, out=out / "approved.jsonl",
                                      pairs_out=out / "pairs.jsonl", force=True)  # nobody reviewed the sample
            extra = {"records": summary.examples + summary.flagged + summary.rejected, "examples": summary.examples}
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(), **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="Build the workspace here and keep it (default: a temporary folder).")
    parser.add_argument("--step", choices=["check", "sample", "export"], help=argparse.SUPPRESS)  # a child's one step
    parser.add_argument("--workspace", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(run_step(args.step, args.workspace)))
        return
    with tempfile.TemporaryDirectory(prefix="qc-scale-") as tmp:
        workspace = args.keep or Path(tmp) / "ws"
        if not (workspace / "distillery.db").exists():
            start = time.perf_counter()
            build(workspace, args.records)
            print(f"workspace: {args.records:,} records built in {time.perf_counter() - start:.0f} s ({workspace})")
        print(f"{'step':<8} {'records':>10} {'seconds':>9} {'records/s':>10} {'peak RSS':>10}")
        for step in ("check", "sample", "export"):
            done = subprocess.run([sys.executable, __file__, "--step", step, "--workspace", str(workspace)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{step} failed:\n{done.stderr}")
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{step:<8} {r['records']:>10,} {r['seconds']:>9.1f} {r['records'] / r['seconds']:>10,.0f} "
                  f"{r['peak_rss_mb']:>8.0f} MB   {json.dumps({k: v for k, v in r.items() if k not in ('seconds', 'peak_rss_mb', 'records')})}")


if __name__ == "__main__":
    main()
