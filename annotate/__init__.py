"""Stage 1, annotate: documents -> chunks -> the teacher's `conclusion####reasoning` answers.

    readers.read_file / iter_files   txt, md, pdf, docx, html, jsonl, csv -> text (encodings detected)
    archives.ZipArchive              .zip of documents: each member read as a file, within unpack limits
    chunking.chunk_document          sentence-aligned chunks with character offsets and pages
    ingest.ingest                    files -> documents and chunks in the store (one bad file never sinks the batch)
    runner.plan / runner.run_job     the annotation job: every chunk x task through the teacher, exactly once
    self_instruct.self_instruct      Self-Instruct: new tasks the teacher writes from approved ones, filtered (ROUGE-L, near dups)
    evol_instruct.evol_instruct      Evol-Instruct: approved instructions evolved deeper or wider, WizardLM's eliminations
    instruction_backtranslation      Humpback: an instruction written and rated for each unlabeled chunk
    similarity.Pool                  CJK-aware ROUGE-L (jieba words) and near-dup checks against the workspace
    step.STAGE                       annotate's part of `distill run`
    cli.main                         `distill annotate` (ingest, tasks, run, status, export, import)
"""
