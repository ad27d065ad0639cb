"""`distill run` and `distill init` without running a model: the report's arithmetic, the targets,
and the project config checked before any work (the measured run is in test_pipeline.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from distillery.cli import main
from distillery.errors import ConfigError
from distillery.pipeline import RunContext, RunReport, StepResult, Target, configure, load_project, render_markdown
from distillery.stages import FLOW, load_stage
from distillery.workspace import Workspace

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def context(tmp_path: Path, config: Path) -> RunContext:
    return RunContext(workspace=Workspace(tmp_path / "ws"), base=config.resolve().parent, console=Console(quiet=True))


def check(config: Path, tmp_path: Path, overrides: dict[str, object] | None = None) -> list:
    return configure(load_project(config, overrides), context(tmp_path, config), config)


def test_every_stage_of_the_flow_is_installed_with_its_command_line() -> None:
    for name in FLOW:
        stage = load_stage(name)
        assert stage.name == name and stage.help and stage.command.name == "main"


def test_shipped_config_resolves_its_inputs_next_to_itself(tmp_path: Path) -> None:
    from annotate.step import read_gold

    steps = check(EXAMPLES / "pipeline.yaml", tmp_path)
    assert [stage.name for stage, _ in steps] == list(FLOW)
    annotate = steps[0][1]
    assert annotate.documents == EXAMPLES / "docs" and annotate.job.task == str(EXAMPLES / "tasks" / "topic.yaml")
    assert annotate.job.teacher.provider == "local" and annotate.gold == read_gold(EXAMPLES / "gold_labels.csv")
    assert len(annotate.gold) == 40
    assert steps[1][1].review == "scripted" and steps[2][1].test == 0.25 and steps[3][1].targets.speedup == 3.0


@pytest.mark.parametrize(("overrides", "message"), [
    ({"annotate.documents": "nowhere"}, r"pipeline.yaml: annotate.documents: .*nowhere does not exist"),
    ({"annotate.task": "no-such-task.yaml"}, r"annotate.task: .*no-such-task.yaml"),
    ({"annotate.teacher": "missing.yaml"}, r"annotate.teacher: .*missing.yaml: no such config file"),
    ({"annotate.teacher.rpm": 5}, r"pipeline.yaml: 'teacher' must be a mapping of fields to set 'annotate.teacher.rpm'"),
    ({"annotate.teacher": {"rpm": 0}}, r"field 'annotate.teacher.TeacherConfig.rpm': Input should be greater than or equal to 1"),
    ({"finetune.test": 1.5}, r"field 'finetune.test'"),
    ({"finetune.val": 0.5, "finetune.test": 0.5}, r"finetune.val \+ finetune.test is 1"),
    ({"qc.review": "maybe"}, r"field 'qc.review'"),
    ({"qc.sample.aql": "lots"}, r"field 'qc.sample.aql'"),
    ({"serve.targets.speedup": -1}, r"field 'serve.targets.speedup'"),
    ({"serve.colour": "red"}, r"field 'serve.colour'"),
])
def test_a_bad_key_fails_before_any_work_naming_the_file_and_key(tmp_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check(EXAMPLES / "pipeline.yaml", tmp_path, overrides)
    assert not (tmp_path / "ws").exists()


def test_gold_labels_need_the_header(tmp_path: Path) -> None:
    (tmp_path / "gold.csv").write_text("name,topic\na.txt,privacy\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="annotate.gold_labels: .*gold.csv: needs a header 'file,label'"):
        check(EXAMPLES / "pipeline.yaml", tmp_path, {"annotate.gold_labels": str(tmp_path / "gold.csv")})


def scores(name: str, accuracy: float, fmt: float):
    from finetune.evaluate import ModelScores

    return ModelScores(name=name, model="m", adapter=None, examples=10, accuracy=accuracy, macro_f1=accuracy / 2,
                       format_compliance=fmt, mean_generated_tokens=40, per_label={}, seconds=1)


def eval_report(*models):
    from finetune.evaluate import EvalReport

    return EvalReport(data_dir="d", test_examples=10, max_new_tokens=64, labels={}, models=list(models))


def test_majority_baseline_is_the_commonest_reference_share() -> None:
    from finetune.step import fidelity_figures

    refs = ["finance"] * 6 + ["privacy"] * 3 + ["outdoors"]
    fid = fidelity_figures(eval_report(scores("base", 0.1, 0.0), scores("tuned", 0.8, 1.0)), refs, 30)
    assert (fid.majority_label, fid.majority_baseline) == ("finance", 0.6)
    assert (fid.base.accuracy, fid.tuned.format_compliance, fid.train_examples) == (0.1, 1.0, 30)
    # The 95% Wilson interval of 1 in 10 and of 8 in 10.
    assert fid.base.accuracy_ci == pytest.approx((0.0179, 0.4042), abs=1e-4)
    assert fid.tuned.accuracy_ci == pytest.approx((0.4902, 0.9433), abs=1e-4)


def test_fidelity_needs_both_models() -> None:
    from finetune.step import fidelity_figures

    with pytest.raises(ValueError, match="base model too"):
        fidelity_figures(eval_report(scores("tuned", 0.8, 1.0)), ["a"], 1)


@pytest.mark.parametrize(("tuned_acc", "fmt", "met"), [
    (0.9, 0.96, [True, True]),
    (0.9, 0.94, [False, True]),
    # Beating the base is not enough when always answering the commonest label scores as well.
    (0.75, 1.0, [True, False]),
])
def test_finetune_targets(tuned_acc: float, fmt: float, met: list[bool]) -> None:
    from finetune.step import FinetuneTargets, check_targets, fidelity_figures

    fid = fidelity_figures(eval_report(scores("base", 0.1, 0.0), scores("tuned", tuned_acc, fmt)), ["a"] * 6 + ["b"] * 4, 30)
    assert [t.met for t in check_targets(fid, FinetuneTargets(format=0.95, fidelity_gain=0.2))] == met


def test_markdown_report_shows_every_target_and_each_stage_section() -> None:
    from finetune.step import FinetuneTargets, TrainingFigures, check_targets, fidelity_figures
    from finetune.step import markdown as student_markdown

    fid = fidelity_figures(eval_report(scores("base", 0.1, 0.0), scores("tuned", 0.9, 1.0)), ["a", "b"], 3)
    targets = [*check_targets(fid, FinetuneTargets()), Target(name="early-exit speedup", wanted=">= 3x", got="4.2x", met=True)]
    results = {"finetune": StepResult(markdown=student_markdown(TrainingFigures(run="r", wall_s=30, train_runtime_s=20,
                                                                                steps=2, train_loss=1.5), fid)),
               "serve": StepResult(markdown=["## Early exit", "", "**4.2x** faster"])}
    report = RunReport(notices=["verdicts by a script"], workspace="ws", config="c.yaml", generated_at="now", stages={},
                       targets=targets,
                       outputs={"approved records": "ws/exports/approved.jsonl"})
    text = render_markdown(report, results)
    assert text.splitlines()[0] == "# Distillation report (verdicts by a script)"
    assert text.count("| yes |") == 3 and "| NO |" not in text
    assert "| base | 0.0% | 10.0% [1.8%, 40.4%] |" in text and "| tuned | 100.0% | 90.0% [59.6%, 98.2%] |" in text
    assert "**4.2x**" in text and "- approved records: `ws/exports/approved.jsonl`" in text
    assert text.index("## Student") < text.index("## Early exit") < text.index("## Where everything is")


def test_init_writes_a_project_that_validates_and_refuses_to_overwrite(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    result = CliRunner().invoke(main, ["init", str(project)])
    assert result.exit_code == 0, result.output
    config = project / "distill.yaml"
    assert (project / "docs").is_dir() and "distill run" in result.output
    steps = dict((stage.name, settings) for stage, settings in check(config, tmp_path))
    # A real project reviews by hand and lets the environment pick the teacher.
    assert steps["qc"].review == "human" and steps["annotate"].job.teacher.provider == "auto"
    assert steps["annotate"].documents == (project / "docs").resolve() and steps["annotate"].job.task == "relevance"
    config.write_text("# mine\n", encoding="utf-8")
    again = CliRunner().invoke(main, ["init", str(project)])
    assert again.exit_code == 1 and "exists already" in again.output
    assert config.read_text(encoding="utf-8") == "# mine\n"


def test_run_without_a_config_or_with_a_bad_one_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["run"])
    assert result.exit_code == 2 and "distill init" in result.output
    (tmp_path / "p.yaml").write_text("annotate: {documents: nowhere}\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["run", "p.yaml"])
    assert result.exit_code == 1 and "annotate.documents" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "workspace").exists()


def test_distill_lists_every_stage_and_dispatches_to_its_command_line() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in (*FLOW, "run", "init"):
        assert f"\n  {name} " in result.output
    tasks = CliRunner().invoke(main, ["annotate", "tasks"])
    assert tasks.exit_code == 0 and "relevance" in tasks.output
