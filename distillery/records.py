"""Record types shared by every stage (annotate -> qc -> finetune -> serve).

These are the shapes that cross stage boundaries and the JSONL exchange format.
The SQLite schema in `distillery.store` mirrors them column for column.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, Field

SEPARATOR = "####"

AnnotationStatus = Literal[
    "pending",  # planned, no answer stored yet
    "ok",  # parsed, contract kept
    "invalid",  # answered, but never kept the contract after the allowed re-asks
    "refused",  # the provider's content filter refused the input
    "too_long",  # the input exceeded the model's context
    "failed",  # the request never got an answer (retries exhausted, bad request)
    "blocked",  # not sent: personal data in the chunk and the privacy policy is block
]
FINAL_STATUSES: frozenset[str] = frozenset({"ok", "invalid", "refused", "too_long", "failed", "blocked"})

Step = Literal["main", "questions", "answer"]

# How a record that was not annotated from its chunk came to be (Annotation.origin); None: annotated.
Origin = Literal[
    "eda",  # approved record, its text changed by word operations (synonyms, insert, swap, delete); label kept
    "aeda",  # approved record, punctuation inserted into its text; label kept
    "back_translation",  # approved record, its text paraphrased through another language by the teacher
    "self_instruct",  # a new task the teacher wrote from seed tasks (Self-Instruct)
    "evol_instruct",  # an instruction the teacher evolved from another (Evol-Instruct)
    "instruction_backtranslation",  # the instruction a chunk would answer, written and scored by the teacher
    "correction",  # the teacher's correction of the tuned student's answer (a second distillation round)
]
ORIGINS: tuple[str, ...] = Origin.__args__  # type: ignore[attr-defined]
# Generators that write the instruction too: their records are new tasks, not bound by the origin task's labels.
NEW_TASK_ORIGINS: frozenset[str] = frozenset({"self_instruct", "evol_instruct", "instruction_backtranslation"})


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Document(BaseModel):
    id: str  # sha256 of the document text (+ for a jsonl/csv row its resolved path and row, "a.jsonl#L3",
    # so equal rows of two files are two documents, each with its fields): the same file ingests once
    path: str
    kind: str
    encoding: str | None = None
    n_chars: int
    n_pages: int | None = None
    meta: dict[str, Any] = Field(default_factory=dict)
    created_at: str = Field(default_factory=utcnow)


class Chunk(BaseModel):
    id: str  # content hash of (document id, text): re-ingesting adds nothing
    document_id: str
    seq: int  # position in the document
    text: str
    char_start: int
    char_end: int
    page_start: int | None = None
    page_end: int | None = None
    size: int  # in the unit the chunker measured (chars or tokens)
    created_at: str = Field(default_factory=utcnow)
    text_key: str | None = None  # text_key(text); None on chunks stored before keys existed
    duplicate_of: str | None = None  # the stored chunk with the same text, or nearly: it is annotated, not this one
    duplicate_similarity: float | None = None  # Jaccard of their shingles (distillery.near_dup); 1.0: the same text


def text_key(text: str) -> str:
    """Identity of a chunk's text for dedup: the same characters, however spaced or wrapped."""
    normal = "".join(text.split())  # whitespace dropped, not collapsed: CJK text wraps without spaces
    return hashlib.sha256(normal.encode("utf-8")).hexdigest()[:32]


class TaskVersion(BaseModel):
    hash: str  # sha256 of the task file's content: stored on every annotation
    name: str
    body: str  # the YAML itself, so lineage survives edits to the file
    created_at: str = Field(default_factory=utcnow)


class Annotation(BaseModel):
    """One unit of teacher work: a chunk x task (x question, for the answer step of QA)."""

    id: str
    chunk_id: str
    task_hash: str
    task_name: str
    step: Step = "main"
    parent_id: str | None = None  # the questions record an answer belongs to
    item_index: int = 0
    input: str | None = None  # the question, for the answer step
    status: AnnotationStatus = "pending"
    origin: Origin | None = None  # None: annotated from its chunk; else the generator that made it
    instruction: str | None = None  # the student instruction, when the generator wrote one (None: the task's)
    text: str | None = None  # the student's input, when it is not the chunk's text (augmented, written)
    derivation: dict[str, Any] = Field(default_factory=dict)  # what a generated record came from, and how
    conclusion: str | None = None
    reasoning: str | None = None
    raw_text: str | None = None  # the teacher's last answer, verbatim
    error: str | None = None
    provider: str | None = None
    model: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    request_hash: str | None = None  # the call whose answer this record holds
    attempts: int = 0  # teacher calls made for this record (re-asks included)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    latency_s: float = 0.0
    created_at: str = Field(default_factory=utcnow)
    updated_at: str = Field(default_factory=utcnow)

    @property
    def answer(self) -> str | None:
        """The training target, `conclusion####reasoning`."""
        if self.conclusion is None:
            return None
        return f"{self.conclusion}{SEPARATOR}{self.reasoning or ''}"


class Call(BaseModel):
    """One distinct paid request in the ledger (hash of messages + model + params): written as
    `sent` before it leaves, as `ok` with the raw answer the moment it arrives."""

    request_hash: str
    annotation_id: str  # the record it was sent for (a judge's call: the record it judged)
    provider: str
    base_url: str | None = None
    model: str
    request: dict[str, Any]  # the JSON body sent
    status: Literal["sent", "ok", "error"]
    error_kind: str | None = None
    error: str | None = None
    response: dict[str, Any] | None = None  # the provider's whole JSON answer
    content: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None
    latency_s: float | None = None
    attempts: int | None = None
    sent_at: str
    done_at: str | None = None
    claimed_by: str | None = None  # "host:pid:token" of the run that sent it


class LineageRecord(BaseModel):
    """An annotation with everything it came from: the JSONL exchange line."""

    annotation: Annotation
    chunk: Chunk
    document: Document
    task: TaskVersion


class TrainingExample(BaseModel):
    """One approved record, ready for tuning: what `qc export` writes and `finetune prepare` reads.

    `output` is the training target `conclusion####reasoning`, with a reviewer's correction
    applied when there was one. The ids trace it back to its document, chunk, task and review.
    """

    annotation_id: str
    task_name: str
    task_hash: str
    step: Step
    document_id: str
    document_path: str
    chunk_id: str
    instruction: str  # the task's student instruction (rendered, question included for QA answers)
    input: str  # the source text the student reads
    conclusion: str
    reasoning: str
    corrected: bool = False  # a reviewer fixed the teacher's answer
    reviewer: str | None = None  # who approved it (None: approved with the lot, not sampled)
    teacher_model: str | None = None
    origin: Origin | None = None  # how a generated record came to be (None: annotated from its chunk)
    derived_from: list[str] = Field(default_factory=list)  # the documents a generated record drew on (its
    # own included): it may train only when every one of them is in the training split

    @property
    def output(self) -> str:
        return f"{self.conclusion}{SEPARATOR}{self.reasoning}"


class PreferencePair(BaseModel):
    """A DPO pair. From a reviewer's fix: chosen = the corrected answer, rejected = the teacher's.
    From a second round (origin "correction"): chosen = the teacher's answer, rejected = the tuned
    student's; `origin_id` is the approved record whose prompt the student answered."""

    annotation_id: str
    instruction: str
    input: str
    chosen: str
    rejected: str
    reviewer: str | None  # None: a correction approved with its lot, not reviewed one by one
    origin: Origin | None = None
    origin_id: str | None = None


# -- quality control (stage qc) ---------------------------------------------------------------

Verdict = Literal["accept", "reject", "fix", "skip"]
VERDICTS: tuple[str, ...] = ("accept", "reject", "fix")  # the decisions; "skip" only moves the cursor


class Flag(BaseModel):
    """What an automatic check found on one record. A flag marks a record; nothing is deleted."""

    annotation_id: str
    kind: str  # e.g. "grounding", "duplicate_answer", "judge_low" (see qc.checks.FLAG_KINDS)
    detail: str  # in words, for the reviewer
    related_id: str | None = None  # the record this one duplicates
    score: float | None = None  # the measured value: grounding share, Jaccard, judge score
    created_at: str = Field(default_factory=utcnow)


class Judgement(BaseModel):
    """An LLM judge's 1-10 score of one record; its raw answer is in the calls ledger."""

    annotation_id: str
    model: str
    score: int | None  # None: the judge's answer could not be read (see reason)
    reason: str
    request_hash: str | None = None
    created_at: str = Field(default_factory=utcnow)


class Sample(BaseModel):
    """A drawn review sample: the lot it was drawn from, how, and the plan that decides the lot."""

    id: int | None = None  # assigned by the store
    name: str
    tasks: list[str]
    spec: dict[str, Any]  # how it was drawn (qc.sampling.SampleSpec)
    plan: dict[str, Any]  # what decides the lot (qc.sampling.Plan)
    lot_size: int
    size: int
    created_at: str = Field(default_factory=utcnow)


class SampleItem(BaseModel):
    sample_id: int
    position: int  # 1-based review order
    annotation_id: str
    stratum: str  # the label, document or task it was drawn from ("all" for simple random)


class Review(BaseModel):
    """One verdict as given, append-only: a changed mind is a new row, the old one stays."""

    id: int | None = None  # assigned by the store; later ids win
    sample_id: int | None = None
    annotation_id: str
    reviewer: str
    verdict: Verdict
    reason: str | None = None  # category, required for reject (qc.review.REASONS)
    note: str | None = None
    conclusion: str | None = None  # fix: the corrected answer
    reasoning: str | None = None
    original_conclusion: str | None = None  # the teacher's answer as the reviewer saw it
    original_reasoning: str | None = None
    source: str = "screen"  # "screen" or "sheet:<file name>"
    created_at: str = Field(default_factory=utcnow)
