"""What every dataset generator shares (annotate's generators, finetune's second round): its seeds,
its paid calls, and the records it stores.

A generator reads approved records (qc's export, `exports/approved.jsonl`), makes new records from
them (augmented, paraphrased, new instructions) and stores each as a generated record
(`Annotation.origin`) on its origin's chunk: qc then checks, samples, reviews and exports it like
any other record, and `finetune prepare` trains it only where every document it drew on trains.

Resuming after kill -9: every request a generator sends is a function of the stored state (its seeds
are drawn with a fixed seed from records that a re-run reads alike), so a re-run builds the same
requests and the call ledger (`distillery.ledger`) answers the ones already paid for from the store.
A record's id is a hash of what it was made from, so storing it twice adds nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from pydantic import Field

from . import jsonl
from .accounting import cost
from .errors import DistilleryError
from .ledger import CallHeld, JobStopped, Ledger, LedgerStats
from .privacy import Privacy, Screened
from .records import Annotation, Origin, TrainingExample
from .store import Store
from .teacher import ChatRequest, ChatResult, Guide, Message, Teacher, TeacherError
from .teacher_config import JobConfig, build_teacher


class GrowError(DistilleryError, ValueError):
    """A generator cannot start (no approved records, a bad option); the message says what to do."""


class GrowStats(LedgerStats):
    """What one generator run did: the progress bar and the summary read these."""

    generator: str = ""
    seeds: int = 0  # approved records it worked from
    before: int = 0  # records of this origin stored before the run
    made: int = 0  # new records stored by this run
    after: int = 0  # records of this origin stored after the run
    dropped: dict[str, int] = Field(default_factory=dict)  # candidates a filter or check left out, by reason
    rounds: int = 0  # rounds run (Self-Instruct, Evol-Instruct)
    stopped: str | None = None  # why the run ended early (a stop, the budget, quota, auth)
    errors: list[str] = Field(default_factory=list)  # the first few teacher errors

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n


@dataclass(frozen=True)
class Seed:
    """An approved record as a generator sees it: the example qc exported and its stored record."""

    example: TrainingExample
    annotation: Annotation

    @property
    def text(self) -> str:
        return self.example.input

    @property
    def answer(self) -> str:
        return self.example.output


def approved_seeds(store: Store, approved: Path, *, task_names: Iterable[str] = (),
                   include_generated: bool = False) -> list[Seed]:
    """The approved records of `approved` (qc's export) that this workspace holds, in file order;
    generated ones only with `include_generated` (an augmentation is not augmented again)."""
    if not approved.is_file():
        raise GrowError(f"{approved} does not exist: review and export the annotated records first "
                        "(distill-qc sample, review, export), or name another file with --approved")
    wanted = set(task_names)
    seeds: list[Seed] = []
    for _, ex in jsonl.read_jsonl(approved, TrainingExample, GrowError):
        if (wanted and ex.task_name not in wanted) or (ex.origin is not None and not include_generated):
            continue
        ann = store.annotation(ex.annotation_id)
        if ann is not None and ann.status == "ok":
            seeds.append(Seed(example=ex, annotation=ann))
    if not seeds:
        which = f" of task {', '.join(sorted(wanted))}" if wanted else ""
        raise GrowError(f"{approved} holds no approved records{which} that this workspace has: export them with "
                        "distill-qc export (from this workspace) first")
    return seeds


def generated_id(origin: str, *parts: str) -> str:
    """A generated record's id: the same inputs, the same record (a re-run stores nothing twice)."""
    return hashlib.sha256("\x00".join([origin, *parts]).encode("utf-8")).hexdigest()[:32]


def new_record(seed: Seed, *, origin: Origin, record_id: str, conclusion: str, reasoning: str,
               text: str | None = None, instruction: str | None = None, model: str | None = None,
               provider: str | None = None, derivation: dict | None = None,
               answers: Iterable[ChatResult] = (), config: JobConfig | None = None) -> Annotation:
    """A generated record on its seed's chunk (so it goes to the seed document's split), `ok`, with
    the figures of the answers it took (none for a local augmentation)."""
    paid = list(answers)
    origin_ann = seed.annotation
    return Annotation(
        id=record_id, chunk_id=origin_ann.chunk_id, task_hash=origin_ann.task_hash, task_name=origin_ann.task_name,
        step=origin_ann.step, parent_id=origin_ann.id, input=origin_ann.input if instruction is None else None,
        status="ok", conclusion=conclusion, reasoning=reasoning, raw_text=paid[-1].content if paid else None,
        provider=provider or "local-augmentation", model=model or origin_ann.model,
        origin=origin, text=text, instruction=instruction,
        derivation={"of": origin_ann.id, **(derivation or {})},
        attempts=len(paid), prompt_tokens=sum(r.prompt_tokens for r in paid),
        completion_tokens=sum(r.completion_tokens for r in paid),
        cost=sum(cost(config.price(), r.prompt_tokens, r.completion_tokens) for r in paid) if config else 0.0,
        latency_s=sum(r.latency_s for r in paid),
    )  # fmt: skip


def store_records(store: Store, records: Iterable[Annotation], stats: GrowStats) -> int:
    """Store new records (ones already stored are kept as they are); counts them in `stats.made`."""
    added = store.plan(records)
    stats.made += added
    return added


def count_generated(store: Store, origin: str) -> int:
    return store.origin_count(origin)


class Teaching:
    """The paid side of a generator: the job's teacher behind the call ledger (never pay twice,
    budget, stop), its concurrency limit and its privacy screen. Use as `async with`."""

    def __init__(self, store: Store, config: JobConfig, stats: GrowStats, *, teacher: Teacher | None = None,
                 stop: asyncio.Event | None = None) -> None:
        self.store, self.config, self.stats = store, config, stats
        self.teacher = teacher or build_teacher(config.teacher)
        self.model = config.teacher.resolved_model()
        self.stop = stop or asyncio.Event()
        self.ledger = Ledger(store, self.teacher, model=self.model, base_url=config.teacher.resolved_base_url(),
                             price=config.price(), budget=config.budget, stats=stats, stop=self.stop,
                             lease_s=config.teacher.lease_s())
        self.ledger.stopped_because = "stopped on request; run the same command again to resume"
        self.privacy = Privacy(store, config.privacy, local_teacher=config.teacher.resolved_provider() == "local")
        self.limit = asyncio.Semaphore(config.teacher.limits().concurrency)
        stats.currency = config.price().currency

    @property
    def provider(self) -> str:
        return self.teacher.name

    async def __aenter__(self) -> Teaching:
        try:
            await self.ledger.preflight()  # an unreachable teacher or a refused key costs nothing and says so
        except JobStopped as exc:
            self.stats.stopped = str(exc)
            self.stop.set()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.ledger.close()
        await self.teacher.aclose()

    def screen(self, *texts: str | None) -> Screened:
        """The texts as they may leave for the teacher (masked by the workspace's privacy policy)."""
        return self.privacy.screen(*texts)

    async def ask(self, record_id: str, messages: list[Message], *, temperature: float | None = None,
                  max_tokens: int | None = None, labels: list[str] | None = None,
                  guide: Guide | None = None) -> ChatResult | None:
        """One paid request for `record_id`; None when it was not answered (a stop, another run holds
        it, a teacher error: each counted in the stats). `labels` (or a whole `guide`, with the task's
        cues) steer an embedded teacher to a closed label set; an API teacher ignores them."""
        teacher = self.config.teacher
        request = ChatRequest(messages=messages, model=self.model,
                              temperature=teacher.temperature if temperature is None else temperature,
                              max_tokens=max_tokens or teacher.max_tokens,
                              guide=guide or (Guide(labels=labels) if labels else None))
        async with self.limit:
            if self.stop.is_set():
                return None
            try:
                _, result, _ = await self.ledger.call(record_id, request)
            except JobStopped as exc:
                self.stats.stopped = self.stats.stopped or str(exc)
                self.stop.set()
                return None
            except CallHeld:
                self.stats.drop("held by another run (it will store the answer)")
                return None
            except TeacherError as exc:
                self.stats.drop(f"teacher error ({exc.kind})")
                if len(self.stats.errors) < 5:
                    self.stats.errors.append(f"{exc.kind}: {exc.message}")
                return None
        return result
