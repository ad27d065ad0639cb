"""Stage 1, annotate: documents -> chunks -> the teacher's `conclusion####reasoning` answers.

    readers.read_file / iter_files   txt, md, pdf, docx, html, jsonl, csv -> text (encodings detected)
    archives.ZipArchive              .zip of documents: each member read as a file, within unpack limits
    chunking.chunk_document          sentence-aligned chunks with character offsets and pages
    ingest.ingest                    files -> documents and chunks in the store (one bad file never sinks the batch)
    runner.plan / runner.run_job     the annotation job: every chunk x task through the teacher, exactly once
    step.STAGE                       annotate's part of `distill run`
    cli.main                         `distill annotate` (ingest, tasks, run, status, export, import)
"""
