"""Generated records in the store and through qc and prepare: the schema upgrade, the annotation job
leaving them alone, the checks, the export (a correction trains as a pair), and the split rules."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from grow_fixtures import approved_workspace, export_records

from distillery.growing import approved_seeds, generated_id, new_record
from distillery.jsonl import read_jsonl
from distillery.records import PreferencePair, TrainingExample
from distillery.store import MIGRATIONS, SCHEMA_VERSION, Store, _statements
from distillery.workspace import Workspace
from finetune.prepare import PrepareOptions, prepare
from qc.checks import CheckConfig, run_checks


def test_a_version_4_store_is_upgraded_and_its_records_are_annotated_ones(tmp_path: Path) -> None:
    db = tmp_path / "ws" / "distillery.db"
    db.parent.mkdir()
    con = sqlite3.connect(db)
    for script in MIGRATIONS[:4]:
        for statement in _statements(script):
            con.execute(statement)
    con.execute("PRAGMA user_version = 4")
    con.execute("INSERT INTO documents VALUES ('d', 'a.txt', 'txt', NULL, 3, NULL, '{}', 't')")
    con.execute("INSERT INTO chunks (id, document_id, seq, text, char_start, char_end, size, created_at, shard_key)"
                " VALUES ('c', 'd', 0, 'abc', 0, 3, 3, 't', 0)")
    con.execute("INSERT INTO tasks VALUES ('h', 'relevance', 'name: relevance', 't')")
    con.execute("INSERT INTO annotations (id, chunk_id, task_hash, task_name, step, item_index, status, params, attempts,"
                " prompt_tokens, completion_tokens, cost, latency_s, created_at, updated_at)"
                " VALUES ('a', 'c', 'h', 'relevance', 'main', 0, 'ok', '{}', 1, 1, 1, 0, 0, 't', 't')")
    con.commit()
    con.close()
    with Store.open(tmp_path / "ws") as store:
        assert store.version() == SCHEMA_VERSION
        ann = store.annotation("a")
        assert ann is not None and ann.origin is None and ann.text is None and ann.derivation == {}
        assert [a.id for _, a in store.annotations(generated=False)] == ["a"]
        assert list(store.annotations(generated=True)) == []


def _grow_one(store: Store, ws: Path, *, origin: str = "eda", status: str = "ok", seed: int = 0, **fields: object) -> str:
    origin_seed = approved_seeds(store, Workspace(ws).approved)[seed]
    rid = generated_id(origin, origin_seed.annotation.id, str(fields))
    record = new_record(origin_seed, origin=origin, record_id=rid,  # type: ignore[arg-type]
                        conclusion=str(fields.pop("conclusion", origin_seed.example.conclusion)),
                        reasoning=origin_seed.example.reasoning, **fields)  # type: ignore[arg-type]
    record.status = status  # type: ignore[assignment]
    store.plan([record])
    return rid


def test_the_annotation_job_never_picks_up_or_resets_a_generated_record(tmp_path: Path) -> None:
    ws = approved_workspace(tmp_path, 4)
    with Store.open(ws) as store:
        rid = _grow_one(store, ws, status="invalid", text="改写后的文本")
        ann = store.annotation(rid)
        assert ann is not None
        store.select_job_chunks()
        store.reset_job(task_hash=ann.task_hash, model=ann.model or "", statuses=["invalid", "ok"])
        assert store.annotation(rid).status == "invalid"  # type: ignore[union-attr]
        pending = store.job_pending(task_hash=ann.task_hash, model=ann.model or "")
        assert rid not in {a.id for _, a in pending}


def test_checks_export_and_prepare_treat_generated_records_by_their_kind(tmp_path: Path) -> None:
    ws = approved_workspace(tmp_path, 16, docs=8)
    with Store.open(ws) as store:
        seed = approved_seeds(store, Workspace(ws).approved)[0]
        eda = _grow_one(store, ws, text=seed.text + "（改写）")
        bad_label = _grow_one(store, ws, text=seed.text + "。", conclusion="也许")
        own_task = _grow_one(store, ws, origin="self_instruct", instruction="总结这段文字。", text=seed.text,
                             conclusion="一段总结")
        correction = _grow_one(store, ws, origin="correction",
                               derivation={"student_answer": "错的结论####学生的理由", "verdict": "wrong"})
        run_checks(store, store.task_names(), CheckConfig())
        flags = store.flags()
        # Same answer as its origin by construction: not a duplicate; a label outside the task's set is
        # flagged, unless the record answers a task of its own.
        assert "duplicate_answer" not in {f.kind for f in flags.get(eda, [])}
        assert "label" in {f.kind for f in flags.get(bad_label, [])}
        assert "label" not in {f.kind for f in flags.get(own_task, [])}
        export_records(store, ws)
    examples = {ex.annotation_id: ex for _, ex in read_jsonl(Workspace(ws).approved, TrainingExample)}
    assert examples[eda].input == seed.text + "（改写）" and examples[eda].origin == "eda"
    assert examples[own_task].instruction == "总结这段文字。" and examples[own_task].derived_from == [seed.example.document_id]
    assert bad_label not in examples  # flagged and not reviewed: kept out until a person approves it
    assert correction not in examples  # a correction trains as a preference pair only
    pairs = [p for _, p in read_jsonl(Workspace(ws).preferences, PreferencePair)]
    assert [(p.origin, p.origin_id, p.rejected) for p in pairs] == [("correction", seed.annotation.id,
                                                                     "错的结论####学生的理由")]



def _test_documents(data: Path) -> set[str]:
    manifest = json.loads((data / "manifest.json").read_text())
    return {json.loads(line)["document_id"] for line in (data / manifest["test_records"]).read_text().splitlines()}


def test_growing_moves_no_document_between_splits_and_nothing_trains_on_a_test_document(tmp_path: Path) -> None:
    ws = approved_workspace(tmp_path, 16, docs=8)
    options = PrepareOptions(model="embedded", val_fraction=0, test_fraction=0.25, cutoff_len=256)
    prepare(Workspace(ws).approved, tmp_path / "before", options)
    test_docs = _test_documents(tmp_path / "before")
    with Store.open(ws) as store:
        seeds = approved_seeds(store, Workspace(ws).approved)
        train_at = next(i for i, s in enumerate(seeds) if s.example.document_id not in test_docs)
        test_at = next(i for i, s in enumerate(seeds) if s.example.document_id in test_docs)
        kept = _grow_one(store, ws, seed=train_at, text=seeds[train_at].text + "（一）")
        _grow_one(store, ws, seed=test_at, text=seeds[test_at].text + "（二）")  # its own document is a test one
        # Written from a training seed, but it drew on a test document too (a Self-Instruct prompt shows several).
        _grow_one(store, ws, origin="self_instruct", seed=train_at, instruction="总结这段文字。",
                  text=seeds[train_at].text, derivation={"documents": [seeds[test_at].example.document_id]})
        _grow_one(store, ws, origin="correction", seed=test_at, derivation={"student_answer": "不相关####学生的理由"})
        export_records(store, ws)
    report = prepare(Workspace(ws).approved, tmp_path / "after", options, preferences=Workspace(ws).preferences)
    assert _test_documents(tmp_path / "after") == test_docs  # the split is drawn on annotated records only
    assert report.generated == {"eda": 1}
    assert report.generated_excluded == {"drew on validation/test documents": 2}
    assert report.preference is None and report.preference_excluded == {"from validation/test documents": 1}
    rows = json.loads((tmp_path / "after" / "train.json").read_text())
    assert kept in {row["id"] for row in rows}
