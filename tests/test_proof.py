"""The proof report's arithmetic and its inputs' errors (the measured run is in test_pipeline.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import proof  # noqa: E402

from finetune.evaluate import EvalReport, ModelScores  # noqa: E402


def scores(name: str, accuracy: float, fmt: float) -> ModelScores:
    return ModelScores(name=name, model="m", adapter=None, examples=10, accuracy=accuracy, macro_f1=accuracy / 2,
                       format_compliance=fmt, mean_generated_tokens=40, per_label={}, seconds=1)


def eval_report(*models: ModelScores) -> EvalReport:
    return EvalReport(data_dir="d", test_examples=10, max_new_tokens=64, labels={}, models=list(models))


def early_exit(speedup: float) -> proof.EarlyExitFigures:
    return proof.EarlyExitFigures(inputs=4, median_conclusion_s=1.0, median_full_s=speedup, speedup=speedup,
                                  mean_conclusion_tokens=3, mean_full_tokens=60, tokens_per_s=20,
                                  example_request={}, example_response={})


def test_majority_baseline_is_the_commonest_reference_share() -> None:
    refs = ["finance"] * 6 + ["privacy"] * 3 + ["outdoors"]
    fid = proof.fidelity_figures(eval_report(scores("base", 0.1, 0.0), scores("tuned", 0.8, 1.0)), refs, 30)
    assert (fid.majority_label, fid.majority_baseline) == ("finance", 0.6)
    assert (fid.base.accuracy, fid.tuned.format_compliance, fid.train_examples) == (0.1, 1.0, 30)


def test_fidelity_needs_both_models() -> None:
    with pytest.raises(ValueError, match="base model too"):
        proof.fidelity_figures(eval_report(scores("tuned", 0.8, 1.0)), ["a"], 1)


@pytest.mark.parametrize(("tuned_acc", "fmt", "speedup", "met"), [
    (0.9, 0.96, 3.5, [True, True, True]),
    (0.9, 0.94, 2.9, [False, True, False]),
    # Beating the base is not enough when always answering the commonest label scores as well.
    (0.75, 1.0, 3.0, [True, False, True]),
])
def test_targets(tuned_acc: float, fmt: float, speedup: float, met: list[bool]) -> None:
    fid = proof.fidelity_figures(eval_report(scores("base", 0.1, 0.0), scores("tuned", tuned_acc, fmt)),
                                 ["a"] * 6 + ["b"] * 4, 30)
    targets = proof.check_targets(fid, early_exit(speedup), min_format=0.95, min_speedup=3.0, min_gain=0.2)
    assert [t.met for t in targets] == met


def test_markdown_report_shows_every_target_and_both_models() -> None:
    fid = proof.fidelity_figures(eval_report(scores("base", 0.1, 0.0), scores("tuned", 0.9, 1.0)), ["a", "b"], 3)
    ee = early_exit(4.2)
    report = proof.ProofReport(
        workspace="ws", generated_at="now",
        teacher=proof.TeacherFigures(model="t", records=4, invalid=0, prompt_tokens=1000, completion_tokens=200,
                                     cost=0, currency="CNY", kimi_list_cost_cny=0.004, gold_accuracy=0.75,
                                     gold_records=4, wall_s=3),
        qc=proof.QCFigures(sample="s1", sample_size=3, lot_size=4, verdicts={"accept": 3}, decision="Accept.",
                           reviewer="demo-script", flagged=0, approved=4),
        training=proof.TrainingFigures(wall_s=30, train_runtime_s=20, steps=2, train_loss=1.5),
        fidelity=fid, early_exit=ee,
        targets=proof.check_targets(fid, ee, min_format=0.95, min_speedup=3.0, min_gain=0.2),
    )
    text = proof.render_markdown(report)
    assert text.count("| yes |") == 3 and "| NO |" not in text
    assert "| base | 0.0% | 10.0% [1.8%, 40.4%] |" in text and "| tuned | 100.0% | 90.0% [59.6%, 98.2%] |" in text
    assert "**4.2x**" in text and "75.0% of 4 documents" in text


def test_gold_labels_need_the_header(tmp_path: Path) -> None:
    path = tmp_path / "gold.csv"
    path.write_text("a.txt,privacy\n", encoding="utf-8")
    with pytest.raises(ValueError, match="gold.csv: needs a header 'file,label'"):
        proof.read_gold(path)
    path.write_text("file,label\n a.txt ,privacy\n", encoding="utf-8")
    assert proof.read_gold(path) == {"a.txt": "privacy"}


def test_pipeline_inputs_are_checked_before_any_work(tmp_path: Path) -> None:
    import pipeline

    examples = Path(pipeline.__file__).parent
    config = pipeline.load_pipeline_config(examples / "pipeline.yaml", {"documents": str(tmp_path / "nowhere")})
    with pytest.raises(pipeline.PipelineError, match=r"documents: .*nowhere is not a folder"):
        pipeline.Pipeline(config, tmp_path / "ws")
    assert not (tmp_path / "ws").exists()
    (tmp_path / "gold.csv").write_text("name,topic\na.txt,privacy\n", encoding="utf-8")
    config = pipeline.load_pipeline_config(examples / "pipeline.yaml", {"gold_labels": str(tmp_path / "gold.csv")})
    with pytest.raises(pipeline.PipelineError, match="gold_labels: .*gold.csv: needs a header 'file,label'"):
        pipeline.Pipeline(config, tmp_path / "ws")
    with pytest.raises(pipeline.PipelineError, match="finetune.test"):
        pipeline.load_pipeline_config(examples / "pipeline.yaml", {"finetune.test": "1.5"})
    # The shipped config resolves its inputs next to itself and they all exist.
    shipped = pipeline.load_pipeline_config(examples / "pipeline.yaml")
    assert pipeline.check_inputs(shipped) == proof.read_gold(examples / "gold_labels.csv")
    assert shipped.documents == examples / "docs" and len(proof.read_gold(examples / "gold_labels.csv")) == 40
