"""CSV and XLSX round trips, and broken files refused with the row and column named, nothing imported."""

import csv
import shutil

import pytest
from click.testing import CliRunner
from openpyxl import load_workbook

from distillery.store import Store
from qc.cli import main
from qc.review import ReviewSession
from qc.sampling import SampleSpec, create_sample
from qc.spreadsheet import COLUMNS, SheetError, export_sheet, import_sheet
from qc.verdicts import current
from qc_fixtures import workspace


@pytest.fixture
def setup(tmp_path):
    ws = workspace(tmp_path, 40)
    store = Store.open(ws)
    sample, _ = create_sample(store, SampleSpec(tasks=["relevance"], size=8, target=0.5))
    yield ws, store, sample
    store.close()


def _read_csv(path):
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def _write_csv(path, rows, encoding="utf-8-sig", header=COLUMNS):
    with path.open("w", encoding=encoding, newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _fill(rows):
    """What a reviewer does offline: accept, reject with a reason, fix one, leave the rest."""
    rows[0]["verdict"] = "accept"
    rows[1] |= {"verdict": "reject", "reason": "hallucination", "note": "编造了罚款金额"}
    other = "不相关" if rows[2]["conclusion"] == "相关" else "相关"
    rows[2] |= {"verdict": "fix", "fixed_conclusion": other, "fixed_reasoning": "改正后的理由：原文没有这样的规定。"}
    rows[3]["verdict"] = "通过"  # Chinese spelling is fine
    return rows


def test_csv_round_trip_and_reimport_adds_nothing(setup, tmp_path):
    _, store, sample = setup
    path = tmp_path / "review.csv"
    assert export_sheet(store, sample, "dora", path) == 8
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")  # BOM: Excel reads the Chinese right
    rows = _fill(_read_csv(path))
    assert rows[0]["reviewer"] == "dora" and rows[0]["source_text"] and rows[0]["instruction"]
    _write_csv(path, rows)
    summary = import_sheet(store, path)
    assert (summary.rows, summary.added, summary.unchanged, summary.blank) == (8, 4, 0, 4)
    now = current(store.reviews(reviewer="dora"))
    got = {aid: r for (aid, _), r in now.items()}
    assert got[rows[1]["annotation_id"]].reason == "hallucination" and got[rows[1]["annotation_id"]].note == "编造了罚款金额"
    fix = got[rows[2]["annotation_id"]]
    assert fix.conclusion == rows[2]["fixed_conclusion"] and fix.original_conclusion == rows[2]["conclusion"]
    assert fix.source == "sheet:review.csv" and got[rows[3]["annotation_id"]].verdict == "accept"
    assert import_sheet(store, path).added == 0  # idempotent
    # exported again, the sheet shows the verdicts given so far
    again = _read_csv(path) if export_sheet(store, sample, "dora", path) else []
    assert [r["verdict"] for r in again[:4]] == ["accept", "reject", "fix", "accept"]
    assert again[2]["fixed_reasoning"] == "改正后的理由：原文没有这样的规定。"


def test_xlsx_round_trip_with_the_screen_reviewer_alongside(setup, tmp_path):
    ws, store, sample = setup
    ReviewSession(store, sample, "alice").give(0, "reject", reason="other", note="screen verdict")
    path = tmp_path / "review.xlsx"
    result = CliRunner().invoke(main, ["-w", str(ws), "sheet", "export", str(path), "-r", "erik"])
    assert result.exit_code == 0, result.output
    wb = load_workbook(path)
    ws_review = wb["review"]
    header = [c.value for c in ws_review[1]]
    assert header == list(COLUMNS) and "about" in wb.sheetnames
    assert ws_review.data_validations.dataValidation  # drop-downs for verdict and reason
    col = {name: i + 1 for i, name in enumerate(header)}
    for r in range(2, 10):
        ws_review.cell(row=r, column=col["verdict"], value="accept")
    wb.save(path)
    result = CliRunner().invoke(main, ["-w", str(ws), "sheet", "import", str(path)])
    assert result.exit_code == 0, result.output
    assert "8 verdicts imported (accept 8)" in " ".join(result.output.split())
    verdicts = current(store.reviews())
    assert len(verdicts) == 9 and verdicts[(store.sample_items(sample.id)[0].annotation_id, "alice")].verdict == "reject"


def test_text_that_looks_like_a_formula_stays_text(tmp_path):
    from qc_fixtures import Answer, add_answers

    ws = tmp_path / "ws"
    with Store.open(ws) as store:
        add_answers(store, "relevance", [Answer(text="=SUM(A1:A9) 个人信息处理者应当告知处理目的。", conclusion="相关",
                                                reasoning="=HYPERLINK(\"x\") 文本规定个人信息处理者应当告知处理目的。")])
        sample, _ = create_sample(store, SampleSpec(tasks=["relevance"], size=1))
        path = tmp_path / "f.xlsx"
        export_sheet(store, sample, "x", path)
        row = [c.value for c in load_workbook(path)["review"][2]]
        assert row[COLUMNS.index("reasoning")].startswith("=HYPERLINK") and load_workbook(path)["review"][2][9].data_type == "s"
        assert import_sheet(store, path).rows == 1


BROKEN = {
    "verdict misspelt": (lambda rows: rows[4].__setitem__("verdict", "maybe"), "row 6, column M 'verdict': 'maybe' is not one of"),
    "answer edited in place": (lambda rows: rows[0].__setitem__("reasoning", rows[0]["reasoning"] + "（已改）"),
                               "row 2, column J 'reasoning': this read-only column was changed; put your correction in 'fixed_reasoning'"),
    "reject without reason": (lambda rows: rows[1].__setitem__("reason", ""), "row 3, column N 'reason': a rejection needs a reason"),
    "unknown reason": (lambda rows: rows[1].__setitem__("reason", "ugly"), "row 3, column N 'reason': 'ugly' is not one of"),
    "fix without text": (lambda rows: rows[2].update(fixed_conclusion="", fixed_reasoning=""),
                         "row 4, column P 'fixed_conclusion': verdict is fix but"),
    "fix to a label not in the set": (lambda rows: rows[2].__setitem__("fixed_conclusion", "有点相关"),
                                      "row 4, column P 'fixed_conclusion': '有点相关' is not one of the task's labels"),
    "correction without fix verdict": (lambda rows: rows[6].__setitem__("fixed_reasoning", "x"),
                                       "row 8, column M 'verdict': empty, but 'fixed_reasoning' is filled"),
    "note without verdict": (lambda rows: rows[6].__setitem__("note", "看不懂"),
                             "row 8, column M 'verdict': empty, but 'note' is filled"),
    "record from elsewhere": (lambda rows: rows[7].__setitem__("annotation_id", "f" * 32), "row 9, column C 'annotation_id': record"),
    "row moved": (lambda rows: rows[3].__setitem__("record", "99"), "row 5, column B 'record': '99' but record"),
    "no reviewer": (lambda rows: rows[0].__setitem__("reviewer", ""), "row 2, column L 'reviewer': empty"),
    "same record twice": (lambda rows: rows.append(dict(rows[0])), "row 10, column C 'annotation_id': the same record and reviewer as row 2"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_csv_is_refused_with_row_and_column_and_nothing_imported(setup, tmp_path, case):
    _, store, sample = setup
    path = tmp_path / "review.csv"
    export_sheet(store, sample, "dora", path)
    rows = _fill(_read_csv(path))
    breaker, message = BROKEN[case]
    breaker(rows)
    _write_csv(path, rows)
    before = len(store.reviews())
    with pytest.raises(SheetError) as err:
        import_sheet(store, path)
    assert message in str(err.value) and "nothing was imported" in str(err.value)
    assert len(store.reviews()) == before  # the good rows of a bad file are not imported either


def test_broken_files_and_layouts(setup, tmp_path):
    ws, store, sample = setup
    path = tmp_path / "review.csv"
    export_sheet(store, sample, "dora", path)
    rows = _fill(_read_csv(path))
    cases = []
    renamed = tmp_path / "renamed.csv"
    _write_csv(renamed, [{("verdict!" if k == "verdict" else k): v for k, v in r.items()} for r in rows],
               header=[("verdict!" if c == "verdict" else c) for c in COLUMNS])
    cases.append((renamed, "row 1, column M: expected header 'verdict', found 'verdict!'"))
    extra = tmp_path / "extra.csv"
    _write_csv(extra, [r | {"comments": "x"} for r in rows], header=[*COLUMNS, "comments"])
    cases.append((extra, "row 1, column R: unexpected column 'comments'"))
    short = tmp_path / "short.csv"
    short.write_text(path.read_text(encoding="utf-8-sig").splitlines()[0] + "\ns1,1,abc\n", encoding="utf-8")
    cases.append((short, "row 2: has 3 cells"))
    garbage = tmp_path / "garbage.xlsx"
    garbage.write_bytes(b"PK\x03\x04 this is not a workbook")
    cases.append((garbage, "not an XLSX workbook"))
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81\x00\xfe" * 50)
    cases.append((binary, "neither UTF-8 nor GBK"))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    cases.append((empty, "the file is empty"))
    wrong_kind = tmp_path / "review.txt"
    shutil.copy(path, wrong_kind)
    cases.append((wrong_kind, "use a .csv or .xlsx file"))
    for bad, message in cases:
        with pytest.raises(SheetError, match=message.replace("(", r"\(").replace(")", r"\)")):
            import_sheet(store, bad)
    assert store.reviews() == []
    # Excel on a Chinese Windows saves "CSV" as GBK: read it, the checks still hold
    gbk = tmp_path / "gbk.csv"
    _write_csv(gbk, rows, encoding="gb18030")
    assert import_sheet(store, gbk).added == 4
    # and the command line prints the problems, exit status 1
    result = CliRunner().invoke(main, ["-w", str(ws), "sheet", "import", str(renamed)])
    assert result.exit_code == 1 and "expected header 'verdict'" in result.output
