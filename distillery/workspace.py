"""A distillation project lives in one directory, the workspace. This is the one place that knows
its layout; every stage asks here for its paths.

    <workspace>/distillery.db                    the store (documents, chunks, answers, verdicts)
    <workspace>/exports/approved.jsonl           qc's approved records (TrainingExample)
    <workspace>/exports/preference_pairs.jsonl   qc's corrections as DPO pairs (PreferencePair)
    <workspace>/exports/rejected.jsonl           records reviewers rejected (TrainingExample), for KTO
    <workspace>/qc/                              review spreadsheets
    <workspace>/reports/                         qc's HTML reports
    <workspace>/finetune/data/                   LLaMA-Factory dataset files + manifest.json
    <workspace>/finetune/runs/<run>/             train.yaml, adapter/, merged/, eval/
    <workspace>/report.md, report.json           what `distill run` measured
"""

from __future__ import annotations

import os
from pathlib import Path

WORKSPACE_ENV = "DISTILLERY_WORKSPACE"
DB_NAME = "distillery.db"


def default_workspace() -> Path:
    """The workspace every command uses when none is given: $DISTILLERY_WORKSPACE, else ./workspace."""
    return Path(os.environ.get(WORKSPACE_ENV) or "workspace")


class Workspace:
    """Paths inside one workspace directory (nothing is created until a stage writes)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    @property
    def db(self) -> Path:
        return self.root / DB_NAME

    def exists(self) -> bool:
        """Whether a stage has written the store here yet."""
        return self.db.is_file()

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    @property
    def approved(self) -> Path:
        return self.exports / "approved.jsonl"

    @property
    def preferences(self) -> Path:
        return self.exports / "preference_pairs.jsonl"

    @property
    def rejected(self) -> Path:
        return self.exports / "rejected.jsonl"

    @property
    def review_sheets(self) -> Path:
        return self.root / "qc"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def finetune_data(self) -> Path:
        return self.root / "finetune" / "data"

    def run(self, name: str) -> Path:
        """A training run's directory."""
        return self.root / "finetune" / "runs" / name

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_json(self) -> Path:
        return self.root / "report.json"
