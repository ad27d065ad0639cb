"""Spreadsheet round trip for reviewers who work offline: CSV or XLSX out, verdicts back in.

The file has the record (read-only columns) and the reviewer's columns (reviewer, verdict,
reason, note, fixed_conclusion, fixed_reasoning). Import checks every row before writing any:
a malformed or wrongly edited file is refused with the row and column at fault (as the
spreadsheet program numbers them: the header is row 1) and nothing is imported. Import is
idempotent: a row whose verdict the store already has adds nothing.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path

from openpyxl import Workbook, load_workbook
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.utils import get_column_letter
from openpyxl.utils.exceptions import InvalidFileException
from openpyxl.worksheet.datavalidation import DataValidation
from pydantic import BaseModel

from distillery.errors import DistilleryError
from distillery.jsonl import atomic_write
from distillery.records import VERDICTS, Review, Sample
from distillery.store import Store

from .lot import Context, Contexts
from .review import REASONS, ReviewError, make_review
from .verdicts import current

READ_ONLY = ("sample", "record", "annotation_id", "task", "document", "source_text", "question", "instruction",
             "conclusion", "reasoning", "flags")
EDITABLE = ("reviewer", "verdict", "reason", "note", "fixed_conclusion", "fixed_reasoning")
COLUMNS = READ_ONLY + EDITABLE
# Read-only columns compared with the store on import: a reviewer who typed a correction into
# the teacher's answer instead of fixed_* must hear about it, not have it silently ignored.
_COMPARED = ("conclusion", "reasoning", "question", "task")
SHEET = "review"
MAX_PROBLEMS = 20
# Accepted spellings of a verdict: the word, its first letter, and Chinese.
_VERDICT_WORDS = {"accept": "accept", "a": "accept", "通过": "accept", "reject": "reject", "r": "reject",
                  "拒绝": "reject", "fix": "fix", "f": "fix", "修改": "fix"}
_WIDTHS = {"source_text": 60, "conclusion": 20, "reasoning": 50, "question": 30, "instruction": 30, "note": 30,
           "fixed_conclusion": 20, "fixed_reasoning": 50, "flags": 30, "annotation_id": 14, "document": 24}


class SheetError(DistilleryError, ValueError):
    """The file cannot be imported; `problems` name each row and column at fault."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.problems = problems
        shown = problems[:MAX_PROBLEMS]
        more = f"\n  … and {len(problems) - MAX_PROBLEMS} more" if len(problems) > MAX_PROBLEMS else ""
        super().__init__(f"{path}: {len(problems)} problem(s), nothing was imported:\n  " + "\n  ".join(shown) + more)


class ImportSummary(BaseModel):
    rows: int
    added: int  # verdicts written
    unchanged: int  # rows whose verdict the store already had
    blank: int  # rows without a verdict
    by_verdict: dict[str, int]


def cell_text(value: object) -> str:
    """A cell's text as both the writer and the comparison see it: no characters XLSX cannot hold,
    Unix newlines, no surrounding whitespace; whole numbers without '.0'."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = ILLEGAL_CHARACTERS_RE.sub("", str(value))
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def _row(sample: Sample, position: int, ctx: Context, flags: str, mine: Review | None, reviewer: str) -> dict[str, str]:
    ann = ctx.annotation
    row = {"sample": sample.name, "record": str(position), "annotation_id": ann.id, "task": ann.task_name,
           "document": ctx.where, "source_text": ctx.source, "question": ann.input or "",
           "instruction": ctx.instruction, "conclusion": ann.conclusion or "", "reasoning": ann.reasoning or "",
           "flags": flags, "reviewer": reviewer, "verdict": "", "reason": "", "note": "", "fixed_conclusion": "",
           "fixed_reasoning": ""}
    if mine is not None:
        row |= {"reviewer": mine.reviewer, "verdict": mine.verdict, "reason": mine.reason or "", "note": mine.note or ""}
        if mine.verdict == "fix":
            row |= {"fixed_conclusion": mine.conclusion or "", "fixed_reasoning": mine.reasoning or ""}
    return {k: cell_text(v) for k, v in row.items()}


def sheet_rows(store: Store, sample: Sample, reviewer: str) -> list[dict[str, str]]:
    """The sample as spreadsheet rows, with this reviewer's current verdicts filled in."""
    assert sample.id is not None
    items = store.sample_items(sample.id)
    contexts = Contexts(store)
    flags = store.flags(task_names=sample.tasks)
    mine = {aid: r for (aid, _), r in current(store.reviews(reviewer=reviewer, annotation_ids=[i.annotation_id for i in items])).items()}
    return [
        _row(sample, item.position, contexts.by_id(item.annotation_id),
             "; ".join(f"{f.kind}: {f.detail}" for f in flags.get(item.annotation_id, [])), mine.get(item.annotation_id), reviewer)
        for item in items
    ]


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    # UTF-8 with a BOM: Excel then opens Chinese text correctly.
    with path.open("w", encoding="utf-8-sig", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _write_xlsx(path: Path, rows: list[dict[str, str]]) -> None:
    wb = Workbook()
    ws = wb.active
    ws.title = SHEET
    ws.append(list(COLUMNS))
    grey = PatternFill("solid", fgColor="EEEEEE")
    for r, row in enumerate(rows, 2):
        for c, name in enumerate(COLUMNS, 1):
            cell = ws.cell(row=r, column=c, value=row[name])
            cell.data_type = "s"  # text stays text: a chunk starting with '=' is not a formula
            cell.alignment = Alignment(wrap_text=True, vertical="top")
            if name in READ_ONLY:
                cell.fill = grey
    for c, name in enumerate(COLUMNS, 1):
        ws.cell(row=1, column=c).font = Font(bold=True)
        ws.column_dimensions[get_column_letter(c)].width = _WIDTHS.get(name, 12)
    ws.freeze_panes = "D2"
    last = max(2, len(rows) + 1)
    for name, choices in (("verdict", VERDICTS), ("reason", tuple(REASONS))):
        column = get_column_letter(COLUMNS.index(name) + 1)
        dv = DataValidation(type="list", formula1='"' + ",".join(choices) + '"', allow_blank=True)
        dv.add(f"{column}2:{column}{last}")
        ws.add_data_validation(dv)
    about = wb.create_sheet("about")
    for line in (
        "How to review offline",
        "Grey columns are the record: read them, do not edit them.",
        "verdict: accept (the answer is right), reject (pick a reason), or fix (write the correction).",
        f"reason: one of {', '.join(REASONS)} (required for reject).",
        "fix: put the corrected text in fixed_conclusion and/or fixed_reasoning; an empty one keeps the teacher's.",
        "Leave verdict empty for records you did not review. Save as .xlsx (or CSV UTF-8) and send the file back.",
    ):
        about.append([line])
    wb.save(path)


def export_sheet(store: Store, sample: Sample, reviewer: str, path: Path) -> int:
    """Write the sample for offline review (.csv or .xlsx by the suffix). Returns rows written."""
    writers = {".csv": _write_csv, ".xlsx": _write_xlsx}
    if path.suffix.lower() not in writers:
        raise ValueError(f"{path}: use a .csv or .xlsx file name")
    rows = sheet_rows(store, sample, reviewer)
    atomic_write(path, lambda tmp: writers[path.suffix.lower()](tmp, rows))
    return len(rows)


# -- reading ------------------------------------------------------------------------------------


def _read_csv(path: Path) -> list[list[str]]:
    raw = path.read_bytes()
    for encoding in ("utf-8-sig", "gb18030"):  # Excel on Chinese Windows saves plain "CSV" as GBK
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise SheetError(path, ["the file is neither UTF-8 nor GBK text: save it as 'CSV UTF-8'"])
    try:
        return [list(r) for r in csv.reader(io.StringIO(text, newline=""), strict=True)]
    except csv.Error as exc:
        raise SheetError(path, [f"not a readable CSV file: {exc}"]) from exc


def _read_xlsx(path: Path) -> list[list[str]]:
    try:
        wb = load_workbook(path, data_only=True, read_only=True)
    except (InvalidFileException, OSError, KeyError, ValueError) as exc:
        raise SheetError(path, [f"not an XLSX workbook ({type(exc).__name__}: {exc})"]) from exc
    except Exception as exc:  # zipfile.BadZipFile and friends: whatever a broken file raises
        raise SheetError(path, [f"not an XLSX workbook ({type(exc).__name__}: {exc})"]) from exc
    try:
        if SHEET not in wb.sheetnames:
            raise SheetError(path, [f"no sheet named '{SHEET}' (it has: {', '.join(wb.sheetnames)})"])
        rows = [[cell_text(v) for v in row] for row in wb[SHEET].iter_rows(values_only=True)]
        width = max((len(r) for r in rows), default=0)
        return [r + [""] * (width - len(r)) for r in rows]  # a row's trailing empty cells may be absent
    finally:
        wb.close()


def _where(row: int, column: str) -> str:
    return f"row {row}, column {get_column_letter(COLUMNS.index(column) + 1)} '{column}'"


def _parse_row(
    number: int, row: dict[str, str], samples: dict[str, Sample], positions: dict[tuple[int, str], int],
    contexts: Contexts, problems: list[str], source: str,
) -> tuple[Review | None, Context | None]:
    """One row's verdict (None when blank), or problems appended naming row and column."""
    before = len(problems)
    sample = samples.get(row["sample"])
    if sample is None or sample.id is None:
        problems.append(f"{_where(number, 'sample')}: no sample named '{row['sample']}' in this workspace")
        return None, None
    aid = row["annotation_id"]
    position = positions.get((sample.id, aid))
    if position is None:
        problems.append(f"{_where(number, 'annotation_id')}: record '{aid}' is not in sample {sample.name}")
        return None, None
    if row["record"] != str(position):
        problems.append(f"{_where(number, 'record')}: '{row['record']}' but record {aid[:12]} is number {position} of the sample")
    ctx = contexts.by_id(aid)
    ann = ctx.annotation
    stored = {"conclusion": ann.conclusion, "reasoning": ann.reasoning, "question": ann.input, "task": ann.task_name}
    for column in _COMPARED:
        if row[column] != cell_text(stored[column]):
            hint = f"; put your correction in 'fixed_{column}' and set verdict to fix" if column in ("conclusion", "reasoning") else ""
            problems.append(f"{_where(number, column)}: this read-only column was changed{hint}")
    verdict_text = row["verdict"].lower()
    fixed = {k: row[f"fixed_{k}"] for k in ("conclusion", "reasoning")}
    if not verdict_text:
        for column in ("reason", "note", "fixed_conclusion", "fixed_reasoning"):
            if row[column]:
                problems.append(f"{_where(number, 'verdict')}: empty, but '{column}' is filled; set the verdict")
                break
        return None, ctx
    verdict = _VERDICT_WORDS.get(verdict_text)
    if verdict is None:
        problems.append(f"{_where(number, 'verdict')}: '{row['verdict']}' is not one of accept, reject, fix (or empty)")
        return None, ctx
    if row["reason"] and row["reason"] not in REASONS:
        problems.append(f"{_where(number, 'reason')}: '{row['reason']}' is not one of {', '.join(REASONS)}")
    if verdict == "fix" and not (fixed["conclusion"] or fixed["reasoning"]):
        problems.append(f"{_where(number, 'fixed_conclusion')}: verdict is fix but fixed_conclusion and fixed_reasoning are empty")
    if verdict != "fix" and (fixed["conclusion"] or fixed["reasoning"]):
        column = "fixed_conclusion" if fixed["conclusion"] else "fixed_reasoning"
        problems.append(f"{_where(number, column)}: filled, but the verdict is {verdict}; set it to fix or clear this cell")
    if not row["reviewer"]:
        problems.append(f"{_where(number, 'reviewer')}: empty; who gave this verdict?")
    if len(problems) > before:
        return None, ctx
    corrected = {}
    if verdict == "fix":
        corrected = {"conclusion": fixed["conclusion"] or (ann.conclusion or ""),
                     "reasoning": fixed["reasoning"] or (ann.reasoning or "")}
    try:
        review = make_review(ctx, reviewer=row["reviewer"], verdict=verdict, sample_id=sample.id, source=source,
                             reason=row["reason"] or None, note=row["note"] or None, **corrected)
    except ReviewError as exc:
        column = {"fix": "fixed_conclusion", "reject": "reason"}.get(verdict, "verdict")
        problems.append(f"{_where(number, column)}: {exc}")
        return None, ctx
    return review, ctx


def _same(a: Review, b: Review) -> bool:
    keys = ("verdict", "reason", "note", "conclusion", "reasoning")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def import_sheet(store: Store, path: Path) -> ImportSummary:
    """Read a reviewed CSV/XLSX; all of it is imported, or (with SheetError) none of it."""
    readers = {".csv": _read_csv, ".xlsx": _read_xlsx}
    if path.suffix.lower() not in readers:
        raise SheetError(path, ["use a .csv or .xlsx file (as written by `distill-qc sheet export`)"])
    table = readers[path.suffix.lower()](path)
    if not table:
        raise SheetError(path, ["the file is empty"])
    header = [h.strip() for h in table[0]]
    problems = []
    for i, name in enumerate(COLUMNS):
        found = header[i] if i < len(header) else ""
        if found != name:
            problems.append(f"row 1, column {get_column_letter(i + 1)}: expected header '{name}', found '{found}'"
                            " (columns were moved, renamed or deleted)")
    for i, found in enumerate(header[len(COLUMNS):], len(COLUMNS) + 1):
        if found:
            problems.append(f"row 1, column {get_column_letter(i)}: unexpected column '{found}'; put remarks in 'note'")
    if problems:
        raise SheetError(path, problems)
    samples = {s.name: s for s in store.samples()}
    positions = {(s.id, item.annotation_id): item.position for s in samples.values() if s.id is not None
                 for item in store.sample_items(s.id)}
    contexts = Contexts(store)
    reviews: list[Review] = []
    seen: dict[tuple[str, str], int] = {}
    blank = rows = 0
    for number, cells in enumerate(table[1:], 2):
        if not any(c.strip() for c in cells):
            continue  # spreadsheet programs keep trailing empty rows
        rows += 1
        if len(cells) < len(COLUMNS):
            problems.append(f"row {number}: has {len(cells)} cells, the header has {len(COLUMNS)}")
            continue
        stray = next((i for i, c in enumerate(cells[len(COLUMNS):], len(COLUMNS) + 1) if c.strip()), None)
        if stray is not None:
            problems.append(f"row {number}, column {get_column_letter(stray)}: a value outside the sheet's columns; "
                            "put remarks in 'note'")
            continue
        row = {name: cell_text(cells[i]) for i, name in enumerate(COLUMNS)}
        review, _ = _parse_row(number, row, samples, positions, contexts, problems, f"sheet:{path.name}")
        key = (row["annotation_id"], row["reviewer"])
        if row["verdict"] and key in seen:
            problems.append(f"{_where(number, 'annotation_id')}: the same record and reviewer as row {seen[key]}")
        seen.setdefault(key, number)
        if review is None:
            blank += not row["verdict"]
            continue
        reviews.append(review)
    if problems:
        raise SheetError(path, problems)
    latest = current(store.reviews(annotation_ids=[r.annotation_id for r in reviews]))
    new = [r for r in reviews if not ((old := latest.get((r.annotation_id, r.reviewer))) and _same(old, r))]
    store.add_reviews(new)
    return ImportSummary(rows=rows, added=len(new), unchanged=len(reviews) - len(new), blank=blank,
                         by_verdict=dict(Counter(r.verdict for r in new)))
