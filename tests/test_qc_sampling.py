"""Drawing samples from a real workspace: the lot, the plan, strata, reproducibility."""

from collections import Counter

import pytest
from click.testing import CliRunner

from distillery.store import Store
from qc.checks import CheckConfig, run_checks
from qc.cli import main
from qc.lot import LotError
from qc.sampling import SampleSpec, create_sample
from qc_fixtures import Answer, add_answers, relevant_answers, workspace


def _flag_some(store, n=5):
    """Plant n exact copies of existing answers so the checks flag n records."""
    base = relevant_answers(n, seed=7)
    add_answers(store, "relevance", [Answer(text=a.text + "（转载）", conclusion=a.conclusion, reasoning=a.reasoning,
                                            doc="copies") for a in base])
    run_checks(store, ["relevance"], CheckConfig())
    return set(store.flags(task_names=["relevance"]))


def test_iso_sample_excludes_flagged_records_and_keeps_a_lot_snapshot(tmp_path):
    with Store.open(workspace(tmp_path, 300)) as store:
        flagged = _flag_some(store)
        assert len(flagged) == 5
        sample, plan = create_sample(store, SampleSpec(tasks=["relevance"], aql=1.0))
        assert sample.name == "s1" and sample.lot_size == 300 and plan.iso and plan.iso.code_letter == "H"
        items = store.sample_items(sample.id)
        assert [i.position for i in items] == list(range(1, 51)) and len({i.annotation_id for i in items}) == 50
        assert not flagged & {i.annotation_id for i in items}
        lot = store.sample_lot(sample.id)
        assert len(lot) == 300 and not flagged & set(lot)
        # with the flagged records in, the lot is every usable record
        wide, _ = create_sample(store, SampleSpec(tasks=["relevance"], aql=1.0, flagged="include"))
        assert wide.name == "s2" and wide.lot_size == 305 and flagged <= set(store.sample_lot(wide.id))
        with pytest.raises(LotError, match="exists already"):
            create_sample(store, SampleSpec(tasks=["relevance"]), "s1")


def test_same_seed_same_sample_other_seed_other_sample(tmp_path):
    drawn = []
    for run in ("a", "b"):
        with Store.open(workspace(tmp_path / run, 200)) as store:
            sample, _ = create_sample(store, SampleSpec(tasks=["relevance"], margin=0.1, expected=0.8, seed=11))
            drawn.append([i.annotation_id for i in store.sample_items(sample.id)])
            other, _ = create_sample(store, SampleSpec(tasks=["relevance"], margin=0.1, expected=0.8, seed=12))
            drawn.append([i.annotation_id for i in store.sample_items(other.id)])
    assert drawn[0] == drawn[2] and drawn[1] == drawn[3] and drawn[0] != drawn[1]


def test_stratified_samples_follow_the_lot_proportions(tmp_path):
    with Store.open(workspace(tmp_path, 400)) as store:
        labels = Counter(a.conclusion for _, a in store.annotations())
        sample, plan = create_sample(store, SampleSpec(tasks=["relevance"], size=100, by="label"))
        strata = Counter(i.stratum for i in store.sample_items(sample.id))
        assert plan.n == 100 and sum(strata.values()) == 100
        for label, n in labels.items():
            assert abs(strata[label] - 100 * n / 400) < 1  # proportional, rounded by largest remainder
        by_doc, _ = create_sample(store, SampleSpec(tasks=["relevance"], size=40, by="document"))
        assert Counter(i.stratum for i in store.sample_items(by_doc.id)) == {f"docs/doc{i}.txt": 10 for i in range(4)}


def test_two_tasks_by_task_and_label_needs_a_label_set(tmp_path):
    with Store.open(workspace(tmp_path, 40)) as store:
        add_answers(store, "qa", [Answer(text=f"第{i}条 处理者应当告知处理目的{i}。", question=f"第{i}条要求处理者做什么？",
                                         conclusion=f"告知处理目的{i}", reasoning=f"第{i}条原文如此规定。") for i in range(20)])
        sample, _ = create_sample(store, SampleSpec(tasks=["relevance", "qa"], size=30, by="task"))
        assert Counter(i.stratum for i in store.sample_items(sample.id)) == {"relevance": 20, "qa": 10}
        with pytest.raises(LotError, match="no closed label set"):
            create_sample(store, SampleSpec(tasks=["qa"], size=5, by="label"))


def test_sample_command_prints_the_plan_and_rejects_contradictions(tmp_path):
    ws = workspace(tmp_path, 120)
    cli = CliRunner()
    result = cli.invoke(main, ["-w", str(ws), "sample"])  # the default plan: ISO 2859-1, AQL 2.5
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "sample s1: 20 of 120" in text and "code letter F" in text and "review 20 records" in text
    assert "at most 1 of the 20" in text
    assert "distill-qc review --sample s1" in text
    result = cli.invoke(main, ["-w", str(ws), "sample", "--aql", "1.0", "--margin", "0.05"])
    assert result.exit_code == 2 and "not aql and margin" in result.output
    result = cli.invoke(main, ["-w", str(ws), "sample", "--aql", "3"])
    assert result.exit_code == 1 and "use one of" in result.output
    result = cli.invoke(main, ["-w", str(ws), "sample", "--task", "nope"])
    assert result.exit_code == 1 and "no records of task nope" in result.output
    result = cli.invoke(main, ["-w", str(tmp_path / "empty"), "sample"])
    assert result.exit_code == 1 and "no workspace" in result.output
    result = cli.invoke(main, ["-w", str(ws), "samples"])
    assert result.exit_code == 0 and "s1" in result.output
