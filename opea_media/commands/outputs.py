"""How several outputs share one -o name."""

from __future__ import annotations

from pathlib import Path


def numbered_paths(output: Path, count: int) -> list[Path]:
    """`out.png` for one file; `out-1.png` ... `out-N.png` for several (zero-padded past 9)."""
    if count == 1:
        return [output]
    width = len(str(count))
    return [output.with_name(f"{output.stem}-{k:0{width}d}{output.suffix}") for k in range(1, count + 1)]
