import pytest

from annotate.tasks import TaskFileError, builtin_names, load_task


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
