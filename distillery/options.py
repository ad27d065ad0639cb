"""Click options every stage's command line shares: the workspace, `--set key=value`, and the
teacher (for every command that calls one)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from .errors import DistilleryError
from .workspace import WORKSPACE_ENV, default_workspace

F = TypeVar("F", bound=Callable[..., Any])


class CommandGroup(click.Group):
    """A command group whose library errors reach the user as one line (`Error: ...`, exit 1),
    never as a traceback: every stage's command line and `distill` itself use it."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DistilleryError as exc:
            raise click.ClickException(str(exc)) from exc


def teacher_options(prefix: str = "") -> Callable[[F], F]:
    """--provider ... --tpm; each lands in the command's kwargs under its own name (None if not given)."""
    options = [
        click.option("--provider", type=click.Choice(["auto", "openai", "local"]), help=f"{prefix}Teacher kind [default: auto]."),
        click.option("--base-url", help=f"{prefix}OpenAI-compatible base URL [default: Kimi when a key is set]."),
        click.option("--model", help=f"{prefix}Model name."),
        click.option("--api-key-env", help=f"{prefix}Environment variable holding the API key [default: MOONSHOT_API_KEY]."),
        click.option("--tier", help=f"{prefix}Moonshot tier preset for the limits (tier0..tier5) [default: tier1]."),
        click.option("--concurrency", type=click.IntRange(min=1), help=f"{prefix}Requests in flight at most."),
        click.option("--rpm", type=click.IntRange(min=1), help=f"{prefix}Requests per minute at most."),
        click.option("--tpm", type=click.IntRange(min=1), help=f"{prefix}Tokens per minute at most."),
        click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True),
                     help=f"{prefix}Seconds of silence from the teacher before a request is sent again (streamed: "
                          "between two pieces of the answer) [default: 120]."),
        click.option("--stream/--no-stream", default=None,
                     help=f"{prefix}Stream answers, so a slow but live teacher is not cut off [default: stream]."),
    ]

    def apply(fn: F) -> F:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


def workspace_option(fn: F) -> F:
    """-w/--workspace, read at call time (so $DISTILLERY_WORKSPACE set late still counts)."""
    return click.option(
        "-w", "--workspace", type=click.Path(file_okay=False, path_type=Path), default=default_workspace,
        show_default=f"${WORKSPACE_ENV} or ./workspace", help="Workspace directory (holds distillery.db).",
    )(fn)


def sets_option(example: str) -> Callable[[F], F]:
    """--set KEY=VALUE (repeatable): dotted config keys, values read as YAML (see distillery.config.parse_sets)."""
    return click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                        help=f"Override one config key, e.g. --set {example} (repeatable; values read as YAML).")


@contextmanager
def stop_on_ctrl_c(console: Console) -> Iterator[asyncio.Event]:
    """In a running event loop: the first Ctrl-C sets the event (a job stops sending and lets the
    requests in flight finish and be stored), a second one aborts at once."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_sigint() -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        console.print("[yellow]stopping after the requests in flight (Ctrl-C again to abort now)…[/yellow]")
        stop.set()

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        yield stop
    finally:
        loop.remove_signal_handler(signal.SIGINT)
