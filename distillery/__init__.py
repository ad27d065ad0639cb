"""distillery's core: what every stage shares, one module per concern. Stages import from here;
this package imports no stage (`distillery.stages` finds them through entry points).

    workspace      the workspace directory's layout: the store file, exports, datasets, runs, reports
    store          the one SQLite store (schema versions + forward migrations); the only module with SQL
    records        the typed rows every stage exchanges (Document, Chunk, Annotation, Call, Review, ...)
    near_dup       which stored chunk a new one nearly repeats (linked, not paid for again); minhash its numpy math
    errors         DistilleryError, the root of every error a user can meet; ConfigError
    config         YAML + dotted overrides + `--set key=value`, one semantics for every config
    jsonl          typed JSONL reads naming the bad line; writes that land whole or not at all
    options        click options the stage command lines share (workspace, --set, teacher)
    tasks          tasks as data (YAML + sandboxed Jinja2) and the built-in ones
    parsing        the `conclusion####reasoning` answer contract
    teacher        the teacher interface (ChatRequest, ChatResult, TeacherError, Teacher)
    teacher_config the teacher job config (annotate run, qc check --judge) and build_teacher()
    client         Kimi / any OpenAI-compatible API over httpx, with ratelimit's buckets
    local_teacher  the embedded model as a teacher
    ledger         the call ledger: a request is paid for at most once, within the budget
    growing        what dataset generators share: approved seeds, paid calls, generated records
    privacy        personal data found and masked (or blocked) before text reaches an external teacher
    accounting     prices, costs, token estimates
    runtime        the one model runtime (load, quantize, LoRA, generate with stop strings, score)
    engine         dynamic batching of concurrent callers on one model thread
    continuous     continuous batching (rows join/leave between decode steps), streaming, cancellation
    completions    the OpenAI chat-completions shapes distillery writes
    formatting     figures as people read them (percentages)
    sentences      Chinese/English sentence boundaries
    stages         the stage contract and how stages are found
    pipeline       `distill run`: every stage's step from one project config, the report
    cli            the `distill` command
"""

from .errors import ConfigError, DistilleryError
from .workspace import Workspace

__all__ = ["ConfigError", "DistilleryError", "Workspace"]
