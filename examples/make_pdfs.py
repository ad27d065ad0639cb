"""Regenerate the PDF documents shipped in examples/docs from the texts inside this file.

Each PDF is one A4 page: a bold title line, then the body paragraphs, in the core
Helvetica font (so the texts must stay latin-1). The creation date is fixed so
that rerunning the script gives the same files. Run from anywhere:

    .venv/bin/python examples/make_pdfs.py
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from fpdf import FPDF

DOCS = Path(__file__).resolve().parent / "docs"
CREATED = datetime(2024, 1, 1, tzinfo=timezone.utc)

PDFS: dict[str, tuple[str, list[str]]] = {
    "data_retention_policy_en.pdf": (
        "Personal data retention policy",
        [
            "We keep personal data only as long as we need it for the purpose for which it was collected. "
            "Customer account data is deleted 24 months after the account is closed. Recordings of support "
            "calls are kept for 90 days, and job applications for six months after the position is filled.",
            "When a retention period ends, the data is erased or anonymised so that no person can be "
            "identified. Backups are overwritten within 35 days. Any exception, for example a legal hold, "
            "must be approved by the data protection officer and recorded in the processing register.",
        ],
    ),
    "market_close_report_en.pdf": (
        "Market close: banks lead gains as bond yields rise",
        [
            "Stocks ended higher on Tuesday, with the main index up 0.8% and the technology index adding 0.3%. "
            "Bank shares rose 2.1% after ten-year government bond yields climbed to 4.35%, which traders said "
            "should widen lending margins.",
            "Oil prices fell for a third day and the dollar was steady against the euro. Investors are waiting "
            "for Thursday's inflation figures, which could decide whether the central bank cuts interest rates "
            "at its next meeting.",
        ],
    ),
    "holiday_schedule_en.pdf": (
        "Office holiday schedule for the end of the year",
        [
            "The office will be closed from 24 December to 1 January inclusive and reopens on Thursday "
            "2 January. Staff do not need to use annual leave for 25 and 26 December or 1 January, which are "
            "public holidays; the other closing days are company days off.",
            "Teams that provide customer support should agree an on-call rota with HR by 6 December. Please "
            "book any remaining annual leave in the HR system before 15 December; up to five unused days can "
            "be carried over into next year.",
        ],
    ),
    "park_reopening_en.pdf": (
        "Hillside Park reopens after restoration",
        [
            "Hillside Park reopens to visitors on Saturday 6 April after eight months of restoration work. The "
            "lakeside footpath has been resurfaced, the children's playground rebuilt, and 300 new trees "
            "planted along the northern slope.",
            "A new 5 km trail now links the park to the riverside cycle path, and the picnic meadow has "
            "drinking fountains again. The park is open from 7:00 until dusk. Dogs are welcome on a lead, "
            "except in the wildflower garden.",
        ],
    ),
}


def make_pdf(path: Path, title: str, paragraphs: list[str]) -> None:
    pdf = FPDF(format="A4")
    pdf.set_creation_date(CREATED)
    pdf.set_title(title)
    pdf.set_author("distillery examples")
    pdf.set_margins(25, 25, 25)
    pdf.add_page()
    pdf.set_font("Helvetica", style="B", size=15)
    pdf.multi_cell(0, 8, title)
    pdf.ln(4)
    pdf.set_font("Helvetica", size=11)
    for paragraph in paragraphs:
        pdf.multi_cell(0, 6, paragraph)
        pdf.ln(3)
    if pdf.page_no() != 1:
        raise ValueError(f"{path.name} does not fit on one page")
    pdf.output(str(path))


def main() -> None:
    for name, (title, paragraphs) in PDFS.items():
        make_pdf(DOCS / name, title, paragraphs)
        print(DOCS / name)


if __name__ == "__main__":
    main()
