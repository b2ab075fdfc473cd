"""The model wrappers on the built-in tiny pipelines: real diffusers code, 64 px, a few steps."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from opea_media.errors import Cancelled
from opea_media.params import SCHEDULERS, Image2VideoParams, Text2ImageParams


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def t2i(prompt: str = "a red fox", **fields) -> Text2ImageParams:  # type: ignore[no-untyped-def]
    return Text2ImageParams(**{"prompt": prompt, "num_inference_steps": 3, "seed": 1, **fields})


def test_same_seed_same_pixels_other_seed_other_pixels(tiny_t2i) -> None:  # type: ignore[no-untyped-def]
    [[a]] = tiny_t2i.generate([t2i()])
    [[b]] = tiny_t2i.generate([t2i()])
    [[c]] = tiny_t2i.generate([t2i(seed=2)])
    assert a.size == (64, 64) and a.mode == "RGB"
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


def test_images_of_a_request_use_consecutive_seeds(tiny_t2i) -> None:  # type: ignore[no-untyped-def]
    [[first, second]] = tiny_t2i.generate([t2i(num_images_per_prompt=2)])
    [[alone]] = tiny_t2i.generate([t2i(seed=2)])
    assert not np.array_equal(pixels(first), pixels(second))
    assert np.abs(pixels(second) - pixels(alone)).max() <= 2


def test_a_batch_gives_each_request_its_own_images(tiny_t2i) -> None:  # type: ignore[no-untyped-def]
    batch = [t2i("a red fox", seed=5), t2i("a blue whale", seed=9, num_images_per_prompt=1)]
    together = tiny_t2i.generate(batch)
    apart = [tiny_t2i.generate([p])[0] for p in batch]
    assert [len(x) for x in together] == [1, 1]
    for got, want in zip(together, apart, strict=True):
        # Batched matmuls may round differently in the last bit; the picture is the same.
        assert np.abs(pixels(got[0]) - pixels(want[0])).max() <= 2


def test_size_override_and_every_scheduler_runs(tiny_t2i) -> None:  # type: ignore[no-untyped-def]
    for name in SCHEDULERS:
        [[image]] = tiny_t2i.generate([t2i(scheduler=name, height=64, width=96)])
        assert image.size == (96, 64), name


def test_progress_reports_every_step_and_cancel_stops_the_run(tiny_t2i) -> None:  # type: ignore[no-untyped-def]
    steps: list[tuple[int, int]] = []
    tiny_t2i.generate([t2i(num_inference_steps=4)], on_step=lambda s, n: steps.append((s, n)))
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]

    seen: list[int] = []

    def cancel_at_two(step: int, total: int) -> None:
        seen.append(step)
        if step == 2:
            raise Cancelled("client went away")

    with pytest.raises(Cancelled):
        tiny_t2i.generate([t2i(num_inference_steps=10)], on_step=cancel_at_two)
    assert seen == [1, 2]


def test_native_sizes_follow_the_model(tiny_t2i, tiny_i2v) -> None:  # type: ignore[no-untyped-def]
    assert tiny_t2i.complete(t2i()).height == 64
    assert tiny_i2v.native_frames == 14
    filled = tiny_i2v.complete(Image2VideoParams())
    assert (filled.height, filled.width, filled.num_frames) == (*tiny_i2v.native_size, 14)


def test_video_frames_count_size_and_seed(tiny_i2v) -> None:  # type: ignore[no-untyped-def]
    image = Image.new("RGB", (100, 80), (200, 30, 30))
    params = Image2VideoParams(num_frames=4, num_inference_steps=2, seed=3, height=64, width=128)
    frames = tiny_i2v.generate(image, params)
    again = tiny_i2v.generate(image, params)
    assert len(frames) == 4 and {f.size for f in frames} == {(128, 64)}
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(frames, again, strict=True))
