"""JSON-lines logging: one object per line, UTC ISO-8601 timestamps, the request id when there is one."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

# Set by the access middleware for the duration of a request; the worker thread passes ids explicitly.
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

PROJECT_LOGGER = "opea_media"
# Chatty libraries stay at WARNING or above even when the service itself logs at DEBUG.
THIRD_PARTY_LOGGERS = (
    "aiohttp",
    "asyncio",
    "diffusers",
    "transformers",
    "huggingface_hub",
    "urllib3",
    "filelock",
    "PIL",
    "torch",
    "accelerate",
    "httpx",
    "httpcore",
)

# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """What came into a record through `extra=`."""
    return {key: value for key, value in vars(record).items() if key not in _STANDARD_ATTRS}


def utc_timestamp(created: float) -> str:
    return datetime.fromtimestamp(created, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON; `extra=` fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": utc_timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in extra_fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a stray non-JSON value in `extra` must not lose the whole line.
        return json.dumps(entry, default=str, ensure_ascii=False)


def quiet_progress_bars() -> None:
    """tqdm bars (model loading, shard writing) would put non-JSON lines on stderr."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def configure_logging(level: str, *, stream: TextIO | None = None) -> None:
    """Route every logger (warnings too) through one JSON handler; replaces earlier handlers."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    own_level = logging.getLevelName(level.upper())
    logging.getLogger(PROJECT_LOGGER).setLevel(own_level)
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, own_level))
    logging.captureWarnings(True)
    quiet_progress_bars()
