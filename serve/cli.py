"""`distill-serve`: a thin shell over serve's app factory and config."""

from __future__ import annotations

import functools
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import yaml
from rich.console import Console

from distillery.options import CommandGroup

from .config import CONFIG_ENV, ENV_PREFIX, ConfigError, ServeConfig, load_config

console = Console(stderr=True, soft_wrap=True)

# option name -> dotted config field; the same options on every command that builds a config
_OVERRIDES = {
    "model": "model",
    "adapter": "adapter",
    "quantization": "quantization",
    "decode": "decode",
    "engine": "batching.engine",
    "device": "device",
    "torch_threads": "torch_threads",
    "max_new_tokens": "generation.max_new_tokens",
    "max_batch": "batching.max_batch",
    "max_wait_ms": "batching.max_wait_ms",
    "max_queue": "batching.max_queue",
    "timeout_s": "timeout_s",
    "log_prompts": "log_prompts",
    "upstream": "upstream",
    "upstream_model": "upstream_model",
}


def _config_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """-c CONFIG plus the common overrides; the command receives the loaded ServeConfig."""
    options = [
        click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                     help=f"Server config YAML (see `distill-serve config`). Env: {CONFIG_ENV}."),
        click.option("--model", help="Merged model dir, or the base model for --adapter [default: embedded SmolLM2]."),
        click.option("--upstream", help="Answer through this OpenAI-compatible engine (vLLM, SGLang, ...: its …/v1 URL) "
                                        "instead of loading a model here."),
        click.option("--upstream-model", help="The model name the upstream serves [default: the first of its /models]."),
        click.option("--adapter", help="LoRA adapter dir (from finetune) to apply on --model."),
        click.option("--quantization", type=click.Choice(["none", "int8", "int4"]),
                     help="Load quantized (bitsandbytes)."),
        click.option("--decode", type=click.Choice(["eager", "compiled"]),
                     help="compiled: static KV cache + torch.compile for one-request decode (GPU) [default: eager]."),
        click.option("--device", help="cuda, cuda:1, cpu ... [default: auto]."),
        click.option("--torch-threads", type=click.IntRange(min=1), help="torch CPU threads [default: all cores]."),
        click.option("--max-new-tokens", type=click.IntRange(min=1), help="Longest answer, in tokens."),
        click.option("--engine", type=click.Choice(["static", "continuous"]),
                     help="static: one generate call per batch; continuous: rows join and leave between decode "
                          "steps, prompt prefixes are shared, /v1 streams [default: static]."),
        click.option("--max-batch", type=click.IntRange(min=1), help="Requests per generate call (1 = no batching)."),
        click.option("--max-wait-ms", type=click.FloatRange(min=0), help="Wait for batch companions this long."),
        click.option("--max-queue", type=click.IntRange(min=1), help="Waiting requests beyond this get 503."),
        click.option("--timeout-s", type=click.FloatRange(min=0, min_open=True),
                     help="Per-request timeout (then 504)."),
        click.option("--log-prompts", is_flag=True, default=None, help="Log prompt and answer text (off by default)."),
    ]

    @functools.wraps(fn)
    def wrapper(config_path: Path | None, **kwargs: Any) -> Any:
        overrides = {_OVERRIDES[k]: kwargs.pop(k) for k in list(kwargs) if k in _OVERRIDES}
        try:
            config = load_config(config_path, overrides)
            config.check()
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from exc
        return fn(config=config, config_path=config_path, overrides=overrides, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


@click.group(cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Serve a distilled model: POST /algorithm/ChatRest (the apps' envelope, early exit at
    '####') and an OpenAI-compatible POST /v1/chat/completions, with health checks and metrics.

    Production: `distill-serve gunicorn`. Development: `distill-serve run`.
    """


@main.command("run")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@_config_options
def run_cmd(config: ServeConfig, host: str, port: int, **_: Any) -> None:
    """Flask's development server (one process, threaded), for trying things out.

    Not for production: use `distill-serve gunicorn`.
    """
    from .app import create_app  # imports torch: only when serving

    app = create_app(config)
    console.print(f"development server on http://{host}:{port} (POST /algorithm/ChatRest); the model loads in "
                  f"the background: GET /readyz")
    app.run(host=host, port=port, threaded=True)


@main.command("gunicorn", context_settings={"ignore_unknown_options": True})
@click.option("-b", "--bind", default="0.0.0.0:8000", show_default=True, help="Address to listen on.")
@click.option("--dry-run", is_flag=True, help="Print the gunicorn command and environment; run nothing.")
@_config_options
@click.argument("gunicorn_args", nargs=-1, type=click.UNPROCESSED)
def gunicorn_cmd(config: ServeConfig, config_path: Path | None, overrides: dict[str, Any], bind: str,
                 dry_run: bool, gunicorn_args: tuple[str, ...]) -> None:
    """The production server: gunicorn, one worker process holding one model, gthread workers
    sized so that excess load is refused by the bounded queue (503) instead of piling up.

    Options after `--` go to gunicorn as they are, e.g. `-- --access-logfile -`.
    Scale out with more replicas (one per GPU), not more workers per process.
    """
    env: dict[str, str] = {}
    if config_path is not None:
        env[CONFIG_ENV] = str(config_path.resolve())
    for dotted, value in overrides.items():
        if value is not None:
            env[ENV_PREFIX + dotted.upper().replace(".", "__")] = str(value)
    argv = [
        sys.executable, "-m", "gunicorn",
        "--worker-class", "gthread", "--workers", "1", "--threads", str(config.gunicorn_threads()),
        "--bind", bind,
        # The worker heartbeats from its main loop while requests wait on the model, so this
        # only catches a wedged process; keep it above timeout_s anyway.
        "--timeout", str(int(max(120, config.timeout_s * 2))),
        "--graceful-timeout", str(int(config.timeout_s + 5)),  # let in-flight answers finish
    ]
    if _gunicorn_has("control_socket_disable"):
        # gunicorn >= 25.1 opens a control socket at one fixed path per user: a second server
        # on the host (a replica, a test) would take it over. Nothing here uses it.
        argv.append("--no-control-socket")
    argv += [*gunicorn_args, "serve.app:create_app()"]
    shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    console.print(f"{shown + ' ' if shown else ''}{shlex.join(argv)}")
    if dry_run:
        return
    os.execve(sys.executable, argv, {**os.environ, **env})


def _gunicorn_has(setting: str) -> bool:
    from gunicorn.config import KNOWN_SETTINGS

    return any(s.name == setting for s in KNOWN_SETTINGS)


@main.command("config")
@_config_options
def config_cmd(config: ServeConfig, **_: Any) -> None:
    """Print the effective configuration as YAML (a starting point for -c FILE).

    The API key is never part of it: it is read from the variable named by api_key_env.
    """
    click.echo(yaml.safe_dump(config.model_dump(), sort_keys=False, allow_unicode=True), nl=False)
