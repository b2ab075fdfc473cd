"""--backend openvino: the tiny pipelines convert, run, match torch, and a second load reuses the cache."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from opea_media.errors import InvalidInput
from opea_media.models import ModelRegistry
from opea_media.models.tuning import Tuning
from opea_media.params import Image2VideoParams, Text2ImageParams

pytest.importorskip("openvino")

# Largest difference of an 8-bit pixel between the backends on the same seed: both run float32,
# OpenVINO with its own kernels (measured: 0-1).
PIXEL_TOLERANCE = 3


@pytest.fixture(scope="module")
def ov_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache of this module's own, so that the first load here really converts."""
    return tmp_path_factory.mktemp("ov-cache")


def ov_registry(cache: Path) -> ModelRegistry:
    return ModelRegistry(device="cpu", dtype="float32", cache_dir=cache, tuning=Tuning(backend="openvino"))


@pytest.fixture(scope="module")
def ov_handles(ov_cache: Path) -> Any:
    registry = ov_registry(ov_cache)
    return registry.handle("text2image", "tiny"), registry.handle("image2video", "tiny")


def pixels(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


def test_text2image_converts_and_matches_torch(ov_handles: Any, tiny_t2i: Any) -> None:
    handle = ov_handles[0]
    model = handle.load()
    assert model.backend == "openvino" and type(model.pipe.unet).__name__ == "OpenVINOUNet"
    assert handle.convert_seconds is not None and handle.convert_seconds > 0
    params = Text2ImageParams(prompt="a red fox", num_inference_steps=3, seed=7, height=64, width=72)
    (ours,) = model.generate([params])
    (theirs,) = tiny_t2i.generate([params])
    assert np.abs(pixels(ours) - pixels(theirs)).max() <= PIXEL_TOLERANCE


def test_text2image_edits_on_openvino(ov_handles: Any, tiny_t2i: Any) -> None:
    """Image-to-image encodes with the torch VAE encoder and denoises with the converted UNet."""
    params = Text2ImageParams(
        prompt="a red fox", num_inference_steps=4, seed=3, height=64, width=64, strength=0.5
    )
    image = Image.new("RGB", (64, 64), (200, 40, 90))
    ours = ov_handles[0].load().edit(params, image)
    theirs = tiny_t2i.edit(params, image)
    assert np.abs(pixels(ours) - pixels(theirs)).max() <= PIXEL_TOLERANCE


def test_image2video_converts_and_matches_torch(ov_handles: Any, tiny_i2v: Any) -> None:
    model = ov_handles[1].load()
    assert type(model.pipe.vae.decoder).__name__ == "OpenVINODecoder"
    # 5 frames in chunks of 2: the last chunk has one frame, a shape the trace did not see.
    params = Image2VideoParams(
        num_frames=5, num_inference_steps=2, seed=3, height=64, width=128, decode_chunk_size=2
    )
    image = Image.new("RGB", (128, 64), (30, 120, 200))
    ours = model.generate(image, params)
    theirs = tiny_i2v.generate(image, params)
    assert len(ours) == 5
    assert np.abs(pixels(ours) - pixels(theirs)).max() <= PIXEL_TOLERANCE


def test_a_second_load_reuses_the_conversion(
    ov_handles: Any, ov_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ov_handles[0].load()  # converted once by this module's first load
    (folder,) = (ov_cache / "openvino").glob("tiny-text2image-float32-*/unet.xml")
    written = folder.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="opea_media.models.openvino"):
        handle = ov_registry(ov_cache).handle("text2image", "tiny")
        handle.load()
    messages = [record.getMessage() for record in caplog.records]
    assert "reusing the OpenVINO conversion" in messages
    assert "converting the pipeline to OpenVINO" not in messages
    assert folder.stat().st_mtime_ns == written
    assert handle.convert_seconds is not None  # the compile, reported as the load's backend cost


def test_another_dtype_converts_again(ov_handles: Any, ov_cache: Path) -> None:
    """The cache is keyed by dtype (and the model's files): bfloat16 is a conversion of its own."""
    ov_handles[0].load()
    ModelRegistry(
        device="cpu", dtype="bfloat16", cache_dir=ov_cache, tuning=Tuning(backend="openvino")
    ).text2image("tiny")
    for dtype in ("float32", "bfloat16"):
        assert list((ov_cache / "openvino").glob(f"tiny-text2image-{dtype}-*/opea-media.json")), dtype


def test_a_missing_openvino_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(InvalidInput) as caught:
        ov_registry(tmp_path).text2image("tiny")
    assert str(caught.value.detail) == (
        "--backend openvino needs the openvino package, which is not installed: "
        "pip install 'opea-media[openvino]'"
    )


def test_the_cli_says_it_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from opea_media.cli import cli

    monkeypatch.setitem(sys.modules, "openvino", None)
    result = CliRunner().invoke(
        cli,
        [
            "generate-image",
            "a fox",
            "--model",
            "tiny",
            "--backend",
            "openvino",
            "-o",
            str(tmp_path / "x.png"),
        ],
    )
    assert result.exit_code != 0
    assert "pip install 'opea-media[openvino]'" in result.output
    assert "Traceback" not in result.output


def test_openvino_is_refused_on_cuda() -> None:
    with pytest.raises(InvalidInput, match="runs on the CPU"):
        Tuning(backend="openvino").resolve("text2image", "cuda")
