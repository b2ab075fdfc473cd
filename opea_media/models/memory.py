"""CUDA memory figures for the metrics endpoint."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CudaMemory:
    name: str  # "cuda:0"
    allocated: int
    reserved: int
    peak_allocated: int


def cuda_memory() -> list[CudaMemory]:
    """One entry per visible device; empty when CUDA is absent or was never initialised."""
    # is_initialized(): a metrics scrape must not be the thing that creates a CUDA context.
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return []
    return [
        CudaMemory(
            name=f"cuda:{i}",
            allocated=torch.cuda.memory_allocated(i),
            reserved=torch.cuda.memory_reserved(i),
            peak_allocated=torch.cuda.max_memory_allocated(i),
        )
        for i in range(torch.cuda.device_count())
    ]
