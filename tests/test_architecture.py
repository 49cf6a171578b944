"""The layout a newcomer relies on: the service and the trainer share only vae_contract.

Checked on the import statements of every module (ast), so a lazy import inside a
function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_packages(package: str) -> dict[str, set[str]]:
    """{module file: top-level packages it imports} for every module of `package`."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("app", {"torch", "trainer"}),  # serving installs without torch
        ("trainer", {"app"}),
        ("vae_contract", {"torch", "app", "trainer"}),  # the shared part depends on neither
    ],
)
def test_packages_import_only_what_the_layout_allows(package: str, forbidden: set[str]) -> None:
    modules = imported_packages(package)
    assert modules, f"no modules found in {package}/"
    offending = {
        module: names & forbidden for module, names in modules.items() if names & forbidden
    }
    assert not offending, f"{package}/ must not import {sorted(forbidden)}: {offending}"


def test_both_sides_use_the_contract() -> None:
    for package in ("app", "trainer"):
        users = [m for m, names in imported_packages(package).items() if "vae_contract" in names]
        assert users, f"{package}/ no longer imports vae_contract: is a concept written twice?"
