"""Config as data: YAML files, dotted overrides and `--set key=value`, one semantics for all.

Every config in the project (the annotate job, the server, LLaMA-Factory keys, the project file
`distill run` reads) goes through these functions, so a file or field error always reads the same:
it names the file and the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .errors import ConfigError

M = TypeVar("M", bound=BaseModel)
_EXPONENT = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def load_mapping(text: str, origin: str, error: type[Exception] = ConfigError) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{origin}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"{origin}: expected a mapping of fields at the top level")
    return data


def read_mapping(path: str | Path, error: type[Exception] = ConfigError) -> dict[str, Any]:
    """A YAML file's top-level mapping; a missing file is an error naming it."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{p}: no such config file")
    return load_mapping(p.read_text(encoding="utf-8"), str(p), error)


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any], error: type[Exception] = ConfigError) -> None:
    """Set dotted keys ({"teacher.rpm": 100}) in a nested mapping; None means "not given"."""
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise error(f"'{key}' must be a mapping of fields to set '{dotted}' in it")
            node = child
        node[leaf] = value


def validate(model: type[M], data: dict[str, Any], origin: str | None, error: type[Exception] = ConfigError,
             *, section: str = "") -> M:
    """`data` as a `model`; an error names the origin (a file) and each bad field, as
    `section.field` when the data is one section of a larger file."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(e, section) for e in exc.errors())
        raise error(f"{origin}: {problems}" if origin else problems) from exc


def load_config(
    model: type[M],
    path: str | Path | None,
    overrides: Mapping[str, Any] | None = None,
    error: type[Exception] = ConfigError,
) -> M:
    """A YAML file (or the defaults when `path` is None), dotted overrides on top, validated."""
    data = read_mapping(path, error) if path else {}
    apply_overrides(data, overrides or {}, error)
    return validate(model, data, str(path) if path else "command line", error)


def yaml_value(value: Any) -> Any:
    """YAML 1.1 reads `2e-4` (no dot) as text; anything that looks like an exponent number is one."""
    return float(value) if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()) else value


def parse_sets(items: Sequence[str], option: str = "--set", error: type[Exception] = ConfigError) -> dict[str, Any]:
    """`key=value` pairs from the command line; values are read as YAML, so numbers and booleans
    keep their type (`--set finetune.seed=7` is the number 7), and `key=` is the empty string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise error(f"{option} '{item}' is not KEY=VALUE (e.g. {option} learning_rate=2e-4)")
        try:
            out[key.strip()] = yaml_value(yaml.safe_load(value)) if value else ""
        except yaml.YAMLError:
            out[key.strip()] = value  # not a YAML scalar (e.g. "a: b"): the text as given
    return out


def _describe(err: Any, section: str = "") -> str:
    text = f"field '{'.'.join(map(str, (section, *err['loc']) if section else err['loc']))}': {err['msg']}"
    if isinstance(err.get("input"), bool):
        # YAML 1.1 reads bare yes/no/on/off/true/false as booleans, a classic label-set trap.
        text += " (YAML read a bare yes/no/true/false as a boolean: put it in quotes)"
    return text


__all__ = ["load_mapping", "read_mapping", "apply_overrides", "validate", "load_config", "parse_sets",
           "yaml_value"]
