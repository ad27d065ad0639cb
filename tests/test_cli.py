"""The command line as a user types it (click's runner, in-process, real files and store)."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from annotate.cli import main
from doubles.moonshot import FakeMoonshot
from helpers import ZH, write_docs

KEY = "sk-cli-test"


def cli(*args, env=None):
    result = CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)
    return result.exit_code, result.output


@pytest.mark.parametrize("cmd", [[], ["ingest"], ["run"], ["tasks"], ["status"], ["export"], ["import"]])
def test_help_everywhere(cmd):
    code, out = cli(*cmd, "--help")
    assert code == 0 and "Usage:" in out


def test_ingest_reports_bad_files_and_goes_on(tmp_path):
    docs = write_docs(tmp_path / "docs")
    (docs / "empty.txt").write_text("")
    (docs / "blob.txt").write_bytes(b"\x00\x01\x02binary" * 100)
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    (docs / "gbk.txt").write_bytes("第一条 数据处理者应当履行安全保护义务。".encode("gbk"))
    code, out = cli("-w", tmp_path / "ws", "ingest", docs)
    assert code == 1  # the good files are in, but the batch is partial: a script must be able to tell
    assert "files failed" in out and "empty.txt" in out and "blob.txt" in out and "broken.pdf" in out
    flat = " ".join(out.split())
    assert f"3 of {len(ZH) + 4} files failed" in flat and "run the same command again" in flat and "--allow-partial" in flat
    code, out = cli("-w", tmp_path / "ws", "ingest", docs, "--allow-partial")  # again: nothing new, and accepted
    assert code == 0 and "documents already ingested" in out and "broken.pdf" in out
    code, out = cli("-w", tmp_path / "ws", "status")
    assert f"{len(ZH) + 1} documents" in out


def test_run_needs_chunks_and_validates_options(tmp_path):
    result = CliRunner().invoke(main, ["-w", str(tmp_path / "ws"), "run"])
    assert "no chunks" in result.output and "ingest" in result.output
    cli("-w", tmp_path / "ws", "ingest", write_docs(tmp_path / "docs"))
    for args, needle in ((["--shard", "3/2"], "shard"), (["--var", "oops"], "KEY=VALUE"),
                         (["--var", "colour=red"], "not a variable"), (["--retry", "maybe"], "unknown state"),
                         (["--task", "nope"], "unknown task")):
        result = CliRunner().invoke(main, ["-w", str(tmp_path / "ws"), "run", "--provider", "local", *args])
        assert result.exit_code != 0 and needle in result.output, (args, result.output)
    result = CliRunner().invoke(main, ["-w", str(tmp_path / "ws"), "run", "--provider", "openai",
                                       "--api-key-env", "DISTILLERY_TEST_UNSET_KEY"])
    assert result.exit_code != 0 and "no API key: set DISTILLERY_TEST_UNSET_KEY" in result.output


def test_dry_run_estimates_without_sending(tmp_path):
    cli("-w", tmp_path / "ws", "ingest", write_docs(tmp_path / "docs"))
    with FakeMoonshot(api_key=KEY) as server:
        code, out = cli("-w", tmp_path / "ws", "run", "--base-url", server.base_url, "--api-key-env", "CLI_KEY",
                        "--dry-run", env={"CLI_KEY": KEY})
        assert server.chat_hashes() == []
    assert code == 0 and "dry run" in out and "CNY" in out and f"{len(ZH)} records to do" in out


def test_run_export_import_round_trip(tmp_path):
    cli("-w", tmp_path / "ws", "ingest", write_docs(tmp_path / "docs"))
    with FakeMoonshot(api_key=KEY) as server:
        code, out = cli("-w", tmp_path / "ws", "run", "--base-url", server.base_url, "--api-key-env", "CLI_KEY",
                        "--task", "relevance", "--var", "topic=个人信息", env={"CLI_KEY": KEY})
    assert code == 0 and "this run" in out and "calls sent" in out
    code, out = cli("-w", tmp_path / "ws", "export", tmp_path / "out.jsonl")
    lines = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(ZH)
    rec = json.loads(lines[0])
    assert rec["annotation"]["status"] == "ok" and rec["document"]["path"] and "个人信息" in rec["task"]["body"]
    assert KEY not in (tmp_path / "out.jsonl").read_text(encoding="utf-8")
    code, out = cli("-w", tmp_path / "ws2", "import", tmp_path / "out.jsonl")
    assert f"imported {len(ZH)} new records" in out
    (tmp_path / "bad.jsonl").write_text(lines[0] + "\n{\"annotation\": 1}\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["-w", str(tmp_path / "ws3"), "import", str(tmp_path / "bad.jsonl")])
    assert result.exit_code != 0 and "line 2" in result.output and "nothing was imported" in result.output


def test_tasks_lists_and_prints_builtins():
    code, out = cli("tasks")
    assert code == 0 and "relevance" in out and "nli" in out
    code, out = cli("tasks", "qa")
    assert "kind: qa" in out


def test_the_kimi_config_runs_the_demo_task(tmp_path):
    """The pipeline's "one config change": examples/kimi.yaml as the teacher of examples/tasks/topic.yaml
    (pointed at a local Moonshot-compatible server; --base-url is the only difference from Kimi)."""
    examples = Path(__file__).resolve().parents[1] / "examples"
    cli("-w", tmp_path / "ws", "ingest", write_docs(tmp_path / "docs"))
    labels = ["privacy", "finance", "workplace", "outdoors"]
    with FakeMoonshot(api_key=KEY, labels=labels) as server:
        code, out = cli("-w", tmp_path / "ws", "run", "-c", examples / "kimi.yaml", "--task", examples / "tasks" / "topic.yaml",
                        "--base-url", server.base_url, env={"MOONSHOT_API_KEY": KEY})
        assert code == 0, out
        assert len(server.chat_hashes()) == len(ZH)
    code, out = cli("-w", tmp_path / "ws", "export", tmp_path / "out.jsonl")
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["annotation"]["conclusion"] for r in records} <= set(labels) and len(records) == len(ZH)
    assert {r["annotation"]["model"] for r in records} == {"moonshot-v1-8k"}


def test_ingest_says_what_it_skipped_and_run_errors_keep_their_chunk(tmp_path, monkeypatch):
    docs = write_docs(tmp_path / "docs", [ZH[0], "[[FAULT:content_filter]] 敏感内容"])
    (docs / ".draft.txt").write_text("隐藏的草稿。", encoding="utf-8")
    (docs / ".cache").mkdir()
    (docs / ".cache" / "x.txt").write_text("缓存。", encoding="utf-8")
    outside = write_docs(tmp_path / "outside", [ZH[1]])
    (docs / "linked").symlink_to(outside, target_is_directory=True)
    code, out = cli("-w", tmp_path / "ws", "ingest", docs)
    assert code == 0 and "files read" in out
    flat = " ".join(out.split())
    assert ".draft.txt: hidden file, not read" in flat and ".cache/: hidden folder" in flat
    assert "linked/: a symlink to a folder, not followed" in flat
    monkeypatch.setenv("FAKE_MOONSHOT_KEY", KEY)
    with FakeMoonshot(api_key=KEY) as server:
        code, out = cli("-w", tmp_path / "ws", "run", "--base-url", server.base_url, "--api-key-env", "FAKE_MOONSHOT_KEY")
    flat = " ".join(out.split())
    assert "content_filter" in flat and "[chunk " in flat and "doc001.txt #0)]" in flat  # rich kept the brackets


def test_reader_library_warnings_are_counted_not_printed_raw(tmp_path, monkeypatch):
    """What a reader's library says (pypdf logs, Python warnings) is a counted warning of its file."""
    import logging
    import warnings

    from annotate import ingest as ingest_module

    real = ingest_module.read_file_report

    def noisy(path, **kw):  # says what pypdf says on a damaged PDF, the way pypdf says it
        if path.name == "doc001.txt":
            for _ in range(3):
                logging.getLogger("pypdf._reader").warning("Ignoring wrong pointing object %d 0 (offset 0)", 6)
            warnings.warn("odd glyph widths", UserWarning, stacklevel=1)
        return real(path, **kw)

    monkeypatch.setattr(ingest_module, "read_file_report", noisy)
    docs = write_docs(tmp_path / "docs")
    handlers = list(logging.getLogger().handlers)
    code, out = cli("-w", tmp_path / "ws", "ingest", docs)
    flat = " ".join(out.split())
    assert code == 0 and "warnings │ 2" in flat
    where = docs / "doc001.txt"
    assert f"warning {where}: pypdf warning: Ignoring wrong pointing object 6 0 (offset 0) (3 times)" in flat
    assert f"warning {where}: UserWarning: odd glyph widths" in flat
    assert flat.count("Ignoring wrong pointing object") == 1 and flat.count("odd glyph widths") == 1  # none raw
    assert logging.getLogger().handlers == handlers  # the root logger got its own back


def test_identical_rows_in_two_files_are_two_documents_each_with_its_fields(tmp_path, monkeypatch):
    from distillery.store import Store

    docs = tmp_path / "docs"
    docs.mkdir()
    row = {"text": ZH[0]}
    (docs / "a.jsonl").write_text(json.dumps(row | {"id": "a1", "year": 2023}) + "\n" + json.dumps(row | {"id": "a2"}) + "\n",
                                  encoding="utf-8")
    (docs / "b.jsonl").write_text(json.dumps(row | {"id": "b1", "year": 2024}) + "\n", encoding="utf-8")
    code, out = cli("-w", tmp_path / "ws", "ingest", docs)
    assert code == 0
    with Store.open(tmp_path / "ws") as store:
        documents = {d.path: d.meta for d in store.documents()}
    assert documents == {f"{docs}/a.jsonl#L1": {"id": "a1", "year": 2023}, f"{docs}/a.jsonl#L2": {"id": "a2"},
                         f"{docs}/b.jsonl#L1": {"id": "b1", "year": 2024}}
    monkeypatch.chdir(docs)  # the same files named from another folder: still the same documents
    code, out = cli("-w", tmp_path / "ws", "ingest", ".")
    assert code == 0 and "documents already ingested │ 3" in " ".join(out.split())


def test_dry_run_leaves_status_as_it_was(tmp_path):
    ws = tmp_path / "ws"
    cli("-w", ws, "ingest", write_docs(tmp_path / "docs"))
    with FakeMoonshot(api_key=KEY) as server:
        teacher = ["--base-url", server.base_url, "--api-key-env", "CLI_KEY"]
        _, before = cli("-w", ws, "status")
        code, out = cli("-w", ws, "run", *teacher, "--task", "qa", "--dry-run", env={"CLI_KEY": KEY})
        assert code == 0 and f"{len(ZH)} records to do" in out
        assert cli("-w", ws, "status")[1] == before and "0 records" in before
        code, _ = cli("-w", ws, "run", *teacher, "--limit", "2", env={"CLI_KEY": KEY})
        assert code == 0
        _, before = cli("-w", ws, "status")
        code, out = cli("-w", ws, "run", *teacher, "--retry", "ok", "--dry-run", env={"CLI_KEY": KEY})
        assert code == 0 and f"{len(ZH)} records to do" in out  # 2 to redo, 2 never done
        assert cli("-w", ws, "status")[1] == before  # the ok records were not reset to pending
        assert len(server.chat_hashes()) == 2


def test_distill_run_stops_before_the_teacher_when_a_document_failed(tmp_path):
    from distillery.cli import main as distill
    from distillery.store import Store

    docs = write_docs(tmp_path / "docs", ZH[:2])
    (docs / "cut.txt.gz").write_bytes(b"\x1f\x8b\x08\x00 cut off")
    (tmp_path / "p.yaml").write_text("annotate:\n  documents: docs\n  task: relevance\n", encoding="utf-8")
    ws = tmp_path / "ws"
    result = CliRunner().invoke(distill, ["run", str(tmp_path / "p.yaml"), "-w", str(ws)])
    flat = " ".join(result.output.split())
    assert result.exit_code == 1 and "step annotate failed: 1 of 3 files failed" in flat
    assert "annotate.allow_partial: true" in flat and "cut.txt.gz: not a readable gzip file" in flat
    with Store.open(ws) as store:  # the readable documents are in; no record was planned, nothing asked
        assert store.totals()["documents"] == 2 and store.totals()["annotations"] == 0
