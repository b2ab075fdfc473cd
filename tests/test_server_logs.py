"""JSON-lines logging: one parsable object per line, UTC timestamps, request ids, quiet libraries."""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from opea_media.models.registry import tame_libraries
from opea_media.server.logs import JsonFormatter, configure_logging, request_id_var


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state; put it back for the other tests."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    names = ("opea_media", "aiohttp", "diffusers", "transformers", "py.warnings")
    levels = {name: logging.getLogger(name).level for name in names}
    libraries = {
        name: (list(logging.getLogger(name).handlers), logging.getLogger(name).propagate) for name in names
    }
    saved_env = {name: os.environ.get(name) for name in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)
    for name, (library_handlers, propagate) in libraries.items():
        logging.getLogger(name).handlers[:] = library_handlers
        logging.getLogger(name).propagate = propagate
    logging.captureWarnings(False)
    for name, value in saved_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def record(message: str = "hello %s", *args: Any, **extra: Any) -> logging.LogRecord:
    made = logging.getLogger("opea_media.test").makeRecord(
        "opea_media.test", logging.INFO, __file__, 1, message, args, None, extra=extra
    )
    made.created = 1_800_000_000.5
    return made


def test_a_record_is_one_json_line_with_utc_time_and_extras() -> None:
    text = JsonFormatter().format(record("hello %s", "world", task="text2image", seconds=1.5, odd=object()))
    assert "\n" not in text
    entry = json.loads(text)
    assert entry["time"] == "2027-01-15T08:00:00.500Z"
    assert (entry["level"], entry["logger"], entry["message"]) == ("info", "opea_media.test", "hello world")
    assert (entry["task"], entry["seconds"]) == ("text2image", 1.5)
    assert entry["odd"].startswith("<object object")  # not JSON: written as text, the line survives


def test_request_id_comes_from_the_context_or_the_record() -> None:
    token = request_id_var.set("req-1")
    try:
        assert json.loads(JsonFormatter().format(record()))["request_id"] == "req-1"
        assert json.loads(JsonFormatter().format(record(request_id="req-2")))["request_id"] == "req-2"
    finally:
        request_id_var.reset(token)
    assert "request_id" not in json.loads(JsonFormatter().format(record()))


def test_exceptions_stay_inside_the_line() -> None:
    try:
        raise ValueError("multi\nline")
    except ValueError:
        made = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, __file__, 1, "failed", (), __import__("sys").exc_info()
        )
    entry = json.loads(JsonFormatter().format(made))
    assert "ValueError: multi\nline" in entry["exception"]


@pytest.mark.usefixtures("restore_logging")
def test_configure_logging_levels_and_warnings() -> None:
    stream = io.StringIO()
    configure_logging("debug", stream=stream)
    logging.getLogger("opea_media.server").debug("ours at debug")
    logging.getLogger("aiohttp.access").info("library info is dropped")
    logging.getLogger("aiohttp.server").warning("library warning is kept")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        logging.captureWarnings(True)  # catch_warnings restored showwarning; capture again inside
        warnings.warn("a deprecation", DeprecationWarning, stacklevel=1)
    got = lines(stream)
    assert [entry["message"] for entry in got[:2]] == ["ours at debug", "library warning is kept"]
    assert got[2]["logger"] == "py.warnings" and "a deprecation" in got[2]["message"]
    assert os.environ["TQDM_DISABLE"] == "1"

    stream.truncate(0)
    stream.seek(0)
    configure_logging("warning", stream=stream)
    logging.getLogger("opea_media.server").info("hidden")
    assert stream.getvalue() == ""


@pytest.mark.usefixtures("restore_logging")
def test_library_loggers_with_their_own_handlers_are_routed_through_json() -> None:
    import diffusers  # noqa: F401  # its logging module attaches a plain-text handler to "diffusers"
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.get_logger("diffusers.pipelines").warning("touch the library root logger")
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    tame_libraries.cache_clear()
    tame_libraries()
    logging.getLogger("diffusers.pipelines").warning("from diffusers")
    logging.getLogger("huggingface_hub.utils._http").warning("from huggingface_hub")
    assert [entry["message"] for entry in lines(stream)] == ["from diffusers", "from huggingface_hub"]
