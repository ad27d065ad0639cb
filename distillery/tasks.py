"""Tasks are data: a YAML file with sandboxed Jinja2 text.

A task holds the five-part teacher prompt (role, goal, background, output example, source
text), the output contract (`conclusion####reasoning`, optional closed label set, bounded
re-asks), the short student instruction the tuned model sees at serve time, and optional
few-shot examples. `kind: qa` is the two-step task: generate questions from a chunk, then
answer each one from the same chunk.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from jinja2 import StrictUndefined, Template, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field

from .config import load_mapping, validate
from .errors import DistilleryError
from .parsing import Parsed, parse_answer, parse_questions
from .records import Step, TaskVersion
from .teacher import Message

_env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)


@functools.lru_cache(maxsize=256)
def _compiled(template: str) -> Template:
    # Compiling is ~100x the cost of rendering; a job renders the same few templates per record.
    return _env.from_string(template)


class TaskFileError(DistilleryError, ValueError):
    """A task file that cannot be used; the message names the file and the field."""


class PromptParts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str
    goal: str
    background: str = ""
    output_example: str
    # The source-text part; `{{ text }}` is the chunk. Override to add framing around it.
    source: str = "{{ text }}"


class Example(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    question: str | None = None
    answer: str  # a whole `conclusion####reasoning` answer


class Contract(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_reasks: int = Field(2, ge=0, le=5)
    min_reasoning_chars: int = Field(1, ge=0)


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: str
    language: Literal["zh", "en"] = "zh"
    kind: Literal["single", "qa"] = "single"
    vars: dict[str, Any] = Field(default_factory=dict)  # user-set values the templates read
    labels: list[str] | None = None  # closed label set for the conclusion (single tasks)
    # label -> text that would precede a passage on that label ("An article about finance:\n").
    # The local teacher picks the label whose cue makes the chunk likeliest (channel scoring).
    label_cues: dict[str, Annotated[str, Field(min_length=1)]] | None = None
    prompt: PromptParts  # the single step, or the question-generation step of a qa task
    answer_prompt: PromptParts | None = None  # qa: answering one question from the chunk
    answer_labels: list[str] | None = None  # qa: closed set for answers (yes/no, A-D, NLI)
    max_questions: int = Field(3, ge=1, le=20)
    student_instruction: str  # what the tuned model is told at serve time
    examples: list[Example] = Field(default_factory=list)
    contract: Contract = Field(default_factory=Contract)


_LAYOUT = {
    "zh": {
        "goal": "## 目标",
        "background": "## 背景",
        "format": "## 输出格式\n先写结论，然后写“####”，再写理由。结论在前，不要加任何前缀或标题。",
        "labels": "结论只能是以下之一：{labels}。",
        "questions": "结论部分每行写一个问题，最多{n}个。",
        "example": "示例：",
        "source": "## 文本",
        "question": "## 问题",
        "reask": "你的回答不符合格式要求：{error}。请严格按“结论####理由”的格式重新回答。",
    },
    "en": {
        "goal": "## Goal",
        "background": "## Background",
        "format": "## Output format\nWrite the conclusion, then '####', then the reasoning. Conclusion first, no prefix or heading.",
        "labels": "The conclusion must be exactly one of: {labels}.",
        "questions": "In the conclusion, write one question per line, at most {n}.",
        "example": "Example:",
        "source": "## Text",
        "question": "## Question",
        "reask": "Your answer broke the required format: {error}. Answer again strictly as conclusion####reasoning.",
    },
}


class Task:
    """A loaded, validated task: renders teacher messages and parses answers for each step."""

    def __init__(self, spec: TaskSpec, body: str, origin: str) -> None:
        self.spec, self.body, self.origin = spec, body, origin
        self.hash = hashlib.sha256(body.encode("utf-8")).hexdigest()
        if spec.kind == "qa" and spec.answer_prompt is None:
            raise TaskFileError(f"{origin}: field 'answer_prompt' is required when kind is 'qa'")
        if spec.kind == "single" and (spec.answer_prompt or spec.answer_labels):
            raise TaskFileError(f"{origin}: 'answer_prompt'/'answer_labels' only apply to kind 'qa'")
        if spec.label_cues is not None:
            _check_cues(spec, spec.label_cues, origin)
        # Render every template once with sample values so a typo fails at load, not mid-job.
        for step in self.steps:
            self.messages(step, "示例文本 sample text", question="示例问题?" if step == "answer" else None)
        self.student_instruction(question="示例问题?")

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def steps(self) -> list[Step]:
        return ["main"] if self.spec.kind == "single" else ["questions", "answer"]

    @property
    def first_step(self) -> Step:
        return self.steps[0]

    def version(self) -> TaskVersion:
        return TaskVersion(hash=self.hash, name=self.name, body=self.body)

    def labels(self, step: Step) -> list[str] | None:
        return {"main": self.spec.labels, "questions": None, "answer": self.spec.answer_labels}[step]

    def label_cues(self, step: Step) -> list[str] | None:
        """The label cues in label order; None without them (only single tasks have them)."""
        cues, labels = self.spec.label_cues, self.labels(step)
        return [cues[label] for label in labels] if cues and labels else None

    def _render(self, template: str, field: str, **ctx: Any) -> str:
        try:
            return _compiled(template).render(vars=self.spec.vars, labels=self.spec.labels, **ctx).strip()
        except TemplateError as exc:
            raise TaskFileError(f"{self.origin}: template in '{field}' failed: {exc}") from exc

    def _user_message(self, step: Step, text: str, question: str | None, source_override: str | None = None) -> str:
        parts = self.spec.answer_prompt if step == "answer" else self.spec.prompt
        assert parts is not None
        words = _LAYOUT[self.spec.language]
        ctx = {"text": text, "question": question}
        fmt = [words["format"]]
        labels = self.labels(step)
        if labels:
            fmt.append(words["labels"].format(labels=" | ".join(labels)))
        if step == "questions":
            fmt.append(words["questions"].format(n=self.spec.max_questions))
        fmt += [words["example"], self.output_example(step, **ctx)]
        sections = [words["goal"], self._render(parts.goal, "goal", **ctx)]
        background = self._render(parts.background, "background", **ctx)
        if background:
            sections += [words["background"], background]
        sections += ["\n".join(fmt), words["source"], source_override or self._render(parts.source, "source", **ctx)]
        if step == "answer":
            sections += [words["question"], question or ""]
        return "\n".join(sections)

    @property
    def headings(self) -> list[str]:
        """The headings the teacher prompt is laid out with: an answer that repeats one echoes the prompt."""
        words = _LAYOUT[self.spec.language]
        return [words[k].split("\n")[0] for k in ("goal", "background", "format", "example", "source", "question")]

    def output_example(self, step: Step, **ctx: Any) -> str:
        """The step's output example as the prompt shows it (ctx: the `text` and `question` it may quote)."""
        parts = self.spec.answer_prompt if step == "answer" else self.spec.prompt
        assert parts is not None
        if "{" not in parts.output_example:  # no template syntax: qc asks this for every record
            return parts.output_example.strip()
        return self._render(parts.output_example, "output_example", **ctx)

    def messages(self, step: Step, text: str, *, question: str | None = None) -> list[Message]:
        """The teacher's messages: system = role, few-shot pairs, then the five-part user message."""
        parts = self.spec.answer_prompt if step == "answer" else self.spec.prompt
        assert parts is not None
        msgs: list[Message] = [{"role": "system", "content": self._render(parts.role, "role")}]
        # Few-shot examples belong to the step they demonstrate: questions-free ones to the
        # first step, ones with a question to the answer step.
        for ex in self.spec.examples:
            if (ex.question is not None) == (step == "answer"):
                msgs.append({"role": "user", "content": self._user_message(step, ex.text, ex.question)})
                msgs.append({"role": "assistant", "content": ex.answer})
        msgs.append({"role": "user", "content": self._user_message(step, text, question)})
        return msgs

    def reask(self, error: str) -> Message:
        return {"role": "user", "content": _LAYOUT[self.spec.language]["reask"].format(error=error)}

    def parse(self, step: Step, content: str, finish_reason: str | None) -> Parsed:
        return parse_answer(
            content,
            labels=self.labels(step),
            finish_reason=finish_reason,
            min_reasoning_chars=self.spec.contract.min_reasoning_chars,
        )

    def questions(self, parsed: Parsed) -> list[str]:
        return parse_questions(parsed.conclusion, max_questions=self.spec.max_questions)

    def student_instruction(self, *, question: str | None = None) -> str:
        return self._render(self.spec.student_instruction, "student_instruction", question=question)


def _check_cues(spec: TaskSpec, cues: dict[str, str], origin: str) -> None:
    # A qa answer depends on its question, which a cue before the chunk cannot condition on.
    if spec.kind != "single":
        raise TaskFileError(f"{origin}: 'label_cues' only apply to kind 'single'; remove them")
    if not spec.labels:
        raise TaskFileError(f"{origin}: 'label_cues' needs 'labels': add the label list, or remove 'label_cues'")
    missing = [label for label in spec.labels if label not in cues]
    extra = [key for key in cues if key not in spec.labels]
    fixes = []
    if missing:
        fixes.append(f"add a cue for {', '.join(missing)}")
    if extra:
        fixes.append(f"remove {', '.join(extra)} (not in 'labels')")
    if fixes:
        raise TaskFileError(f"{origin}: 'label_cues' needs exactly one cue per label: {'; '.join(fixes)}")


BUILTIN_DIR = resources.files("distillery") / "builtin_tasks"


def builtin_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in BUILTIN_DIR.iterdir() if p.name.endswith(".yaml"))


def parse_task(body: str, origin: str, *, overrides: dict[str, Any] | None = None) -> Task:
    data = load_mapping(body, origin, TaskFileError)
    if overrides:
        unknown = set(overrides) - set(data.get("vars") or {})
        if unknown:
            raise TaskFileError(f"{origin}: --var {', '.join(sorted(unknown))} is not a variable of this task "
                                f"(it has: {', '.join(sorted(data.get('vars') or {})) or 'none'})")
        data["vars"] = {**data["vars"], **overrides}
        # The hash must change with the values the prompts are rendered with.
        body = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    return Task(validate(TaskSpec, data, origin, TaskFileError), body, origin)


def load_task(name_or_path: str | Path, *, overrides: dict[str, Any] | None = None) -> Task:
    """A built-in task by name (see `builtin_names()`) or a task file by path."""
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        if not path.is_file():
            raise TaskFileError(f"{path}: no such task file")
        return parse_task(path.read_text(encoding="utf-8"), str(path), overrides=overrides)
    builtin = BUILTIN_DIR / f"{name_or_path}.yaml"
    if not builtin.is_file():
        raise TaskFileError(f"unknown task '{name_or_path}': use a built-in ({', '.join(builtin_names())}) or a path to a .yaml file")
    return parse_task(builtin.read_text(encoding="utf-8"), f"builtin:{name_or_path}", overrides=overrides)
