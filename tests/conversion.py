"""The "Input conversion" tables (docs/input.md), parsed: the reference the codec tests
compare with.

Nothing here imports app/: what an input becomes is read from the documentation's words and
formulas (evaluated as written), so a test that compares app/ with `documented_x`
checks the code against its documentation, row by row.
"""

from __future__ import annotations

import re
from functools import cache

import numpy as np
from app_support import ROOT
from PIL import Image

INPUT_PAGE = ROOT / "docs" / "input.md"
CHANNELS = {"L": 1, "L, A": 2, "R, G, B": 3, "R, G, B, A": 4}
READ_AS = {count: names for names, count in CHANNELS.items()}


def section(heading: str) -> str:
    """The text under a heading of docs/input.md (any level), up to the next heading."""
    text = INPUT_PAGE.read_text()
    match = re.search(rf"^#+ {re.escape(heading)}\n(.*?)(?=^#+ |\Z)", text, re.M | re.S)
    assert match, f"docs/input.md has no section {heading!r}"
    return match[1]


def tables(heading: str) -> list[list[dict[str, str]]]:
    """Every markdown table of a section, as rows of {header: cell}."""
    found = []
    for block in re.findall(r"((?:^\|.*\|\n)+)", section(heading), re.M):
        lines = [
            [cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in block.splitlines()
        ]
        header, rows = lines[0], lines[2:]  # lines[1] is the --- rule
        found.append([dict(zip(header, row, strict=True)) for row in rows])
    return found


def table(heading: str, first_column: str) -> list[dict[str, str]]:
    """The table of a section whose first column is named `first_column`."""
    for rows in tables(heading):
        if rows and next(iter(rows[0])) == first_column:
            return rows
    raise AssertionError(f"no table starting with column {first_column!r} under {heading!r}")


def code(cell: str) -> str:
    """The first `backticked` text of a cell."""
    match = re.search(r"`([^`]+)`", cell)
    assert match, f"no `code` in {cell!r}"
    return match[1]


def read_as(cell: str) -> str:
    """The channel names a cell starts with: "L", "L, A", "R, G, B" or "R, G, B, A"."""
    match = re.match(r"[LRGBA](?:, [LRGBA])*", cell)
    assert match and match[0] in CHANNELS, f"{cell!r} does not start with channel names"
    return match[0]


@cache
def formulas() -> dict[tuple[str, int], str]:
    """{(read as, model channels): the documented formula as Python}."""
    found = {}
    for row in table("Input conversion", "read as"):
        for channels, column in ((1, "grey model (C = 1)"), (3, "RGB model (C = 3)")):
            python = code(row[column]).replace("·", "*").replace("²", "**2")
            python = re.sub(r"\(([A-Z](?:, [A-Z])+)\)", r"np.stack([\1])", python)
            found[(row["read as"], channels)] = python
    assert set(found) == {(names, c) for names in CHANNELS for c in (1, 3)}, found
    return found


def documented_x(pixels: np.ndarray, full_scale: float, channels: int) -> np.ndarray:
    """(C, H, W) channels on their full scale -> the x (channels, H, W) docs/input.md promises."""
    names = READ_AS[len(pixels)].split(", ")
    values = {name: plane.astype(np.float64) for name, plane in zip(names, pixels, strict=True)}
    python = formulas()[(READ_AS[len(pixels)], channels)]
    x = np.asarray(eval(python, {"np": np}, {**values, "S": float(full_scale)}))  # the documented
    return x[None] if x.ndim == 2 else x


# Full scale of an 8-bit mode's channels; 16-bit and float modes are read without conversion.
_PILLOW_MODE = {"L": "L", "L, A": "LA", "R, G, B": "RGB", "R, G, B, A": "RGBA"}


@cache
def mode_rows() -> dict[str, dict[str, str]]:
    """{Pillow mode: its row of the documented table of image modes}."""
    return {code(row["mode"]): row for row in table("Input conversion", "mode")}


def file_channels(image: Image.Image) -> tuple[np.ndarray, float]:
    """What docs/input.md says a decoded file is read as: (C, H, W) channels and S."""
    row = mode_rows()[image.mode]
    names, full = read_as(row["read as"]), float(row["S"].split()[0])
    if full == 255:
        pixels = np.asarray(image.convert(_PILLOW_MODE[names]))
    else:  # 16 bits and floats: the values themselves
        pixels = np.asarray(image).astype(np.float64)
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    return pixels.transpose(2, 0, 1), full


def documented_file_x(image: Image.Image, channels: int) -> np.ndarray:
    """The x (channels, H, W) docs/input.md promises for a decoded, upright image."""
    pixels, full = file_channels(image)
    return documented_x(pixels, full, channels)
