"""How long one large upload keeps the event loop waiting: `python -m benchmarks.gil_hold [--source DIR]`.

A thread that wakes every millisecond (as the event loop must, to answer /health) measures its
longest wait while another thread parses and decodes one body of a 19 MiB image as base64 (25
MiB), the way the service's I/O threads do. Whatever holds the GIL for the whole body shows here.
`--source DIR` measures another checkout's opea_media (`git archive REV opea_media | tar -x -C DIR`).
docs/reliability.md records the figures.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import threading
import time
from pathlib import Path


def longest_waits(rounds: int) -> list[float]:
    from opea_media.media.images import decode_base64_image
    from opea_media.server.validation import parse_json_object

    image = base64.b64encode(os.urandom(19 * 1024 * 1024)).decode()
    body = json.dumps({"images_path": [{"image_path": image}], "num_frames": 2}).encode()
    waits = []
    for _ in range(rounds):
        gaps: list[float] = []
        done = threading.Event()

        def tick() -> None:
            last = time.perf_counter()
            while not done.is_set():
                time.sleep(0.001)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        ticker = threading.Thread(target=tick)
        ticker.start()
        time.sleep(0.05)
        data = parse_json_object(body)
        decode_base64_image(data["images_path"][0]["image_path"], field="image_path")
        time.sleep(0.02)
        done.set()
        ticker.join()
        waits.append(max(gaps) * 1000)
    return sorted(waits)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gil_hold", description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=None, help="measure this checkout's opea_media")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.source:
        sys.path.insert(0, str(args.source.resolve()))
    waits = longest_waits(args.rounds)
    print(f"longest wait of a 1 ms ticker per body, {args.rounds} bodies: "
          + ", ".join(f"{w:.0f} ms" for w in waits) + f" (load average {os.getloadavg()[0]:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
