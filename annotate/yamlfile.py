"""Reading config-as-data files with errors that name the file and the field."""

from __future__ import annotations

from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def load_mapping(text: str, origin: str, error: type[Exception]) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{origin}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"{origin}: expected a mapping of fields at the top level")
    return data


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any], error: type[Exception]) -> None:
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


def validate(model: type[M], data: dict[str, Any], origin: str, error: type[Exception]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise error(f"{origin}: {problems}") from exc


def _describe(err: Any) -> str:
    text = f"field '{'.'.join(map(str, err['loc']))}': {err['msg']}"
    if isinstance(err.get("input"), bool):
        # YAML 1.1 reads bare yes/no/on/off/true/false as booleans, a classic label-set trap.
        text += " (YAML read a bare yes/no/true/false as a boolean: put it in quotes)"
    return text
