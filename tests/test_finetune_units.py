"""finetune's pure logic: reading approved records, the document split, label sets, the config
as data, failure sentences, progress parsing and the eval metrics. No model, no subprocess."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from distillery.jsonl import write_jsonl
from distillery.records import TrainingExample
from doubles.examples import sample_examples
from finetune import lfcli
from finetune.config import RunOptions, build_config, deepspeed_config, defaults, load_overrides, write_run
from finetune.evaluate import Candidate, Prediction, judge, score
from finetune.prepare import read_approved, split_by_document, task_labels
from finetune.train import _TRAIN_BAR, TrainProgress, _LogFollower, last_checkpoint
from finetune.workspace import FinetuneError, Manifest, PromptFormat, SplitInfo, TaskLabels


def test_bad_approved_lines_are_refused_naming_file_and_line(tmp_path: Path) -> None:
    good = sample_examples(2, 2, language="en")
    path = tmp_path / "approved.jsonl"
    write_jsonl(path, good)
    with path.open("a", encoding="utf-8") as fh:
        fh.write("{not json\n")
    with pytest.raises(FinetuneError, match=rf"{path} line 5: not JSON"):
        read_approved(path)

    broken = good[0].model_dump()
    del broken["conclusion"]
    path.write_text("\n".join([good[1].model_dump_json(), json.dumps(broken)]) + "\n", encoding="utf-8")
    with pytest.raises(FinetuneError, match=r"line 2: not a TrainingExample: field 'conclusion': Field required"):
        read_approved(path)


@pytest.mark.parametrize(("change", "message"), [
    ({"conclusion": "  "}, "field 'conclusion' is empty"),
    ({"conclusion": "relevant####why"}, "field 'conclusion' contains '####'"),
    ({"instruction": ""}, "field 'instruction' is empty"),
])
def test_records_that_break_the_contract_are_refused(tmp_path: Path, change: dict, message: str) -> None:
    records = sample_examples(2, 2, language="en")
    records[2] = records[2].model_copy(update=change)
    write_jsonl(tmp_path / "a.jsonl", records)
    with pytest.raises(FinetuneError, match=rf"line 3 \(annotation {records[2].annotation_id}\): {message}"):
        read_approved(tmp_path / "a.jsonl")


def test_a_duplicate_annotation_is_refused(tmp_path: Path) -> None:
    records = sample_examples(1, 2, language="en")
    write_jsonl(tmp_path / "a.jsonl", [*records, records[0]])
    with pytest.raises(FinetuneError, match="line 3 .* already on line 1"):
        read_approved(tmp_path / "a.jsonl")


def test_split_keeps_each_document_in_one_split_and_is_seeded() -> None:
    records = sample_examples(20, 5, language="en")
    splits = split_by_document(records, val_fraction=0.1, test_fraction=0.2, seed=7)
    docs = {name: {ex.document_id for ex in exs} for name, exs in splits.items()}
    assert not docs["train"] & docs["test"] and not docs["train"] & docs["validation"]
    assert not docs["validation"] & docs["test"]
    assert sum(len(exs) for exs in splits.values()) == 100
    assert len(splits["test"]) == 20 and len(splits["validation"]) == 10  # 5 per document: exact here
    again = split_by_document(list(reversed(records)), val_fraction=0.1, test_fraction=0.2, seed=7)
    assert {ex.annotation_id for ex in again["test"]} == {ex.annotation_id for ex in splits["test"]}
    other = split_by_document(records, val_fraction=0.1, test_fraction=0.2, seed=8)
    assert {ex.document_id for ex in other["test"]} != docs["test"]


def test_split_with_too_few_documents_says_what_to_do() -> None:
    records = sample_examples(2, 3, language="en")
    with pytest.raises(FinetuneError, match="2 document.*--val 0 / --test 0"):
        split_by_document(records, val_fraction=0.1, test_fraction=0.1, seed=0)
    only_train = split_by_document(records, val_fraction=0, test_fraction=0, seed=0)
    assert len(only_train["train"]) == 6 and not only_train["test"]
    greedy = split_by_document(sample_examples(3, 3, language="en"), val_fraction=0.5, test_fraction=0.9, seed=0)
    assert [len(greedy[s]) for s in ("train", "validation", "test")] == [3, 3, 3]  # one document each, always


def test_label_sets_come_from_the_task_definition_else_the_approved_conclusions(tmp_path: Path) -> None:
    from distillery.store import Store
    from distillery.tasks import load_task

    zh = sample_examples(3, 2, language="zh")  # the built-in relevance task, its exact hash
    en = sample_examples(3, 2, language="en")  # unknown task: two labels, each used often
    qa = [ex.model_copy(update={"task_name": "qa", "step": "answer", "conclusion": f"answer {i}"})
          for i, ex in enumerate(en)]
    labels = task_labels(zh + en + qa, None)
    assert labels["relevance/main"] == TaskLabels(labels=["相关", "不相关"], source="built-in task definition")
    assert labels["relevance-en/main"].labels == ["irrelevant", "relevant"]
    assert labels["relevance-en/main"].source.startswith("inferred")
    assert labels["qa/answer"].labels is None

    # A workspace that ran a custom version of the task knows its exact labels.
    custom = load_task("relevance").spec.model_copy(update={"labels": ["relevant", "irrelevant", "unsure"]})
    body = yaml.safe_dump(custom.model_dump(), allow_unicode=True)
    from distillery.tasks import parse_task

    task = parse_task(body, "custom")
    with Store.open(tmp_path) as store:
        store.put_task(task.version())
    stored = [ex.model_copy(update={"task_hash": task.hash}) for ex in en]
    found = task_labels(stored, tmp_path)["relevance-en/main"]
    assert found == TaskLabels(labels=["relevant", "irrelevant", "unsure"], source="task definition (workspace)")


def test_prompt_format_matches_llamafactory_alpaca_join() -> None:
    prompt = PromptFormat(template="qwen", system="S")
    assert prompt.messages("Do this.", "Text.") == [{"role": "system", "content": "S"},
                                                    {"role": "user", "content": "Do this.\nText."}]
    assert prompt.messages("Do this.", "")[-1]["content"] == "Do this."


def _manifest(**splits: int) -> Manifest:
    infos = {name: SplitInfo(dataset=f"distillery_{name}", file=f"{name}.json", examples=n, documents=1)
             for name, n in splits.items()}
    return Manifest(format="alpaca", file_type="json", prompt=PromptFormat(template="qwen", system="S"),
                    model="/models/qwen", cutoff_len=512, seed=1, approved="a.jsonl", splits=infos)


def test_config_defaults_fit_qwen2_lora_and_every_default_is_overridable(tmp_path: Path) -> None:
    d = defaults()
    assert (d["template"], d["finetuning_type"], d["lora_target"]) == ("qwen", "lora", "all")
    assert d["lora_alpha"] == 2 * d["lora_rank"] and d["stage"] == "sft"
    assert "quantization_bit" not in d and defaults("qlora")["quantization_bit"] == 4
    assert defaults(stage="dpo")["stage"] == "dpo"

    user = tmp_path / "mine.yaml"
    user.write_text("learning_rate: 2e-4\nlora_rank: 8\n", encoding="utf-8")  # 2e-4: text to YAML 1.1
    overrides = load_overrides(user, ["lora_rank=32", "neftune_noise_alpha=5"])
    assert overrides == {"learning_rate": 2e-4, "lora_rank": 32, "neftune_noise_alpha": 5}
    config = build_config(RunOptions(model="/models/qwen", method="qlora", precision="bf16", deepspeed=2),
                          data_dir=tmp_path / "data", manifest=_manifest(train=10, validation=2, test=2),
                          run_dir=tmp_path / "run", overrides=overrides)
    assert config["lora_rank"] == 32 and config["learning_rate"] == 2e-4 and config["quantization_bit"] == 4
    assert config["cutoff_len"] == 512  # the dataset's checked cutoff, unless overridden
    assert (config["bf16"], config["fp16"]) == (True, False)
    assert (config["dataset"], config["eval_dataset"]) == ("distillery_train", "distillery_validation")
    assert config["deepspeed"].endswith("run/ds_z2.json")

    path = write_run(tmp_path / "run", config)
    assert yaml.safe_load(path.read_text(encoding="utf-8")) == config  # the file is the config, re-runnable
    assert "llamafactory-cli train" in path.read_text(encoding="utf-8").splitlines()[0]
    ds = json.loads((tmp_path / "run" / "ds_z3.json").read_text())
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"] == "auto"
    assert deepspeed_config(2)["zero_optimization"]["stage"] == 2


def test_unknown_llamafactory_keys_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(FinetuneError, match="unknown LLaMA-Factory option.*lora_rnak"):
        build_config(RunOptions(model="m"), data_dir=tmp_path, manifest=_manifest(train=3), run_dir=tmp_path,
                     overrides={"lora_rnak": 8})


def test_dpo_needs_a_preference_dataset(tmp_path: Path) -> None:
    with pytest.raises(FinetuneError, match="no preference dataset"):
        build_config(RunOptions(model="m", stage="dpo"), data_dir=tmp_path, manifest=_manifest(train=3),
                     run_dir=tmp_path)
    manifest = _manifest(train=3)
    manifest.preference = SplitInfo(dataset="distillery_preference", file="preference.json", examples=2, documents=1)
    config = build_config(RunOptions(model="m", stage="dpo"), data_dir=tmp_path, manifest=manifest, run_dir=tmp_path)
    assert (config["stage"], config["dataset"], config["pref_beta"]) == ("dpo", "distillery_preference", 0.1)


def test_train_sets_name_a_bad_pair_as_a_finetune_error() -> None:
    with pytest.raises(FinetuneError, match="'lora_rank' is not KEY=VALUE"):
        load_overrides(None, ["lora_rank"])


# Tails of real llamafactory-cli failures (0.9.5), trimmed.
OOM = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.1 GiB"
NO_DATASET_INFO = ("ValueError: Cannot open /ws/data/dataset_info.json due to [Errno 2] No such file or directory: "
                   "'/ws/data/dataset_info.json'.")
NO_DATASET = "ValueError: Undefined dataset distillery_train in dataset_info.json."
NO_LOCAL_MODEL = ("OSError: Repo id must be in the form 'repo_name' or 'namespace/repo_name': '/models/nowhere'. Use "
                  "`repo_type` argument if needed.\n...\nOSError: Failed to load tokenizer.")
HUB_OFFLINE = ("OSError: We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in "
               "the cached files.\n...\nOSError: Failed to load tokenizer.")


@pytest.mark.parametrize(("log", "code", "expected"), [
    (OOM, 1, "the GPU ran out of memory: lower per_device_train_batch_size (now 2"),
    ("", -9, "killed, most likely out of host memory"),
    (NO_DATASET_INFO, 1, "cannot find the dataset (/ws/data/dataset_info.json): run `distill-finetune prepare`"),
    (NO_DATASET, 1, "cannot find the dataset (distillery_train): run `distill-finetune prepare`"),
    (NO_LOCAL_MODEL, 1, "cannot load the model '/models/nowhere'"),
    (HUB_OFFLINE, 1, "cannot load the model '/models/nowhere'"),
    ("ValueError: Some keys are not used by the HfArgumentParser: ['lora_rnak']", 1, "['lora_rnak']"),
    ("Traceback...\nRuntimeError: something else broke\n", 3, "exited with code 3: RuntimeError: something else broke"),
])
def test_failures_become_one_sentence_with_what_to_do(log: str, code: int, expected: str) -> None:
    sentence = lfcli.explain(log, code, {"model_name_or_path": "/models/nowhere", "per_device_train_batch_size": 2,
                                         "cutoff_len": 2048, "dataset_dir": "/ws/data"})
    assert expected in sentence
    assert "\n" not in sentence


def test_the_trainer_bar_is_told_apart_from_the_datasets_bars() -> None:
    assert _TRAIN_BAR.match(" 40%|████      | 2/5 [00:04<00:06,  2.1s/it]").groups() == ("2", "5")
    assert _TRAIN_BAR.match("Running tokenizer on dataset:  50%|█████     | 12/24 [00:01<00:01]") is None


def test_log_follower_reads_only_new_complete_lines(tmp_path: Path) -> None:
    log = tmp_path / "trainer_log.jsonl"
    log.write_text(json.dumps({"current_steps": 3, "total_steps": 9, "loss": 9.0}) + "\n")
    follower = _LogFollower(log)  # what a resumed run logged before is history
    progress = TrainProgress()
    assert not follower.update(progress)
    with log.open("a") as fh:
        fh.write(json.dumps({"current_steps": 4, "total_steps": 9, "loss": 1.5, "epoch": 0.5}) + "\n")
        fh.write('{"current_steps": 5, "tot')  # still being written
    assert follower.update(progress)
    assert (progress.step, progress.total, progress.loss, progress.epoch) == (4, 9, 1.5, 0.5)
    with log.open("a") as fh:
        fh.write('al_steps": 9, "eval_loss": 1.25}\n')
    assert follower.update(progress) and progress.eval_loss == 1.25 and progress.step == 5


def test_last_checkpoint_is_the_newest_complete_one(tmp_path: Path) -> None:
    for step, complete in ((2, True), (10, True), (12, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert last_checkpoint(tmp_path / "missing") is None


def _example(conclusion: str) -> TrainingExample:
    return sample_examples(1, 1, language="en")[0].model_copy(update={"conclusion": conclusion})


def test_judging_separates_accuracy_from_format() -> None:
    labels = ["relevant", "irrelevant"]
    assert judge(_example("relevant"), "relevant####it sets rules", "stop", labels) == ("relevant", True, True)
    # Right label, broken format: counted correct, not compliant.
    assert judge(_example("relevant"), "Relevant. It sets rules", "stop", labels) == ("relevant", True, False)
    assert judge(_example("irrelevant"), "maybe####no idea", "stop", labels) == (None, False, False)
    assert judge(_example("answer"), " Answer ####because", "stop", None) == ("Answer", True, True)


def test_scores_are_the_textbook_figures() -> None:
    def pred(ref: str, got: str | None, fmt: bool = True, tokens: int = 10) -> Prediction:
        return Prediction(id="x", task="t/main", reference=ref, answer="", conclusion=got, correct=ref == got,
                          format_ok=fmt, tokens=tokens)

    preds = [pred("a", "a"), pred("a", "a"), pred("a", "b"), pred("b", "b", tokens=30), pred("b", None, fmt=False)]
    s = score(Candidate(name="m", model="m"), preds, {"t/main": TaskLabels(labels=["a", "b", "c"], source="")}, 1.0)
    assert s.accuracy == pytest.approx(3 / 5) and s.format_compliance == pytest.approx(4 / 5)
    assert s.mean_generated_tokens == pytest.approx(14)
    # a: P 2/2, R 2/3 -> F1 0.8; b: P 1/2, R 1/2 -> 0.5; c never occurs: not a class.
    assert s.per_label["t/main/a"].f1 == pytest.approx(0.8) and s.per_label["t/main/b"].f1 == pytest.approx(0.5)
    assert set(s.per_label) == {"t/main/a", "t/main/b"} and s.macro_f1 == pytest.approx(0.65)
    open_ended = score(Candidate(name="m", model="m"), preds, {"t/main": TaskLabels(labels=None, source="")}, 1.0)
    assert open_ended.macro_f1 is None and open_ended.accuracy == pytest.approx(3 / 5)


def test_a_stratified_split_keeps_each_labels_share() -> None:
    # 40 one-example documents: 16 of label a, 12 of b, 8 of c, 4 of d.
    records = sample_examples(40, 1, language="en")
    shares = ["a"] * 16 + ["b"] * 12 + ["c"] * 8 + ["d"] * 4
    records = [ex.model_copy(update={"conclusion": label}) for ex, label in zip(records, shares)]
    for seed in range(5):
        test = split_by_document(records, val_fraction=0, test_fraction=0.25, seed=seed, label_of=lambda ex: ex.conclusion)["test"]
        assert Counter(ex.conclusion for ex in test) == {"a": 4, "b": 3, "c": 2, "d": 1}
    # Unstratified, some seed leaves a label out of the test split or over-fills one.
    plain = [Counter(ex.conclusion for ex in split_by_document(records, val_fraction=0, test_fraction=0.25, seed=s)["test"])
             for s in range(5)]
    assert any(c != {"a": 4, "b": 3, "c": 2, "d": 1} for c in plain)
    # The seed still picks which documents of a label are held out.
    held = [{ex.document_id for ex in split_by_document(records, val_fraction=0, test_fraction=0.25, seed=s,
                                                        label_of=lambda ex: ex.conclusion)["test"]} for s in (1, 2)]
    assert held[0] != held[1]
