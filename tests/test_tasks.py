import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError

from annotate import runner
from distillery.tasks import TaskFileError, builtin_names, load_task
from distillery.teacher import ChatRequest, ChatResult, Gate, Guide
from helpers import ingested_store, openai_config

ROOT = Path(__file__).resolve().parent.parent
CUES_HEAD = "name: c\ndescription: d\nprompt: {role: r, goal: g, output_example: 'a####r'}\nstudent_instruction: s\n"


def test_every_builtin_loads_and_renders_all_steps():
    names = builtin_names()
    assert {"relevance", "qa", "extractive_qa", "yes_no_qa", "multiple_choice", "nli",
            "topic_classification", "summarization"} <= set(names)
    for name in names:
        task = load_task(name)
        for step in task.steps:
            msgs = task.messages(step, "正文 TEXT-MARKER", question="Q-MARKER" if step == "answer" else None)
            assert msgs[0]["role"] == "system" and msgs[-1]["role"] == "user"
            assert "TEXT-MARKER" in msgs[-1]["content"]
            assert "####" in msgs[-1]["content"]  # the contract is stated
            if step == "answer":
                assert "Q-MARKER" in msgs[-1]["content"]


def test_relevance_prompt_has_five_parts_and_labels():
    task = load_task("relevance", overrides={"topic": "碳排放"})
    system, user = task.messages("main", "某段文本")
    assert "合规分析师" in system["content"]  # role
    for part in ("## 目标", "碳排放", "## 背景", "## 输出格式", "相关 | 不相关", "示例", "## 文本", "某段文本"):
        assert part in user["content"]
    assert "碳排放" in task.student_instruction()


def test_var_override_changes_the_hash_and_unknown_var_is_refused():
    base, other = load_task("relevance"), load_task("relevance", overrides={"topic": "碳排放"})
    assert base.hash != other.hash
    with pytest.raises(TaskFileError, match="not a variable"):
        load_task("relevance", overrides={"topik": "x"})


def test_bad_task_files_name_the_file_and_field(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("name: t\ndescription: d\nprompt: {role: r, goal: g}\nstudent_instruction: s\n", encoding="utf-8")
    with pytest.raises(TaskFileError, match=r"t\.yaml.*prompt\.output_example"):
        load_task(bad)
    bad.write_text("name: t\ndescription: d\nprompt: {role: r, goal: '{{ nope }}', output_example: x}\nstudent_instruction: s\n")
    with pytest.raises(TaskFileError, match="goal"):
        load_task(bad)
    bad.write_text("name: t\ndescription: d\nkind: qa\nprompt: {role: r, goal: g, output_example: x}\nstudent_instruction: s\n")
    with pytest.raises(TaskFileError, match="answer_prompt"):
        load_task(bad)
    bad.write_text("name: t\ndescription: d\nlabels: [yes, no]\nprompt: {role: r, goal: g, output_example: x}\nstudent_instruction: s\n")
    with pytest.raises(TaskFileError, match="labels.0.*put it in quotes"):
        load_task(bad)
    with pytest.raises(TaskFileError, match="unknown task"):
        load_task("no-such-task")


def test_sandbox_blocks_attribute_escapes(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text(
        "name: evil\ndescription: d\nprompt: {role: r, goal: \"{{ ''.__class__.__mro__[1].__subclasses__() }}\", output_example: x}\n"
        "student_instruction: s\n"
    )
    with pytest.raises(TaskFileError):
        load_task(evil)


def test_few_shot_examples_become_message_pairs(tmp_path):
    f = tmp_path / "fs.yaml"
    f.write_text(
        "name: fs\ndescription: d\nlabels: ['yes', 'no']\nprompt: {role: r, goal: g, output_example: 'yes####r'}\n"
        "student_instruction: s\nexamples:\n  - {text: 'EX-TEXT', answer: 'no####because'}\n",
        encoding="utf-8",
    )
    msgs = load_task(f).messages("main", "REAL")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert "EX-TEXT" in msgs[1]["content"] and msgs[2]["content"] == "no####because" and "REAL" in msgs[3]["content"]


def test_topic_example_loads_with_one_cue_per_label(monkeypatch):
    monkeypatch.chdir(ROOT)
    task = load_task("examples/tasks/topic.yaml")
    assert task.spec.labels == ["privacy", "finance", "workplace", "outdoors"]
    assert task.label_cues("main") == [task.spec.label_cues[label] for label in task.spec.labels]
    assert "####" in task.student_instruction()


def test_label_cues_come_in_label_order_and_must_match_the_labels(tmp_path):
    f = tmp_path / "cues.yaml"
    f.write_text(CUES_HEAD + "labels: [a, b]\nlabel_cues: {b: 'About B:', a: 'About A:'}\n", encoding="utf-8")
    assert load_task(f).label_cues("main") == ["About A:", "About B:"]
    f.write_text(CUES_HEAD + "labels: [a, b]\nlabel_cues: {a: 'About A:', c: 'About C:'}\n", encoding="utf-8")
    with pytest.raises(TaskFileError, match=r"cues\.yaml: 'label_cues'.*add a cue for b; remove c"):
        load_task(f)
    f.write_text(CUES_HEAD + "label_cues: {a: 'About A:'}\n", encoding="utf-8")
    with pytest.raises(TaskFileError, match=r"cues\.yaml: 'label_cues' needs 'labels'"):
        load_task(f)
    f.write_text(CUES_HEAD + "kind: qa\nanswer_prompt: {role: r, goal: g, output_example: x}\nanswer_labels: [a]\n"
                 "label_cues: {a: 'About A:'}\n", encoding="utf-8")
    with pytest.raises(TaskFileError, match=r"cues\.yaml: 'label_cues' only apply to kind 'single'"):
        load_task(f)
    assert load_task("relevance").label_cues("main") is None


def test_cues_change_the_request_hash_and_requests_without_them_keep_theirs():
    plain = ChatRequest(messages=[{"role": "user", "content": "Is this about privacy?"}], model="m",
                        temperature=0, max_tokens=16, guide=Guide(labels=["yes", "no"]))
    # Computed before Guide had cues: answers stored under it must still be found.
    assert plain.request_hash() == "1f36eaccc4672a52430d164bd9d7190d85ed740d9ff114c53771140841d4ffed"
    assert plain.model_copy(update={"guide": None}).request_hash() == (
        "556631f2610120601a91a390d0cea9d981a7773dcd0908f0c6a459fbbb3306cc"
    )

    def cued(cues: list[str]) -> str:
        guide = Guide(labels=["yes", "no"], cues=cues, source="Is this about privacy?")
        return plain.model_copy(update={"guide": guide}).request_hash()

    assert len({plain.request_hash(), cued(["Yes:\n", "No:\n"]), cued(["Yes:\n", "Nope:\n"])}) == 3
    with pytest.raises(ValidationError, match="one cue per label"):
        Guide(labels=["yes", "no"], cues=["Yes:\n"], source="text")


class _Recorder:
    """A teacher that answers every request with the first label and keeps the requests."""

    name = "local"

    def __init__(self) -> None:
        self.requests: list[ChatRequest] = []

    async def complete(self, request: ChatRequest, *, gate: Gate | None = None) -> ChatResult:
        if gate is not None:
            gate()
        self.requests.append(request)
        return ChatResult(content="privacy####a reason", prompt_tokens=1, completion_tokens=1)

    async def probe(self) -> None:
        return None

    async def aclose(self) -> None:
        pass


def test_job_requests_carry_the_cues_and_the_chunk_text(tmp_path):
    texts = ["We collect your e-mail address.", "The canteen opens at seven."]
    store = ingested_store(tmp_path, texts)
    task = load_task(ROOT / "examples/tasks/topic.yaml")
    config = openai_config("http://127.0.0.1:9")  # never called: the job gets its teacher
    runner.plan(store, task, config)
    teacher = _Recorder()
    asyncio.run(runner.run_job(store, task, config, teacher=teacher))
    assert sorted(r.guide.source for r in teacher.requests) == sorted(texts)
    assert all(r.guide.cues == task.label_cues("main") for r in teacher.requests)
