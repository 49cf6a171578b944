"""MkDocs hooks: the pages that are generated from the code when the site is built.

- `<!-- generated: settings -->` becomes the table of every `VAE_*` setting, read from
  `app.config.Settings` (name, type, default, limits, description);
- `<!-- generated: openapi -->` becomes the HTTP reference, read from the schema that
  `app.main.create_app` serves at /openapi.json, plus the routes it leaves out of it;
- `openapi.json` is written beside the pages;
- the measurement reports of `bench/` (`*.md`) become pages under `bench/`, and
  `<!-- generated: reports -->` the list of them, with their titles, so that a new
  report is on the site as soon as it is committed.

So a new setting or route cannot go undocumented, and the reference cannot drift from
the code. Nothing is fetched: the app is built in this process and never started.
mkdocs.yml names this file under `hooks:`; MkDocs loads it by path, not as a package.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from fastapi import FastAPI
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files, InclusionLevel
from mkdocs.structure.pages import Page
from pydantic.fields import FieldInfo
from starlette.routing import BaseRoute, Mount

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!-- generated: (?P<what>[a-z]+) -->$", re.MULTILINE)
METHODS = ("get", "post", "put", "delete", "patch")


# -- the settings ------------------------------------------------------------------------


def _type_name(annotation: Any) -> str:
    """A reader's name for a setting's type: `one of a, b`, `integer`, `secret`, ..."""
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(f"`{value}`" for value in get_args(annotation))
    if get_origin(annotation) in (Union, UnionType):
        names = [_type_name(arg) for arg in get_args(annotation) if arg is not type(None)]
        return " or ".join(names)
    plain: dict[Any, str] = {int: "integer", float: "number", bool: "`true` or `false`"}
    if annotation in plain:
        return plain[annotation]
    if annotation is str:
        return "string"
    if annotation is Path:
        return "path"
    if getattr(annotation, "__name__", "") == "SecretStr":
        return "string (secret)"
    return f"`{getattr(annotation, '__name__', annotation)}`"


def _default(field: FieldInfo) -> str:
    value = field.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    return f"`{value}`"


def _limits(field: FieldInfo) -> str:
    """The bounds pydantic enforces (ge, gt, le, lt), as `≥ 1, ≤ 4096`."""
    signs = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    found = []
    for rule in field.metadata:
        for name, sign in signs.items():
            bound = getattr(rule, name, None)
            if bound is not None:
                found.append(f"{sign} {bound}")
    return ", ".join(found)


def settings_table() -> str:
    """Every field of app.config.Settings as a row; one without a description fails the build."""
    from app.config import Settings

    prefix = str(Settings.model_config.get("env_prefix", ""))
    rows = [
        "| variable | type | default | limits | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, field in Settings.model_fields.items():
        variable = f"{prefix}{name}".upper()
        if not field.description:
            raise PluginError(f"{variable} has no description in app/config.py: give it one")
        description = _cell(field.description)
        rows.append(
            f"| `{variable}` | {_type_name(field.annotation)} | {_default(field)} "
            f"| {_limits(field)} | {description} |"
        )
    return "\n".join(rows)


# -- the HTTP reference ------------------------------------------------------------------


def build_app() -> FastAPI:
    """The app as `vae-serve` builds it with the default settings, whatever this
    machine's VAE_* variables say (model_construct reads no environment)."""
    from app.config import Settings
    from app.main import create_app

    return create_app(Settings.model_construct())


def _schema_type(schema: dict[str, Any]) -> str:
    """A short, linked name for a JSON schema: `EncodeResponse`, array of number, ..."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return f"[`{name}`](#{name.lower()})"
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " or ".join(_schema_type(option) for option in schema[key])
    if "enum" in schema:
        return "one of " + ", ".join(f"`{value}`" for value in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_schema_type(schema.get('items', {}))}"
    if kind == "string" and schema.get("format") == "binary":
        return "file"
    return str(kind)


def _cell(text: Any) -> str:
    """Text for one cell of a Markdown table: one line, its pipes and angle brackets
    escaped (`<name>` is text here, not an HTML tag)."""
    line = " ".join(str(text).split())
    return line.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _operation(path: str, method: str, operation: dict[str, Any]) -> list[str]:
    lines = [f"### `{method.upper()} {path}`", ""]
    summary = operation.get("summary", "")
    description = operation.get("description", "")
    # FastAPI takes both from the docstring: a one-line docstring would be said twice.
    lines += [summary] if description in ("", summary) else [summary, "", description]
    lines.append("")
    parameters = operation.get("parameters", [])
    if parameters:
        lines += [
            "| parameter | in | type | default | meaning |",
            "| --- | --- | --- | --- | --- |",
        ]
        for parameter in parameters:
            schema = parameter.get("schema", {})
            default = f"`{json.dumps(schema['default'])}`" if "default" in schema else ""
            required = " (required)" if parameter.get("required") else ""
            lines.append(
                f"| `{parameter['name']}` | {parameter['in']}{required} | "
                f"{_schema_type(schema)} | {default} | "
                f"{_cell(parameter.get('description', schema.get('description', '')))} |"
            )
        lines.append("")
    body = operation.get("requestBody")
    if body:
        kinds = ", ".join(
            f"`{kind}` ({_schema_type(content.get('schema', {}))})"
            for kind, content in body.get("content", {}).items()
        )
        lines += [f"**Body**: {kinds}. {_cell(body.get('description', ''))}", ""]
    lines += ["| status | meaning | body |", "| --- | --- | --- |"]
    for status, response in operation.get("responses", {}).items():
        kinds = ", ".join(
            f"`{kind}`" + (f" ({_schema_type(content['schema'])})" if content.get("schema") else "")
            for kind, content in response.get("content", {}).items()
        )
        lines.append(f"| {status} | {_cell(response.get('description', ''))} | {kinds} |")
    return [*lines, ""]


def _schemas(components: dict[str, Any]) -> list[str]:
    lines = ["## Schemas", ""]
    for name, schema in sorted(components.items()):
        lines += [f"### {name}", ""]
        if schema.get("description"):
            lines += [_cell(schema["description"]), ""]
        properties = schema.get("properties", {})
        if properties:
            lines += ["| field | type | meaning |", "| --- | --- | --- |"]
            required = set(schema.get("required", []))
            for field, spec in properties.items():
                mark = "" if field in required else " (optional)"
                lines.append(
                    f"| `{field}`{mark} | {_schema_type(spec)} | "
                    f"{_cell(spec.get('description', ''))} |"
                )
            lines.append("")
        elif "enum" in schema:
            lines += [_schema_type(schema), ""]
    return lines


def _routes(routes: Iterable[BaseRoute], prefix: str = "") -> Iterator[tuple[str, BaseRoute]]:
    """(path, route) of every route, in order, inside included routers too: FastAPI
    0.16x keeps an included router whole (its `original_router`), older ones copy its
    routes into the app's list."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            context = getattr(route, "include_context", None)
            yield from _routes(included.routes, prefix + str(getattr(context, "prefix", "")))
        else:
            yield prefix + str(getattr(route, "path", "")), route


def _unlisted_routes(app: FastAPI) -> list[str]:
    """Routes that answer but stay out of the schema (the page, FastAPI's own docs,
    the protocol's catch-all), so that the reference names every path the app serves."""
    lines = [
        "## Routes outside the schema",
        "",
        "| path | methods | what |",
        "| --- | --- | --- |",
    ]
    # FastAPI's own routes have no docstring of ours to show.
    known = {
        app.openapi_url: "This schema, as JSON.",
        app.docs_url: "Interactive documentation (Swagger UI).",
        app.swagger_ui_oauth2_redirect_url: "Swagger UI's OAuth2 redirect.",
        app.redoc_url: "The same documentation as ReDoc.",
    }
    for path, route in _routes(app.routes):
        if getattr(route, "include_in_schema", False):
            continue
        methods = ", ".join(sorted(getattr(route, "methods", None) or ["GET"]))
        if isinstance(route, Mount):
            what = f"Static files, under the name `{getattr(route, 'name', '')}`."
        else:
            doc = getattr(getattr(route, "endpoint", None), "__doc__", None) or ""
            what = known.get(path) or (doc.strip().splitlines() or [""])[0]
        lines.append(f"| `{path}` | {methods} | {_cell(what)} |")
    return [*lines, ""]


def openapi_reference(schema: dict[str, Any], app: FastAPI) -> str:
    """The reference, grouped by the schema's tags, in the order the app declares."""
    by_tag: dict[str, list[str]] = {}
    for path, item in schema["paths"].items():
        for method in METHODS:
            if method in item:
                operation = item[method]
                tag = (operation.get("tags") or ["other"])[0]
                by_tag.setdefault(tag, []).extend(_operation(path, method, operation))
    lines = []
    for tag, operations in by_tag.items():
        lines += [f"## Routes tagged `{tag}`", "", *operations]
    lines += _unlisted_routes(app)
    lines += _schemas(schema.get("components", {}).get("schemas", {}))
    return "\n".join(lines)


# -- MkDocs events -----------------------------------------------------------------------


@dataclasses.dataclass
class _Build:
    """What this build generated: made once, when the files are listed, then read by
    each page that shows it."""

    app: FastAPI | None = None
    schema: dict[str, Any] = dataclasses.field(default_factory=dict)
    reports: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (page, title)


_build = _Build()


def _reports() -> list[tuple[Path, str]]:
    """bench/*.md with the title of each (its first `# ` heading, else its name)."""
    found = []
    for report in sorted((ROOT / "bench").glob("*.md")):
        heading = re.search(r"^# (.+)$", report.read_text(), re.MULTILINE)
        found.append((report, heading[1] if heading else report.name))
    return found


def reports_list() -> str:
    return "\n".join(f"- [{title}]({page}) (`{page}`)" for page, title in _build.reports)


def on_files(files: Files, config: MkDocsConfig) -> Files:
    _build.app = build_app()
    _build.schema = _build.app.openapi()
    text = json.dumps(_build.schema, indent=2, ensure_ascii=False) + "\n"
    files.append(File.generated(config, "openapi.json", content=text))
    _build.reports = []
    for report, title in _reports():
        page = f"bench/{report.name}"
        # Linked from benchmarks.md rather than listed in the navigation one by one.
        inclusion = InclusionLevel.NOT_IN_NAV
        files.append(File.generated(config, page, abs_src_path=str(report), inclusion=inclusion))
        _build.reports.append((page, title))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    def generated(match: re.Match[str]) -> str:
        what = match["what"]
        if what == "settings":
            return settings_table()
        if what == "openapi" and _build.app is not None:
            return openapi_reference(_build.schema, _build.app)
        if what == "reports":
            return reports_list()
        raise PluginError(f"{page.file.src_uri}: nothing generates {match[0]}")

    return MARKER.sub(generated, markdown)
