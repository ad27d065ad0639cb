"""Stage 1, annotate: documents -> chunks -> the teacher's `conclusion####reasoning` answers.

    readers.read_file / iter_files   txt, md, pdf, docx, html, jsonl, csv -> text (encodings detected)
    archives.ZipArchive              .zip of documents: each member read as a file, within unpack limits
    chunking.chunk_document          sentence-aligned chunks with character offsets and pages
    ingest.ingest                    files -> documents and chunks in the store (one bad file never sinks the batch)
    runner.plan / runner.run_job     the annotation job: every chunk x task through the teacher, exactly once
    step.STAGE                       annotate's part of `distill run`
    cli.main                         `distill annotate` (ingest, tasks, run, status, export, import, grow)

Growing the approved records (each stores generated records that qc reviews like any other):
    augment.augment                  EDA and AEDA, Chinese-aware (jieba words, Cilin/Moby synonyms); free
    paraphrase.back_translate        zh->en->zh / en->zh->en through the teacher, the conclusion re-checked
    self_instruct.self_instruct      Self-Instruct: new tasks from approved ones, filtered (ROUGE-L on jieba words, near dups)
    evol_instruct.evol_instruct      Evol-Instruct: instructions evolved deeper or wider, WizardLM's eliminations counted
    instruction_backtranslation      Humpback: an instruction written and self-curated for each unreviewed chunk
    similarity.Pool                  CJK-aware ROUGE-L and near-dup checks against the whole workspace
    grow_cli.grow_cmd                `distill annotate grow METHOD`
"""
