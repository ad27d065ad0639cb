"""The stage contract: how `distill` and `distill run` find the stages without importing them.

The core imports no stage. Each stage package registers one `Stage` under the entry-point group
`distillery.stages` (see pyproject.toml); the core looks them up by name, in the order data flows.
A stage brings its command line (`distill <name> ...`), its section of the project config, and
its pipeline step, which calls the stage's own library API.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import click

from .errors import DistilleryError

if TYPE_CHECKING:
    from .pipeline import RunContext, StepResult

GROUP = "distillery.stages"
FLOW: tuple[str, ...] = ("annotate", "qc", "finetune", "serve")  # data flows one way, in this order


@dataclass(frozen=True)
class Stage:
    name: str
    help: str  # one line, for `distill --help`
    command: click.Command  # the stage's own command line: `distill <name> ...` (and `distill-<name>`)
    # Validates the stage's section of the project config (a mapping) and checks its inputs exist,
    # before any step runs: `configure(section, ctx)` returns the step's settings or raises ConfigError.
    configure: Callable[[dict[str, Any], RunContext], Any]
    # Runs the step with those settings through the stage's library API; resumes where it stopped.
    run: Callable[[RunContext, Any], StepResult]


class StageMissing(DistilleryError):
    """A stage the flow needs is not installed."""


def load_stage(name: str) -> Stage:
    """The installed stage `name` (its package is imported now, not before)."""
    found = entry_points(group=GROUP, name=name)
    if not found:
        raise StageMissing(f"stage '{name}' is not installed (no '{GROUP}' entry point named {name}): "
                           "install distillery with `pip install -e .` from its repository")
    try:
        stage = next(iter(found)).load()
    except ImportError as exc:  # a stage whose extra is not installed (e.g. in the serve image)
        raise StageMissing(f"stage '{name}' cannot be loaded ({exc}): install it with "
                           f"pip install 'distillery[{name}]'") from exc
    if not isinstance(stage, Stage):
        raise StageMissing(f"the '{GROUP}' entry point {name} is not a distillery.stages.Stage")
    return stage


def stage_names() -> list[str]:
    """Installed stages, the flow's first and in its order, then any others by name."""
    names = {ep.name for ep in entry_points(group=GROUP)}
    return [n for n in FLOW if n in names] + sorted(names - set(FLOW))
