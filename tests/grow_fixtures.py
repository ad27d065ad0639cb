"""Workspaces for the generator tests: approved records exported by qc, as a user would have them."""

from __future__ import annotations

from pathlib import Path

from distillery.store import Store
from distillery.workspace import Workspace
from qc.export import export_approved
from qc_fixtures import Answer, add_answers, relevant_answers

ENGLISH = [
    Answer(text="Article 4. A data handler shall obtain the separate consent of the individual before sharing "
                "personal information with a third party.", conclusion="相关", doc="en0",
           reasoning="Article 4 requires separate consent before personal information is shared, a data protection duty."),
    Answer(text="The staff canteen will open thirty minutes earlier next month and add a vegetarian counter.",
           conclusion="不相关", doc="en1",
           reasoning="The notice is about canteen opening hours and a vegetarian counter, not personal information."),
]


def approved_workspace(tmp_path: Path, n: int = 12, *, english: bool = False, docs: int = 4) -> Path:
    """A workspace whose n relevance records (Chinese; with `english`, two English ones too) are
    exported as approved (exports/approved.jsonl), without a sample (forced), as `qc export --force` does."""
    ws = tmp_path / "ws"
    answers = relevant_answers(n, docs=docs) + (ENGLISH if english else [])
    with Store.open(ws) as store:
        add_answers(store, "relevance", answers)
        export_records(store, ws)
    return ws


def export_records(store: Store, ws: Path) -> None:
    """qc's export of every usable record (forced: no sample), to the workspace's exports."""
    paths = Workspace(ws)
    export_approved(store, sample=None, task_names=store.task_names(), out=paths.approved,
                    pairs_out=paths.preferences, force=True)
