"""Zip archives of documents: each member is read as a file, named `archive.zip!folder/file.txt`.

Members are unpacked in memory one at a time, within `UnpackLimits` checked on the sizes the
archive declares before anything is unpacked (zipfile never returns more than a member declares:
a lie fails its CRC), so a zip bomb is a clear ReadError, not an exhausted machine. An archive
inside the archive is not opened, only noted: that is how bombs nest.
"""

from __future__ import annotations

import zipfile
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from distillery.formatting import size

from .readers import ReadError, SourceDoc, UnpackLimits, read_bytes_report

__all__ = ["Member", "ZipArchive", "is_zip"]

# Compressed or archive formats: inside a zip they are noted, never opened.
_NESTED = frozenset({".zip", ".gz", ".tgz", ".tar", ".bz2", ".xz", ".7z", ".rar", ".zst"})
_HIDDEN_FOLDERS = frozenset({"__MACOSX"})  # macOS Finder's resource forks, one per file


def is_zip(path: Path) -> bool:
    return path.suffix.lower() == ".zip"


class Member(NamedTuple):
    path: Path  # "docs.zip!folder/file.txt": how documents and messages name it
    info: zipfile.ZipInfo


class ZipArchive:
    """An open zip archive: the members to read (sorted by name) and, in `skipped`, what is not
    read and why. Opening checks the whole archive against `limits.archive_bytes`."""

    def __init__(self, path: Path, limits: UnpackLimits) -> None:
        self.path, self.limits = path, limits
        try:
            self._zip = zipfile.ZipFile(path)
        except Exception as exc:  # BadZipFile, OSError, and zipfile's ValueErrors on hostile headers
            raise ReadError(path, f"not a readable zip archive ({type(exc).__name__}: {exc}); it may be corrupt "
                                  "or cut off: download it again") from exc
        self.skipped: list[str] = []
        self.members: list[Member] = []
        noted: set[str] = set()
        for info in sorted(self._zip.infolist(), key=_name):
            if info.is_dir():
                continue
            name = _name(info)
            parts = PurePosixPath(name).parts
            hidden = next((i for i, part in enumerate(parts) if part.startswith(".") or part in _HIDDEN_FOLDERS), None)
            if hidden is not None and hidden < len(parts) - 1:
                folder = "/".join(parts[: hidden + 1])
                if folder not in noted:  # a folder is noted once, as iter_files does
                    noted.add(folder)
                    self.skipped.append(f"{path}!{folder}/: hidden folder in the archive, not read")
            elif hidden is not None:
                self.skipped.append(f"{path}!{name}: hidden file in the archive, not read")
            elif PurePosixPath(name).suffix.lower() in _NESTED:
                self.skipped.append(f"{path}!{name}: an archive inside the archive, not opened (unpack it and "
                                    "ingest what it holds)")
            else:
                self.members.append(Member(Path(f"{path}!{name}"), info))
        # Members over the per-file limit fail one by one (see read); the rest must fit together.
        total = sum(m.info.file_size for m in self.members if m.info.file_size <= limits.member_bytes)
        if total > limits.archive_bytes:
            self._zip.close()
            raise ReadError(path, f"unpacks to {size(total)}, more than the {size(limits.archive_bytes)} allowed for "
                                  "one archive (a zip bomb?); if it is genuine, unpack it and ingest the folder")

    def read(self, member: Member, *, text_field: str = "text") -> tuple[list[SourceDoc], list[str]]:
        """The member's documents, as `read_bytes_report` reads any file."""
        return read_bytes_report(member.path, self._unpack(member), text_field=text_field)

    def _unpack(self, member: Member) -> bytes:
        info = member.info
        if info.file_size > self.limits.member_bytes:
            raise ReadError(member.path, f"unpacks to {size(info.file_size)}, more than the "
                                         f"{size(self.limits.member_bytes)} allowed for one file (a zip bomb?); if it "
                                         "is genuine, unpack the archive and ingest the folder")
        if info.flag_bits & 0x1:
            raise ReadError(member.path, "password-protected in the archive; unpack it with its password and ingest "
                                         "the files")
        try:
            with self._zip.open(info) as fh:
                return fh.read()
        except Exception as exc:  # a bad CRC, a cut-off archive, an unsupported compression method
            raise ReadError(member.path, f"cannot unpack it ({type(exc).__name__}: {exc}); the archive may be "
                                         "corrupt") from exc

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> ZipArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _name(info: zipfile.ZipInfo) -> str:
    # Without the UTF-8 flag a name is in the packer's code page, which zipfile reads as cp437:
    # Chinese Windows packs in GBK, and many tools write UTF-8 without setting the flag.
    if info.flag_bits & 0x800:
        return info.filename
    raw = info.filename.encode("cp437")
    for encoding in ("utf-8", "gb18030"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            pass
    return info.filename
