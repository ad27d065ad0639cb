"""serve's configuration (YAML, environment, overrides) and its command line; no model needed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from serve.cli import main
from serve.config import TRAINED_PROMPT_FILE, ConfigError, ServeConfig, env_overrides, load_config


def test_defaults_are_safe() -> None:
    config = load_config(environ={})
    assert config.model is None and config.quantization == "none"
    assert config.generation.temperature == 0.0  # greedy: the same prompt gets the same answer
    assert config.separator == "####" and config.log_prompts is False
    assert config.batching.max_queue >= 1 and config.timeout_s > 0
    assert config.api_key_env == "DISTILL_SERVE_API_KEY"


def test_yaml_then_environment_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("quantization: int8\nbatching: {max_batch: 4, max_queue: 10}\ngeneration: {max_new_tokens: 64}\n")
    env = {"DISTILL_SERVE_CONFIG": str(path), "DISTILL_SERVE_BATCHING__MAX_BATCH": "8",
           "DISTILL_SERVE_LOG_PROMPTS": "true", "DISTILL_SERVE_ADAPTER": "",  # empty = unset
           "DISTILL_SERVE_API_KEY": "sk-secret"}  # the key itself: never a config field
    config = load_config(None, {"batching.max_queue": 3, "timeout_s": None}, environ=env)
    assert config.quantization == "int8"  # the file
    assert config.batching.max_batch == 8  # the environment beats the file
    assert config.batching.max_queue == 3  # an explicit override beats both
    assert config.generation.max_new_tokens == 64 and config.log_prompts is True
    assert config.adapter is None and config.timeout_s == 60.0
    assert env_overrides(env) == {"batching.max_batch": "8", "log_prompts": "true"}
    assert "sk-secret" not in repr(config.model_dump())


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DISTILL_SERVE_QUANTIZATION": "int3"}, "quantization"),
        ({"DISTILL_SERVE_BATCHING__MAX_BATCH": "0"}, "batching.max_batch"),
        ({"DISTILL_SERVE_MAX_BATCH": "4"}, "max_batch"),  # a nested field set at the top level
        ({"DISTILL_SERVE_BATCHING": "4"}, "batching"),
        ({"DISTILL_SERVE_TIMEOUT_S": "soon"}, "timeout_s"),
    ],
)
def test_bad_settings_name_the_source_and_the_field(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load_config(environ=env)
    assert "environment" in str(err.value)


def test_a_missing_file_or_dir_or_base_model_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml", environ={})
    with pytest.raises(ConfigError, match=r"model: .* is not a directory"):
        ServeConfig(model=str(tmp_path / "nope")).check()
    with pytest.raises(ConfigError, match="adapter: needs model"):
        ServeConfig(adapter=str(tmp_path)).check()
    ServeConfig(model=str(tmp_path), adapter=str(tmp_path)).check()


def test_gunicorn_has_a_thread_for_every_request_the_queue_may_hold() -> None:
    config = ServeConfig.model_validate({"batching": {"max_batch": 8, "max_queue": 20}})
    assert config.gunicorn_threads() > 28


def test_every_command_has_help() -> None:
    runner = CliRunner()
    for args in ([], ["run"], ["gunicorn"], ["config"]):
        result = runner.invoke(main, [*args, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, result.output
    # The module entry point is wired too (a real process, as a user would start it).
    out = subprocess.run([sys.executable, "-m", "serve", "--help"], capture_output=True, text=True, check=True)
    assert "ChatRest" in out.stdout


def test_config_command_prints_usable_yaml(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["config", "--max-batch", "4", "--quantization", "int4"], env={})
    assert result.exit_code == 0, result.output
    path = tmp_path / "serve.yaml"
    path.write_text(result.output)
    config = load_config(path, environ={})
    assert config.batching.max_batch == 4 and config.quantization == "int4"
    assert yaml.safe_load(result.output)["api_key_env"] == "DISTILL_SERVE_API_KEY"


def test_gunicorn_command_passes_the_config_through_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("batching: {max_queue: 10, max_batch: 2}\n")
    result = CliRunner().invoke(main, ["gunicorn", "--dry-run", "-c", str(path), "--quantization", "int8",
                                       "-b", "127.0.0.1:9000", "--", "--access-logfile", "-"], env={})
    assert result.exit_code == 0, result.output
    line = result.output.strip().splitlines()[-1]
    assert f"DISTILL_SERVE_CONFIG={path}" in line and "DISTILL_SERVE_QUANTIZATION=int8" in line
    assert "--workers 1" in line and "--threads 20" in line and "--worker-class gthread" in line
    assert line.endswith("--access-logfile - 'serve.app:create_app()'")
    assert "--preload" not in line


def test_a_bad_option_is_a_clear_error_not_a_traceback() -> None:
    result = CliRunner().invoke(main, ["config", "--model", "/no/such/model"], env={})
    assert result.exit_code != 0
    assert "model: /no/such/model is not a directory" in result.output and "Traceback" not in result.output


def test_system_prompt_defaults_to_the_one_finetune_trained_with(tmp_path):
    model, adapter = tmp_path / "base", tmp_path / "adapter"
    model.mkdir()
    adapter.mkdir()
    assert ServeConfig(model=str(model)).trained_system_prompt() is None
    (model / TRAINED_PROMPT_FILE).write_text(json.dumps({"template": "qwen", "system": "BASE-SYS"}), encoding="utf-8")
    assert ServeConfig(model=str(model)).trained_system_prompt() == "BASE-SYS"
    (adapter / TRAINED_PROMPT_FILE).write_text(json.dumps({"template": "qwen", "system": "ADAPTER-SYS"}), encoding="utf-8")
    assert ServeConfig(model=str(model), adapter=str(adapter)).trained_system_prompt() == "ADAPTER-SYS"
    assert ServeConfig(model=str(model), system_prompt="Be brief.").trained_system_prompt() == "Be brief."
    (adapter / TRAINED_PROMPT_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="distillery_prompt.json"):
        ServeConfig(model=str(model), adapter=str(adapter)).trained_system_prompt()
