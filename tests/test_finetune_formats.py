"""Every format prepare writes, read back through LLaMA-Factory's own loader with the stage that
trains on it (pt, sft, rm for DPO and reward models, ppo, kto), the flat CSV forms, the mixed
training split against its reported composition, and the train config each stage gets.

One prepare (sharegpt, every `--also`, caps, up-sampling and mixed prompt forms) serves the
module: LLaMA-Factory is slow to import and the check already loads each dataset once.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llamafactory", reason="needs the model extra")

from distillery.jsonl import write_jsonl
from distillery.records import Chunk, Document, PreferencePair, TrainingExample
from distillery.store import Store
from doubles.examples import sample_examples
from finetune.config import RunOptions, build_config
from finetune.mixing import MixOptions, mix
from finetune.prepare import PrepareReport, prepare, prepare_options
from finetune.workspace import FinetuneError, Manifest, PromptFormat, resolve_model

pytestmark = pytest.mark.model

EXTRA_DOC = hashlib.sha256(b"never annotated").hexdigest()[:32]


def _records() -> list[TrainingExample]:
    """8 documents x 4 records; in each document three are `relevant` and the last `irrelevant`."""
    return [ex.model_copy(update={"conclusion": "irrelevant" if ex.annotation_id.endswith("-03") else "relevant"})
            for ex in sample_examples(8, 4, language="en")]


def _chunk_text(doc: str, seq: int) -> str:
    return f"Document {doc[:6]} part {seq}: {hashlib.sha256(f'{doc}{seq}'.encode()).hexdigest()}."


def _store(ws: Path, records: list[TrainingExample]) -> None:
    """Every annotated document's chunks, and one document nobody annotated (its second chunk
    repeats its first: a duplicate, left out of the pre-training text)."""
    docs = sorted({ex.document_id for ex in records}) + [EXTRA_DOC]
    with Store.open(ws) as store:
        for doc in docs:
            texts = [_chunk_text(doc, 0)] * 2 if doc == EXTRA_DOC else [_chunk_text(doc, c) for c in range(4)]
            chunks = [Chunk(id=hashlib.sha256(f"{doc}-{c}-chunk".encode()).hexdigest()[:32], document_id=doc, seq=c,
                            text=t, char_start=0, char_end=len(t), size=len(t)) for c, t in enumerate(texts)]
            store.add_document(Document(id=doc, path=f"docs/{doc[:6]}.txt", kind="txt", n_chars=100), chunks)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, embedded_cache: Path) -> tuple[Path, PrepareReport]:
    ws = tmp_path_factory.mktemp("ws")
    records = _records()
    write_jsonl(ws / "approved.jsonl", records)
    # A fix for the first record of every document (6 of them in training documents), and one
    # rejected record per document plus one of the never-annotated document.
    write_jsonl(ws / "pairs.jsonl", [PreferencePair(annotation_id=ex.annotation_id, instruction=ex.instruction,
                                                    input=ex.input, chosen=ex.output, rejected="irrelevant####no",
                                                    reviewer="r") for ex in records if ex.annotation_id.endswith("-00")])
    write_jsonl(ws / "rejected.jsonl", [ex.model_copy(update={"annotation_id": f"rej-{ex.annotation_id}",
                                                               "conclusion": "maybe", "reasoning": "unsure"})
                                        for ex in records if ex.annotation_id.endswith("-01")]
                + [records[0].model_copy(update={"annotation_id": "rej-extra", "document_id": EXTRA_DOC})])
    _store(ws, records)
    options = prepare_options(model="embedded", cutoff_len=256, format="sharegpt", val_fraction=0.125,
                              test_fraction=0.125, also=["kto", "ppo", "pt", "csv"],
                              mix={"max_per_label": 12, "min_per_label": 9, "few_shot": 0.5, "without_reasoning": 0.25})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILLERY_CACHE", str(embedded_cache))
        report = prepare(ws / "approved.jsonl", ws / "data", options, preferences=ws / "pairs.jsonl",
                         rejected=ws / "rejected.jsonl", workspace=ws)
    return ws / "data", report


@pytest.fixture(scope="module")
def read_back(prepared: tuple[Path, PrepareReport], embedded_cache: Path):  # type: ignore[no-untyped-def]
    """LLaMA-Factory's `get_dataset`, the call training makes: dataset name + stage -> the rows it trains on."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments, ModelArguments, TrainingArguments
    from llamafactory.model import load_tokenizer

    data, _ = prepared
    scratch = data.parent / "lf-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILLERY_CACHE", str(embedded_cache))
        model_args = ModelArguments(model_name_or_path=resolve_model("embedded"), cache_dir=str(scratch))
    training_args = TrainingArguments(output_dir=str(scratch), report_to="none")
    module = load_tokenizer(model_args)

    def read(dataset: str, stage: str) -> Any:
        data_args = DataArguments(template="qwen", dataset_dir=str(data), dataset=dataset, cutoff_len=256,
                                  overwrite_cache=True)
        template = get_template_and_fix_tokenizer(module["tokenizer"], data_args)
        with contextlib.redirect_stdout(io.StringIO()):
            return get_dataset(template, model_args, data_args, training_args, stage=stage, **module)["train_dataset"]

    return read


def _rows(data: Path, file: str) -> list[dict[str, Any]]:
    return json.loads((data / file).read_text(encoding="utf-8"))


def _doc(row_id: str) -> str:
    """The document of a row id: ann-DD-CC, ann-DD-CC#teacher, rej-ann-DD-CC, or a chunk's doc prefix."""
    return row_id.removeprefix("rej-").split("-")[1] if "ann-" in row_id else row_id


def test_every_dataset_is_read_whole_by_llamafactory_with_its_stage(prepared, read_back) -> None:  # type: ignore[no-untyped-def]
    data, report = prepared
    manifest = Manifest.load(data)
    stages = {kind: info.stage for kind, info in manifest.datasets().items()}
    assert stages == {"train": "sft", "validation": "sft", "test": "sft", "preference": "rm", "kto": "kto",
                      "prompts": "ppo", "text_train": "pt", "text_validation": "pt"}
    info = json.loads((data / "dataset_info.json").read_text())
    assert info["distillery_kto"]["columns"]["kto_tag"] == "kto_tag" and info["distillery_kto"]["formatting"] == "sharegpt"
    assert info["distillery_text_train"] == {"file_name": "text_train.json", "columns": {"prompt": "text"}}
    assert info["distillery_preference"]["ranking"] is True and "response" not in info["distillery_prompts"]["columns"]
    for kind, dataset in manifest.datasets().items():
        written = len(_rows(data, dataset.file))
        assert dataset.examples == written == report.check.examples[dataset.dataset], kind
        # 0 rows dropped: the call training makes, with the stage that trains on it (DPO reads pairs as rm)
        assert len(read_back(dataset.dataset, dataset.stage)) == written, kind
    assert {k: i.examples for k, i in report.extra.items()} == {
        "kto": 24 + 6 + 7, "prompts": len({(ex.instruction, ex.input) for ex in _train(data)}), "text_train": 25,
        "text_validation": 4}
    assert report.kto_excluded == {"from validation/test documents": 2}


def _train(data: Path) -> list[TrainingExample]:
    docs = {_doc(r["id"].split("#")[0]) for r in _rows(data, "train.json")}
    return [ex for ex in _records() if _doc(ex.annotation_id) in docs]


def test_kto_tags_follow_the_reviewers(prepared, read_back) -> None:  # type: ignore[no-untyped-def]
    data, _ = prepared
    rows = _rows(data, "kto.json")
    tags = {row["id"]: row["kto_tag"] for row in rows}
    assert sum(tags.values()) == 24 and len(tags) - sum(tags.values()) == 13
    assert all(tags[i] for i in tags if i.startswith("ann-") and "#" not in i)  # approved: desirable
    assert not any(tags[i] for i in tags if i.startswith("rej-") or i.endswith("#teacher"))  # rejected, fixed: not
    assert "rej-extra" in tags  # a document with no approved record is in no held-out split: trained on
    fixed = next(row for row in rows if row["id"].endswith("#teacher"))
    assert fixed["conversations"][-1] == {"from": "gpt", "value": "irrelevant####no"}
    read = read_back("distillery_kto", "kto")
    assert list(read["kto_tags"]) == [row["kto_tag"] for row in rows]  # as LLaMA-Factory's KTO processor reads them


def test_no_document_crosses_from_a_held_out_split_into_training(prepared) -> None:  # type: ignore[no-untyped-def]
    data, _ = prepared
    held = {_doc(r["id"]) for split in ("validation", "test") for r in _rows(data, f"{split}.json")}
    assert len(held) == 2
    for file in ("train.json", "preference.json", "kto.json", "prompts.json"):
        docs = {_doc(r["id"].split("#")[0]) for r in _rows(data, file)} - {"rej-extra"}
        assert docs and not docs & held, file
    by_prefix = {ex.document_id[:12]: _doc(ex.annotation_id) for ex in _records()}
    text_docs = {r["id"].rsplit("-", 1)[0] for r in _rows(data, "text_train.json")}
    assert EXTRA_DOC[:12] in text_docs and len(text_docs) == 7  # 6 training documents + the unannotated one
    assert not {by_prefix.get(d) for d in text_docs} & held
    validation_docs = {by_prefix[r["id"].rsplit("-", 1)[0]] for r in _rows(data, "text_validation.json")}
    assert validation_docs == {_doc(r["id"]) for r in _rows(data, "validation.json")}


def test_the_training_split_is_the_composition_reported(prepared, read_back) -> None:  # type: ignore[no-untyped-def]
    data, report = prepared
    c = report.composition
    # 6 training documents x (3 relevant + 1 irrelevant): relevant capped at 12, irrelevant repeated up to 9.
    shares = {s.label: (s.approved, s.dropped, s.repeated, s.rows) for s in c.labels}
    assert shares == {"relevance-en/main: relevant": (18, 6, 0, 12), "relevance-en/main: irrelevant": (6, 0, 3, 9)}
    rows = _rows(data, "train.json")
    answers = [row["conversations"][-1]["value"] for row in rows]
    assert Counter(a.split("####")[0] for a in answers) == {"relevant": 12, "irrelevant": 9} and c.rows == 21
    assert {row["task"] for row in rows} == {"relevance-en"}
    # Forms: round(0.5 x 21) few-shot rows (two solved examples first), round(0.25 x 21) without reasoning.
    few = [row for row in rows if len(row["conversations"]) == 6]
    terse = [row for row in rows if row["conversations"][-1]["value"].endswith("####")]
    assert len(few) == 10 and len(terse) == 5 and sum(c.forms.values()) == 21
    assert c.forms["few-shot, with reasoning"] + c.forms["few-shot, without reasoning"] == 10
    assert all("Give only the conclusion" in row["conversations"][-2]["value"] for row in terse)
    assert len(read_back("distillery_train", "sft")) == 21
    # Validation and test stay one zero-shot row per record, in the served form.
    assert all(len(r["conversations"]) == 2 and "####" in r["conversations"][1]["value"][:-1]
               for split in ("validation", "test") for r in _rows(data, f"{split}.json"))
    # The size line's figures: the training tokens are the checked lengths; SmolLM2-135M and its rank-16 LoRA.
    assert c.tokens == sum(Manifest.load(data).splits["train"].token_lengths) > 0
    assert (c.model_parameters, c.lora_parameters, c.lora_rank) == (134_515_008, 4_884_480, 16)


def test_csv_forms_have_their_header_and_parse(prepared) -> None:  # type: ignore[no-untyped-def]
    data, report = prepared
    assert report.flat == ["train.csv", "validation.csv", "test.csv", "reward.csv"]
    with (data / "train.csv").open(encoding="utf-8", newline="") as fh:
        train = list(csv.reader(fh))
    assert train[0] == ["Input", "Label"] and len(train) == 1 + 21
    assert {label for _, label in train[1:]} == {"relevant", "irrelevant"}
    assert all(text.startswith(_records()[0].instruction) for text, _ in train[1:])
    with (data / "reward.csv").open(encoding="utf-8", newline="") as fh:
        reward = list(csv.DictReader(fh))
    assert list(reward[0]) == ["Input", "Reward"] and Counter(r["Reward"] for r in reward) == {"1": 24, "0": 13}
    assert all("\n\n" in r["Input"] for r in reward)


@pytest.mark.parametrize(("stage", "dataset", "eval_dataset"), [
    ("kto", "distillery_kto", None), ("rm", "distillery_preference", None), ("dpo", "distillery_preference", None),
    ("pt", "distillery_text_train", "distillery_text_validation"), ("ppo", "distillery_prompts", None),
])
def test_each_stage_trains_on_its_dataset(prepared, tmp_path: Path, stage: str, dataset: str,
                                          eval_dataset: str | None) -> None:  # type: ignore[no-untyped-def]
    from llamafactory.hparams import get_train_args

    data, _ = prepared
    options = RunOptions(model="m", stage=stage, precision="fp32",
                         reward_model="/runs/rm-lora/adapter" if stage == "ppo" else None)
    config = build_config(options, data_dir=data, manifest=Manifest.load(data), run_dir=tmp_path)
    assert (config["stage"], config["dataset"], config.get("eval_dataset")) == (stage, dataset, eval_dataset)
    # LLaMA-Factory's own argument parser takes the train.yaml as written (its per-stage rules included).
    _, data_args, _, finetuning, _ = get_train_args(config | {"model_name_or_path": str(tmp_path)})
    assert (finetuning.stage, data_args.dataset) == (stage, [dataset])
    if stage == "ppo":
        assert config["reward_model"] == "/runs/rm-lora/adapter" and config["reward_model_type"] == "lora"
        with pytest.raises(FinetuneError, match="--reward-run"):
            build_config(RunOptions(model="m", stage="ppo"), data_dir=data, manifest=Manifest.load(data), run_dir=tmp_path)


def test_a_stage_without_its_dataset_names_the_prepare_option(prepared, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data, _ = prepared
    manifest = Manifest.load(data)
    manifest.extra.pop("kto")
    with pytest.raises(FinetuneError, match="no kto dataset.*prepare --also kto"):
        build_config(RunOptions(model="m", stage="kto"), data_dir=data, manifest=manifest, run_dir=tmp_path)


def test_a_document_cap_keeps_the_spread_and_bad_values_name_their_field() -> None:
    records = _records()
    rows, c = mix(records, MixOptions(max_per_document=2), label_of=lambda ex: ex.conclusion,
                  prompt=PromptFormat(template="qwen", system="S"), seed=1)
    per_doc = Counter(r.example.document_id for r in rows)
    assert set(per_doc.values()) == {2} and len(per_doc) == 8 and c.most_per_document == 2 and c.rows == 16
    assert sum(s.dropped for s in c.labels) == 16 and all(r.prompted.id == r.example.annotation_id for r in rows)
    with pytest.raises(FinetuneError, match=r"'mix.few_shot': Input should be less than or equal to 1"):
        prepare_options(model="m", cutoff_len=64, mix={"few_shot": 1.5})
    with pytest.raises(FinetuneError, match=r"'mix'.*min_per_label \(9\) is above max_per_label \(3\)"):
        prepare_options(model="m", cutoff_len=64, mix={"min_per_label": 9, "max_per_label": 3})
    with pytest.raises(FinetuneError, match=r"'also.0'"):
        prepare_options(model="m", cutoff_len=64, also=["orpo"])


def test_a_kto_row_llamafactory_would_drop_is_named(prepared, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from finetune.check import DatasetError, check_dataset

    data = tmp_path / "data"
    shutil.copytree(prepared[0], data)
    rows = _rows(data, "kto.json")
    rows[2]["kto_tag"] = None  # no verdict: LLaMA-Factory reads one answer, and its KTO reader drops the row
    (data / "kto.json").write_text(json.dumps(rows), encoding="utf-8")
    with pytest.raises(DatasetError, match=rf"kto.json: example '{rows[2]['id']}' \(row 3\) is dropped .*boolean kto_tag"):
        check_dataset(data)
