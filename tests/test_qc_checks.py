"""Automatic checks and duplicate detection, on Chinese text, through a real store."""

import random

import pytest
from datasketch import MinHash, MinHashLSH
from qc_texts import EN_ANSWERS, ZH_ANSWERS, ZH_POOL, edit

from distillery.store import Store
from qc.checks import RULE_KINDS, CheckConfig, run_checks
from qc.dedup import ChangedDuringCheck, DuplicateFinder, candidate_chance, find_duplicates, lsh_bands
from qc.lot import LotError, resolve_tasks
from qc.text import jaccard, language, overlap_share, shared_spans, shingles
from qc_fixtures import Answer, add_answers, relevant_answers

NEAR = CheckConfig().near_duplicate


def _variant(text: str, rng: random.Random, edits: int) -> str:
    chars = list(text)
    for i in rng.sample(range(len(chars)), edits):
        chars[i] = rng.choice(ZH_POOL)
    return "".join(chars)


def _near_pairs(n: int, low: float, high: float, seed: int = 5) -> list[tuple[str, str, float]]:
    """n (text, variant, exact Jaccard) pairs of ~80-character Chinese passages with low <= J < high."""
    rng = random.Random(seed)
    pairs = []
    while len(pairs) < n:
        base = "".join(rng.choice(ZH_POOL) for _ in range(80))
        for edits in range(1, 9):
            variant = _variant(base, rng, edits)
            j = jaccard(shingles(base, 3), shingles(variant, 3))
            if low <= j < high:
                pairs.append((base, variant, j))
                break
    return pairs


def test_five_percent_edits_of_real_answers_are_near_duplicates_and_unrelated_answers_are_not():
    rng = random.Random(11)
    originals = [(f"a{i}", t) for i, t in enumerate(ZH_ANSWERS + EN_ANSWERS)]
    copies = [(f"b{i}", edit(t, 0.05, rng)) for i, (_, t) in enumerate(originals)]
    found = {d.key: d for d in find_duplicates(originals + copies, threshold=NEAR)}
    assert set(found) == {key for key, _ in copies}  # every 5% edit, Chinese and English; no original
    assert all(found[f"b{i}"].of == f"a{i}" and not found[f"b{i}"].exact for i in range(len(originals)))
    # the old default of 0.8 missed most of them
    assert len(find_duplicates(originals + copies, threshold=0.8)) < len(copies) / 2


def test_banding_matches_the_threshold():
    for threshold in (0.5, 0.6, 0.7, 0.8, 0.9):
        bands, rows = lsh_bands(threshold)
        assert bands * rows <= 128 and candidate_chance(threshold, bands, rows) >= 0.98
        assert candidate_chance(threshold, 128 // (rows + 1), rows + 1) < 0.98  # one more row would miss more
    pairs = _near_pairs(150, NEAR, NEAR + 0.06)
    items = [(f"a{i}", a) for i, (a, _, _) in enumerate(pairs)] + [(f"b{i}", b) for i, (_, b, _) in enumerate(pairs)]
    found = {d.key: d for d in find_duplicates(items, threshold=NEAR)}
    assert len(found) >= 0.95 * len(pairs) and set(found) <= {f"b{i}" for i in range(len(pairs))}
    for key, dup in found.items():
        assert dup.of == "a" + key[1:] and dup.jaccard == pytest.approx(pairs[int(key[1:])][2])
    # datasketch's own index at the target, for comparison: it misses a large share of these pairs
    sigs = MinHash.bulk([[s.encode() for s in shingles(t, 3)] for _, t in items], num_perm=128)
    naive = MinHashLSH(threshold=NEAR, num_perm=128)
    for (key, _), sig in zip(items[: len(pairs)], sigs[: len(pairs)], strict=True):
        naive.insert(key, sig)
    naive_found = sum(f"a{i}" in naive.query(sig) for i, sig in enumerate(sigs[len(pairs):]))
    assert naive_found < len(found)


def test_pairs_below_the_threshold_are_not_duplicates():
    pairs = _near_pairs(60, 0.35, NEAR - 0.05, seed=9)
    items = [(f"a{i}", a) for i, (a, _, _) in enumerate(pairs)] + [(f"b{i}", b) for i, (_, b, _) in enumerate(pairs)]
    assert find_duplicates(items, threshold=NEAR) == []


def test_exact_duplicates_short_texts_and_greedy_clusters():
    items = [("a", "是"), ("b", "否"), ("c", "是。"), ("d", "ＡＢＣ def"), ("e", "abc  DEF!"), ("f", "")]
    dups = {d.key: d for d in find_duplicates(items)}
    assert set(dups) == {"c", "e"} and dups["c"].of == "a" and dups["c"].exact and dups["e"].of == "d"
    # a chain x ~ y ~ z with x !~ z: y goes, z stays (it resembles only a dropped text)
    rng = random.Random(1)
    x = "".join(rng.choice(ZH_POOL) for _ in range(100))
    y = x[:97] + "".join(rng.choice(ZH_POOL) for _ in range(3))  # new tail
    z = "".join(rng.choice(ZH_POOL) for _ in range(3)) + y[3:]  # and a new head
    sim = lambda a, b: jaccard(shingles(a, 3), shingles(b, 3))
    assert sim(x, y) >= 0.9 and sim(y, z) >= 0.9 and sim(x, z) < 0.9
    keys = [d.key for d in find_duplicates([("x", x), ("y", y), ("z", z)], threshold=0.9)]
    assert keys == ["y"]


def test_a_cluster_larger_than_a_bucket_is_found_whole_and_texts_must_come_back_unchanged():
    rng = random.Random(4)
    base = ZH_ANSWERS[0]
    # 300 light edits of one answer, among 300 unrelated templated answers: one bucket per band holds them all
    noise = [f"{a.conclusion}####{a.reasoning}" for a in relevant_answers(300, seed=2)]
    texts = [base] + [edit(base, 0.02, rng) for _ in range(300)] + noise
    items = [(str(i), t) for i, t in enumerate(texts)]
    found = {d.key: d for d in find_duplicates(items) if int(d.key) <= 300}
    assert len(found) == 300 and all(d.of == "0" or d.exact for d in found.values())
    finder = DuplicateFinder()
    for _, t in items:
        finder.add(t)
    with pytest.raises(ChangedDuringCheck, match="changed between the two passes"):
        finder.resolve([(k, t + "。改" if k == "0" else t) for k, t in items])


def test_text_measures_on_chinese():
    assert language("第二条 个人信息处理者应当告知处理目的。") == "zh"
    assert language("The data processor must inform the user of the purpose.") == "en"
    assert language("OK") is None and language("GDPR 个人信息 data protection 合规 compliance audit") is None
    src = "第二条 个人信息处理者在处理个人信息前，应当告知处理目的和方式。"
    assert overlap_share("文本规定个人信息处理者应当告知处理目的和方式", src) >= 0.75
    assert overlap_share("该文本讨论了碳排放交易市场的建设进展", src) < 0.2
    spans = shared_spans(src, "应当告知处理目的")
    assert [src[s:e] for s, e in spans] == ["应当告知处理目的"]


def _ws(tmp_path):
    store = Store.open(tmp_path / "ws")
    good = relevant_answers(20, seed=3)
    src = good[0].text
    bad = [
        Answer(text="第九十条 平台经营者应当建立投诉举报渠道。", conclusion="相关", reasoning="抱歉，我无法判断这段文本是否相关。"),
        Answer(text="第九十一条 网络运营者应当定期开展合规审计。", conclusion="相关",
               reasoning="The article requires network operators to run regular compliance audits."),
        Answer(text="第九十二条 医疗机构应当在境内存储数据。", conclusion="不相关", reasoning="该文本讨论的是碳排放交易市场的建设进展与价格走势。"),
        Answer(text="第九十三条 快递企业应当及时删除过期数据。", conclusion="相关", reasoning="相关。"),
        Answer(text="第九十四条 教育机构应当取得个人的单独同意。", conclusion="可能相关", reasoning="文本要求教育机构取得个人的单独同意。"),
        Answer(text="第九十五条 物业公司应当指定个人信息保护负责人。", conclusion="相关", reasoning="I think it is relevant.",
               status="invalid"),
        Answer(text=src + "（重复收录）", conclusion=good[0].conclusion, reasoning=good[0].reasoning),  # copied answer
    ]
    ids = add_answers(store, "relevance", good + bad)
    return store, ids[len(good):], ids[: len(good)]


def test_rule_checks_flag_each_problem_and_only_it(tmp_path):
    store, bad, good = _ws(tmp_path)
    summary = run_checks(store, ["relevance"], CheckConfig())
    flags = {aid: {f.kind for f in fs} for aid, fs in store.flags(task_names=["relevance"]).items()}
    refusal, english, ungrounded, short, label, invalid, copied = bad
    assert "refusal" in flags[refusal]
    assert "language" in flags[english]
    assert "grounding" in flags[ungrounded]
    assert flags[short] == {"short"}
    assert "label" in flags[label]
    assert flags[invalid] == {"contract"}
    assert flags[copied] == {"duplicate_answer"}
    assert not any(g in flags for g in good)
    detail = store.flags(task_names=["relevance"])[copied][0]
    assert detail.related_id == good[0] and "exact duplicate" in detail.detail and "docs/doc0.txt" in detail.detail
    assert summary.records == 27 and summary.lot == 26 and summary.flagged == len(flags)
    # a re-run replaces, never piles up; nothing is deleted from the records
    run_checks(store, ["relevance"], CheckConfig())
    again = store.flags(task_names=["relevance"])
    assert {a: {f.kind for f in fs} for a, fs in again.items()} == flags
    assert store.totals()["annotations"] == 27
    # thresholds are the user's: no grounding floor, no flag
    run_checks(store, ["relevance"], CheckConfig(min_grounding=0.0))
    assert "grounding" not in {f.kind for f in store.flags(task_names=["relevance"]).get(ungrounded, [])}
    assert set(RULE_KINDS) >= {k for ks in flags.values() for k in ks}


def test_duplicate_questions_of_the_qa_task(tmp_path):
    store = Store.open(tmp_path / "ws")
    text = "第二条 个人信息处理者在处理个人信息前，应当告知处理目的和方式，并取得个人同意。"
    rows = [
        Answer(text=text, question="个人信息处理者在处理个人信息前应当告知哪些事项？", conclusion="处理目的和方式",
               reasoning="第二条写明应当告知处理目的和方式。"),
        Answer(text=text + "违反者责令改正。", question="个人信息处理者在处理个人信息前应当告知哪些事项", conclusion="处理目的和方式",
               reasoning="依据第二条，处理者须告知处理目的与处理方式。"),
        Answer(text=text, question="处理个人信息需要取得谁的同意？", conclusion="个人", reasoning="第二条规定应当取得个人同意。"),
    ]
    ids = add_answers(store, "qa", rows)
    run_checks(store, resolve_tasks(store), CheckConfig())
    flags = store.flags(task_names=["qa"])
    assert {f.kind for f in flags[ids[1]]} == {"duplicate_question"} and ids[0] not in flags and ids[2] not in flags
    with pytest.raises(LotError, match="no records of task nope"):
        resolve_tasks(store, ["nope"])
