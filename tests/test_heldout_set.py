"""The held-out evaluation set (examples/heldout) is what bench/pipeline_proof.py --heldout scores
on: big enough for a narrow interval, balanced, labelled within the task, and no copy of the demo
documents the teacher's cues were worded on (or the student was trained on)."""

import csv
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from annotate.readers import read_file
from distillery.tasks import load_task

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
HELDOUT = EXAMPLES / "heldout"
# A shared run this long is copied wording, not a shared phrase: 12 Chinese characters, or 6 words
# ("you do not need to do anything" is the longest English run that common usage produced).
HAN_RUN, WORD_RUN = 12, 6


def labels() -> dict[str, str]:
    with (HELDOUT / "labels.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    files = [row["file"] for row in rows]
    assert len(files) == len(set(files)), [f for f, n in Counter(files).items() if n > 1]
    return {row["file"]: row["label"] for row in rows}


def language(name: str) -> str:
    return Path(name).stem.rsplit("_", 1)[-1]


def runs(text: str) -> set[str]:
    """Every run of HAN_RUN Chinese characters (punctuation and spaces dropped) and of WORD_RUN words."""
    folded = text.casefold()
    han = "".join(re.findall(r"[\u4e00-\u9fff]", folded))
    words = re.findall(r"[a-z0-9]+", folded)
    return ({han[i:i + HAN_RUN] for i in range(len(han) - HAN_RUN + 1)}
            | {" ".join(words[i:i + WORD_RUN]) for i in range(len(words) - WORD_RUN + 1)})


def test_every_document_has_one_label_and_every_label_a_document():
    files = {p.name for p in (HELDOUT / "docs").iterdir()}
    assert set(labels()) == files
    assert len(files) >= 100


def test_labels_are_the_tasks_and_each_topic_has_both_languages():
    task_labels = load_task(EXAMPLES / "tasks" / "topic.yaml").spec.labels
    by_label = labels()
    assert set(by_label.values()) == set(task_labels)
    counts = Counter((label, language(name)) for name, label in by_label.items())
    assert {lang for _, lang in counts} == {"en", "zh"}
    assert all(counts[label, lang] >= 12 for label in task_labels for lang in ("en", "zh")), counts


@pytest.mark.parametrize("path", sorted((HELDOUT / "docs").iterdir()), ids=lambda p: p.name)
def test_documents_are_utf8_text_in_their_named_language(path: Path):
    text = path.read_bytes().decode("utf-8")  # raises on anything else
    han = len(re.findall(r"[\u4e00-\u9fff]", text))
    if language(path.name) == "zh":
        assert 100 <= han <= 400
    else:
        assert han == 0 and 60 <= len(text.split()) <= 250


def test_no_document_copies_wording_from_the_demo_documents():
    demo = set().union(*(runs("\n".join(doc.text for doc in read_file(p))) for p in (EXAMPLES / "docs").iterdir()))
    copied = {p.name: sorted(runs(p.read_text(encoding="utf-8")) & demo)[:3] for p in (HELDOUT / "docs").iterdir()}
    assert not {name: shared for name, shared in copied.items() if shared}


def test_the_demo_never_reads_the_held_out_set():
    """Kept out of training: the demo project annotates (and so trains on) examples/docs only."""
    project = yaml.safe_load((EXAMPLES / "pipeline.yaml").read_text(encoding="utf-8"))
    documents = (EXAMPLES / project["annotate"]["documents"]).resolve()
    heldout = HELDOUT.resolve()
    assert not documents.is_relative_to(heldout) and not heldout.is_relative_to(documents)  # ingest recurses
