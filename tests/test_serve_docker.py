"""docker/ checked without a Docker engine: pinned bases, COPY sources that exist and survive the
.dockerignore, constraints that match pyproject's pins, and compose settings that are real
server config fields. (hadolint and `docker compose config` are run by hand: docker/README.md.)"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from serve.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def constraints() -> dict[str, str]:
    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_there_are_the_two_images() -> None:
    assert [p.name for p in DOCKERFILES] == ["serve.Dockerfile", "tools.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned_and_copies_exist_in_the_context(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    args = {}
    for word, rest in steps:
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
    for word, rest in steps:
        if word == "FROM":
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), rest.split()[0])
            assert re.search(r":\d[\w.-]*$", image), f"{dockerfile.name}: FROM {image} is not pinned to a version"
    ignore = [line for line in (DOCKER / f"{dockerfile.name}.dockerignore").read_text().splitlines()
              if line and not line.startswith("#")]
    allowed = [p[1:].rstrip("/") for p in ignore if p.startswith("!")]
    assert ignore[0] == "*", "the context is an allow-list: everything else (.venv!) stays out"
    copies = [rest.split() for word, rest in steps if word == "COPY" and not rest.startswith("--from")]
    assert copies
    for *sources, _ in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such path in the repository"
            allowed_here = any(fnmatch.fnmatch(source.rstrip("/"), a) for a in allowed)
            assert allowed_here, f"{dockerfile.name}: COPY {source} is excluded by its .dockerignore"
    assert any(word == "USER" and rest != "root" and rest != "0" for word, rest in steps), "runs as root"


def test_constraints_pin_what_pyproject_pins() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = constraints()
    for requirement in project["optional-dependencies"]["model"]:
        name, _, version = requirement.partition("==")
        if version:
            pinned = pins.get(name.lower())
            assert pinned == version, f"docker/constraints.txt has {name} {pinned}, pyproject.toml {version}"
    for requirement in project["dependencies"] + project["optional-dependencies"]["serve"]:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in docker/constraints.txt"


def _interpolate(value: str) -> str | None:
    """Compose's ${VAR:-default} with nothing set: the default; ${VAR:?error}: None (must be set)."""
    if re.search(r"\$\{\w+:\?", value):
        return None
    return re.sub(r"\$\{\w+(?::-([^}]*))?\}", lambda m: m.group(1) or "", value)


def test_compose_services_build_these_images_with_real_config_fields() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"serve", "tools"}
    for name, service in services.items():
        build = service["build"]
        assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKER / f"{name}.Dockerfile"
        assert re.search(r":\d", service["image"])
    serve = services["serve"]
    environment = {k: _interpolate(v) for k, v in serve["environment"].items()}
    # Every DISTILL_SERVE_* variable must be one the server reads (a typo would be ignored by
    # Docker and rejected here), and the defaults must make a valid config.
    config = load_config(environ={k: v for k, v in environment.items() if v is not None})
    assert config.model == "/models" and config.adapter is None and config.quantization == "none"
    assert serve["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "/models:ro" in serve["volumes"][0]


def test_the_serve_image_carries_only_the_core_and_serve() -> None:
    copied = [rest.split()[0] for word, rest in instructions(DOCKER / "serve.Dockerfile")
              if word == "COPY" and not rest.startswith("--from")]
    packages = {c.rstrip("/") for c in copied if (ROOT / c).is_dir() and (ROOT / c / "__init__.py").is_file()}
    assert packages == {"distillery", "serve"}
    installs = " ".join(rest for word, rest in instructions(DOCKER / "serve.Dockerfile") if word == "RUN")
    assert '".[serve]"' in installs and "llamafactory" not in installs
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    serve_deps = " ".join(project["dependencies"] + project["optional-dependencies"]["serve"])
    for other in ("pypdfium2", "python-docx", "openpyxl", "datasketch", "llamafactory"):
        assert other not in serve_deps, f"{other} would be installed into the serve image"
