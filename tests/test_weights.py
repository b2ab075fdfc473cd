"""Real checkpoints as users download them: fp16 variant files, full-precision files, both, and
pickles, each in a folder saved by diffusers' own save_pretrained."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from test_registry import fake_hub_cache

from opea_media.errors import ModelUnavailable
from opea_media.models import ModelRegistry
from opea_media.models.sources import WeightChoice, choose_weights


def _marked(pipe: Any, mark: float) -> None:
    """Set one UNet weight to `mark`, so a loaded pipeline tells which files it was read from."""
    with torch.no_grad():
        pipe.unet.conv_in.bias[0] = mark


def _save(pipe: Any, folder: Path, *, variant: str | None = None, safe: bool = True) -> None:
    pipe.save_pretrained(folder, variant=variant, safe_serialization=safe)


@pytest.fixture
def folders(tiny_t2i: Any, tmp_path: Path) -> dict[str, Path]:
    """fp16-only, full-only and both, as a Hub download of each kind leaves them."""
    import copy

    pipe = copy.deepcopy(tiny_t2i.pipe)
    made = {name: tmp_path / name for name in ("fp16", "full", "both")}
    _marked(pipe, 0.25)
    _save(pipe, made["full"])
    _save(pipe, made["both"])
    half = pipe.to(torch.float16)
    _marked(half, 0.5)
    _save(half, made["fp16"], variant="fp16")
    _save(half, made["both"], variant="fp16")
    return made


def _loaded_mark(folder: Path, dtype: str, cache_dir: Path, **options: Any) -> tuple[float, torch.dtype]:
    model = ModelRegistry(device="cpu", dtype=dtype, cache_dir=cache_dir, **options).text2image(str(folder))
    bias = model.pipe.unet.conv_in.bias.detach()
    return float(bias[0]), bias.dtype


def test_a_folder_of_fp16_files_only_loads_on_the_cpu_in_float32(
    folders: dict[str, Path], cache_dir: Path
) -> None:
    # What the SVD model card's own variant="fp16" download leaves: it did not load at all.
    assert _loaded_mark(folders["fp16"], "float32", cache_dir) == (0.5, torch.float32)


def test_a_16_bit_run_reads_the_fp16_files_and_a_32_bit_run_the_full_ones(
    folders: dict[str, Path], cache_dir: Path
) -> None:
    assert _loaded_mark(folders["both"], "bfloat16", cache_dir) == (0.5, torch.bfloat16)
    assert _loaded_mark(folders["both"], "float32", cache_dir) == (0.25, torch.float32)
    assert _loaded_mark(folders["full"], "bfloat16", cache_dir) == (0.25, torch.bfloat16)


COMPONENTS = ("unet", "vae", "text_encoder", "image_encoder")


def _first_weights(pipe: Any) -> dict[str, torch.Tensor]:
    """The first parameter of each model in the pipeline, by component."""
    models = {name: getattr(pipe, name, None) for name in COMPONENTS}
    return {name: next(m.parameters()).detach() for name, m in models.items() if m is not None}


def _save_both_marked(pipe: Any, folder: Path) -> None:
    """Full-precision files marked 0.25 and fp16 files marked 0.5 in every component, side by side."""
    import copy

    pipe = copy.deepcopy(pipe)
    for mark, variant in ((0.25, None), (0.5, "fp16")):
        if variant:
            pipe = pipe.to(torch.float16)
        with torch.no_grad():
            for weight in _first_weights(pipe).values():
                weight[(0,) * weight.ndim] = mark
        _save(pipe, folder, variant=variant)


def test_a_16_bit_run_reads_every_component_from_its_fp16_file_where_it_has_one(
    tiny_t2i: Any, tiny_i2v: Any, tmp_path: Path, cache_dir: Path
) -> None:
    # Half the bytes to read and map: a bfloat16 load from the fp16 files peaks lower (docs/performance.md).
    def loaded(task: str, folder: Path, dtype: str) -> dict[str, tuple[float, torch.dtype]]:
        model = ModelRegistry(device="cpu", dtype=dtype, cache_dir=cache_dir).handle(task, str(folder)).load()
        return {name: (float(w[(0,) * w.ndim]), w.dtype) for name, w in _first_weights(model.pipe).items()}

    # SVD-XT as its Hub repo has it, both sets; image2video's auto dtype is bfloat16 on every CPU.
    svd = tmp_path / "svd"
    _save_both_marked(tiny_i2v.pipe, svd)
    assert loaded("image2video", svd, "auto") == {
        name: (0.5, torch.bfloat16) for name in ("unet", "vae", "image_encoder")
    }
    # A set of fp16 files without the text encoder's: the others still come from theirs.
    sd = tmp_path / "sd"
    _save_both_marked(tiny_t2i.pipe, sd)
    (sd / "text_encoder" / "model.fp16.safetensors").unlink()
    assert loaded("text2image", sd, "bfloat16") == {
        "unet": (0.5, torch.bfloat16),
        "vae": (0.5, torch.bfloat16),
        "text_encoder": (0.25, torch.bfloat16),
    }


def test_pickle_weights_are_refused_unless_allowed(tiny_t2i: Any, tmp_path: Path, cache_dir: Path) -> None:
    folder = tmp_path / "pickles"
    _save(tiny_t2i.pipe, folder, safe=False)  # diffusers writes .bin; transformers keeps safetensors
    assert list((folder / "unet").glob("*.bin")) and not list((folder / "unet").glob("*.safetensors"))
    refused = r"weights of unet, vae only as pickle \(\.bin\) files.*runs the code.*--allow-pickle-weights"
    with pytest.raises(ModelUnavailable, match=refused):
        ModelRegistry(device="cpu", dtype="float32", cache_dir=cache_dir).text2image(str(folder))
    mark, _ = _loaded_mark(folder, "float32", cache_dir, allow_pickle=True)
    assert mark == pytest.approx(float(tiny_t2i.pipe.unet.conv_in.bias[0].detach()))


def test_a_hub_cache_of_fp16_files_only_loads_offline(folders: dict[str, Path], tmp_path: Path) -> None:
    # A fresh process, so huggingface_hub reads HF_HOME and HF_HUB_OFFLINE as a user's would.
    hf_home = tmp_path / "hf"
    fake_hub_cache(hf_home / "hub", "someone/sd21-fp16", str(folders["fp16"]))
    code = (
        "from opea_media.models import ModelRegistry\n"
        "m = ModelRegistry(device='cpu', dtype='float32').text2image('someone/sd21-fp16')\n"
        "print(float(m.pipe.unet.conv_in.bias[0].detach()))\n"
    )
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0.5"


def test_sharded_and_variant_file_names_are_read_as_diffusers_writes_them() -> None:
    files = (
        "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
        "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
        "text_encoder/model.fp16.safetensors",
        "text_encoder/model.safetensors",
        "vae/diffusion_pytorch_model.bin",
    )
    assert choose_weights(files, half_precision=True) == WeightChoice("fp16", pickled=())
    assert choose_weights(files, half_precision=False) == WeightChoice(None, pickled=("vae",))


def test_the_cli_refuses_pickles_in_one_line_and_the_variable_allows_them(
    tiny_t2i: Any, tmp_path: Path, cache_dir: Path
) -> None:
    from click.testing import CliRunner

    from opea_media.cli import cli

    folder = tmp_path / "pickles"
    _save(tiny_t2i.pipe, folder, safe=False)
    args = [
        "generate-image",
        "a cat",
        "--model",
        str(folder),
        "--steps",
        "1",
        "-o",
        str(tmp_path / "cat.png"),
    ]
    refused = CliRunner().invoke(cli, args, env={"OPEA_MEDIA_CACHE": str(cache_dir)})
    assert refused.exit_code == 3 and "--allow-pickle-weights" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    env = {"OPEA_MEDIA_CACHE": str(cache_dir), "OPEA_MEDIA_ALLOW_PICKLE_WEIGHTS": "1"}
    allowed = CliRunner().invoke(cli, args, env=env)
    assert allowed.exit_code == 0, allowed.stderr
    assert (tmp_path / "cat.png").is_file()


def test_a_load_failure_names_the_missing_file_and_the_variant(
    folders: dict[str, Path], tmp_path: Path, cache_dir: Path
) -> None:
    from click.testing import CliRunner

    from opea_media.cli import cli

    (folders["full"] / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    args = ["generate-image", "a cat", "--model", str(folders["full"]), "--steps", "1"]
    args += ["-o", str(tmp_path / "c.png")]
    failed = CliRunner().invoke(cli, args, env={"OPEA_MEDIA_CACHE": str(cache_dir)})
    assert failed.exit_code == 3
    (line,) = failed.stderr.strip().splitlines()
    assert "diffusion_pytorch_model.safetensors" in line and str(folders["full"] / "unet") in line, line
    assert "see the service log" not in line

    # A 16-bit load looks for the fp16 files (then the full ones): the folder is named, and the variant.
    (folders["fp16"] / "vae" / "diffusion_pytorch_model.fp16.safetensors").unlink()
    with pytest.raises(ModelUnavailable) as caught:
        ModelRegistry(device="cpu", dtype="bfloat16", cache_dir=cache_dir).text2image(str(folders["fp16"]))
    assert str(folders["fp16"] / "vae") in caught.value.detail
    assert "looked for the fp16 weights first" in caught.value.detail


async def test_health_says_why_the_model_did_not_load(
    server_client: Any, folders: dict[str, Path], cache_dir: Path
) -> None:
    import asyncio

    (folders["full"] / "vae" / "config.json").unlink()
    client = await server_client(
        None, wait_ready=False, model=str(folders["full"]), device="cpu", dtype="float32", cache_dir=cache_dir
    )
    for _ in range(600):
        body = await (await client.get("/health")).json()
        if body["status"] != "loading":
            break
        await asyncio.sleep(0.05)
    assert body["status"] == "failed"
    assert "no file named config.json" in body["detail"] and str(folders["full"] / "vae") in body["detail"]


def _resident_kb(folder: Path) -> int:
    """Resident kB of this process's mappings of the weight files under `folder`."""
    from opea_media.models.mapped import weight_mappings

    mappings = weight_mappings(Path("/proc/self/smaps").read_text())
    return sum(m.resident_kb for m in mappings if m.path.startswith(str(folder)))


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux's /proc/PID/smaps")
def test_a_load_leaves_no_resident_pages_of_the_weight_files_and_the_weights_read_back(
    folders: dict[str, Path], cache_dir: Path
) -> None:
    # float32 from full files: weights stay views of the mapped files, the conv weights are copied
    # (channels_last); the pages the load touched are dropped, a weight still mapped reads back.
    model = ModelRegistry(device="cpu", dtype="float32", cache_dir=cache_dir).text2image(str(folders["full"]))
    assert _resident_kb(folders["full"]) == 0
    assert float(model.pipe.unet.conv_in.bias[0].detach()) == 0.25


def test_weight_mappings_are_found_in_smaps_and_written_ones_marked() -> None:
    from opea_media.models.mapped import Mapping, weight_mappings

    smaps = (
        "7f0000000000-7f0000004000 r--p 00000000 fe:00 1 /m/unet/diffusion_pytorch_model.safetensors\n"
        "Rss:                  16 kB\nAnonymous:             0 kB\n"
        "7f0000004000-7f0000006000 rw-p 00000000 fe:00 2 /m/vae/diffusion_pytorch_model.fp16.safetensors\n"
        "Anonymous:             4 kB\n"
        "7f0000006000-7f0000007000 r--p 00000000 fe:00 3 /usr/lib/libc.so.6\nAnonymous:             0 kB\n"
    )
    assert weight_mappings(smaps) == [
        Mapping("/m/unet/diffusion_pytorch_model.safetensors", 0x7F0000000000, 0x4000, resident_kb=16),
        Mapping("/m/vae/diffusion_pytorch_model.fp16.safetensors", 0x7F0000004000, 0x2000, written_kb=4),
    ]


ROOT = Path(__file__).resolve().parents[1]
_HUB_LOAD = """
import json, sys
from pathlib import Path
from benchmarks.downloads import plan
from opea_media.models import ModelRegistry
repo, dtype, cache = sys.argv[1], sys.argv[2], Path(sys.argv[3])
planned = plan("text2image", repo, half_precision=dtype != "float32", cache_root=cache)
model = ModelRegistry(device="cpu", dtype=dtype, cache_dir=cache).text2image(repo)
print(json.dumps({"planned": planned, "mark": float(model.pipe.unet.conv_in.bias[0].detach())}))
"""


def test_a_hub_download_fetches_only_the_weights_of_the_runs_precision(
    folders: dict[str, Path], tiny_t2i: Any, tmp_path: Path, cache_dir: Path
) -> None:
    # A repo as SD 2.1's is on the Hub: full and fp16 files, pickles beside them and a single-file
    # checkpoint at the top. Served by a local stand-in for the Hub that diffusers talks to unchanged.
    from benchmarks.hub import serve_hub

    repo = folders["both"]
    _save(tiny_t2i.pipe, repo, safe=False)
    unet = repo / "unet" / "diffusion_pytorch_model.safetensors"
    (repo / "v2-1_768-ema-pruned.safetensors").write_bytes(unet.read_bytes())
    components = ("unet/diffusion_pytorch_model", "vae/diffusion_pytorch_model", "text_encoder/model")
    expected = {
        "bfloat16": (0.5, {f"{c}.fp16.safetensors" for c in components}),
        "float32": (0.25, {f"{c}.safetensors" for c in components}),
    }
    with serve_hub({"someone/sd21": repo}) as hub:
        for dtype, (mark, weights) in expected.items():
            hub.downloads.clear()
            env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
            env |= {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / f"hf-{dtype}")}
            command = [sys.executable, "-c", _HUB_LOAD, "someone/sd21", dtype, str(cache_dir)]
            out = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, out.stderr
            result = json.loads(out.stdout.strip().splitlines()[-1])
            assert result["mark"] == mark
            fetched = {path for _, path in hub.downloads}
            assert {p for p in fetched if p.endswith((".safetensors", ".bin"))} == weights
            # The README's sizes come from this plan: it is what the load fetched, file for file.
            assert dict(result["planned"]) == {p: (repo / p).stat().st_size for p in fetched}
