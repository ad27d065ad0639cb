"""qc: the human quality-control pass over annotated records (check, sample, review, report, export)."""
