"""Encoding a clip's 25 frames of 1024x576: base64 PNGs (the service's answer) and an MP4 (the CLI's)."""

from __future__ import annotations

import base64
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from opea_media.media.images import RESPONSE_PNG_COMPRESS_LEVEL, encode_png
from opea_media.media.video import write_video

from .stats import interleave

FRAMES, WIDTH, HEIGHT = 25, 1024, 576


def clip_frames(
    n: int = FRAMES, width: int = WIDTH, height: int = HEIGHT, seed: int = 0
) -> list[Image.Image]:
    """Frames with photo-like statistics: smooth shapes that drift, plus a little sensor noise.

    Pure noise would be the worst case for PNG (incompressible) and flat colour the best; a
    model's real frames sit in between, like these.
    """
    rng = np.random.default_rng(seed)
    coarse = rng.random((height // 32 + 2, width // 32 + 2 + n, 3), dtype=np.float32)
    base = np.asarray(
        Image.fromarray((coarse * 255).astype(np.uint8)).resize(
            ((width // 32 + 2 + n) * 32, (height // 32 + 2) * 32), Image.Resampling.BICUBIC
        ),
        dtype=np.float32,
    )
    frames = []
    for k in range(n):
        window = base[:height, k * 8 : k * 8 + width]
        noise = rng.normal(0, 3, window.shape).astype(np.float32)
        frames.append(Image.fromarray(np.clip(window + noise, 0, 255).astype(np.uint8)))
    return frames


def _b64(image: Image.Image, level: int) -> str:
    return base64.b64encode(encode_png(image, compress_level=level)).decode("ascii")


def run(*, rounds: int, threads: int) -> dict[str, Any]:
    frames = clip_frames()
    pool = ThreadPoolExecutor(max_workers=threads)
    sizes: dict[str, int] = {}

    def pngs(level: int, parallel: bool) -> Any:
        def go() -> None:
            encoded = (
                list(pool.map(lambda f: _b64(f, level), frames))
                if parallel
                else [_b64(f, level) for f in frames]
            )
            sizes[f"png{level}"] = sum(len(e) for e in encoded)

        return go

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "clip.mp4"

        def mp4() -> None:
            write_video(frames, path, fps=7)
            sizes["mp4"] = path.stat().st_size

        candidates = {
            "png level 6, one thread (Pillow's default)": pngs(6, False),
            f"png level 6, {threads} threads": pngs(6, True),
            f"png level 3, {threads} threads": pngs(3, True),
            f"png level {RESPONSE_PNG_COMPRESS_LEVEL}, {threads} threads (RESPONSE_PNG_COMPRESS_LEVEL)": pngs(
                RESPONSE_PNG_COMPRESS_LEVEL, True
            ),
            "mp4 (libx264, the CLI's)": mp4,
        }
        samples = interleave(candidates, rounds=rounds)
    pool.shutdown()
    return {
        "frames": f"{FRAMES} x {WIDTH}x{HEIGHT}",
        "threads": threads,
        "samples": {name: s.summary() for name, s in samples.items()},
        "base64_mib": {k: v / 2**20 for k, v in sizes.items()},
    }
