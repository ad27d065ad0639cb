"""The house rules, checked on the source: the import graph (stages point only at the core, the core
at no stage, serve at nothing but the core), one module with SQL, test doubles outside the product,
and a public API named in every package's __init__."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = "distillery"
STAGES = ("annotate", "qc", "finetune", "serve")
PACKAGES = (CORE, *STAGES)


def imported_packages(path: Path) -> set[str]:
    """Top-level project packages a module imports, anywhere in it (lazy imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & {*PACKAGES, "doubles", "tests", "helpers", "examples"}


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {p: set() for p in PACKAGES}
    for package in PACKAGES:
        for module in (ROOT / package).rglob("*.py"):
            edges[package] |= imported_packages(module) - {package}
    return edges


def test_stages_import_only_the_core_and_the_core_no_stage() -> None:
    edges = graph()
    assert edges[CORE] == set(), f"the core imports {edges[CORE]}"
    for stage in STAGES:
        assert edges[stage] <= {CORE}, f"{stage} imports {edges[stage] - {CORE}}"
    assert edges["serve"] == {CORE}


def test_the_checker_sees_a_stage_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from annotate.runner import plan\n    import qc.cli\n", encoding="utf-8")
    assert imported_packages(module) == {"annotate", "qc"}


def test_only_the_store_writes_sql() -> None:
    offenders = []
    for package in PACKAGES:
        for module in (ROOT / package).rglob("*.py"):
            text = module.read_text(encoding="utf-8")
            if module != ROOT / CORE / "store.py" and (".execute(" in text or "executescript" in text or "sqlite3" in text):
                offenders.append(str(module.relative_to(ROOT)))
    assert offenders == []


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_names_its_public_api(package: str) -> None:
    init = ROOT / package / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
    assert doc, f"{package}/__init__.py has no docstring"
    modules = {p.stem for p in (ROOT / package).glob("*.py") if not p.stem.startswith("_")}
    named = {word.split(".")[0] for line in doc.splitlines() for word in line.split()[:1]}
    # The modules a reader needs first are named (the rest are their helpers), and only real ones.
    listed = named & modules
    assert len(listed) >= min(6, len(modules)), f"{package}/__init__.py names only {sorted(listed)}"


def test_test_doubles_stay_out_of_the_product() -> None:
    assert not (ROOT / "annotate" / "fakeserver.py").exists()
    for package in PACKAGES:
        for module in (ROOT / package).rglob("*.py"):
            assert not imported_packages(module) & {"doubles", "tests", "helpers"}, module
