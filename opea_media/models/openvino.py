"""The OpenVINO backend: a loaded diffusers pipeline's UNet and VAE decoder run as OpenVINO models.

Only the modules that hold the time run on OpenVINO: the UNet (every denoising step) and the VAE's
decoder (the decode). Everything else stays the diffusers pipeline as loaded, so its schedulers,
callbacks, previews, editing pipelines, VAE slicing/tiling, the guidance split and the float32
retry of a non-finite decode keep working, and the text and image encoders (once per request)
stay in PyTorch.

Each module is traced from the loaded pipeline (`openvino.convert_model`), with dynamic batch,
frame and spatial dimensions, and saved as OpenVINO IR under the opea-media cache, keyed by what
it was made from (the model's files or preset, the dtype, the module, the shapes, the versions):
a second start reads the IR instead of converting again. Not optimum-intel: its 2.2.0 pins
transformers < 5.6 and huggingface-hub < 1.22 and requires torchvision, which would downgrade this
project's stack (docs/performance.md).

Imported only when a model loads with `--backend openvino` (it imports torch and openvino).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InvalidInput

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'opea-media[openvino]'"
# Bump when what is traced changes (the wrappers below), so old IR is not reused.
FORMAT_VERSION = 1


def require_openvino() -> Any:
    """The openvino module, or one line saying how to get it."""
    try:
        import openvino
    except ImportError:
        raise InvalidInput(
            f"--backend openvino needs the openvino package, which is not installed: {INSTALL_HINT}"
        ) from None
    return openvino


@dataclass
class Conversion:
    """What making the OpenVINO modules cost: converting (0 when the cache held them) and compiling."""

    folder: Path
    convert_seconds: float = 0.0
    compile_seconds: float = 0.0
    reused: bool = False

    @property
    def seconds(self) -> float:
        return self.convert_seconds + self.compile_seconds


# --- what is traced -------------------------------------------------------------------------------


class _UNetForExport(torch.nn.Module):
    """SD's UNet as a function of tensors only (timestep as a float vector of the batch)."""

    def __init__(self, unet: Any) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: Any, timestep: Any, encoder_hidden_states: Any) -> Any:
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]


class _VideoUNetForExport(torch.nn.Module):
    """SVD's spatio-temporal UNet as a function of tensors only."""

    def __init__(self, unet: Any) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: Any, timestep: Any, encoder_hidden_states: Any, added_time_ids: Any) -> Any:
        return self.unet(sample, timestep, encoder_hidden_states, added_time_ids, return_dict=False)[0]


class _TemporalDecoderForExport(torch.nn.Module):
    """SVD's temporal decoder, its frame count read from the indicator's shape (traced, not fixed)."""

    def __init__(self, decoder: Any) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, sample: Any, image_only_indicator: Any) -> Any:
        return self.decoder(
            sample, image_only_indicator=image_only_indicator, num_frames=image_only_indicator.shape[1]
        )


@dataclass(frozen=True)
class _Part:
    """One module to convert: how to reach it, wrap it for tracing, and its inputs."""

    name: str
    module: Callable[[Any], Any]  # pipeline -> the torch module
    wrap: Callable[[Any], torch.nn.Module]
    example: Callable[[Any], dict[str, torch.Tensor]]  # pipeline -> example inputs (float32)
    dynamic: dict[str, list[int]]  # input -> its shape, -1 where dynamic


# Latent sides of the UNets' examples: one that is not a multiple of the UNet's 2**upsamplers makes
# diffusers forward each skip's size to its upsampler, so the traced graph serves every size (with
# 8, sizes like 520 px, latents of 65, would fail).
ODD = 9


def _sd_unet_example(pipe: Any) -> dict[str, torch.Tensor]:
    c = pipe.unet.config
    return {
        "sample": torch.randn(2, c.in_channels, ODD, ODD),
        "timestep": torch.tensor([500.0, 500.0]),
        "encoder_hidden_states": torch.randn(2, 77, c.cross_attention_dim),
    }


def _sd_decoder_example(pipe: Any) -> dict[str, torch.Tensor]:
    return {"sample": torch.randn(1, pipe.vae.config.latent_channels, 8, 8)}


def _svd_unet_example(pipe: Any) -> dict[str, torch.Tensor]:
    c = pipe.unet.config
    return {
        "sample": torch.randn(2, 3, c.in_channels, ODD, ODD),
        "timestep": torch.tensor([1.0, 1.0]),
        "encoder_hidden_states": torch.randn(2, 1, c.cross_attention_dim),
        "added_time_ids": torch.tensor([[6.0, 127.0, 0.02]] * 2),
    }


def _svd_decoder_example(pipe: Any) -> dict[str, torch.Tensor]:
    return {
        "sample": torch.randn(2, pipe.vae.config.latent_channels, 8, 8),
        "image_only_indicator": torch.zeros(1, 2),
    }


_TEXT2IMAGE = (
    _Part(
        "unet",
        lambda pipe: pipe.unet,
        _UNetForExport,
        _sd_unet_example,
        {"sample": [-1, -1, -1, -1], "timestep": [-1], "encoder_hidden_states": [-1, -1, -1]},
    ),
    _Part(
        "vae_decoder",
        lambda pipe: pipe.vae.decoder,
        lambda decoder: decoder,
        _sd_decoder_example,
        {"sample": [-1, -1, -1, -1]},
    ),
)
_IMAGE2VIDEO = (
    _Part(
        "unet",
        lambda pipe: pipe.unet,
        _VideoUNetForExport,
        _svd_unet_example,
        {
            "sample": [-1, -1, -1, -1, -1],
            "timestep": [-1],
            "encoder_hidden_states": [-1, -1, -1],
            "added_time_ids": [-1, -1],
        },
    ),
    _Part(
        "vae_decoder",
        lambda pipe: pipe.vae.decoder,
        _TemporalDecoderForExport,
        _svd_decoder_example,
        {"sample": [-1, -1, -1, -1], "image_only_indicator": [-1, -1]},
    ),
)


def parts_of(pipe: Any) -> tuple[_Part, ...]:
    name = type(pipe).__name__
    if name == "StableDiffusionPipeline":
        return _TEXT2IMAGE
    if name == "StableVideoDiffusionPipeline":
        return _IMAGE2VIDEO
    raise InvalidInput(
        f"--backend openvino runs StableDiffusionPipeline and StableVideoDiffusionPipeline models, "
        f"not {name}; use --backend torch"
    )


# --- what runs ------------------------------------------------------------------------------------


class _OpenVINOModule(torch.nn.Module):
    """A compiled OpenVINO model behind a torch module's call: tensors in, a tensor out.

    Inputs are fed as float32 (what was traced); the output comes back in the caller's dtype. One
    infer request per module: a pipeline runs one call at a time (the worker's thread).
    """

    def __init__(self, compiled: Any, *, dtype: torch.dtype) -> None:
        super().__init__()
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._dtype = dtype

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def run(self, *inputs: torch.Tensor) -> torch.Tensor:
        feed = [x.detach().to(torch.float32).contiguous().numpy() for x in inputs]
        # share_outputs=False: the result outlives the next call on the same request.
        result = self._request.infer(feed, share_inputs=True, share_outputs=False)
        return torch.from_numpy(result[self._compiled.output(0)]).to(self._dtype)


class OpenVINOUNet(_OpenVINOModule):
    """Stands in for the pipeline's UNet: the same config, called as diffusers calls a UNet."""

    def __init__(self, compiled: Any, unet: Any) -> None:
        super().__init__(compiled, dtype=unet.dtype)
        self.config = unet.config
        # SVD's pipeline checks its time ids against this layer's width; it is small.
        self.add_embedding = getattr(unet, "add_embedding", None)
        self._video = type(unet).__name__ == "UNetSpatioTemporalConditionModel"

    def forward(
        self, sample: Any, timestep: Any, encoder_hidden_states: Any, *args: Any, **kwargs: Any
    ) -> Any:
        return_dict = kwargs.pop("return_dict", True)
        steps = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1).expand(sample.shape[0])
        inputs = [sample, steps, encoder_hidden_states]
        if self._video:
            inputs.append(kwargs.pop("added_time_ids", args[0] if args else None))
        elif kwargs.get("added_cond_kwargs") or kwargs.get("timestep_cond") is not None:
            raise ValueError("the OpenVINO UNet takes no added conditions (SDXL, LCM)")
        out = self.run(*inputs)
        if not return_dict:
            return (out,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=out)


class OpenVINODecoder(_OpenVINOModule):
    """Stands in for the VAE's decoder module (the encoder and the rest of the VAE stay torch)."""

    def __init__(self, compiled: Any, decoder: Any) -> None:
        dtype = next(decoder.parameters()).dtype
        super().__init__(compiled, dtype=dtype)
        self._temporal = "image_only_indicator" in compiled_input_names(compiled)

    def forward(self, sample: Any, *args: Any, **kwargs: Any) -> Any:
        if self._temporal:
            return self.run(sample, kwargs["image_only_indicator"])
        return self.run(sample)


def compiled_input_names(compiled: Any) -> set[str]:
    return {name for port in compiled.inputs for name in port.get_names()}


# --- converting, caching, loading -----------------------------------------------------------------


def cache_key(*, ref: str, location: str, kind: str, dtype: str, task: str) -> str:
    """What the IR depends on: the model's files (their sizes and times) or preset, dtype, versions."""
    ov = require_openvino()
    import diffusers

    files: list[tuple[str, int, int]] = []
    root = Path(location)
    if kind in ("builtin", "local") and root.is_dir():
        for path in sorted(root.rglob("*")):
            if path.is_file():
                stat = path.stat()
                files.append((str(path.relative_to(root)), stat.st_size, int(stat.st_mtime)))
    identity = {
        "ref": ref,
        "location": location,
        "files": files,
        "dtype": dtype,
        "task": task,
        "shapes": "dynamic",
        "openvino": ov.__version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "format": FORMAT_VERSION,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in ref).strip("-")[:60]
    return f"{slug}-{task}-{dtype}-{digest}"


def convert(pipe: Any, folder: Path, *, dtype: str) -> None:
    """Trace the pipeline's heavy modules into OpenVINO IR in `folder` (made atomically)."""
    ov = require_openvino()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        for part in parts_of(pipe):
            module = part.module(pipe)
            original = next(module.parameters()).dtype
            # Traced in float32: OpenVINO picks its own inference precision per CPU (bf16 on AMX).
            # nn.Module.to: diffusers' own .to() warns about modules to keep in float32.
            torch.nn.Module.to(module, torch.float32)
            try:
                # The tracer warns at every shape test in diffusers' code; each is either true for
                # every input (asserts) or made so by the examples (ODD): noise in the log.
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)
                    model = ov.convert_model(part.wrap(module), example_input=part.example(pipe))
            finally:
                torch.nn.Module.to(module, original)
            for port in model.inputs:
                name = port.get_any_name()
                if name in part.dynamic:
                    port.get_node().set_partial_shape(ov.PartialShape(part.dynamic[name]))
            model.validate_nodes_and_infer_types()
            # Half-precision models keep half-size files; float32 keeps its exact weights.
            ov.save_model(model, tmp / f"{part.name}.xml", compress_to_fp16=dtype != "float32")
            del model
        (tmp / "opea-media.json").write_text(
            json.dumps({"dtype": dtype, "parts": [p.name for p in parts_of(pipe)]})
        )
        try:
            os.rename(tmp, folder)
        except OSError:  # another process made it first: use theirs
            if not (folder / "opea-media.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def use_openvino(pipe: Any, *, cache_dir: Path, key: str, dtype: str, threads: int | None) -> Conversion:
    """Replace `pipe`'s UNet and VAE decoder by OpenVINO models, converting them once per cache key."""
    ov = require_openvino()
    folder = cache_dir / "openvino" / key
    conversion = Conversion(folder=folder)
    started = time.perf_counter()
    if (folder / "opea-media.json").is_file():
        conversion.reused = True
        log.info("reusing the OpenVINO conversion", extra={"folder": str(folder)})
    else:
        log.info("converting the pipeline to OpenVINO", extra={"folder": str(folder)})
        convert(pipe, folder, dtype=dtype)
        gc.collect()  # the traces hold the torch weights in reference cycles
        conversion.convert_seconds = time.perf_counter() - started
        log.info(
            "converted the pipeline to OpenVINO",
            extra={"folder": str(folder), "seconds": round(conversion.convert_seconds, 3)},
        )
    started = time.perf_counter()
    core = ov.Core()
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
    if dtype == "float32":
        # A float32 run computes in float32: OpenVINO would otherwise pick bfloat16 on a CPU that
        # has it (34/255 from torch's float32 on the tiny pipeline). 16-bit runs take its choice.
        config["INFERENCE_PRECISION_HINT"] = "f32"
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    for part in parts_of(pipe):
        compiled = core.compile_model(core.read_model(folder / f"{part.name}.xml"), "CPU", config)
        module = part.module(pipe)
        if part.name == "unet":
            pipe.unet = OpenVINOUNet(compiled, module)
        else:
            pipe.vae.decoder = OpenVINODecoder(compiled, module)
        del module
    gc.collect()  # the replaced torch modules
    conversion.compile_seconds = time.perf_counter() - started
    log.info(
        "OpenVINO modules ready",
        extra={
            "folder": str(folder),
            "reused": conversion.reused,
            "convert_seconds": round(conversion.convert_seconds, 3),
            "compile_seconds": round(conversion.compile_seconds, 3),
        },
    )
    return conversion
