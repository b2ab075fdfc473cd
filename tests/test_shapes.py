"""The built-in `shapes` model draws what it is asked: tests that random weights could never pass.

The model ships in the package (opea_media/models/shapes/text2image, trained by
training/train_shapes.py); the procedural checker reads each picture back into the scene it shows.
Held-out scenes are combinations the training never showed. Seeds are fixed: every figure here is
the same on every run on one machine; the margins leave room for another CPU's rounding.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from opea_media.cli import cli
from opea_media.errors import ModelUnavailable
from opea_media.models import shapes
from opea_media.params import Text2ImageParams

HELD_OUT = shapes.held_out_scenes()


@pytest.fixture(scope="module")
def model(registry):  # type: ignore[no-untyped-def]
    return registry.text2image("shapes")


def draw(model, prompt: str, seed: int = 0, **extra) -> Image.Image:  # type: ignore[no-untyped-def]
    return model.generate([Text2ImageParams(prompt=prompt, seed=seed, **extra)])[0][0]


def scores(model, start: int, stop: int, **extra) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """How many of HELD_OUT[start:stop] come out right, per attribute; seed = the scene's index
    (as benchmarks/shapes.py draws them)."""
    return shapes.tally(
        shapes.read(draw(model, HELD_OUT[seed].prompt(), seed=seed, **extra)).agrees(HELD_OUT[seed])
        for seed in range(start, stop)
    )


def test_the_checker_reads_every_training_picture_right() -> None:
    rng = random.Random(0)
    wrong = [s for s in shapes.all_scenes() if not all(shapes.read(shapes.draw(s, rng)).agrees(s).values())]
    assert not wrong, wrong[:5]


def test_the_shipped_model_is_small_fp16_safetensors_with_its_training_record() -> None:
    files = [p for p in shapes.FOLDER.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin")]
    assert weights and all(p.name.endswith(".fp16.safetensors") for p in weights), weights
    assert sum(p.stat().st_size for p in files) < 10 * 2**20
    record = json.loads((shapes.FOLDER / "training.json").read_text())
    assert record["seed"] == 0 and record["minutes"] > 0 and record["vae_held_out_l1"] < 0.05


README_COMMAND = 'opea-media generate-image "a red circle on a blue background" --model shapes -o out.png'


def test_the_readme_first_command_draws_a_red_shape_on_blue(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    assert README_COMMAND in readme
    for seed in ("0", "1", "2"):
        out = tmp_path / f"{seed}.png"
        args = ["generate-image", "a red circle on a blue background", "--model", "shapes", "--seed", seed]
        result = CliRunner().invoke(cli, [*args, "-o", str(out)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        reading = shapes.read(Image.open(out))
        assert (reading.background, reading.colour) == ("blue", "red"), (seed, reading)


def test_held_out_prompts_get_their_colours(model) -> None:  # type: ignore[no-untyped-def]
    # Measured on all 111 held-out prompts (benchmarks/shapes.py): background 100 %, colour 99 %;
    # place and shape are not learned yet (docs/shapes.md), so they are not asserted here.
    right = scores(model, 0, 16)
    assert right["background"] >= 15 and right["colour"] >= 14, right


def test_higher_guidance_follows_the_prompt_better(model) -> None:  # type: ignore[no-untyped-def]
    # Guidance 1 is the conditional model alone (diffusers skips the unconditional pass).
    plain, guided = scores(model, 60, 90, guidance_scale=1.0), scores(model, 60, 90)
    assert guided["colour"] >= plain["colour"] + 4, (plain, guided)


def test_a_negative_prompt_pushes_its_colour_out(model) -> None:  # type: ignore[no-untyped-def]
    # The prompt leaves the object's colour open, and the model's favourite for it is red.
    prompt = "a circle on a white background"

    def reds(negative: str | None) -> int:
        return sum(
            shapes.read(draw(model, prompt, seed, negative_prompt=negative)).colour == "red"
            for seed in range(8)
        )

    plain, pushed = reds(None), reds("red")
    assert plain >= 5 and pushed == 0, (plain, pushed)


def test_the_same_seed_remakes_the_image_and_another_changes_it(model) -> None:  # type: ignore[no-untyped-def]
    prompt = "a yellow square at the left on a purple background"
    first, again, other = draw(model, prompt, 5), draw(model, prompt, 5), draw(model, prompt, 6)
    assert first.tobytes() == again.tobytes()
    assert np.abs(np.asarray(first, float) - np.asarray(other, float)).mean() > 1


def test_image_to_image_keeps_the_place_and_takes_the_asked_colours(model) -> None:  # type: ignore[no-untyped-def]
    source = shapes.draw(shapes.Scene("circle", "red", "left", "blue"), random.Random(0))
    asked = shapes.Scene("square", "yellow", "right", "green")
    params = Text2ImageParams(prompt=asked.prompt(), seed=0, strength=0.5)
    reading = shapes.read(model.edit(params, source)[0])
    assert (reading.position, reading.background, reading.colour) == ("left", "green", "yellow"), reading


def test_shapes_is_a_text2image_model(registry) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelUnavailable, match="shapes is a built-in text2image model"):
        registry.image2video("shapes")
