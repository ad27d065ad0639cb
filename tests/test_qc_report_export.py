"""From verdicts to the lot decision, the report (terminal + HTML) and the export files."""

import json
import re
import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner

from distillery.records import PreferencePair, Review, TrainingExample
from distillery.store import Store
from qc.checks import CheckConfig, run_checks
from qc.cli import main
from qc.export import ExportRefused, export_approved
from qc.report import build_report
from qc.report_html import render_html
from qc.review import ReviewSession
from qc.sampling import Plan, SampleSpec, create_sample, make_plan
from qc.stats import wilson
from qc.verdicts import Outcome, decide
from qc_fixtures import Answer, add_answers, relevant_answers, workspace


def _review(session: ReviewSession, verdicts: str) -> None:
    """Give verdicts by letter to the first records: a accept, r reject, f fix, . nothing."""
    for index, v in enumerate(verdicts):
        if v == "a":
            session.give(index, "accept")
        elif v == "r":
            session.give(index, "reject", reason="wrong_conclusion", note="结论错误")
        elif v == "f":
            ctx = session.context(index)
            other = "不相关" if ctx.annotation.conclusion == "相关" else "相关"
            session.give(index, "fix", reason="wrong_conclusion", conclusion=other, reasoning=f"更正：{ctx.chunk.text[:12]}")


def _outcomes(verdicts: str) -> list[Outcome]:
    out = []
    for i, v in enumerate(verdicts):
        r = Review(id=i, annotation_id=f"r{i}", reviewer="x", verdict={"a": "accept", "r": "reject", "f": "fix"}[v])
        out.append(Outcome(annotation_id=f"r{i}", verdict=r.verdict, decisive=r, by_reviewer={"x": r}))
    return out


def test_iso_decisions():
    plan = make_plan(SampleSpec(tasks=["t"], aql=1.0), 1000)  # n 80, Ac 2, Re 3
    assert decide(plan, _outcomes("a" * 78 + "rf")).status == "accept"
    early = decide(plan, _outcomes("a" * 10 + "rfr"))
    assert early.status == "reject" and "cannot change" in early.headline and "rejection number 3" in early.headline
    pending = decide(plan, _outcomes("a" * 40 + "r"))
    assert pending.status == "pending" and "remaining 39" in pending.headline
    assert decide(plan, _outcomes("a" * 77 + "rrr")).status == "reject"


def test_estimate_decisions_compare_the_interval_with_the_target():
    def plan(n: int) -> Plan:
        return make_plan(SampleSpec(tasks=["t"], size=n, target=0.9), 10_000)

    ok = decide(plan(200), _outcomes("a" * 195 + "r" * 5))  # 97.5%, CI [94.3%, 98.9%] > 90%
    assert ok.status == "accept" and ok.acceptance == wilson(195, 200)
    bad = decide(plan(100), _outcomes("a" * 75 + "r" * 25))  # 75%, CI [65.7%, 82.5%] < 90%
    assert bad.status == "reject"
    unsure = decide(plan(50), _outcomes("a" * 45 + "r" * 5))  # 90%, CI [78.6%, 95.7%] holds 90%
    assert unsure.status == "inconclusive" and "contains the target" in unsure.headline


def test_a_census_decides_on_the_exact_rate() -> None:
    census = make_plan(SampleSpec(tasks=["t"], size=20, target=0.9), 20)  # the whole lot is reviewed
    assert census.census
    # 90% of 20: an estimate's interval [69.9%, 97.2%] would hold the target; a census knows the rate.
    ok = decide(census, _outcomes("a" * 18 + "rr"))
    assert ok.status == "accept" and "every one of its 20 records was reviewed and 90.0% were accepted" in ok.headline
    bad = decide(census, _outcomes("a" * 17 + "rrr"))
    assert bad.status == "reject" and "below the target 90%" in bad.headline


def _reviewed_workspace(tmp_path, verdicts: str, *, aql: float = 2.5, n: int = 120):
    ws = workspace(tmp_path, n)
    store = Store.open(ws)
    sample, _ = create_sample(store, SampleSpec(tasks=["relevance"], aql=aql))
    session = ReviewSession(store, sample, "alice")
    _review(session, verdicts)
    return ws, store, sample, session


def test_accepted_lot_exports_examples_with_corrections_and_pairs(tmp_path):
    # lot 120 -> F, AQL 2.5: n 20, Ac 1. One fix, the rest accepted: the lot passes.
    ws, store, sample, session = _reviewed_workspace(tmp_path, "a" * 19 + "f")
    fixed = session.items[19].annotation_id
    summary = export_approved(store, sample=sample, task_names=["relevance"], out=ws / "exports/approved.jsonl",
                              pairs_out=ws / "exports/pairs.jsonl")
    examples = [TrainingExample.model_validate_json(line) for line in (ws / "exports/approved.jsonl").read_text().splitlines()]
    pairs = [PreferencePair.model_validate_json(line) for line in (ws / "exports/pairs.jsonl").read_text().splitlines()]
    assert summary.examples == len(examples) == 120 and summary.corrected == 1 and summary.pairs == len(pairs) == 1
    assert summary.by_review == 20 and summary.with_lot == 100
    by_id = {e.annotation_id: e for e in examples}
    original = store.annotation(fixed)
    assert by_id[fixed].corrected and by_id[fixed].reviewer == "alice" and by_id[fixed].conclusion != original.conclusion
    assert pairs[0].chosen == by_id[fixed].output and pairs[0].rejected == f"{original.conclusion}####{original.reasoning}"
    accepted = by_id[session.items[0].annotation_id]
    assert accepted.reviewer == "alice" and not accepted.corrected
    unreviewed = next(e for e in examples if e.reviewer is None)
    ann = store.annotation(unreviewed.annotation_id)
    chunk = store.chunk(ann.chunk_id)
    # lineage: the example names its document, chunk, task version and teacher; input is the chunk
    assert (unreviewed.input, unreviewed.chunk_id, unreviewed.task_hash) == (chunk.text, chunk.id, ann.task_hash)
    assert unreviewed.teacher_model == "moonshot-v1-8k" and unreviewed.output == f"{ann.conclusion}####{ann.reasoning}"
    assert "相关" in unreviewed.instruction and unreviewed.document_path.startswith("docs/")
    assert [e.document_path for e in examples] == sorted(e.document_path for e in examples)


def test_rejected_or_undecided_lots_refuse_to_export_unless_forced(tmp_path):
    ws, store, sample, _ = _reviewed_workspace(tmp_path, "arra")
    kwargs = {"sample": sample, "task_names": ["relevance"], "out": ws / "a.jsonl", "pairs_out": ws / "p.jsonl"}
    with pytest.raises(ExportRefused, match="Do not train.*draw a new sample.*--force"):
        export_approved(store, **kwargs)
    assert not (ws / "a.jsonl").exists()
    forced = export_approved(store, force=True, rejected_out=ws / "r.jsonl", **kwargs)
    assert forced.rejected == 2 and forced.examples == 118 and "Do not train" in forced.overridden
    # the two rejected records, as the teacher answered them, for KTO's undesirable side
    rejected = [TrainingExample.model_validate_json(line) for line in (ws / "r.jsonl").read_text().splitlines()]
    assert {ex.annotation_id for ex in rejected} == {item.annotation_id for item in store.sample_items(sample.id)[1:3]}
    assert all(not ex.corrected and ex.output == store.annotation(ex.annotation_id).answer for ex in rejected)
    # through the command line: exit status 1 and the reason
    result = CliRunner().invoke(main, ["-w", str(ws), "export"])
    assert result.exit_code == 1 and "rejection number 2" in result.output and "--force" in result.output
    with Store.open(workspace(tmp_path / "fresh", 30)) as fresh:
        with pytest.raises(ExportRefused, match="no sample has been reviewed"):
            export_approved(fresh, sample=None, task_names=["relevance"], out=ws / "b.jsonl", pairs_out=ws / "q.jsonl")
        sample, _ = create_sample(fresh, SampleSpec(tasks=["relevance"]))
        with pytest.raises(ExportRefused, match="finish the review: distill-qc review --sample s1"):
            export_approved(fresh, sample=sample, task_names=["relevance"], out=ws / "b.jsonl", pairs_out=ws / "q.jsonl")


def test_flagged_records_stay_out_unless_a_reviewer_approves_them(tmp_path):
    ws = workspace(tmp_path, 60)
    store = Store.open(ws)
    copies = [Answer(text=a.text + "（转载）", conclusion=a.conclusion, reasoning=a.reasoning, doc="copies")
              for a in relevant_answers(3, seed=7)]
    copy_ids = add_answers(store, "relevance", copies)
    run_checks(store, ["relevance"], CheckConfig())
    assert set(store.flags(task_names=["relevance"])) == set(copy_ids)
    # a separate look at the flagged records: one of them is accepted by a reviewer after all
    flagged_sample, _ = create_sample(store, SampleSpec(tasks=["relevance"], size=63, flagged="include"), "everything")
    look = ReviewSession(store, flagged_sample, "bob")
    rescued = next(i for i, item in enumerate(look.items) if item.annotation_id == copy_ids[0])
    look.give(rescued, "accept")
    sample, _ = create_sample(store, SampleSpec(tasks=["relevance"], size=60, target=0.8))
    _review(ReviewSession(store, sample, "alice"), "a" * 60)
    summary = export_approved(store, sample=sample, task_names=["relevance"], out=ws / "a.jsonl", pairs_out=ws / "p.jsonl")
    ids = {json.loads(line)["annotation_id"] for line in (ws / "a.jsonl").read_text().splitlines()}
    assert copy_ids[0] in ids and not {copy_ids[1], copy_ids[2]} & ids
    assert summary.outside_lot == 1 and summary.examples == 61


def test_report_numbers_agreement_and_checks_against_verdicts(tmp_path):
    ws = workspace(tmp_path, 80)
    store = Store.open(ws)
    copies = [Answer(text=a.text + "（转载）", conclusion=a.conclusion, reasoning=a.reasoning, doc="copies")
              for a in relevant_answers(4, seed=7)]
    copy_ids = set(add_answers(store, "relevance", copies))
    run_checks(store, ["relevance"], CheckConfig())
    sample, _ = create_sample(store, SampleSpec(tasks=["relevance"], size=84, flagged="include"))
    alice, bob = ReviewSession(store, sample, "alice"), ReviewSession(store, sample, "bob")
    # alice rejects the flagged copies and two others; bob agrees on 36 of the first 40 records
    alice_v = ["r" if item.annotation_id in copy_ids else "a" for item in alice.items]
    others = [i for i, v in enumerate(alice_v) if v == "a"][:2]
    for i in others:
        alice_v[i] = "r"
    _review(alice, "".join(alice_v))
    bob_v = alice_v[:40]
    flips = [i for i in range(40) if bob_v[i] == "a"][:4]
    for i in flips:
        bob_v[i] = "r"
    _review(bob, "".join(bob_v))
    report = build_report(store, sample, str(ws))
    bad = {item.annotation_id for i, item in enumerate(alice.items) if alice_v[i] == "r" or (i < 40 and bob_v[i] == "r")}
    assert report.decision.reviewed == 84 and report.decision.defective == len(bad)
    assert report.decision.acceptance == wilson(84 - len(bad), 84)
    assert report.verdicts == {"accept": 84 - len(bad), "reject": len(bad)}
    assert {r.key: (r.reviewed, r.accepted) for r in report.by_reviewer} == {
        "alice": (84, 84 - alice_v.count("r")), "bob": (40, 40 - bob_v.count("r"))}
    pair = report.agreement[0]
    assert (pair.a, pair.b, pair.good_bad.n) == ("alice", "bob", 40)
    assert pair.good_bad.percent == pytest.approx(36 / 40)
    # kappa by hand: a = alice's bad count among the 40, b = bob's
    a_bad, b_bad = sum(v == "r" for v in alice_v[:40]), sum(v == "r" for v in bob_v)
    pe = (a_bad * b_bad + (40 - a_bad) * (40 - b_bad)) / 1600
    assert pair.good_bad.kappa == pytest.approx((0.9 - pe) / (1 - pe))
    flags = {f.kind: f for f in report.flags}
    assert flags["duplicate_answer"].flagged == 4 and flags["duplicate_answer"].precision == 1.0
    assert flags["duplicate_answer"].recall == pytest.approx(4 / len(bad))
    assert {r.reason: r.rejected for r in report.reasons} == {"wrong_conclusion": len(bad)}
    assert sum(r.reviewed for r in report.by_label) == 84 and {r.key for r in report.by_label} == {"相关", "不相关"}

    html = render_html(report)
    assert "<script" not in html and "<link" not in html and not re.search(r"(src|href)=|https?://|@import", html)
    svgs = re.findall(r"<svg.*?</svg>", html, flags=re.DOTALL)
    assert len(svgs) >= 4
    for svg in svgs:
        ET.fromstring(svg)  # well-formed: a browser will draw it
    assert "不相关" in html and "Cohen" in html and report.decision.headline.split(":")[0] in html

    result = CliRunner().invoke(main, ["-w", str(ws), "report"], terminal_width=160)
    assert result.exit_code == 0, result.output
    assert "acceptance rate [95% Wilson CI]" in result.output and "alice · bob" in result.output
    assert (ws / "reports" / "qc-s1.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
