"""prepare + check through LLaMA-Factory's own loader, converter, processor and template, with the
embedded SmolLM2 tokenizer (in-process: no training here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("llamafactory", reason="needs the model extra")

from distillery.jsonl import write_jsonl
from distillery.records import PreferencePair
from doubles.examples import sample_examples
from finetune import prepare as prepare_module
from finetune.check import DatasetError, check_dataset
from finetune.prepare import PrepareOptions, prepare
from finetune.workspace import Manifest, read_prompt_file

pytestmark = pytest.mark.model


@pytest.fixture
def approved(tmp_path: Path, embedded_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DISTILLERY_CACHE", str(embedded_cache))  # `embedded` resolves to the session's copy
    path = tmp_path / "approved.jsonl"
    write_jsonl(path, sample_examples(8, 4, language="en"))
    return path


def options(**kw: object) -> PrepareOptions:
    return PrepareOptions(**{"model": "embedded", "cutoff_len": 256, **kw})  # type: ignore[arg-type]


def test_prepared_dataset_is_read_whole_by_llamafactory(approved: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    report = prepare(approved, data, options())
    assert {s: i.examples for s, i in report.splits.items()} == {"train": 24, "validation": 4, "test": 4}
    assert report.check.examples == {"distillery_train": 24, "distillery_validation": 4, "distillery_test": 4}
    info = json.loads((data / "dataset_info.json").read_text())
    assert info["distillery_train"]["columns"]["response"] == "output"
    row = json.loads((data / "train.json").read_text())[0]
    assert row["output"].count("####") == 1 and row["system"] == "You are a helpful assistant."
    manifest = Manifest.load(data)
    assert manifest.checked and all(len(i.token_lengths) == i.examples for i in manifest.splits.values())
    assert report.check.over_cutoff == [] and 40 < report.check.longest < 256
    assert read_prompt_file(data) == manifest.prompt
    # The test split's records keep their lineage for eval.
    assert len((data / manifest.test_records).read_text().splitlines()) == 4


def test_the_training_template_tokenizes_like_the_serving_runtime(approved: Path, tmp_path: Path, runtime) -> None:
    """The prompt eval and serve build through ModelRuntime is token for token the one trained on."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments

    prepare(approved, tmp_path / "data", options(test_fraction=0.2))
    manifest = Manifest.load(tmp_path / "data")
    ex = sample_examples(8, 4, language="en")[0]
    messages = manifest.prompt.messages(ex.instruction, ex.input)
    template = get_template_and_fix_tokenizer(runtime.tokenizer, DataArguments(template="qwen"))
    prompt_ids, answer_ids = template.encode_oneturn(runtime.tokenizer, messages[1:] + [
        {"role": "assistant", "content": ex.output}], messages[0]["content"])
    assert runtime._encode(runtime.apply_chat_template(messages)) == prompt_ids
    assert runtime.tokenizer.decode(answer_ids) == ex.output + "<|im_end|>\n"


def _edit_rows(path: Path, edit) -> None:  # type: ignore[no-untyped-def]
    rows = json.loads(path.read_text(encoding="utf-8"))
    edit(rows)
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")


def test_a_broken_alpaca_example_is_refused_by_name(approved: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    prepare(approved, data, options())
    victims = json.loads((data / "train.json").read_text())
    first, second = victims[3]["id"], victims[7]["id"]

    def break_two(rows: list[dict]) -> None:
        rows[3]["output"] = None  # LLaMA-Factory drops this one silently
        rows[7]["output"] = "relevant, no separator"  # LLaMA-Factory trains on this one: our contract refuses it

    _edit_rows(data / "train.json", break_two)
    with pytest.raises(DatasetError) as caught:
        check_dataset(data)
    message = str(caught.value)
    assert f"train.json: example '{first}' (row 4) is dropped by LLaMA-Factory's reader" in message
    assert f"example '{second}' (row 8): its answer has no '####'" in message
    assert not Manifest.load(data).checked  # train refuses it until a check passes


def test_a_broken_sharegpt_example_is_refused_by_name(approved: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    report = prepare(approved, data, options(format="sharegpt", file_type="jsonl"))
    assert report.check.examples["distillery_train"] == 24
    lines = (data / "validation.jsonl").read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[1])
    row["conversations"].reverse()  # the answer first: LLaMA-Factory logs "Invalid role tag" and skips it
    lines[1] = json.dumps(row, ensure_ascii=False)
    (data / "validation.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=rf"validation.jsonl: example '{row['id']}' \(row 2\) is dropped"):
        check_dataset(data)


def test_a_file_that_does_not_parse_is_named(approved: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    prepare(approved, data, options())
    (data / "test.json").write_text("[{\"id\": 1,", encoding="utf-8")
    with pytest.raises(DatasetError, match="test.json: LLaMA-Factory cannot load it"):
        check_dataset(data)


def test_examples_over_the_cutoff_are_reported(tmp_path: Path, approved: Path) -> None:
    write_jsonl(approved, sample_examples(6, 2, language="en", padding=8))
    report = prepare(approved, tmp_path / "data", options(cutoff_len=64, val_fraction=0))
    assert len(report.check.over_cutoff) == 12 and all(o.tokens > 64 for o in report.check.over_cutoff)
    assert report.check.longest == max(o.tokens for o in report.check.over_cutoff)


def test_preference_pairs_from_training_documents_become_a_ranking_dataset(approved: Path, tmp_path: Path) -> None:
    records = sample_examples(8, 4, language="en")
    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, [PreferencePair(annotation_id=ex.annotation_id, instruction=ex.instruction, input=ex.input,
                                       chosen=ex.output, rejected="relevant####" if ex.conclusion == "irrelevant"
                                       else "irrelevant####", reviewer="r") for ex in records]
                + [PreferencePair(annotation_id="unknown", instruction="i", input="x", chosen="a####b",
                                  rejected="b####a", reviewer="r")])
    data = tmp_path / "data"
    report = prepare(approved, data, options(), preferences=pairs)
    assert report.preference is not None and report.preference.examples == 24  # training documents only
    assert report.preference_excluded == {"from validation/test documents": 8, "record not among the approved ones": 1}
    info = json.loads((data / "dataset_info.json").read_text())["distillery_preference"]
    assert info["ranking"] is True and info["columns"]["chosen"] == "chosen"
    assert report.check.examples["distillery_preference"] == 24  # read back by LLaMA-Factory's pairwise reader
    assert report.preference.documents == 6 and Manifest.load(data).preference == report.preference


def test_a_failed_prepare_keeps_the_last_good_dataset(approved: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    prepare(approved, data, options())
    before = (data / "train.json").read_text()
    real_row = prepare_module.sft_row

    def broken_writer(p, answer, layout, prompt):  # type: ignore[no-untyped-def]
        row = real_row(p, answer, layout, prompt)
        return row | {"output": None} if p.id == "ann-03-01" else row

    monkeypatch.setattr(prepare_module, "sft_row", broken_writer)
    with pytest.raises(DatasetError, match=r"data\.rejected: 1 problem.*'ann-03-01'"):
        prepare(approved, data, options(seed=3))
    assert (data / "train.json").read_text() == before and Manifest.load(data).checked
    assert (tmp_path / "data.rejected" / "dataset_info.json").is_file()
    assert not list(tmp_path.glob(".data.staging-*"))
