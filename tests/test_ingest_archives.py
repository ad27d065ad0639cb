"""Compressed inputs (.gz files, .zip archives) read from real archives written to tmp_path."""

from __future__ import annotations

import gzip
import json
import struct
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from annotate.archives import ZipArchive
from annotate.cli import main
from annotate.ingest import ingest
from annotate.readers import ReadError, UnpackLimits, read_file, read_file_report
from distillery.store import Store

ZH = "第一条 个人信息处理者在处理个人信息前，应当告知处理目的和方式。"
EN = "The canteen opens at seven. Breakfast is served until nine."


def gz(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text.encode("utf-8")))
    return path


def make_zip(path: Path, members: dict[str, bytes | str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data.encode("utf-8") if isinstance(data, str) else data)
    return path


# ---------------------------------------------------------------- .gz


def test_gz_is_read_as_its_inner_kind(tmp_path: Path) -> None:
    plain = tmp_path / "plain" / "notice.txt"
    plain.parent.mkdir()
    plain.write_text(ZH, encoding="utf-8")
    [txt] = read_file(gz(tmp_path / "notice.txt.gz", ZH))
    assert txt.kind == "txt" and txt.path == str(tmp_path / "notice.txt.gz")
    assert txt.text == read_file(plain)[0].text  # unpacking changes nothing in what is read

    [html] = read_file(gz(tmp_path / "page.HTML.GZ", f"<html><body><p>{EN}</p></body></html>"))
    assert html.kind == "html" and EN in html.text

    rows = "\n".join(json.dumps({"text": t, "n": i}, ensure_ascii=False) for i, t in enumerate([ZH, EN]))
    docs, warnings = read_file_report(gz(tmp_path / "rows.jsonl.gz", rows))
    assert [(d.kind, d.path, d.text, d.meta) for d in docs] == [
        ("jsonl", f"{tmp_path / 'rows.jsonl.gz'}#L1", ZH, {"n": 0}),
        ("jsonl", f"{tmp_path / 'rows.jsonl.gz'}#L2", EN, {"n": 1}),
    ]
    assert warnings == []


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"plain text, not gzip", "not a readable gzip file"),
        (gzip.compress(ZH.encode() * 50)[:-30], "not a readable gzip file"),  # cut off mid-stream
        (gzip.compress(ZH.encode())[:-8] + b"\0\0\0\0\0\0\0\0", "not a readable gzip file"),  # CRC broken
        (gzip.compress(b""), "empty file"),
    ],
    ids=["not-gzip", "truncated", "bad-crc", "empty-inside"],
)
def test_a_broken_gz_is_a_read_error(tmp_path: Path, data: bytes, needle: str) -> None:
    path = tmp_path / "doc.txt.gz"
    path.write_bytes(data)
    with pytest.raises(ReadError) as info:
        read_file(path)
    assert needle in info.value.reason and info.value.path == str(path)


def test_a_gz_that_unpacks_past_the_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.txt.gz"
    path.write_bytes(gzip.compress(b"a" * 3_000_000, compresslevel=9))  # about 3 KB that unpack to 3 MB
    assert path.stat().st_size < 10_000
    with pytest.raises(ReadError) as info:
        read_file_report(path, limits=UnpackLimits(member_bytes=2**20))
    assert "unpacks to more than 1 MiB, the limit for one file" in info.value.reason
    [doc] = read_file_report(path, limits=UnpackLimits(member_bytes=4 * 2**20))[0]  # under a higher limit: read
    assert len(doc.text) == 3_000_000


def test_unsupported_names_say_what_is_supported(tmp_path: Path) -> None:
    for name, shown in (("logs.tar.gz", "'.tar.gz'"), ("blob.gz", "'.gz'"), ("photo.png", "'.png'")):
        (tmp_path / name).write_bytes(gzip.compress(b"x"))
        with pytest.raises(ReadError) as info:
            read_file(tmp_path / name)
        assert f"unsupported file type {shown}" in info.value.reason and ".zip archives" in info.value.reason


# ---------------------------------------------------------------- .zip


def test_a_zip_folder_tree_is_ingested_member_by_member(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "in" / "docs.zip", {
        "manual/ch1/intro.txt": ZH,
        "manual/ch2/notes.md": f"# Notes\n\n{EN}\n",
        "manual/rows.jsonl": json.dumps({"text": "第二条 数据应当加密存储。", "id": "r1"}, ensure_ascii=False),
        "manual/ch1/.DS_Store": b"\x00\x01",
        "__MACOSX/manual/ch1/._intro.txt": b"\x00\x05\x16\x07",
        "__MACOSX/manual/ch2/._notes.md": b"\x00\x05\x16\x07",
        "manual/old.zip": b"PK\x05\x06" + b"\0" * 18,
        "manual/more.txt.gz": gzip.compress(b"nested"),
    })
    with Store.open(tmp_path / "ws") as store:
        report = ingest(store, [tmp_path / "in"])
        docs = {d.path: d for d in store.documents()}
    assert report.failures == [] and report.files == 3 and report.documents_new == 3
    assert set(docs) == {f"{archive}!manual/ch1/intro.txt", f"{archive}!manual/ch2/notes.md", f"{archive}!manual/rows.jsonl#L1"}
    assert docs[f"{archive}!manual/ch1/intro.txt"].kind == "txt"
    assert docs[f"{archive}!manual/rows.jsonl#L1"].meta == {"id": "r1"}
    assert sorted(report.warnings) == sorted([
        f"{archive}!__MACOSX/: hidden folder in the archive, not read",  # once, not once per member
        f"{archive}!manual/ch1/.DS_Store: hidden file in the archive, not read",
        f"{archive}!manual/more.txt.gz: an archive inside the archive, not opened (unpack it and ingest what it holds)",
        f"{archive}!manual/old.zip: an archive inside the archive, not opened (unpack it and ingest what it holds)",
    ])
    with Store.open(tmp_path / "ws") as store:  # again: nothing new
        assert ingest(store, [archive]).documents_seen == 3


def test_one_bad_member_fails_alone(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "docs.zip", {"a.txt": ZH, "b.txt": b"", "c.png": b"\x89PNG", "d.txt": EN})
    with Store.open(tmp_path / "ws") as store:
        report = ingest(store, [archive])
    assert report.files == 4 and report.documents_new == 2
    assert [(f.path, f.reason.split(";")[0]) for f in report.failures] == [
        (f"{archive}!b.txt", "empty file"),
        (f"{archive}!c.png", "unsupported file type '.png'"),
    ]


def test_zip_bombs_are_refused_before_unpacking(tmp_path: Path) -> None:
    zeros = b"0" * (3 * 2**20)  # deflates about 1000:1, like a bomb's members
    limits = UnpackLimits(member_bytes=2**20, archive_bytes=3 * 2**20)
    archive = make_zip(tmp_path / "one.zip", {"big.txt": zeros, "ok.txt": ZH})
    assert archive.stat().st_size < 20_000
    with Store.open(tmp_path / "ws") as store:
        report = ingest(store, [archive], limits=limits)
    assert report.documents_new == 1  # ok.txt
    [failure] = report.failures
    assert failure.path == f"{archive}!big.txt"
    assert failure.reason.startswith("unpacks to 3 MiB, more than the 1 MiB allowed for one file (a zip bomb?)")

    many = make_zip(tmp_path / "many.zip", {f"part{i}.txt": zeros[: 2**20 - 1] for i in range(4)})
    with Store.open(tmp_path / "ws") as store:
        report = ingest(store, [many], limits=limits)
    assert report.files == 1 and report.documents_new == 0  # refused as a whole: nothing half-read
    [failure] = report.failures
    assert failure.path == str(many) and "more than the 3 MiB allowed for one archive" in failure.reason


def test_a_member_larger_than_it_declares_is_not_read_past_its_size(tmp_path: Path) -> None:
    data = bytearray(make_zip(tmp_path / "x.zip", {"liar.txt": "x" * 100_000}).read_bytes())
    for header, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # uncompressed size: local, central
        struct.pack_into("<I", data, data.find(header) + offset, 1000)
    (tmp_path / "x.zip").write_bytes(bytes(data))
    with ZipArchive(tmp_path / "x.zip", UnpackLimits()) as archive:
        [member] = archive.members
        with pytest.raises(ReadError) as info:
            archive.read(member)
    assert "cannot unpack it" in info.value.reason and "CRC" in info.value.reason


def test_corrupt_and_encrypted_zips(tmp_path: Path) -> None:
    good = make_zip(tmp_path / "in" / "good.zip", {"a.txt": ZH})
    (tmp_path / "in" / "cut.zip").write_bytes(good.read_bytes()[:40])
    (tmp_path / "in" / "noise.zip").write_bytes(b"not a zip at all" * 10)
    locked = bytearray(make_zip(tmp_path / "locked.zip", {"secret.txt": EN}).read_bytes())
    for header, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # general purpose flag bit 0: encrypted
        locked[locked.find(header) + offset] |= 1
    (tmp_path / "in" / "locked.zip").write_bytes(bytes(locked))
    with Store.open(tmp_path / "ws") as store:
        report = ingest(store, [tmp_path / "in"])
    reasons = {Path(f.path).name: f.reason for f in report.failures}
    assert reasons["cut.zip"].startswith("not a readable zip archive") and "noise.zip" in reasons
    assert reasons["locked.zip!secret.txt"].startswith("password-protected in the archive")
    assert report.documents_new == 1


def test_member_names_packed_in_gbk_are_decoded(tmp_path: Path) -> None:
    # Chinese Windows packs names in GBK without the UTF-8 flag; zipfile reads them as cp437.
    name = "资料.txt"
    placeholder = "abcd.txt"  # as many bytes as the GBK name: patched in after writing
    assert len(name.encode("gbk")) == len(placeholder)
    data = make_zip(tmp_path / "x.zip", {placeholder: ZH}).read_bytes()
    (tmp_path / "x.zip").write_bytes(data.replace(placeholder.encode(), name.encode("gbk")))
    with ZipArchive(tmp_path / "x.zip", UnpackLimits()) as archive:
        [member] = archive.members
        [doc] = archive.read(member)[0]
    assert member.path.name == f"x.zip!{name}" and doc.path == f"{tmp_path / 'x.zip'}!{name}" and doc.text == ZH


def test_the_cli_ingests_archives_and_fails_on_a_bad_member(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    gz(docs / "a.txt.gz", ZH)
    make_zip(docs / "b.zip", {"x/ok.md": EN, "x/broken.pdf": b"%PDF-1.4 not really"})
    result = CliRunner().invoke(main, ["-w", str(tmp_path / "ws"), "ingest", str(docs)], catch_exceptions=False)
    flat = " ".join(result.output.split())
    assert result.exit_code == 1
    assert f"failed {docs}/b.zip!x/broken.pdf" in flat and "1 of 3 files failed" in flat
    result = CliRunner().invoke(main, ["-w", str(tmp_path / "ws"), "ingest", str(docs), "--allow-partial"])
    flat = " ".join(result.output.split())
    assert result.exit_code == 0 and "documents already ingested │ 2" in flat and "broken.pdf" in flat
