"""The built-in `shapes` model: does it draw what it is asked, and how fast (`python -m benchmarks.shapes`).

Quality: every held-out scene (a combination of shape, colour, place and background that training
never showed) is drawn once from its full prompt, seed = its index, at the service's defaults
(64 px, 25 dpm++ steps) and at each guidance scale asked, then read back by the procedural checker
(opea_media.models.shapes.read): the share of pictures with each attribute right, and with all four.
Speed: one 64 px picture through the loaded model (as `generate-image --model shapes` runs it), at
20 and 25 steps, median [p25-p75] of `rounds` runs.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from .stats import Sample

GUIDANCE = (1.0, 7.5)


def load(model: str) -> Any:
    from opea_media.models.registry import ModelRegistry
    from opea_media.models.tuning import Tuning

    return ModelRegistry(device="cpu", tuning=Tuning()).text2image(model)


def draw(model: Any, prompt: str, *, seed: int, guidance: float, steps: int = 25, **extra: Any) -> Any:
    from opea_media.params import Text2ImageParams

    params = Text2ImageParams(
        prompt=prompt, seed=seed, guidance_scale=guidance, num_inference_steps=steps, **extra
    )
    return model.generate([params])[0][0]


def quality(model: Any, guidance: float, *, limit: int | None = None) -> dict[str, Any]:
    from opea_media.models import shapes

    scenes = shapes.held_out_scenes()[:limit]
    agreements = [
        shapes.read(draw(model, scene.prompt(), seed=seed, guidance=guidance)).agrees(scene)
        for seed, scene in enumerate(scenes)
    ]
    misses = [
        f"{scene.prompt()!r}: wrong {', '.join(k for k, ok in agrees.items() if not ok)}"
        for scene, agrees in zip(scenes, agreements, strict=True)
        if not all(agrees.values())
    ][:5]
    right = shapes.tally(agreements)
    return {"guidance": guidance, "n": len(scenes), "share": {k: v / len(scenes) for k, v in right.items()},
            "misses": misses}  # fmt: skip


def speed(model: Any, *, steps: int, rounds: int) -> Sample:
    sample = Sample(f"64 px, {steps} steps")
    draw(model, "a red circle on a blue background", seed=0, guidance=7.5, steps=steps)  # warm
    for seed in range(rounds):
        began = time.perf_counter()
        draw(model, "a red circle on a blue background", seed=seed, guidance=7.5, steps=steps)
        sample.values.append(time.perf_counter() - began)
    return sample


def run(
    *, model: str = "shapes", rounds: int = 10, limit: int | None = None, log: Any = print
) -> dict[str, Any]:
    loaded = load(model)
    figures: dict[str, Any] = {"model": model, "quality": [], "speed": []}
    for guidance in GUIDANCE:
        row = quality(loaded, guidance, limit=limit)
        log(f"guidance {guidance}: " + ", ".join(f"{k} {v:.0%}" for k, v in row["share"].items()))
        figures["quality"].append(row)
    for steps in (20, 25):
        figures["speed"].append({"steps": steps, **speed(loaded, steps=steps, rounds=rounds).summary()})
    return figures


def gallery(model: Any, path: Path, *, count: int = 8, scale: int = 3) -> None:
    """The first `count` held-out prompts at the defaults, each picture `scale` times its size
    (nearest neighbour) above its prompt: docs/images/shapes-held-out.png."""
    from PIL import Image, ImageDraw

    from opea_media.models import shapes

    scenes = shapes.held_out_scenes()[:count]
    side, caption, columns = shapes.SIZE * scale, 34, 4
    rows = -(-count // columns)
    sheet = Image.new("RGB", (columns * (side + 8) + 8, rows * (side + caption + 8) + 8), "white")
    pen = ImageDraw.Draw(sheet)
    for i, scene in enumerate(scenes):
        x, y = 8 + (i % columns) * (side + 8), 8 + (i // columns) * (side + caption + 8)
        words = scene.prompt().split(" on ")
        pen.multiline_text((x, y), f"{words[0]}\non {words[1]}", fill="black", spacing=2)
        picture = draw(model, scene.prompt(), seed=i, guidance=7.5)
        sheet.paste(picture.resize((side, side), Image.Resampling.NEAREST), (x, y + caption))
    sheet.save(path)


def main() -> None:
    from . import report

    parser = argparse.ArgumentParser(prog="python -m benchmarks.shapes", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="shapes", help="the built-in, or a checkpoint folder of the training"
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--limit", type=int, default=None, help="score only the first N held-out scenes")
    parser.add_argument(
        "--gallery", type=Path, default=None, help="also write a sheet of held-out prompts here"
    )
    args = parser.parse_args()
    model = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model
    began, load_before = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    figures = run(model=model, rounds=args.rounds, limit=args.limit)
    section = {"figures": figures, "seconds": time.perf_counter() - began, "load_before": load_before,
               "load_after": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip
    report.print_section("shapes", section)
    if args.gallery:
        gallery(load(model), args.gallery)


if __name__ == "__main__":
    main()
