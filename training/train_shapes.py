"""Train the built-in `shapes` text2image model and write it into the package.

    python -m training.train_shapes            # about an hour on 2 cores; give it all of them
    python -m training.train_shapes --quick    # a few minutes: the whole path, a useless model

A real StableDiffusionPipeline at a tiny scale: a 3-level AutoencoderKL (4x down, 4 latent
channels), a 2-level UNet2DConditionModel with cross-attention, a 2-layer CLIPTextModel with a
word-level CLIP tokenizer of the vocabulary in opea_media/models/shapes, SD 2.1's scheduler
(v-prediction). The data is drawn by opea_media/models/shapes: nothing is downloaded.

1. The autoencoder, nearly deterministic (the latent is the mean plus a little noise; L1 + MSE),
   until its held-out reconstruction error is under the bar: a blurred autoencoder caps every
   colour the UNet can learn.
2. The latents of a fixed set of pictures, and the scaling factor that makes them unit variance.
3. The UNet and the text encoder together, on captions that name all, part or none of each scene
   (none: the unconditional prompt of classifier-free guidance), with offset noise (so a plain
   background of any colour can be made) and an EMA of the weights, which is what is saved.

Deterministic from --seed on one machine with one thread count. Writes fp16 safetensors and
training.json (the steps, losses and minutes) to opea_media/models/shapes/text2image.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import shutil
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from opea_media.models import shapes
from opea_media.models.tiny import (
    BOS_TOKEN,
    EOS_TOKEN,
    PAD_TOKEN,
    SD21_SCHEDULER,
    _byte_symbols,
    _make_readable,
)

MAX_TOKENS = 32  # the longest caption is 12 tokens; longer prompts are cut, as CLIP cuts at 77


def build_tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose merges make each vocabulary word one token; anything else still
    encodes, byte by byte."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols]
    merges: list[tuple[str, str]] = []

    def bpe(word: str) -> list[str]:  # what CLIPTokenizer does with the merges so far
        pieces = [*word[:-1], word[-1] + "</w>"]
        rank = {pair: i for i, pair in enumerate(merges)}
        while len(pieces) > 1:
            neighbours = zip(pieces, pieces[1:], strict=False)
            best, i = min((rank.get(pair, len(rank)), i) for i, pair in enumerate(neighbours))
            if best == len(rank):
                break
            pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
        return pieces

    for word in sorted(set(shapes.WORDS)):
        while len(pieces := bpe(word)) > 1:
            merges.append((pieces[0], pieces[1]))
            tokens.append(pieces[0] + pieces[1])
    vocab = {t: i for i, t in enumerate([*tokens, BOS_TOKEN, EOS_TOKEN])}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    lines = "".join(f"{a} {b}\n" for a, b in merges)
    (folder / "merges.txt").write_text("#version: 0.2\n" + lines, encoding="utf-8")
    tokenizer = CLIPTokenizer.from_pretrained(folder, pad_token=PAD_TOKEN, model_max_length=MAX_TOKENS)
    assert all(len(tokenizer.tokenize(w)) == 1 for w in shapes.WORDS)
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_modules(
    vocab_size: int, tokenizer: CLIPTokenizer
) -> tuple[AutoencoderKL, UNet2DConditionModel, CLIPTextModel]:
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=shapes.SIZE,
    )
    unet = UNet2DConditionModel(
        sample_size=shapes.SIZE // 4,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(48, 96),
        layers_per_block=1,
        cross_attention_dim=64,
        attention_head_dim=(3, 6),
        use_linear_projection=True,
        norm_num_groups=16,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MAX_TOKENS,
            projection_dim=64,
            hidden_act="gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    return vae, unet, text_encoder


def pictures(
    scenes: list[shapes.Scene], n: int, rng: random.Random
) -> tuple[torch.Tensor, list[shapes.Scene]]:
    chosen = [rng.choice(scenes) for _ in range(n)]
    arrays = [np.asarray(shapes.draw(s, rng), dtype=np.float32) for s in chosen]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1
    return batch, chosen


def pipeline(vae, text_encoder, tokenizer, unet) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler.from_config(SD21_SCHEDULER), safety_checker=None,
        feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )  # fmt: skip


def cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_vae(
    vae: AutoencoderKL, scenes: list[shapes.Scene], *, steps: int, bar: float, rng: random.Random, log: list
) -> float:
    optimiser = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    held, _ = pictures([s for s in shapes.all_scenes() if shapes.held_out(s)], 64, random.Random(1))
    started = time.monotonic()
    error = float("inf")
    for step in range(steps):
        for group in optimiser.param_groups:
            group["lr"] = 1e-3 * cosine(step, steps, 50)
        batch, _ = pictures(scenes, 16, rng)
        posterior = vae.encode(batch).latent_dist
        latent = posterior.mean + 0.05 * torch.randn_like(posterior.mean)
        out = vae.decode(latent).sample
        loss = F.l1_loss(out, batch) + F.mse_loss(out, batch) + 1e-4 * posterior.mean.pow(2).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % 100 == 99 or step == steps - 1:
            with torch.no_grad():
                error = F.l1_loss(vae.decode(vae.encode(held).latent_dist.mean).sample, held).item()
            log.append({"stage": "vae", "step": step + 1, "loss": loss.item(), "held_out_l1": error,
                        "minutes": (time.monotonic() - started) / 60})  # fmt: skip
            print(f"vae {step + 1}: loss {loss.item():.4f}, held-out L1 {error:.4f}", flush=True)
            if error < bar:
                break
    return error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument(
        "--vae-bar", type=float, default=0.035, help="held-out L1 (of [-1, 1] pixels) to stop at"
    )
    parser.add_argument("--unet-steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--pictures", type=int, default=24000, help="how many pictures' latents the UNet sees"
    )
    parser.add_argument("--out", type=Path, default=shapes.FOLDER)
    parser.add_argument("--quick", action="store_true", help="a few minutes, to check the path")
    args = parser.parse_args()
    if args.quick:
        args.vae_steps, args.unet_steps, args.pictures = 20, 20, 256
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    began = time.monotonic()
    log: list[dict] = []
    work = args.out.with_name(args.out.name + ".training")
    shutil.rmtree(work, ignore_errors=True)
    tokenizer = build_tokenizer(work / "tokenizer")
    vae, unet, text_encoder = build_modules(len(tokenizer), tokenizer)
    scenes = [s for s in shapes.all_scenes() if not shapes.held_out(s)]
    print(f"{len(scenes)} training scenes, {len(shapes.all_scenes()) - len(scenes)} held out; "
          f"{torch.get_num_threads()} threads", flush=True)  # fmt: skip

    vae_error = train_vae(vae, scenes, steps=args.vae_steps, bar=args.vae_bar, rng=rng, log=log)
    vae.eval().requires_grad_(False)

    latents, captions_of = [], []
    with torch.no_grad():
        for start in range(0, args.pictures, 256):
            batch, chosen = pictures(scenes, min(256, args.pictures - start), rng)
            latents.append(vae.encode(batch).latent_dist.mean)
            captions_of.extend(chosen)
    all_latents = torch.cat(latents)
    scaling = 1.0 / all_latents.std().item()
    vae.register_to_config(scaling_factor=scaling)
    all_latents = all_latents * scaling
    print(f"{len(all_latents)} latents, scaling factor {scaling:.4f}", flush=True)

    noise_scheduler = DDPMScheduler.from_config(
        {k: v for k, v in SD21_SCHEDULER.items() if not k.startswith("_")}
    )
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimiser = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.01)
    ema_unet, ema_text = (
        copy.deepcopy(unet).requires_grad_(False),
        copy.deepcopy(text_encoder).requires_grad_(False),
    )
    token_cache: dict[str, torch.Tensor] = {}

    def tokens(prompt: str) -> torch.Tensor:
        if prompt not in token_cache:
            token_cache[prompt] = tokenizer(prompt, padding="max_length", max_length=MAX_TOKENS,
                                            truncation=True, return_tensors="pt").input_ids[0]  # fmt: skip
        return token_cache[prompt]

    started = time.monotonic()
    for step in range(args.unet_steps):
        for group in optimiser.param_groups:
            group["lr"] = 5e-4 * cosine(step, args.unet_steps, 200)
        index = torch.randint(0, len(all_latents), (args.batch,))
        x0 = all_latents[index]
        ids = torch.stack([tokens(shapes.training_prompt(captions_of[i], rng)) for i in index.tolist()])
        noise = torch.randn_like(x0) + 0.1 * torch.randn(x0.shape[0], x0.shape[1], 1, 1)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (args.batch,))
        noisy = noise_scheduler.add_noise(x0, noise, t)
        target = noise_scheduler.get_velocity(x0, noise, t)
        context = text_encoder(ids)[0]
        loss = F.mse_loss(unet(noisy, t, context).sample, target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, live in ((ema_unet, unet), (ema_text, text_encoder)):
                for e, p in zip(ema.parameters(), live.parameters(), strict=True):
                    e.lerp_(p, 1 - decay)
        if step % 1000 == 999:  # a look at the model so far: python -m benchmarks.shapes --model PATH
            pipeline(vae, ema_text, tokenizer, ema_unet).save_pretrained(work / "checkpoint")
        if step % 100 == 99 or step == args.unet_steps - 1:
            minutes = (time.monotonic() - started) / 60
            log.append({"stage": "unet", "step": step + 1, "loss": loss.item(), "minutes": minutes})
            print(f"unet {step + 1}: loss {loss.item():.4f} ({minutes:.1f} min)", flush=True)

    pipe = pipeline(vae, ema_text, tokenizer, ema_unet).to(torch.float16)
    shutil.rmtree(args.out, ignore_errors=True)
    pipe.save_pretrained(args.out, safe_serialization=True, variant="fp16")
    # transformers 5 saves only tokenizer.json; 4's CLIPTokenizer reads these two.
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(work / "tokenizer" / name, args.out / "tokenizer" / name)
    (args.out / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD21_SCHEDULER, indent=2) + "\n")
    summary = {
        "seed": args.seed, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "vae_held_out_l1": vae_error, "scaling_factor": scaling, "unet_steps": args.unet_steps,
        "batch": args.batch, "pictures": args.pictures, "minutes": (time.monotonic() - began) / 60,
        "log": log,
    }  # fmt: skip
    (args.out / "training.json").write_text(json.dumps(summary, indent=1) + "\n")
    _make_readable(args.out)  # safetensors writes owner-only files; the service runs as another user
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out} in {summary['minutes']:.1f} min", flush=True)


if __name__ == "__main__":
    main()
