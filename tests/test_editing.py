"""Image-to-image, inpainting and previews on the built-in tiny pipeline: real diffusers code, 64 px.

The tiny VAE has random weights, so no picture survives its round trip: closeness to the input is
measured against what the pipeline itself makes of it (its least change, or another prompt's result).
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from PIL import Image

from opea_media.media.images import fit_image
from opea_media.models.text2image import Text2ImageModel
from opea_media.params import SCHEDULERS, Text2ImageParams

TOLERANCE = 2  # uint8 levels: batched matmuls may round differently in the last bit


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def params(**fields) -> Text2ImageParams:  # type: ignore[no-untyped-def]
    return Text2ImageParams(**{"prompt": "a red fox", "num_inference_steps": 3, "seed": 1, **fields})


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A colour ramp of another shape than the output, so fitting (cover, centre crop) is exercised."""
    ramp = np.linspace(0, 255, 80 * 96 * 3).reshape(80, 96, 3)
    return Image.fromarray(ramp.astype(np.uint8))


def right_half_white(size: tuple[int, int] = (64, 64), mode: str = "L") -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, (size[0] // 2, 0, size[0], size[1]))
    return mask.convert(mode)


@pytest.mark.parametrize("inpaint", [False, True], ids=["img2img", "inpaint"])
def test_edit_makes_n_images_of_the_asked_size_each_from_its_own_seed(
    tiny_t2i: Text2ImageModel, photo: Image.Image, inpaint: bool
) -> None:
    model = Text2ImageModel(tiny_t2i.pipe, ref="tiny", images_per_call=2)
    mask = right_half_white((96, 80)) if inpaint else None
    asked = params(num_images_per_prompt=3, height=64, width=96, strength=0.7)
    images = model.edit(asked, photo, mask=mask)
    again = model.edit(asked, photo, mask=mask)
    alone = [
        model.edit(params(height=64, width=96, strength=0.7, seed=s), photo, mask=mask)[0] for s in (2, 3)
    ]
    assert len(images) == 3 and {i.size for i in images} == {(96, 64)}
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(images, again, strict=True))
    assert not np.array_equal(pixels(images[0]), pixels(images[1]))
    # Image k uses seed + k, drawn from its own generator: alone it comes out the same. Two images
    # share a call here, so image 1 is the second of its call and image 2 the first of the next.
    for image, single in zip(images[1:], alone, strict=True):
        assert np.abs(pixels(image) - pixels(single)).max() <= TOLERANCE


def test_edit_in_several_pipeline_calls_gives_the_same_images(
    tiny_t2i: Text2ImageModel, photo: Image.Image
) -> None:
    asked = params(num_images_per_prompt=3, strength=0.7)
    together = tiny_t2i.edit(asked, photo, mask=right_half_white())
    one_per_call = Text2ImageModel(tiny_t2i.pipe, ref="tiny", images_per_call=1)
    steps: list[tuple[int, int]] = []
    apart = one_per_call.edit(
        asked, photo, mask=right_half_white(), on_step=lambda s, n: steps.append((s, n))
    )
    assert all(np.abs(pixels(a) - pixels(b)).max() <= TOLERANCE for a, b in zip(together, apart, strict=True))
    assert steps == [(s, 6) for s in range(1, 7)]  # 3 calls of int(3 * 0.7) = 2 steps


def test_inpainting_keeps_the_black_region_and_repaints_the_white(
    tiny_t2i: Text2ImageModel, photo: Image.Image
) -> None:
    """Another prompt on the same seed repaints the white half and leaves the black one as it was."""

    def halves(mask: Image.Image) -> tuple[float, float]:
        fox, whale = (
            pixels(
                tiny_t2i.edit(params(prompt=prompt, strength=1.0, num_inference_steps=4), photo, mask=mask)[0]
            )
            for prompt in ("a red fox", "a blue whale in the deep sea")
        )
        return mean_diff(fox[:, :32], whale[:, :32]), mean_diff(fox[:, 32:], whale[:, 32:])

    # An RGB mask of another size: converted to L, fitted to the image, then to the output.
    left, right = halves(right_half_white((192, 160), "RGB"))
    assert right > 8 and left < right / 2.5, (left, right)  # the tiny VAE mixes a little across the edge
    left, right = halves(right_half_white().transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    assert left > 8 and right < left / 2.5, (left, right)


def test_low_strength_stays_closer_to_the_input_than_high(
    tiny_t2i: Text2ImageModel, photo: Image.Image
) -> None:
    # Strength 0: the least change the pipeline makes (its last, least noisy step) on this seed.
    [least] = tiny_t2i.edit(params(strength=0.0, num_inference_steps=10), photo)
    distance = {
        strength: mean_diff(
            pixels(tiny_t2i.edit(params(strength=strength, num_inference_steps=10), photo)[0]), pixels(least)
        )
        for strength in (0.2, 1.0)
    }
    assert 0 < distance[0.2] < distance[1.0] * 0.8, distance  # measured: 15 and 27


def test_the_least_strength_still_denoises_one_step(tiny_t2i: Text2ImageModel, photo: Image.Image) -> None:
    for strength in (0.0, 0.05):
        asked = params(strength=strength, num_inference_steps=10)
        steps: list[int] = []
        tiny_t2i.edit(asked, photo, mask=right_half_white(), on_step=lambda s, n, seen=steps: seen.append(n))
        assert tiny_t2i.edit_steps(asked) == 1 and steps == [1]
    assert tiny_t2i.edit_steps(params(strength=0.5, num_inference_steps=10)) == 5
    assert tiny_t2i.edit_steps(params(num_inference_steps=10)) == 8  # None: the default, 0.8


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_previews_arrive_at_the_asked_steps_and_do_not_change_the_pixels(
    tiny_t2i: Text2ImageModel, scheduler: str
) -> None:
    asked = params(scheduler=scheduler, num_inference_steps=4, num_images_per_prompt=2, height=64, width=64)
    previews: list[tuple[int, list[Image.Image]]] = []
    [final] = tiny_t2i.generate(
        [asked], on_preview=lambda s, i: previews.append((s, i)), preview_steps=(1, 4)
    )
    [plain] = tiny_t2i.generate([asked])
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(final, plain, strict=True))
    # CPU tuning holds 2 images per call: one call, so one preview of both images per asked step.
    assert [(s, len(i), i[0].size) for s, i in previews] == [(1, 2, (64, 64)), (4, 2, (64, 64))]
    first, last = (mean_diff(pixels(i[0]), pixels(final[0])) for _, i in previews)
    assert last < 1 < first / 10, (first, last)  # the picture takes shape towards the final one


@pytest.mark.parametrize("inpaint", [False, True], ids=["img2img", "inpaint"])
def test_edit_previews_count_the_steps_that_run(
    tiny_t2i: Text2ImageModel, photo: Image.Image, inpaint: bool
) -> None:
    asked = params(num_inference_steps=5, strength=0.6, scheduler="euler-a")  # 3 steps run
    mask = right_half_white() if inpaint else None
    previews: list[tuple[int, list[Image.Image]]] = []
    [final] = tiny_t2i.edit(
        asked, photo, mask=mask, on_preview=lambda s, i: previews.append((s, i)), preview_steps=(2, 3, 5)
    )
    [plain] = tiny_t2i.edit(asked, photo, mask=mask)
    assert np.array_equal(pixels(final), pixels(plain))
    assert [s for s, _ in previews] == [2, 3]
    if inpaint:  # the kept half shows the input itself, fitted as edit fits it
        fitted = pixels(fit_image(photo, 64, 64))
        assert np.array_equal(pixels(previews[0][1][0])[:, :32], fitted[:, :32])


def test_generate_still_refuses_a_strength(tiny_t2i: Text2ImageModel) -> None:
    with pytest.raises(ValueError, match="edit"):
        tiny_t2i.generate([params(strength=0.5)])


def test_editing_shares_the_loaded_weights(tiny_t2i: Text2ImageModel, photo: Image.Image) -> None:
    base = tiny_t2i.pipe
    # First the one-off costs (diffusers' modules imported, first-call buffers), then a new model
    # around the same pipeline builds its own edit pipelines.
    tiny_t2i.edit(params(strength=0.5), photo)
    tiny_t2i.edit(params(strength=0.5), photo, mask=right_half_white())
    fresh = Text2ImageModel(base, ref="tiny")
    gc.collect()
    before = _rss()
    pipes = [fresh._edit_pipes.get(inpaint=False), fresh._edit_pipes.get(inpaint=True)]
    gc.collect()
    grown = _rss() - before
    fresh.edit(params(strength=0.5), photo, mask=right_half_white())
    weights = sum(
        t.numel() * t.element_size()
        for module in (base.unet, base.vae, base.text_encoder)
        for t in [*module.parameters(), *module.buffers()]
    )
    assert pipes == [fresh._edit_pipes.get(inpaint=False), fresh._edit_pipes.get(inpaint=True)]  # built once
    for pipe in pipes:
        for name in ("unet", "vae", "text_encoder", "tokenizer"):
            assert getattr(pipe, name) is getattr(base, name), name
    ptrs = {t.data_ptr() for m in (base.unet, base.vae, base.text_encoder) for t in m.parameters()}
    assert all(
        t.data_ptr() in ptrs
        for pipe in pipes
        for m in (pipe.unet, pipe.vae, pipe.text_encoder)
        for t in m.parameters()
    )
    assert base.unet.dtype == torch.float32  # not cast by the new pipelines
    # A copy of the weights grows the process by about their size (2.6 of 3.6 MB measured).
    assert grown < weights / 4, (grown, weights)


def test_text_to_image_after_edits_keeps_its_pixels(tiny_t2i: Text2ImageModel, photo: Image.Image) -> None:
    """The schedulers are shared; image-to-image sets their begin index, text-to-image must not see it."""
    for scheduler in ("dpm++", "euler"):
        asked = params(scheduler=scheduler, height=64, width=64)
        [[before]] = tiny_t2i.generate([asked])
        tiny_t2i.edit(params(scheduler=scheduler, strength=0.5), photo)
        [[after]] = tiny_t2i.generate([asked])
        assert np.array_equal(pixels(before), pixels(after)), scheduler


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def test_a_pipeline_without_edit_variants_is_refused_in_words(
    tiny_t2i: Text2ImageModel, photo: Image.Image
) -> None:
    from types import SimpleNamespace

    from opea_media.errors import InvalidInput

    assert tiny_t2i.can_edit
    other = Text2ImageModel(
        SimpleNamespace(scheduler=tiny_t2i.pipe.scheduler, unet=tiny_t2i.pipe.unet, vae_scale_factor=8),
        ref="x",
    )
    assert not other.can_edit
    with pytest.raises(InvalidInput, match=r"this model \(SimpleNamespace\) cannot edit images"):
        other.edit(params(strength=0.5), photo)
