"""What qc works on: a task's answered records, each with the chunk, document and task it came from.

The lot is the set of records that would become training examples: status `ok`, and a step that
produces one (`main` for single tasks, `answer` for QA; a QA `questions` record only lists the
questions, each answered in its own `answer` record).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from distillery.errors import DistilleryError
from distillery.records import Annotation, Chunk, Document
from distillery.store import Store
from distillery.tasks import Task, parse_task

TRAINABLE_STEPS = ("main", "answer")


class LotError(DistilleryError, ValueError):
    """A lot that cannot be formed (no such task, nothing annotated); the message says what to do."""


def resolve_tasks(store: Store, requested: Iterable[str] = ()) -> list[str]:
    """The task names to work on: the requested ones (checked), or every task with answered records."""
    present = store.task_names()
    wanted = list(dict.fromkeys(requested))
    if not present:
        raise LotError("the workspace has no annotated records: run `distill-annotate run` first")
    unknown = [t for t in wanted if t not in present]
    if unknown:
        raise LotError(f"no records of task {', '.join(unknown)} in this workspace (it has: {', '.join(present)})")
    return wanted or present


def answered(store: Store, task_names: Iterable[str], statuses: tuple[str, ...] = ("ok",)) -> Iterator[Annotation]:
    """The tasks' records in these states, of the steps that make training examples, oldest first."""
    for name in task_names:
        for step in TRAINABLE_STEPS:
            for _, ann in store.annotations(task_name=name, step=step, status=statuses):
                yield ann


@dataclass(frozen=True)
class Context:
    """A record with everything a check, a reviewer or an export needs to see."""

    annotation: Annotation
    chunk: Chunk
    document: Document
    task: Task

    @property
    def instruction(self) -> str:
        """The student instruction the tuned model will see for this record (a generator's own, if it wrote one)."""
        if self.annotation.instruction is not None:
            return self.annotation.instruction
        return self.task.student_instruction(question=self.annotation.input)

    @property
    def source(self) -> str:
        """The text the student reads: the chunk's, or a generated record's own (augmented, written)."""
        return self.annotation.text if self.annotation.text is not None else self.chunk.text

    @property
    def where(self) -> str:
        return f"{self.document.path} #{self.chunk.seq}"


class Contexts:
    """Builds Contexts, parsing each stored task version once."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._tasks: dict[str, Task] = {}
        self._documents: dict[str, Document | None] = {}

    def _document(self, document_id: str) -> Document | None:
        if document_id not in self._documents:  # many chunks share one: read it once
            self._documents[document_id] = self.store.document(document_id)
        return self._documents[document_id]

    def task(self, task_hash: str) -> Task:
        if task_hash not in self._tasks:
            version = self.store.task(task_hash)
            if version is None:
                raise LotError(f"task version {task_hash[:12]} is missing from the workspace")
            self._tasks[task_hash] = parse_task(version.body, f"workspace task {version.name}@{task_hash[:12]}")
        return self._tasks[task_hash]

    def of(self, ann: Annotation) -> Context:
        chunk = self.store.chunk(ann.chunk_id)
        document = self._document(chunk.document_id) if chunk else None
        if chunk is None or document is None:
            raise LotError(f"record {ann.id} points at a chunk or document the workspace does not have")
        return Context(annotation=ann, chunk=chunk, document=document, task=self.task(ann.task_hash))

    def by_id(self, annotation_id: str) -> Context:
        ann = self.store.annotation(annotation_id)
        if ann is None:
            raise LotError(f"no record {annotation_id} in this workspace")
        return self.of(ann)
