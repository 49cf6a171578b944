"""What the process knows of the request it is serving: its id, and the model that answers.

Both are context variables, so that whatever runs in the request's task (the handler,
the log lines it writes, the gRPC interceptor after the call) reads them without their
being passed along. asyncio gives each task a copy of the context it was created in:
uvicorn and grpcio run each request in a task of its own, and a value one request sets
is never seen by another.
"""

from __future__ import annotations

import random
import re
from contextvars import ContextVar

# The request's id: the caller's X-Request-ID (or gRPC's x-request-id), else a new one.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
# (model, version) of the model version that answers: set when it is leased.
served: ContextVar[tuple[str, str] | None] = ContextVar("served", default=None)

# What an incoming id may be: it lands in log lines and response headers, so no
# spaces, quotes or control characters, and a bound on its length (a UUID is 36).
_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
_bits = random.Random().getrandbits


def new_id() -> str:
    """128 random bits in hex, the shape of a W3C trace id. Python's generator (seeded
    from os.urandom) is enough: an id must be unique, not secret; it costs half a
    system call for os.urandom and a seventh of uuid4 (bench/observe_cost.py)."""
    return f"{_bits(128):032x}"


def accept_id(given: str | bytes | None) -> str:
    """The caller's id when it is a sane one, else a new id."""
    if given is not None:
        text = given.decode("latin-1") if isinstance(given, bytes) else given
        if _ID.fullmatch(text):
            return text
    return new_id()
