"""Memory and speed levers applied to a loaded pipeline, with defaults chosen per device.

The defaults come from the figures in docs/performance.md: they keep text2image within 4-6 GB and
image2video within 6-8 GB on a CPU (the containers' 8G limit) and cost nothing measurable in speed.
Every lever can be set explicitly ("on"/"off") by flag or OPEA_MEDIA_* environment variable.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import ENV_PREFIX, Task
from ..errors import InvalidInput
from ..params import DECODE_CHUNK_SIZE, TUNING_COUNT

SWITCH = ("auto", "on", "off")
# diffusers' slice sizes: "on" halves the heads per slice, "max" runs one head at a time.
ATTENTION_SLICING = ("auto", "off", "on", "max")
DTYPE_POLICY = ("auto", "float32", "float16", "bfloat16")

# image2video: frames the VAE decodes at once when a request does not say. Decoding all 25 frames
# of a 576x1024 clip at once holds ~16 GB of activations in float32; 2 at a time fits in the budget.
CPU_DECODE_CHUNK_SIZE = 2
# SVD's own documentation uses 8 on GPUs: within 1% of decoding all at once, a fraction of the memory.
CUDA_DECODE_CHUNK_SIZE = 8
# text2image: images the UNet denoises in one pipeline call (a request asks for up to 8, and
# micro-batching adds requests). On a CPU more than 2 at once raise the peak above one image's
# decode peak (SD 2.1 768 px float32: 7.63 GiB, the 8G limit's edge) and gain little speed; a GPU
# gains from larger batches and has the memory.
CPU_IMAGES_PER_CALL = 2
CUDA_IMAGES_PER_CALL = 8

ENV_NAMES = {
    "guidance_split": "GUIDANCE_SPLIT",
    "attention_slicing": "ATTENTION_SLICING",
    "vae_slicing": "VAE_SLICING",
    "vae_tiling": "VAE_TILING",
    "forward_chunking": "FORWARD_CHUNKING",
    "channels_last": "CHANNELS_LAST",
    "decode_chunk_size": "DECODE_CHUNK_SIZE",
    "images_per_call": "IMAGES_PER_CALL",
    "threads": "THREADS",
}
INTEGER_FIELDS = ("decode_chunk_size", "images_per_call", "threads")


@dataclass(frozen=True)
class Tuning:
    """The levers as asked for; "auto" (or None) leaves the choice to `resolve`."""

    guidance_split: str = "auto"
    attention_slicing: str = "auto"
    vae_slicing: str = "auto"
    vae_tiling: str = "auto"
    forward_chunking: str = "auto"
    channels_last: str = "auto"
    decode_chunk_size: int | None = None  # image2video default for requests that give none
    images_per_call: int | None = None  # text2image: images denoised in one pipeline call
    threads: int | None = None  # torch intra-op threads

    def __post_init__(self) -> None:
        if self.attention_slicing not in ATTENTION_SLICING:
            raise InvalidInput(
                f"must be one of {', '.join(ATTENTION_SLICING)}, got {self.attention_slicing!r}",
                field="attention_slicing",
            )
        for name in ("guidance_split", "vae_slicing", "vae_tiling", "forward_chunking", "channels_last"):
            if getattr(self, name) not in SWITCH:
                raise InvalidInput(
                    f"must be one of {', '.join(SWITCH)}, got {getattr(self, name)!r}", field=name
                )
        if self.decode_chunk_size is not None:
            DECODE_CHUNK_SIZE.check("decode_chunk_size", self.decode_chunk_size, integer=True)
        for name in ("images_per_call", "threads"):
            if getattr(self, name) is not None:
                TUNING_COUNT.check(name, getattr(self, name), integer=True)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Tuning:
        """The levers from OPEA_MEDIA_* variables, for callers that take no flags (the service)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field, suffix in ENV_NAMES.items():
            raw = environ.get(f"{ENV_PREFIX}_{suffix}", "").strip().lower()
            if not raw:
                continue
            if field in INTEGER_FIELDS:
                if raw == "auto":
                    continue
                try:
                    values[field] = int(raw)
                except ValueError:
                    raise InvalidInput(
                        f"{ENV_PREFIX}_{suffix} must be an integer or 'auto', got {raw!r}"
                    ) from None
            else:
                values[field] = raw
        return cls(**values)

    def resolve(self, task: Task, device: str) -> AppliedTuning:
        """Concrete settings for `task` on `device` ("cpu" or "cuda")."""
        cuda = device == "cuda"

        def switch(value: str, default: bool) -> bool:
            return default if value == "auto" else value == "on"

        return AppliedTuning(
            # Classifier-free guidance doubles the UNet's batch. SVD's 25 frames make that 50
            # images of activations, which do not fit in 8 GB beside the weights; one half after
            # the other they do, at the same arithmetic on a CPU. Images are small next to their
            # weights, and small models (tiny) pay Python overhead per call, so text2image keeps the
            # doubled batch; so does a GPU, where it runs faster.
            guidance_split=switch(self.guidance_split, task == "image2video" and not cuda),
            # SDPA (the default attention) already runs in bounded memory on CPU and CUDA; slicing
            # only made it slower in our figures.
            attention_slicing="off" if self.attention_slicing == "auto" else self.attention_slicing,
            # Decode a batch one image at a time: the same pixels, the same speed, and a batch of
            # eight 768 px images no longer decodes at once.
            vae_slicing=switch(self.vae_slicing, True),
            # Tiles only above the VAE's native size (768 px for SD 2.1): a 2048 px request would
            # otherwise need gigabytes more; at or below 768 px nothing changes.
            vae_tiling=switch(self.vae_tiling, True),
            # SVD's feed-forward layers one frame at a time: a smaller peak, no measurable cost.
            forward_chunking=switch(self.forward_chunking, task == "image2video"),
            # NHWC convolutions: on CUDA, and for text2image on the CPU too (SD 2.1-size bf16:
            # 0.92x the time at 768 px, 0.87x at 256 px, +0.2 GiB). image2video's CPU peak sits
            # near the 8G limit and was not measured with it, so it stays off there.
            channels_last=switch(self.channels_last, cuda or task == "text2image"),
            decode_chunk_size=self.decode_chunk_size
            or (CUDA_DECODE_CHUNK_SIZE if cuda else CPU_DECODE_CHUNK_SIZE),
            images_per_call=self.images_per_call or (CUDA_IMAGES_PER_CALL if cuda else CPU_IMAGES_PER_CALL),
            threads=self.threads or (None if cuda else cpu_quota_threads()),
        )


@dataclass(frozen=True)
class AppliedTuning:
    guidance_split: bool
    attention_slicing: str  # "off", "on" or "max"
    vae_slicing: bool
    vae_tiling: bool
    forward_chunking: bool
    channels_last: bool
    decode_chunk_size: int
    images_per_call: int
    threads: int | None  # None: leave torch's own choice

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def prepare_threading(environ: MutableMapping[str, str] | None = None) -> None:
    """Before torch loads OpenMP: let its idle workers sleep instead of spinning.

    Spinning workers hold a core while they wait for the others; when anything else wants that
    core (the other service on the host, a neighbour container, the service's own encoders) the
    workers they wait for are descheduled instead. Beside one busy process an SD 2.1-size
    generation took 4.5 s with PASSIVE against 7.1 s (ACTIVE) and 7.5 s (libgomp's default); on
    an idle machine PASSIVE costs 2-4 % at that size (docs/performance.md). A user's own setting wins.
    """
    environ = os.environ if environ is None else environ
    environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def cpu_quota_threads(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The CPUs a container may really use, when fewer than torch would start threads for.

    torch sizes its pool by the host's cores; under `docker run --cpus=2` on a 64-core host that is
    64 threads fighting for 2 CPUs, several times slower than 2 threads.
    """
    limit = _cgroup_cpu_limit(cgroup_root)
    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        available = os.cpu_count() or 1
    if limit is None or limit >= available:
        return None
    return max(1, limit)


def _cgroup_cpu_limit(root: Path) -> int | None:
    """CPUs allowed by the quota: cgroup v2 `cpu.max`, else v1 `cpu.cfs_quota_us` (Docker 20.10)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else math.ceil(int(quota) / int(period))
    except (OSError, ValueError):
        pass
    for v1 in (root / "cpu", root / "cpu,cpuacct", root):
        try:
            quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
            period_us = int((v1 / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota_us <= 0 or period_us <= 0 else math.ceil(quota_us / period_us)
    return None


def auto_dtype(task: Task, device: str, *, cpu_has_bf16: bool | None = None) -> str:
    """The weights precision "auto" stands for: float16 on CUDA; on a CPU see below."""
    if device == "cuda":
        return "float16"
    if cpu_has_bf16 is None:
        cpu_has_bf16 = cpu_supports_bf16()
    # bfloat16 halves the weights (SVD-XT: 9.0 -> 4.5 GB, over and within the 8G limit) and, on
    # CPUs with native bf16 (AVX512-BF16, AMX), runs several times faster than float32. Without
    # native support it is slower, so only image2video, which cannot fit otherwise, still uses it.
    if cpu_has_bf16 or task == "image2video":
        return "bfloat16"
    return "float32"


def cpu_supports_bf16() -> bool:
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
