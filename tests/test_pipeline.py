"""The whole distillation, shortened: 8 of the shipped documents, the embedded teacher, a scripted
review, 2 LoRA steps, eval, a real gunicorn server answering ChatRest, and the proof report. Then
every training example is traced back to the file it came from."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("llamafactory", reason="needs the model extra")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import pipeline  # noqa: E402
import proof  # noqa: E402

from distillery.records import TrainingExample  # noqa: E402
from distillery.store import Store  # noqa: E402

pytestmark = [pytest.mark.model, pytest.mark.slow]

# Two documents per label, both languages, a PDF among them.
DOCS = ["privacy_policy_en.txt", "pipl_excerpt_zh.txt", "bank_rate_notice_en.txt", "market_close_report_en.pdf",
        "canteen_menu_en.txt", "parking_notice_zh.txt", "hiking_club_en.txt", "cycling_route_zh.txt"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, embedded_cache: Path) -> tuple[Path, Path, proof.ProofReport]:
    root = tmp_path_factory.mktemp("pipeline")
    docs = root / "docs"
    docs.mkdir()
    for name in DOCS:
        shutil.copy(EXAMPLES / "docs" / name, docs / name)
    teacher = yaml.safe_load((EXAMPLES / "local.yaml").read_text(encoding="utf-8"))
    teacher["teacher"]["max_tokens"] = 48
    (root / "teacher.yaml").write_text(yaml.safe_dump(teacher), encoding="utf-8")
    config = pipeline.load_pipeline_config(EXAMPLES / "pipeline.yaml", {
        "documents": str(docs), "teacher": str(root / "teacher.yaml"),
        "finetune.train.max_steps": 2, "finetune.eval_max_new_tokens": 48, "finetune.eval_limit": 2,
        "serve.max_new_tokens": 48, "serve.proof_inputs": 2,
    })
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILLERY_CACHE", str(embedded_cache))
        report = pipeline.Pipeline(config, root / "ws").run()
    assert report is not None
    return root / "ws", docs, report


def test_every_stage_leaves_its_output(finished: tuple[Path, Path, proof.ProofReport]) -> None:
    ws, _, report = finished
    with Store.open(ws) as store:
        assert store.totals()["documents"] == len(DOCS)
        assert store.counts(task_name="topic")["ok"]["records"] + report.teacher.invalid == len(DOCS)
        (sample,) = store.samples()
        reviews = store.reviews(sample_id=sample.id)
    assert len(reviews) == sample.size and {(r.reviewer, r.verdict) for r in reviews} == {("demo-script", "accept")}
    assert (ws / "qc" / f"review-{sample.name}.csv").is_file()
    approved = (ws / "exports" / "approved.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(approved) == report.qc.approved > 0
    data = ws / "finetune" / "data"
    assert json.loads((data / "train.json").read_text(encoding="utf-8"))
    run = ws / "finetune" / "runs" / pipeline.RUN
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert (run / "merged" / "config.json").is_file()
    assert report.training.steps == 2 and report.training.wall_s > 0
    names = {m["name"] for m in json.loads((run / "eval" / "eval.json").read_text(encoding="utf-8"))["models"]}
    assert names == {"base", "tuned"}
    assert report.fidelity.test_examples == 2
    # The served model answered over HTTP, both ways.
    assert report.early_exit.example_response["sucess"] is True
    assert report.early_exit.example_response["data"]["answer"].strip()
    assert report.early_exit.median_full_s > 0 and report.early_exit.tokens_per_s > 0
    assert report.teacher.gold_records == report.teacher.records  # every document has an author label
    assert [t.name for t in report.targets] == ["format compliance after tuning", "fidelity to the teacher",
                                               "early-exit speedup"]
    assert proof.ProofReport.model_validate_json((ws / proof.REPORT_JSON).read_text(encoding="utf-8")) == report
    assert "## Targets" in (ws / proof.REPORT_MD).read_text(encoding="utf-8")


def test_lineage_links_every_training_example_to_its_source_file(finished: tuple[Path, Path, proof.ProofReport]) -> None:
    ws, docs, _ = finished
    approved = [TrainingExample.model_validate_json(line)
                for line in (ws / "exports" / "approved.jsonl").read_text(encoding="utf-8").splitlines()]
    by_text = {(ex.instruction, ex.input, ex.output): ex for ex in approved}
    data = ws / "finetune" / "data"
    trained = [(row["instruction"], row["input"], row["output"])
               for row in json.loads((data / "train.json").read_text(encoding="utf-8"))]
    tested = [(ex.instruction, ex.input, ex.output) for ex in
              (TrainingExample.model_validate_json(line) for line in
               (data / "test_records.jsonl").read_text(encoding="utf-8").splitlines())]
    assert len(trained) + len(tested) == len(approved)
    sources = {p.resolve() for p in docs.iterdir()}
    with Store.open(ws) as store:
        for key in trained + tested:
            ex = by_text[key]  # every dataset row is an approved record...
            ann = store.annotation(ex.annotation_id)
            chunk = store.chunk(ex.chunk_id)
            doc = store.document(ex.document_id)
            assert ann is not None and chunk is not None and doc is not None
            # ...whose answer, chunk and document are the stored ones...
            assert (ann.conclusion, ann.chunk_id, chunk.document_id) == (ex.conclusion, chunk.id, doc.id)
            assert chunk.text == ex.input and doc.path == ex.document_path
            # ...and the document is one of the input files, whose text holds the chunk.
            assert Path(doc.path).resolve() in sources
            if doc.kind == "txt":  # plain text is stored as read: the chunk is a piece of the file
                assert " ".join(chunk.text.split()) in " ".join(Path(doc.path).read_text(encoding="utf-8").split())
            assert ann.task_name == "topic" and ex.reviewer in (None, "demo-script")
    assert {Path(ex.document_path).name for ex in approved} <= set(DOCS)


def test_running_again_resumes_instead_of_redoing(finished: tuple[Path, Path, proof.ProofReport],
                                                  embedded_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws, docs, first = finished
    with Store.open(ws) as store:
        calls, samples = store.totals()["calls"], [s.name for s in store.samples()]
    adapter = ws / "finetune" / "runs" / pipeline.RUN / "adapter" / "adapter_model.safetensors"
    trained_at = adapter.stat().st_mtime_ns
    config = pipeline.load_pipeline_config(EXAMPLES / "pipeline.yaml", {
        "documents": str(docs), "teacher": str(ws.parent / "teacher.yaml"),
        "finetune.train.max_steps": 2, "finetune.eval_max_new_tokens": 48, "finetune.eval_limit": 2,
        "serve.max_new_tokens": 48, "serve.proof_inputs": 2,
    })
    monkeypatch.setenv("DISTILLERY_CACHE", str(embedded_cache))
    again = pipeline.Pipeline(config, ws).run()
    assert again is not None
    with Store.open(ws) as store:
        assert store.totals()["calls"] == calls  # no chunk asked twice
        assert [s.name for s in store.samples()] == samples  # the same lot: no second sample
        assert len(store.reviews()) == first.qc.sample_size  # its verdicts imported once
    assert adapter.stat().st_mtime_ns == trained_at  # the finished run was not trained again
    assert again.fidelity.tuned == first.fidelity.tuned  # greedy decoding of the same model
