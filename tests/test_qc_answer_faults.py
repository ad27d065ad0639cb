"""What a sloppy teacher writes, caught on realistic Chinese and English records in a real store:
decoding damage, answers that loop or repeat filler lines, and the prompt echoed back."""

from click.testing import CliRunner
from qc_texts import EN_ANSWERS, ZH_ANSWERS

from distillery.store import Store
from distillery.tasks import load_task
from qc.checks import FLAG_KINDS, RULE_KINDS, CheckConfig, run_checks
from qc.cli import main
from qc.text import decoding_damage, echoed_heading, repeated_line, self_repetition
from qc_fixtures import Answer, add_answers, relevant_answers

NEW_KINDS = {"mojibake", "repetition", "echo"}


def _split(answer: str) -> tuple[str, str]:
    conclusion, reasoning = answer.split("####")
    return conclusion, reasoning


def _kinds(store: Store, task: str) -> dict[str, set[str]]:
    return {aid: {f.kind for f in fs} for aid, fs in store.flags(task_names=[task]).items()}


def test_chinese_answers_with_damage_loops_and_echoes_are_flagged_and_good_ones_are_not(tmp_path):
    store = Store.open(tmp_path / "ws")
    good = [(c, r) for c, r in map(_split, ZH_ANSWERS) if c in ("相关", "不相关")]
    rows = [Answer(text=f"第{i}条 {r}", conclusion=c, reasoning=r, doc=f"doc{i % 3}") for i, (c, r) in enumerate(good)]
    conclusion, reasoning = good[0]
    source = rows[0].text
    example = load_task("relevance").output_example("main").split("####")[1]
    faults = {
        "fffd": Answer(text=source + "（一）", conclusion=conclusion, reasoning=reasoning[:20] + "\ufffd\ufffd" + reasoning[20:]),
        "fffd_in_source": Answer(text=source[:20] + "\ufffd" + source[20:], conclusion=conclusion,
                                 reasoning=reasoning[:20] + "\ufffd" + reasoning[20:]),
        "gbk": Answer(text=source + "（二）", conclusion=conclusion,
                      reasoning=reasoning.encode("utf-8").decode("gbk", errors="ignore")),
        "private_use": Answer(text=source + "（三）", conclusion=conclusion, reasoning="\uf0b7 " + reasoning),
        "loop": Answer(text=source + "（四）", conclusion=conclusion, reasoning=reasoning[:40] + "这一点非常重要，需要认真遵守。" * 8),
        "filler_lines": Answer(text=source + "（五）", conclusion=conclusion,
                               reasoning=reasoning[:60] + "\n请以文本原文为准。" * 4),
        "heading": Answer(text=source + "（六）", conclusion=conclusion, reasoning="## 文本\n" + reasoning[:50]),
        "format_heading": Answer(text=source + "（七）", conclusion=conclusion, reasoning=reasoning[:50] + "\n**输出格式**\n先写结论，再写理由。"),
        "example": Answer(text=source + "（八）", conclusion="相关", reasoning=example),
        "example_retouched": Answer(text=source + "（九）", conclusion="相关", reasoning=example.replace("必须", "应当")),
    }
    ids = add_answers(store, "relevance", rows + list(faults.values()))
    good_ids, fault_ids = ids[: len(rows)], dict(zip(faults, ids[len(rows):], strict=True))
    run_checks(store, ["relevance"], CheckConfig())
    kinds = _kinds(store, "relevance")
    details = {aid: {f.kind: f.detail for f in fs} for aid, fs in store.flags(task_names=["relevance"]).items()}
    assert not any(g in kinds for g in good_ids)  # no flag of any kind on the good answers
    expected = {"fffd": "mojibake", "fffd_in_source": "mojibake", "gbk": "mojibake", "private_use": "mojibake",
                "loop": "repetition", "filler_lines": "repetition", "heading": "echo", "format_heading": "echo",
                "example": "echo", "example_retouched": "echo"}
    for name, kind in expected.items():
        assert kind in kinds[fault_ids[name]], (name, kinds.get(fault_ids[name]))
        assert not (NEW_KINDS - {kind}) & kinds[fault_ids[name]], (name, kinds[fault_ids[name]])
    said = details[fault_ids["gbk"]]["mojibake"]
    assert "UTF-8 read as GBK" in said and reasoning[1:9] in said  # the detail shows what it said
    assert "source has it too" in details[fault_ids["fffd_in_source"]]["mojibake"]
    assert "source has it too" not in details[fault_ids["fffd"]]["mojibake"]
    assert "这一点非常重要" in details[fault_ids["loop"]]["repetition"]
    assert "appears 4 times" in details[fault_ids["filler_lines"]]["repetition"]
    assert "'## 文本'" in details[fault_ids["heading"]]["echo"]
    assert "copies the task's example" in details[fault_ids["example"]]["echo"]
    assert "near copy" in details[fault_ids["example_retouched"]]["echo"]
    # the kinds are the user's to tune: a looser repetition limit lets the filler lines through
    run_checks(store, ["relevance"], CheckConfig(max_line_repeats=5))
    assert "repetition" not in _kinds(store, "relevance").get(fault_ids["filler_lines"], set())
    # every place that lists the kinds lists the new ones: the check table names them and what they mean
    result = CliRunner().invoke(main, ["-w", str(tmp_path / "ws"), "check"])
    assert result.exit_code == 0, result.output
    shown = " ".join(result.output.split())
    for kind in NEW_KINDS:
        assert kind in RULE_KINDS and FLAG_KINDS[kind] and f"│ {kind} " in shown
    assert "decoding damage:" in shown


def test_english_answers_with_mojibake_loops_and_echoes_are_flagged_and_good_ones_are_not(tmp_path):
    store = Store.open(tmp_path / "ws")
    questions = ["Is the passage about data protection?", "When must a breach be reported?", "What is the notice about?",
                 "Does the law reach companies abroad?", "Can people have their data erased?",
                 "When is an impact assessment needed?", "How high can the fines be?", "Who ran fastest in the charity run?",
                 "Are all transfers banned?", "Who must appoint a data protection officer?"]
    rows = [Answer(text=f"Section {i}. {r}", question=q, conclusion=c, reasoning=r)
            for i, ((c, r), q) in enumerate(zip(map(_split, EN_ANSWERS), questions, strict=True))]
    conclusion, reasoning = _split(EN_ANSWERS[0])
    curly = reasoning.replace("subject's", "subject’s").replace("public interest", "public interest — see the café")
    source, question = rows[0].text, rows[0].question
    faults = {
        "latin1": Answer(text=source, question=question + " (a)", conclusion=conclusion,
                         reasoning=curly.encode("utf-8").decode("cp1252", errors="replace")),
        "control": Answer(text=source, question=question + " (b)", conclusion=conclusion, reasoning=reasoning + "\x08"),
        "loop": Answer(text=source, question=question + " (c)", conclusion=conclusion,
                       reasoning=reasoning[:80] + " This is important to remember." * 10),
        "heading": Answer(text=source, question=question + " (d)", conclusion=conclusion,
                          reasoning="## Question\n" + question + "\n" + reasoning[:80]),
        "example": Answer(text=source, question=question + " (e)", conclusion="1 November 2021",
                          reasoning='The text says "This Law shall take effect on 1 November 2021."'),
    }
    ids = add_answers(store, "extractive_qa", rows + list(faults.values()))
    good_ids, fault_ids = ids[: len(rows)], dict(zip(faults, ids[len(rows):], strict=True))
    run_checks(store, ["extractive_qa"], CheckConfig())
    kinds = _kinds(store, "extractive_qa")
    assert not any(g in kinds for g in good_ids)
    for name, kind in {"latin1": "mojibake", "control": "mojibake", "loop": "repetition", "heading": "echo",
                       "example": "echo"}.items():
        assert kind in kinds[fault_ids[name]], (name, kinds.get(fault_ids[name]))
    detail = {f.kind: f.detail for f in store.flags(task_names=["extractive_qa"])[fault_ids["latin1"]]}["mojibake"]
    assert "â€" in detail and "subject’s" in detail  # the mojibake and what it said


def test_decoding_damage_is_named_and_clean_text_in_any_script_is_not():
    clean = ZH_ANSWERS + EN_ANSWERS + [f"{a.conclusion}####{a.reasoning}" for a in relevant_answers(200)] + [
        "日本語のテキストです。", "Größe: 5 µm ±0.1 °C × 2 — “quoted” …", "Привет, мир", "第12条 GDPR 个人信息 data",
        "表格：\t项目\t金额\n合计\t100 元", "ａｂｃ１２３（全角）", "相关", "锟"]
    assert [t for t in clean if decoding_damage(t)] == []
    assert "2 U+FFFD" in decoding_damage("结论：\ufffd\ufffd")
    assert "UTF-8 as GBK" in decoding_damage("文件名为锟斤拷锟斤拷")
    assert "'个人信息处理者应当告知'" in decoding_damage("个人信息处理者应当告知".encode().decode("gbk", errors="ignore")) or \
        "UTF-8 read as GBK" in decoding_damage("个人信息处理者应当告知".encode().decode("gbk", errors="ignore"))
    assert "private-use character U+E000" in decoding_damage("bullet \ue000 here")
    assert "mojibake" in decoding_damage("naïve café".encode().decode("cp1252"))


def test_repetition_and_headings_measures():
    written = ZH_ANSWERS + EN_ANSWERS
    assert max(self_repetition(t) for t in written) < 0.1  # what real answers score: near nothing
    assert self_repetition("结论####" + "我们需要遵守这一规定。" * 6) > 0.6
    assert self_repetition("短句重复短句重复") == 0.0  # too short to judge
    assert repeated_line("a\n---\n---\n---\n}\n}\n}") is None  # rules and braces are not filler
    assert repeated_line("依据如下\n请参见原文\n其他\n请参见原文 ") == ("请参见原文", 2)
    headings = load_task("relevance").headings
    assert echoed_heading("## 目标\n判断文本", headings) == "## 目标"
    assert echoed_heading("理由如下。\n示例：", headings) == "示例："
    assert echoed_heading("**背景**\n……", headings) == "**背景**"
    assert echoed_heading("文本规定了目标和背景。\n目标", headings) is None  # words, not headings
    assert echoed_heading("Goal:\nfind it", load_task("extractive_qa").headings) == "Goal:"
