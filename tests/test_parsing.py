import pytest

from distillery.parsing import ContractError, match_label, parse_answer, parse_questions

LABELS = ["相关", "不相关"]


@pytest.mark.parametrize(
    "raw, conclusion, reasoning",
    [
        ("相关####文本规定了告知义务。", "相关", "文本规定了告知义务。"),
        ("  不相关 \n####\n 只提到了食堂。 ", "不相关", "只提到了食堂。"),
        ("**结论：** 不相关。\n####\n理由：它讲的是天气。", "不相关", "它讲的是天气。"),
        ("```\n相关####引用了第三条\n```", "相关", "引用了第三条"),
        ("「相关」####第二条", "相关", "第二条"),
        ("相关####a####b", "相关", "a b"),
    ],
)
def test_parse_cleans_noise_and_matches_labels(raw, conclusion, reasoning):
    parsed = parse_answer(raw, labels=LABELS)
    assert (parsed.conclusion, parsed.reasoning) == (conclusion, reasoning)


def test_longest_label_wins_so_negation_is_not_lost():
    assert match_label("不相关，因为……", LABELS) == "不相关"
    assert match_label("相关吧", LABELS) is None  # runs on into a word: not a clean statement
    assert match_label("RELEVANT.", ["relevant", "irrelevant"]) == "relevant"
    assert match_label("Ｂ", ["A", "B"]) == "B"  # full-width letter


@pytest.mark.parametrize(
    "raw, finish, needle",
    [
        ("I think it is relevant.", None, "no '####'"),
        ("相关，因为第二条规定了", "length", "cut off"),
        ("####理由", None, "conclusion"),
        ("相关####   ", None, "reasoning"),
        ("也许####理由", None, "not one of"),
    ],
)
def test_contract_errors_say_what_is_wrong(raw, finish, needle):
    with pytest.raises(ContractError, match=needle):
        parse_answer(raw, labels=LABELS, finish_reason=finish)


def test_open_conclusion_without_labels():
    assert parse_answer("一句话摘要####要点").conclusion == "一句话摘要"


def test_questions_are_split_numbering_stripped_and_capped():
    text = "1. 什么是个人信息？\n2、谁负责处理？\nQ3: 罚款多少？\n- 什么是个人信息？\n问题5：保存多久？"
    assert parse_questions(text, max_questions=3) == ["什么是个人信息？", "谁负责处理？", "罚款多少？"]
    with pytest.raises(ContractError):
        parse_questions("- \n  ", max_questions=3)
