"""The process's log: one handler on stderr for every logger (uvicorn's too), as text or JSON.

VAE_LOG_FORMAT=text (the default) writes readable lines; json writes one JSON object
per line, what log collectors (Loki, Fluent Bit, Cloud Logging) parse without a
pattern. Either way a line written while a request is served carries its request id
and the model version that answers (app.context), and errors carry their traceback:
in JSON as the `traceback` field, so that one error stays one line.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from app.context import request_id, served

LogFormat = Literal["text", "json"]

# What a LogRecord holds of its own; anything else on it came as `extra=` and is logged.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's coloured copy of the message
    "request_id",
    "model",
    "version",
}


class RequestContext(logging.Filter):
    """Stamps each record with the request id and model version of the request that
    the running task serves (None outside requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        model = served.get()
        record.model, record.version = model if model else (None, None)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, the
    request's id and model version when there is one, `extra=` fields, traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "model", "version"):
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        for key, value in vars(record).items():
            if key not in _STANDARD:
                entry[key] = value
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """The usual line, and the request id at its end when a request is being served."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", None)
        if rid is None or record.name == ACCESS:  # an access line says it in its own words
            return line
        first, newline, rest = line.partition("\n")  # before a traceback, if any
        return f"{first} [request {rid}]{newline}{rest}"


ACCESS = "vae.access"  # the logger of access lines (uvicorn's own are turned off)


def configure(level: str, fmt: LogFormat) -> None:
    """Route every logger to one stderr handler in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestContext())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
