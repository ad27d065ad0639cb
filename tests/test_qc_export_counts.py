"""Export in two passes (a sort key per record, then the records again): what it counts and the
order it writes, on a real store changed after the sample was drawn."""

import json

from distillery.store import Store
from qc.export import export_approved
from qc.sampling import SampleSpec, create_sample
from qc_fixtures import Answer, add_answers, relevant_answers, workspace


def test_records_changed_or_added_after_the_sample_are_counted_and_the_rest_written_in_document_order(tmp_path):
    ws = workspace(tmp_path, 30)
    with Store.open(ws) as store:
        sample, _ = create_sample(store, SampleSpec(tasks=["relevance"], size=30))
        lot = store.sample_lot(sample.id)
        redone = store.annotation(lot[0])
        redone.status, redone.conclusion, redone.reasoning = "invalid", None, None  # re-annotated since: no longer ok
        store.save_annotation(redone)
        later = add_answers(store, "relevance", [Answer(text=a.text + "（新增）", conclusion=a.conclusion, reasoning=a.reasoning + "另见附件。",
                                                        doc="later") for a in relevant_answers(3, seed=99)])
        summary = export_approved(store, sample=sample, task_names=["relevance"], out=ws / "a.jsonl",
                                  pairs_out=ws / "p.jsonl", force=True)  # nobody reviewed: forced
        rows = [json.loads(line) for line in (ws / "a.jsonl").read_text(encoding="utf-8").splitlines()]
        seqs = {r["annotation_id"]: store.chunk(r["chunk_id"]).seq for r in rows}
    assert summary.gone == 1 and summary.not_in_lot == 3 and summary.examples == len(rows) == 29
    ids = [r["annotation_id"] for r in rows]
    assert redone.id not in ids and not set(later) & set(ids) and set(ids) == set(lot) - {redone.id}
    order = [(r["document_path"], seqs[r["annotation_id"]]) for r in rows]
    assert order == sorted(order) and len({r["document_path"] for r in rows}) == 4
