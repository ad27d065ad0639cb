"""Augmentation (EDA, AEDA) and back-translation of approved records: words kept whole, labels kept,
records linked to their origin, nothing made or paid for twice, and only training documents trained."""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import jieba
import pytest
from grow_fixtures import approved_workspace, export_records

from annotate.augment import EN_PUNCTUATION, ZH_PUNCTUATION, Augmenter, augment, chinese_synonyms, english_synonyms, language_of
from annotate.paraphrase import back_translate
from distillery.growing import GrowError, approved_seeds
from distillery.store import Store
from distillery.workspace import Workspace
from doubles.moonshot import FakeMoonshot
from helpers import kill_9_when, openai_config

KEY = "sk-test-augment"
ZH = "第5条 个人信息处理者应当告知处理目的和方式，违反者由主管部门责令改正，处一百万元以下罚款。"
EN = "Article 4. A data handler shall obtain the separate consent of the individual before sharing personal information."


def seeds_of(ws: Path) -> tuple[Store, list]:
    store = Store.open(ws)
    return store, approved_seeds(store, Workspace(ws).approved)


# -- the operations ------------------------------------------------------------------------------


def test_chinese_synonym_replacement_swaps_whole_jieba_words_for_cilin_synonyms() -> None:
    words = jieba.lcut(ZH)
    augmenter = Augmenter(ZH, "zh", ["相关", "不相关"])
    assert "".join(t.text for t in augmenter.tokens) == ZH
    assert all(t.text in words for t in augmenter.tokens if t.kind == "word")
    assert {"第5条", "一百万元"} <= {t.text for t in augmenter.tokens if t.kind == "fixed"}
    replaced = 0
    for k in range(20):
        tokens = list(augmenter.tokens)
        augmenter._synonym(tokens, random.Random(k), 3)
        assert len(tokens) == len(augmenter.tokens)
        for before, after in zip(augmenter.tokens, tokens):
            if before.text != after.text:
                replaced += 1
                assert before.kind == "word" and before.text in words  # a whole word of jieba's, never part of one
                assert after.text in chinese_synonyms(before.text) and len(after.text) >= 2
    assert replaced >= 20


def test_protected_words_never_change_and_the_label_words_stay() -> None:
    text = "第12条 本规定与个人信息保护相关，违反者处50万元罚款，不得处理敏感信息。"
    augmenter = Augmenter(text, "zh", ["相关", "不相关"])
    for k in range(40):
        out, ops = augmenter.eda(random.Random(k), 0.3, first=k % 4)
        for kept in ("第12条", "50", "相关", "不得"):
            assert out.count(kept) == text.count(kept), (out, ops)
    assert english_synonyms("obtain") and all("obtain" in english_synonyms(s) for s in english_synonyms("obtain"))


def test_aeda_inserts_chinese_marks_into_chinese_text_and_ascii_into_english() -> None:
    for text, language, marks in ((ZH, "zh", ZH_PUNCTUATION), (EN, "en", EN_PUNCTUATION)):
        assert language_of(text) == language
        augmenter = Augmenter(text, language)
        words = sum(t.kind in ("word", "fixed") for t in augmenter.tokens)
        for k in range(10):
            out, ops = augmenter.aeda(random.Random(k))
            added = Counter(out.replace(" ", "")) - Counter(text.replace(" ", ""))
            assert set(added) <= set(marks) and sum(added.values()) == ops["punctuation"]
            assert 1 <= ops["punctuation"] <= max(1, words // 3)
            if language == "en":
                assert all(ch.isascii() for ch in added)


def test_augmentation_is_deterministic() -> None:
    a, b = Augmenter(ZH, "zh"), Augmenter(ZH, "zh")
    assert [a.eda(random.Random(k), 0.1, first=k % 4) for k in range(8)] == [b.eda(random.Random(k), 0.1, first=k % 4) for k in range(8)]


# -- the generator ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["eda", "aeda"])
def test_augment_stores_linked_records_with_the_seed_label_and_a_rerun_adds_nothing(tmp_path: Path, method: str) -> None:
    ws = approved_workspace(tmp_path, 12, english=True)
    store, seeds = seeds_of(ws)
    with store:
        stats = augment(store, seeds, method=method, per_record=4)
        assert stats.seeds == 14 and stats.before == 0 and stats.made == stats.after > 0
        assert stats.made + sum(stats.dropped.values()) == 14 * 4
        by_id = {s.annotation.id: s for s in seeds}
        records = [rec for _, rec in store.annotations(origin=method)]
        assert len(records) == stats.made
        texts = set()
        for rec in records:
            seed = by_id[rec.parent_id]
            assert rec.status == "ok" and rec.chunk_id == seed.annotation.chunk_id
            assert rec.derivation["of"] == seed.annotation.id and rec.derivation["documents"] == []
            assert sum(rec.derivation["operations"].values()) >= 1
            assert (rec.conclusion, rec.reasoning) == (seed.example.conclusion, seed.example.reasoning)
            assert rec.text and rec.text != seed.text and rec.cost == 0.0
            texts.add((rec.parent_id, rec.text))
        assert len(texts) == len(records)  # no augmentation twice
        english = [r for r in records if by_id[r.parent_id].text.startswith(("Article", "The staff"))]
        assert english and all(r.text.isascii() for r in english)

        again = augment(store, seeds, method=method, per_record=4)
        assert again.made == 0 and again.after == stats.after
        more = augment(store, seeds, method=method, per_record=6)  # more per record: only the new ones
        assert more.made <= 2 * 14 and more.after == stats.after + more.made


def test_augment_refuses_bad_options(tmp_path: Path) -> None:
    ws = approved_workspace(tmp_path, 4)
    store, seeds = seeds_of(ws)
    with store:
        for kw in ({"method": "shuffle"}, {"method": "eda", "per_record": 0}, {"method": "eda", "alpha": 0}):
            with pytest.raises(GrowError):
                augment(store, seeds, **kw)  # type: ignore[arg-type]


@pytest.mark.model
def test_augmented_records_export_and_train_only_where_their_document_trains(tmp_path: Path, embedded_cache: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune.prepare import PrepareOptions, prepare

    monkeypatch.setenv("DISTILLERY_CACHE", str(embedded_cache))
    ws = approved_workspace(tmp_path, 20, english=True, docs=5)
    store, seeds = seeds_of(ws)
    with store:
        stats = augment(store, seeds, method="eda", per_record=2)
        export_records(store, ws)  # qc's export, now with the augmented records
    exported = [json.loads(line) for line in Workspace(ws).approved.read_text(encoding="utf-8").splitlines()]
    generated = [ex for ex in exported if ex["origin"] == "eda"]
    assert len(generated) == stats.made
    assert all(ex["derived_from"] == [ex["document_id"]] for ex in generated)
    texts = {rec.id: rec.text for _, rec in Store.open(ws).annotations(origin="eda")}
    assert all(ex["input"] == texts[ex["annotation_id"]] for ex in generated)

    report = prepare(Workspace(ws).approved, tmp_path / "data",
                     PrepareOptions(model="embedded", cutoff_len=256, val_fraction=0.0, test_fraction=0.3))  # type: ignore[call-arg]
    assert report.generated_excluded.get("drew on validation/test documents", 0) > 0
    assert report.generated["eda"] + report.generated_excluded["drew on validation/test documents"] == stats.made
    test_rows = json.loads((tmp_path / "data" / "test.json").read_text(encoding="utf-8"))
    augmented = {rec.text for _, rec in Store.open(ws).annotations(origin="eda")}
    assert not any(row["input"] in augmented for row in test_rows)


# -- back-translation ------------------------------------------------------------------------------


def _source(content: str) -> str:
    return content.split("\n\n", 1)[1]


def responder(flip: str | None = None):
    """A deterministic teacher: zh -> '[en] ...', en -> '[zh] ...', back with a lead added; the task's
    request answered 相关 for article texts (flipped for a text containing `flip`)."""

    def answer(messages: list[dict]) -> str:
        user = messages[-1]["content"]
        if user.startswith("Translate the following"):
            text = _source(user)
            return "In other words, " + text.removeprefix("[zh] ") if text.startswith("[zh] ") else f"[en] {text}"
        if user.startswith("把下面的"):
            text = _source(user)
            return "换句话说，" + text.removeprefix("[en] ") if text.startswith("[en] ") else f"[zh] {text}"
        text = user.split("## 文本\n", 1)[1]
        relevant = ("第" in text and "条" in text) or "Article" in text
        if flip and flip in text:
            relevant = not relevant
        return f"{'相关' if relevant else '不相关'}####理由：{text[:20]}"

    return answer


def test_back_translation_keeps_paraphrases_whose_conclusion_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_MOONSHOT_KEY", KEY)
    ws = approved_workspace(tmp_path, 6, english=True)
    store, seeds = seeds_of(ws)
    with store, FakeMoonshot(api_key=KEY, responder=responder(flip="canteen")) as server:
        config = openai_config(server.base_url, rpm=100000)
        stats = asyncio.run(back_translate(store, seeds, config))
        assert stats.dropped == {"conclusion changed": 1} and stats.made == stats.after == len(seeds) - 1
        assert len(server.chat_hashes()) == 3 * len(seeds)
        by_id = {s.annotation.id: s for s in seeds}
        for _, rec in store.annotations(origin="back_translation"):
            seed = by_id[rec.parent_id]
            zh = language_of(seed.text) == "zh"
            assert rec.text == ("换句话说，" if zh else "In other words, ") + seed.text
            assert rec.derivation == {"of": seed.annotation.id, "via": "en" if zh else "zh", "language": "zh" if zh else "en",
                                      "intermediate": ("[en] " if zh else "[zh] ") + seed.text, "documents": []}
            assert rec.conclusion == seed.example.conclusion and rec.reasoning and rec.text.startswith(rec.reasoning)
            assert rec.attempts == 3 and rec.prompt_tokens > 0 and rec.chunk_id == seed.annotation.chunk_id
        sent = len(server.chat_hashes())
        again = asyncio.run(back_translate(store, seeds, config))  # stored seeds skipped; the dropped one is free
        assert again.made == 0 and len(server.chat_hashes()) == sent
        assert again.dropped == {"conclusion changed": 1}


_SCRIPT = """
import asyncio, sys
from pathlib import Path
from annotate.paraphrase import back_translate
from distillery.growing import approved_seeds
from distillery.store import Store
from helpers import openai_config
ws, url = Path(sys.argv[1]), sys.argv[2]
with Store.open(ws) as store:
    seeds = approved_seeds(store, ws / "exports" / "approved.jsonl")
    stats = asyncio.run(back_translate(store, seeds, openai_config(url, concurrency=3, rpm=100000)))
    print("made", stats.made, "dropped", stats.dropped, "stopped", stats.stopped)
"""


def _bt_count(db: Path) -> int:
    try:
        with sqlite3.connect(db) as con:
            return con.execute("SELECT COUNT(*) FROM annotations WHERE origin = 'back_translation'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_kill_9_mid_back_translation_then_resume_pays_nothing_twice(tmp_path: Path) -> None:
    ws = approved_workspace(tmp_path, 14)
    script = tmp_path / "bt.py"
    script.write_text(_SCRIPT, encoding="utf-8")
    tests = Path(__file__).parent
    env = {**os.environ, "FAKE_MOONSHOT_KEY": KEY,
           "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests), os.environ.get("PYTHONPATH", "")])}
    db = ws / "distillery.db"
    with FakeMoonshot(api_key=KEY, responder=responder(), latency_s=0.15) as server:
        run = lambda: subprocess.Popen([sys.executable, str(script), str(ws), server.base_url], env=env,  # noqa: E731
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        stored, in_flight = kill_9_when(run(), db, lambda: _bt_count(db) >= 4)
        done = _bt_count(db)
        assert 4 <= done < 14, "the kill must land mid-run"
        seen_before = len(server.requests)

        out, _ = run().communicate(timeout=60)
        assert "made" in out, out
        resent = [r["body"] for r in server.requests[seen_before:] if r["path"].endswith("/chat/completions")]

    resent_keys = {json.dumps(b, ensure_ascii=False, sort_keys=True) for b in resent}
    stored_keys = {json.dumps(json.loads(s), ensure_ascii=False, sort_keys=True) for s in stored}
    assert not resent_keys & stored_keys, "a request whose answer was stored was sent again"
    assert len(resent) == 3 * 14 - len(stored)  # only the unanswered ones, the in-flight ones included
    assert in_flight <= 3
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT parent_id, COUNT(*) FROM annotations WHERE origin = 'back_translation' "
                           "GROUP BY parent_id").fetchall()
        assert len(rows) == 14 and all(n == 1 for _, n in rows)
        assert con.execute("SELECT COUNT(*) FROM calls WHERE status != 'ok'").fetchone()[0] == 0


def test_back_translation_sends_personal_data_masked_and_stores_it_restored(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from distillery.teacher_config import load_job_config
    from qc_fixtures import Answer, add_answers

    monkeypatch.setenv("FAKE_MOONSHOT_KEY", KEY)
    ws, phone = tmp_path / "ws", "13812345678"
    text = f"第3条 个人信息处理者应当告知处理目的，联系电话{phone}。"
    with Store.open(ws) as store, FakeMoonshot(api_key=KEY, responder=responder()) as server:
        add_answers(store, "relevance", [Answer(text=text, conclusion="相关", reasoning="第3条要求告知处理目的，属于个人信息保护义务。")])
        export_records(store, ws)
        config = load_job_config(None, {"teacher.provider": "openai", "teacher.base_url": server.base_url,
                                        "teacher.api_key_env": "FAKE_MOONSHOT_KEY", "teacher.rpm": 100000,
                                        "privacy.policy": "mask"})
        stats = asyncio.run(back_translate(store, approved_seeds(store, Workspace(ws).approved), config))
        assert stats.made == 1
        assert not any(phone in json.dumps(r["body"], ensure_ascii=False) for r in server.requests)
        (_, rec), = store.annotations(origin="back_translation")
        assert rec.text == "换句话说，" + text and phone in rec.derivation["intermediate"]
