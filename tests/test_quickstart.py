"""The README's Quick start: two commands, and CI runs the second one as written."""

from __future__ import annotations

import re

from containerfiles import ROOT


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^## Quick start\n(.*?)^## ", readme, re.MULTILINE | re.DOTALL)
    assert match, "README.md has no '## Quick start' section"
    blocks = re.findall(r"```sh\n(.*?)```", match.group(1), re.DOTALL)
    return [line.strip() for block in blocks for line in block.strip().splitlines()]


def test_quick_start_has_a_serve_command_and_a_test_command() -> None:
    serve, test = quick_start_commands()
    assert serve == "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/vae-serve"
    assert "pip install -e '.[train,dev]'" in test
    assert test.endswith(".venv/bin/pytest")


def test_ci_runs_the_readme_test_command_as_written() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    match = re.search(r'^test_command="(.*)"$', script, re.MULTILINE)
    assert match, ".ci/run sets no test_command"
    assert match.group(1) == quick_start_commands()[1]
    assert 'bash -c "$test_command"' in script
