"""The memory and speed levers: declared once, as the fields of Tuning, and resolved per device.

Each field of `Tuning` is one lever. Its name gives the flag (`vae_tiling`: `--vae-tiling`) and
the variable (`OPEA_MEDIA_VAE_TILING`); `lever(...)` gives its default, its choices or range, the
tasks it acts on and its help text. commands/levers.py turns `LEVERS` into the options of
`generate-image`, `animate` and `serve` and into the README's table. A new lever is one field here
(and its effect in `resolve` and pipeline_tuning.py). "auto" leaves the choice to `resolve`, whose
defaults come from the figures in docs/performance.md: text2image within 4-6 GB and image2video
within 6-8 GB on a CPU (the containers' 8G limit), at no measurable cost in speed.

Nothing here imports torch at import time: the CLI reads this table to build its --help.
"""

from __future__ import annotations

import math
import os
from collections.abc import MutableMapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..config import TASKS, Task, envvar
from ..errors import InvalidInput
from ..params import DECODE_CHUNK_SIZE, TUNING_COUNT, Limit

SWITCH = ("auto", "on", "off")
# diffusers' slice sizes: "on" halves the heads per slice, "max" runs one head at a time.
ATTENTION_SLICING = ("auto", "off", "on", "max")
OMP_WAIT_POLICIES = ("auto", "passive", "active")
BACKENDS = ("auto", "torch", "openvino")

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

# What `--dtype auto` picks (auto_dtype below), said once for --help, the README and docstrings.
DTYPE_HELP = (
    "Weights precision. auto: float16 on CUDA; on a CPU with native bfloat16 (AVX512-BF16 or AMX), "
    "bfloat16 (half the memory, several times faster); on other CPUs float32 for text2image and "
    "bfloat16 for image2video (SVD-XT's float32 weights alone exceed the 8 GB budget)."
)


@dataclass(frozen=True)
class Lever:
    """One lever, as its flag, its variable and --help present it."""

    name: str  # the Tuning field
    default: str | int | None  # None: "auto", for counts
    help: str
    tasks: tuple[Task, ...]  # what it acts on; `serve` offers every lever, since it runs either task
    choices: tuple[str, ...] = ()  # a choice among words ...
    limit: Limit | None = None  # ... or a count: "auto" (None) or an integer within `limit`

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def envvar(self) -> str:
        return envvar(self.name)

    def check(self, value: Any) -> None:
        if self.limit is not None:
            if value is not None:
                self.limit.check(self.name, value, integer=True)
        elif value not in self.choices:
            raise InvalidInput(f"must be one of {', '.join(self.choices)}, got {value!r}", field=self.name)


def lever(
    default: str | None,
    help: str,
    *,
    tasks: tuple[Task, ...] = TASKS,
    choices: tuple[str, ...] = SWITCH,
    limit: Limit | None = None,
) -> Any:
    """A Tuning field that is a lever (see Lever)."""
    spec = {
        "default": default,
        "help": help,
        "tasks": tasks,
        "choices": () if limit else choices,
        "limit": limit,
    }
    return field(default=default, metadata={"lever": spec})


@dataclass(frozen=True)
class Tuning:
    """The levers as asked for; "auto" (None for counts) leaves the choice to `resolve`."""

    guidance_split: str = lever(
        "auto",
        "Run the UNet on the unconditional and conditional halves of classifier-free guidance one "
        "after the other: half the activation memory, the same arithmetic. auto: on for image2video on "
        "the CPU (which otherwise needs over 8 GB), else off.",
    )
    attention_slicing: str = lever(
        "auto",
        "text2image: compute attention a few heads at a time (max: one). auto: off, PyTorch's SDPA is "
        "already memory-efficient.",
        tasks=("text2image",),
        choices=ATTENTION_SLICING,
    )
    vae_slicing: str = lever(
        "auto",
        "text2image: decode several images one at a time: the same pixels, a lower peak. auto: on.",
        tasks=("text2image",),
    )
    vae_tiling: str = lever(
        "auto",
        "text2image: decode images larger than the model's native size in tiles: bounded memory, faint "
        "seams possible. auto: on.",
        tasks=("text2image",),
    )
    forward_chunking: str = lever(
        "auto",
        "image2video: run the UNet's feed-forward layers one frame at a time: a lower peak, the same "
        "speed. auto: on.",
        tasks=("image2video",),
    )
    channels_last: str = lever(
        "auto", "Convolution memory layout NHWC. auto: on, except image2video on the CPU."
    )
    decode_chunk_size: int | None = lever(
        None,
        "image2video: frames the VAE decodes at once (a service request's own decode_chunk_size "
        f"wins); lower uses less memory, the same time on a CPU. auto: {CPU_DECODE_CHUNK_SIZE} on a "
        f"CPU, {CUDA_DECODE_CHUNK_SIZE} with CUDA.",
        tasks=("image2video",),
        limit=DECODE_CHUNK_SIZE,
    )
    images_per_call: int | None = lever(
        None,
        "text2image: most images denoised in one pipeline call; more run in several calls, with the "
        f"same pixels. auto: {CPU_IMAGES_PER_CALL} on a CPU (bounds the peak memory), "
        f"{CUDA_IMAGES_PER_CALL} with CUDA.",
        tasks=("text2image",),
        limit=TUNING_COUNT,
    )
    threads: int | None = lever(
        None,
        "CPU threads for inference. auto: PyTorch's choice (one per core), capped at the container's "
        "CPU quota.",
        limit=TUNING_COUNT,
    )
    omp_wait_policy: str = lever(
        "auto",
        "How OpenMP's idle CPU threads wait, set before torch loads: passive sleeps (fastest when "
        "anything else shares the cores), active spins (a few percent faster on a machine of its own). "
        "auto: passive, unless OMP_WAIT_POLICY is set.",
        choices=OMP_WAIT_POLICIES,
    )

    backend: str = lever(
        "auto",
        "What runs the UNet and the VAE decoder. torch: PyTorch eager. openvino (CPU only, "
        "pip install 'opea-media[openvino]'): converted once from the loaded pipeline and cached under "
        "the opea-media cache (the first start pays 1-2 min for SD 2.1); SD 2.1 ran in 0.62x the time "
        "(bfloat16, 768 px, a CPU with native bfloat16) and 0.70x (float32, 512 px, one without), and "
        "holds more memory (768 px bfloat16: 8.1 GiB at its peak against 4.4); SVD-XT in 0.87x for "
        "2.3x the memory (16 GiB for 2 frames against 7.2), so not for image2video. auto: torch.",
        choices=BACKENDS,
    )

    def __post_init__(self) -> None:
        for each in LEVERS:
            each.check(getattr(self, each.name))

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
            backend=self._backend(cuda),
        )

    def _backend(self, cuda: bool) -> str:
        # torch: OpenVINO needs an optional package and much more memory, changes the picture a
        # little, and gains little for SVD-XT (docs/performance.md, "Backends"): a recommendation
        # for text2image, not the default.
        if self.backend == "openvino" and cuda:
            raise InvalidInput(
                "--backend openvino runs on the CPU here; use --device cpu, or --backend torch on CUDA"
            )
        return "torch" if self.backend == "auto" else self.backend


LEVERS: tuple[Lever, ...] = tuple(Lever(name=f.name, **f.metadata["lever"]) for f in fields(Tuning))


@dataclass(frozen=True)
class AppliedTuning:
    """What `resolve` made of a Tuning for one task and device (the OpenMP policy is set earlier)."""

    guidance_split: bool
    attention_slicing: str  # "off", "on" or "max"
    vae_slicing: bool
    vae_tiling: bool
    forward_chunking: bool
    channels_last: bool
    decode_chunk_size: int
    images_per_call: int
    threads: int | None  # None: leave torch's own choice
    backend: str  # "torch" or "openvino"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def prepare_threading(policy: str = "auto", *, environ: MutableMapping[str, str] | None = None) -> None:
    """Before torch loads OpenMP: let its idle workers sleep instead of spinning, unless told otherwise.

    Spinning workers hold a core while they wait for the others; when anything else wants that
    core (the other service on the host, a neighbour container, the service's own encoders) the
    workers they wait for are descheduled instead. Beside one busy process an SD 2.1-size
    generation took 4.5 s with PASSIVE against 7.1 s (ACTIVE) and 7.5 s (libgomp's default); on
    an idle machine PASSIVE costs 2-4 % at that size (docs/performance.md). With "auto" a user's
    own OMP_WAIT_POLICY wins; "passive" and "active" replace it.
    """
    environ = os.environ if environ is None else environ
    if policy == "auto":
        environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    else:
        environ["OMP_WAIT_POLICY"] = policy.upper()


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
    """The weights precision `--dtype auto` stands for (DTYPE_HELP says it to the user)."""
    if device == "cuda":
        return "float16"
    if cpu_has_bf16 is None:
        from .cpu import cpu_supports_bf16

        cpu_has_bf16 = cpu_supports_bf16()
    # bfloat16 halves the weights (SVD-XT: 9.0 -> 4.5 GB, over and within the 8G limit) and, on
    # CPUs with native bf16 (AVX512-BF16, AMX), runs several times faster than float32. Without
    # native support it is slower, so only image2video, which cannot fit otherwise, still uses it.
    if cpu_has_bf16 or task == "image2video":
        return "bfloat16"
    return "float32"
