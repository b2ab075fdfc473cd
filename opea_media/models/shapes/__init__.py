"""The built-in `shapes` model's world: what its pictures hold, how they are drawn, how one is read back.

`--model shapes` is a real Stable Diffusion pipeline (the architecture of SD 2.1 at a tiny scale)
that the project trained on pictures drawn here: one shape of one colour at one place on a plain
background. This module is that training data's definition (training/train_shapes.py draws from
it) and the procedural checker that scores what the model makes (benchmarks/shapes.py, the tests):
a picture is read back into the scene it shows.

The data is the project's own and procedural; the weights beside it (text2image/) are Apache-2.0
like the code.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

FOLDER = Path(__file__).parent / "text2image"
SIZE = 64  # the pictures it was trained on, and its default size

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (245, 225, 50),
    "purple": (140, 60, 180),
    "orange": (240, 120, 20),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
# Where the object's centre is, as a fraction of the side; "center" is also what a prompt that
# names no place gets.
POSITIONS: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5),
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
}
PLACE_WORDS = {"center": "in the center", "left": "at the left", "right": "at the right",
               "top": "at the top", "bottom": "at the bottom"}  # fmt: skip
WORDS = ("a", "an", "on", "background", "the", "at", "in", *COLOURS, *SHAPES, *POSITIONS)


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    position: str
    background: str

    def prompt(self) -> str:
        """The whole scene in the model's words: "a red circle at the left on a blue background"."""
        return describe(self.shape, self.colour, self.position, self.background)


def describe(
    shape: str | None = None, colour: str | None = None, position: str | None = None,
    background: str | None = None,
) -> str:  # fmt: skip
    """A prompt naming any of the four; what it leaves out is left to chance (center for the place)."""
    thing = " ".join(w for w in (colour, shape or "shape") if w)
    words = [f"{'an' if thing[0] in 'aeiou' else 'a'} {thing}"]
    if position:
        words.append(PLACE_WORDS[position])
    if background:
        words.append(f"on {'an' if background[0] in 'aeiou' else 'a'} {background} background")
    return " ".join(words)


def all_scenes() -> list[Scene]:
    return [
        Scene(shape, colour, position, background)
        for shape in SHAPES
        for colour in COLOURS
        for position in POSITIONS
        for background in COLOURS
        if background != colour
    ]


def held_out(scene: Scene) -> bool:
    """One combination in eight is never shown in training: the quality figures are measured on them."""
    return hashlib.sha256(scene.prompt().encode()).digest()[0] % 8 == 0


def held_out_scenes() -> list[Scene]:
    """The 111 scenes the quality figures are measured on, in a fixed order (seed = index)."""
    return [s for s in all_scenes() if held_out(s)]


def draw(scene: Scene, rng: random.Random, size: int = SIZE) -> Image.Image:
    """The scene, with the jitter of training: the object's size and place vary a little."""
    scale = 4  # drawn large and shrunk: smooth edges
    side = size * scale
    image = Image.new("RGB", (side, side), COLOURS[scene.background])
    canvas = ImageDraw.Draw(image)
    fx, fy = POSITIONS[scene.position]
    cx = (fx + rng.uniform(-0.05, 0.05)) * side
    cy = (fy + rng.uniform(-0.05, 0.05)) * side
    r = rng.uniform(0.16, 0.21) * side
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        canvas.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif scene.shape == "square":
        h = r * 0.9
        canvas.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    else:  # an upright triangle of the circle's width
        canvas.polygon(((cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)), fill=fill)
    return image.resize((size, size), Image.Resampling.LANCZOS)


def nearest_colour(rgb: np.ndarray) -> str:
    names = list(COLOURS)
    table = np.array([COLOURS[n] for n in names], dtype=np.float32)
    return names[int(np.argmin(((table - rgb.astype(np.float32)) ** 2).sum(axis=1)))]


@dataclass(frozen=True)
class Reading:
    """What the checker reads in a picture; any part it cannot read is None."""

    shape: str | None
    colour: str | None
    position: str | None
    background: str

    def agrees(self, scene: Scene) -> dict[str, bool]:
        return {
            "background": self.background == scene.background,
            "colour": self.colour == scene.colour,
            "position": self.position == scene.position,
            "shape": self.shape == scene.shape,
        }


ATTRIBUTES = ("background", "position", "colour", "shape")


def tally(agreements: Iterable[dict[str, bool]]) -> dict[str, int]:
    """How many pictures got each attribute right (Reading.agrees of each), and all four."""
    right = dict.fromkeys((*ATTRIBUTES, "all"), 0)
    for agrees in agreements:
        for name, ok in agrees.items():
            right[name] += ok
        right["all"] += all(agrees.values())
    return right


def read(image: Image.Image) -> Reading:
    """Read a picture back into a scene: the background from the border, the object from the rest.

    Background: the palette colour nearest the median of the outer two pixels. Object: the pixels
    more than 60 from the background colour (the closest two palette colours are 85 apart; none or
    a sliver: no object). Its colour: the nearest palette colour to their median; its place: the
    centroid's offset from the middle (under a tenth of the side: center, else the larger offset's
    side); its shape: how much of its bounding box it fills (a square all of it, a circle pi/4, a
    triangle half).
    """
    pixels = np.asarray(image.convert("RGB").resize((SIZE, SIZE)), dtype=np.float32)
    border = np.concatenate(
        [pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3), pixels[:, :2].reshape(-1, 3),
         pixels[:, -2:].reshape(-1, 3)]
    )  # fmt: skip
    background = nearest_colour(np.median(border, axis=0))
    distance = np.sqrt(((pixels - np.array(COLOURS[background], dtype=np.float32)) ** 2).sum(axis=2))
    mask = distance > 60
    if mask.sum() < SIZE * SIZE * 0.02:
        return Reading(None, None, None, background)
    colour = nearest_colour(np.median(pixels[mask], axis=0))
    ys, xs = np.nonzero(mask)
    dx, dy = xs.mean() / SIZE - 0.5, ys.mean() / SIZE - 0.5
    if max(abs(dx), abs(dy)) < 0.1:
        position = "center"
    elif abs(dx) > abs(dy):
        position = "left" if dx < 0 else "right"
    else:
        position = "top" if dy < 0 else "bottom"
    box = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
    fill = mask.sum() / box
    shape = "square" if fill > 0.88 else "circle" if fill > 0.66 else "triangle"
    return Reading(shape, colour, position, background)


def training_prompt(scene: Scene, rng: random.Random) -> str:
    """What a training picture is captioned: mostly the whole scene, sometimes part of it, sometimes
    nothing (the unconditional prompt classifier-free guidance needs), so that a prompt naming only
    some of it, and a negative prompt naming one colour, mean something."""
    roll = rng.random()
    if roll < 0.1:
        return ""
    if roll < 0.6:
        place = None if scene.position == "center" and rng.random() < 0.5 else scene.position
        return describe(scene.shape, scene.colour, place, scene.background)
    keep = {k: rng.random() < 0.6 for k in ("shape", "colour", "position", "background")}
    return describe(
        scene.shape if keep["shape"] else None,
        scene.colour if keep["colour"] else None,
        scene.position if keep["position"] and scene.position != "center" else None,
        scene.background if keep["background"] else None,
    )


__all__ = [
    "ATTRIBUTES", "FOLDER", "Reading", "Scene", "all_scenes", "describe", "draw", "held_out",
    "held_out_scenes", "read", "tally",
]  # fmt: skip
