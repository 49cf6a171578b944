"""A JSON body's cost, counted in its bytes before it is parsed.

Parsing JSON builds a Python object per value and per list, and orjson does it in one
call that holds the GIL: 15 MB of `[[],[],…]` (5 M empty lists) took 3.5-9 s, and
15 MB of zeros 1 s to parse and 1.8 s more to become an array, while the event loop
(and with it /healthz and /readyz) waited. Moving the parse to a worker thread does
not help: the loop needs the GIL too. So a JSON body is refused (413) before it is
parsed when its bytes say it holds too many values (a comma separates each from the
next) or too many lists and objects. Counting a byte runs at memory speed.

JSON is for small requests and for base64 image files (a few strings, however long);
arrays in bulk go as .npy bodies or the v2 protocol's binary tensor data, which are
read in place.
"""

from __future__ import annotations

from app.errors import PayloadTooLarge

# 256 MNIST images are 200,704 values; the bound keeps one parse to about 0.1 s.
MAX_JSON_VALUES = 2**20
# Nested pixels hold one list per row: 256 images of 3×64×64 are 49,409 lists.
MAX_JSON_CONTAINERS = 2**16


def check_json_cost(body: bytes, end: int | None = None, *, bulk: str) -> None:
    """Refuse `body[:end]` before parsing when it holds more values or lists and objects
    than a parse may build; `bulk` names what to send instead."""
    end = len(body) if end is None else end
    values = body.count(b",", 0, end) + 1
    if values > MAX_JSON_VALUES:
        raise PayloadTooLarge(
            f"the JSON holds over {MAX_JSON_VALUES} values (it has {values - 1} commas); "
            f"send arrays this large as {bulk}"
        )
    containers = body.count(b"[", 0, end) + body.count(b"{", 0, end)
    if containers > MAX_JSON_CONTAINERS:
        raise PayloadTooLarge(
            f"the JSON holds {containers} lists and objects; at most {MAX_JSON_CONTAINERS} "
            f"are read: send arrays this large as {bulk}"
        )
