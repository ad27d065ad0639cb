"""`distill run`, shortened: 8 of the shipped documents, the embedded teacher, a scripted review,
2 LoRA steps, eval, a real gunicorn server answering ChatRest, and the report. Then every training
example is traced back to the file it came from, and a second run redoes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

pytest.importorskip("llamafactory", reason="needs the model extra")

from distillery.cli import main  # noqa: E402
from distillery.pipeline import RunReport, run_project  # noqa: E402
from distillery.records import TrainingExample  # noqa: E402
from distillery.store import Store  # noqa: E402
from distillery.workspace import Workspace  # noqa: E402

pytestmark = [pytest.mark.model, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RUN = "sft-lora"  # the run `distill run` trains: <stage>-<method>
# Two documents per label, both languages, a PDF among them.
DOCS = ["privacy_policy_en.txt", "pipl_excerpt_zh.txt", "bank_rate_notice_en.txt", "market_close_report_en.pdf",
        "canteen_menu_en.txt", "parking_notice_zh.txt", "hiking_club_en.txt", "cycling_route_zh.txt"]


def shortened(root: Path) -> dict[str, object]:
    return {"annotate.documents": str(root / "docs"), "annotate.teacher": str(root / "teacher.yaml"),
            "finetune.train.max_steps": 2, "finetune.eval_max_new_tokens": 48, "finetune.eval_limit": 2,
            "serve.max_new_tokens": 48, "serve.proof_inputs": 2}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, embedded_cache: Path) -> tuple[Path, Path, RunReport]:
    root = tmp_path_factory.mktemp("pipeline")
    docs = root / "docs"
    docs.mkdir()
    for name in DOCS:
        shutil.copy(EXAMPLES / "docs" / name, docs / name)
    teacher = yaml.safe_load((EXAMPLES / "local.yaml").read_text(encoding="utf-8"))
    teacher["teacher"]["max_tokens"] = 48
    (root / "teacher.yaml").write_text(yaml.safe_dump(teacher), encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILLERY_CACHE", str(embedded_cache))
        report = run_project(EXAMPLES / "pipeline.yaml", root / "ws", overrides=shortened(root))
    assert report is not None
    return root / "ws", docs, report


def test_every_stage_leaves_its_output(finished: tuple[Path, Path, RunReport]) -> None:
    ws, _, report = finished
    teacher, qc = report.stages["annotate"], report.stages["qc"]
    training, fidelity = report.stages["finetune"]["training"], report.stages["finetune"]["fidelity"]
    early_exit = report.stages["serve"]
    with Store.open(ws) as store:
        assert store.totals()["documents"] == len(DOCS)
        assert store.counts(task_name="topic")["ok"]["records"] + teacher["invalid"] == len(DOCS)
        (sample,) = store.samples()
        reviews = store.reviews(sample_id=sample.id)
    assert len(reviews) == sample.size and {(r.reviewer, r.verdict) for r in reviews} == {("demo-script", "accept")}
    assert (ws / "qc" / f"review-{sample.name}.csv").is_file()
    assert (ws / "reports" / f"qc-{sample.name}.html").is_file()
    approved = (ws / "exports" / "approved.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(approved) == qc["approved"] > 0
    data = ws / "finetune" / "data"
    assert json.loads((data / "train.json").read_text(encoding="utf-8"))
    run = ws / "finetune" / "runs" / RUN
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert (run / "merged" / "config.json").is_file()
    assert training["steps"] == 2 and training["wall_s"] > 0
    names = {m["name"] for m in json.loads((run / "eval" / "eval.json").read_text(encoding="utf-8"))["models"]}
    assert names == {"base", "tuned"}
    assert fidelity["test_examples"] == 2
    # The served model answered over HTTP, both ways.
    assert early_exit["example_response"]["sucess"] is True
    assert early_exit["example_response"]["data"]["answer"].strip()
    assert early_exit["median_full_s"] > 0 and early_exit["tokens_per_s"] > 0
    assert teacher["gold_records"] == teacher["records"]  # every document has an author label
    assert [t.name for t in report.targets] == ["format compliance after tuning", "fidelity to the teacher",
                                               "early-exit speedup"]
    assert RunReport.model_validate_json(Workspace(ws).report_json.read_text(encoding="utf-8")) == report
    markdown = Workspace(ws).report_md.read_text(encoding="utf-8")
    # Its first line says the verdicts came from a script, not a person.
    assert markdown.splitlines()[0].startswith("# Distillation report (the QC verdicts were given by a script")
    for heading in ("## Targets", "## Teacher", "## Quality control", "## Student before and after tuning", "## Early exit"):
        assert heading in markdown
    # The effective job config the step wrote is what `distill annotate run -c` would read.
    job = yaml.safe_load((ws / "annotate-job.yaml").read_text(encoding="utf-8"))
    assert job["teacher"]["max_tokens"] == 48 and job["task"].endswith("topic.yaml")


def test_lineage_links_every_training_example_to_its_source_file(finished: tuple[Path, Path, RunReport]) -> None:
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


def test_running_again_resumes_instead_of_redoing(finished: tuple[Path, Path, RunReport], embedded_cache: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    ws, docs, first = finished
    with Store.open(ws) as store:
        calls, samples = store.totals()["calls"], [s.name for s in store.samples()]
    adapter = ws / "finetune" / "runs" / RUN / "adapter" / "adapter_model.safetensors"
    trained_at = adapter.stat().st_mtime_ns
    monkeypatch.setenv("DISTILLERY_CACHE", str(embedded_cache))
    # This time through the command line, as a user would type it.
    sets = [arg for key, value in shortened(ws.parent).items() for arg in ("--set", f"{key}={value}")]
    result = CliRunner().invoke(main, ["run", str(EXAMPLES / "pipeline.yaml"), "-w", str(ws), *sets])
    assert result.exit_code == 0, result.output
    # It says which stage command each step is, so any step can be re-run by hand.
    for command in ("distill annotate -w", " ingest ", "distill qc -w", " check ", "distill finetune -w", " train ",
                    "distill serve gunicorn --model "):
        assert command in result.output
    again = RunReport.model_validate_json(Workspace(ws).report_json.read_text(encoding="utf-8"))
    with Store.open(ws) as store:
        assert store.totals()["calls"] == calls  # no chunk asked twice
        assert [s.name for s in store.samples()] == samples  # the same lot: no second sample
        assert len(store.reviews()) == first.stages["qc"]["sample_size"]  # its verdicts imported once
    assert adapter.stat().st_mtime_ns == trained_at  # the finished run was not trained again
    # greedy decoding of the same model
    assert again.stages["finetune"]["fidelity"]["tuned"] == first.stages["finetune"]["fidelity"]["tuned"]
