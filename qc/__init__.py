"""Stage 2, qc: the human quality-control pass over annotated records.

    checks.run_checks             automatic checks (format, labels, length, language, grounding, duplicates)
    judge.judge_records           optional LLM-as-judge scores, paid through the core's call ledger
    sampling.create_sample        ISO 2859-1 or Wilson-sized samples of the lot, stratified if asked
    review.ReviewSession          verdicts one record at a time (screen.ReviewScreen is the terminal UI)
    spreadsheet.export_sheet / import_sheet   the offline review round trip
    report.build_report           acceptance rate, Wilson interval, lot decision (report_html: the HTML file)
    export.export_approved        approved records (TrainingExample) and preference pairs as JSONL
    step.STAGE                    qc's part of `distill run`
    cli.main                      `distill qc`
"""
