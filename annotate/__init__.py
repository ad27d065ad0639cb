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
    cli.main                         `distill annotate` (ingest, tasks, run, status, export, import, grow)

Growing the approved records (each stores generated records that qc reviews like any other):
    augment.augment                  EDA and AEDA, Chinese-aware (jieba words, Cilin/Moby synonyms); free
    paraphrase.back_translate        zh->en->zh / en->zh->en through the teacher, the conclusion re-checked
    self_instruct.self_instruct      new tasks from seed tasks, CJK-safe similarity filters, bounded rounds
    evol_instruct.evol_instruct      in-depth and in-breadth evolution, the elimination rules counted
    instruction_backtranslation.instruction_backtranslation   instructions for unreviewed chunks, self-curated
    similarity.Pool                  what a new instruction is deduplicated against (the whole workspace)
    grow_cli.grow_cmd                `distill annotate grow METHOD`
"""
