"""JSONL, the exchange format between stages (never the state: that is the store): typed reads
that name the file and line of a bad record, and writes that land whole or not at all."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from .errors import DistilleryError

M = TypeVar("M", bound=BaseModel)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` beside the target, then renamed over it: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: Path, rows: Iterable[BaseModel]) -> int:
    """One JSON object per line, all lines or none. Returns how many."""
    count = 0

    def write(tmp: Path) -> None:
        nonlocal count
        with tmp.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row.model_dump(mode="json"), ensure_ascii=False) + "\n")
                count += 1

    atomic_write(path, write)
    return count


def read_jsonl(path: Path, model: type[M], error: type[Exception] = DistilleryError) -> list[tuple[int, M]]:
    """(line number, record) for every non-blank line; any bad line fails, named by file and line."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path} does not exist")
    out: list[tuple[int, M]] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                out.append((lineno, model.model_validate(json.loads(line))))
            except json.JSONDecodeError as exc:
                raise error(f"{path} line {lineno}: not JSON ({exc.msg})") from exc
            except ValidationError as exc:
                err = exc.errors()[0]
                field = ".".join(map(str, err["loc"])) or "(line)"
                raise error(f"{path} line {lineno}: not a {model.__name__}: field '{field}': {err['msg']} "
                            f"({len(exc.errors())} problem(s) in this line)") from exc
    return out
