"""Medians with their spread, and side-by-side comparisons measured interleaved."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sample:
    """Repeated measurements of one thing (seconds, or any unit)."""

    name: str
    values: list[float] = field(default_factory=list)
    unit: str = "s"

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def quantile(self, q: float) -> float:
        """Nearest-rank quantile, 0 <= q <= 1 (p99 of 50 values is the largest but 0)."""
        if not self.values:
            return float("nan")
        ordered = sorted(self.values)
        rank = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
        return ordered[rank]

    @property
    def iqr(self) -> tuple[float, float]:
        return self.quantile(0.25), self.quantile(0.75)

    def summary(self) -> dict[str, Any]:
        return {
            "n": len(self.values),
            "median": self.median,
            "p25": self.iqr[0],
            "p75": self.iqr[1],
            "min": min(self.values, default=float("nan")),
            "max": max(self.values, default=float("nan")),
            "unit": self.unit,
        }

    def text(self, scale: float = 1.0, digits: int = 3, unit: str | None = None) -> str:
        """'median [p25-p75]' in the chosen unit."""
        lo, hi = self.iqr
        u = self.unit if unit is None else unit
        return (
            f"{self.median * scale:.{digits}f} [{lo * scale:.{digits}f}-{hi * scale:.{digits}f}] {u}".rstrip()
        )


def interleave(
    candidates: dict[str, Callable[[], Any]], *, rounds: int, warmup: int = 1
) -> dict[str, Sample]:
    """Time each candidate once per round, in alternating order, so drift hits all alike."""
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    samples = {name: Sample(name) for name in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            start = time.perf_counter()
            candidates[name]()
            samples[name].values.append(time.perf_counter() - start)
    return samples


def ratio(numerator: Sample, denominator: Sample) -> Sample:
    """Per-round ratios of two interleaved samples (their pairing cancels slow drift)."""
    return Sample(
        f"{numerator.name}/{denominator.name}",
        [a / b for a, b in zip(numerator.values, denominator.values, strict=True)],
        unit="x",
    )


def median_of(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")
