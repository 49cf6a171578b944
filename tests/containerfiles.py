"""Readers for the Dockerfile and the compose file, for tests that have no Docker engine."""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_FILE = ROOT / "docker-compose.yml"


def venv_tool(name: str) -> Path:
    """A console script installed beside this interpreter (the dev extra's tools)."""
    path = Path(sys.executable).parent / name
    assert path.is_file(), f"{name} is not in {path.parent}: pip install -e '.[dev]'"
    return path


@dataclass
class Stage:
    """One FROM … AS name block: its base image and its instructions, in order."""

    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]

    def copied_from(self) -> list[str]:
        """Stages this one copies files out of (COPY --from=…)."""
        return [
            word.split("=", 1)[1]
            for args in self.args("COPY")
            for word in args.split()
            if word.startswith("--from=")
        ]


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        result.append((keyword.upper(), " ".join(rest.split())))
        pending = ""
    return result


def dockerfile_stages(text: str | None = None) -> tuple[dict[str, str], list[Stage]]:
    """The global ARG defaults and the build stages of the Dockerfile, in order."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, rest in instructions(DOCKERFILE.read_text() if text is None else text):
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            base = words[0]
            for arg, default in global_args.items():
                base = base.replace("${" + arg + "}", default)
            stages.append(Stage(name, base))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
        elif keyword == "ARG":
            arg, _, default = rest.partition("=")
            global_args[arg] = default
    return global_args, stages


def stage(name: str) -> Stage:
    matches = [s for s in dockerfile_stages()[1] if s.name == name]
    assert matches, f"the Dockerfile has no stage {name!r}"
    return matches[0]


def build_chain(name: str) -> list[Stage]:
    """A stage and every stage it copies from, transitively: all that makes its image."""
    chain = [stage(name)]
    for parent in chain[0].copied_from():
        chain += build_chain(parent)
    return chain


def copy_sources(target: Stage) -> list[str]:
    """The build-context paths a stage COPYs in (not those from other stages)."""
    sources: list[str] = []
    for args in target.args("COPY"):
        words = shlex.split(args)
        if any(word.startswith("--from=") for word in words):
            continue
        words = [word for word in words if not word.startswith("--")]
        sources += words[:-1]
    return sources


def exec_form(args: str) -> list[str]:
    """A CMD, ENTRYPOINT or HEALTHCHECK CMD in exec (JSON) form."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(word, str) for word in value), args
    return value


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict), f"{path} is not a mapping"
    return document
