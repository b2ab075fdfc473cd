"""The suite on CUDA in float16: `python -m benchmarks.gpu [--only SECTION ...]`.

The same as `python -m benchmarks --device cuda`: SD 2.1-size at 768 px and 25 steps, SVD-XT-size
at 25 frames of 576x1024 and 25 steps, with the service, batching, start-up and memory figures.
"""

from __future__ import annotations

import sys

from .__main__ import main

if __name__ == "__main__":
    raise SystemExit(main(["--device", "cuda", *sys.argv[1:]]))
