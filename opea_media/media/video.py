"""Video files: write frames as MP4 / GIF / WebP atomically, then read them back to check.

imageio-ffmpeg is imported inside the functions that use it: the CLI must start fast.
"""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import InvalidInput, OpeaMediaError
from ..params import FPS
from .files import atomic_output, prepare_output, write_atomic
from .images import encode_png

VIDEO_SUFFIXES = (".mp4", ".gif", ".webp")

# x264's constant rate factor: 18 is close to visually lossless at a modest size.
_MP4_CRF = "18"
_WEBP_QUALITY = 90  # lossy: lossless animated WebP is several times larger than the MP4
_PROBE_TIMEOUT_S = 120
# Lines of ffmpeg's log, e.g. "Stream #0:0[0x1](und): Video: h264 (High) (avc1 / 0x31637661),
# yuv420p(progressive), 64x48, 6 kb/s, 7 fps, 7 tbr, 14336 tbn" and "frame=    8 fps=0.0 ...".
_FFMPEG_VIDEO_STREAM = re.compile(r"Stream #\d+:\d+.*?: Video: (.*)")
_FFMPEG_SIZE = re.compile(r"[ ,](\d+)x(\d+)[ ,\[]")
_FFMPEG_FPS = re.compile(r"([\d.]+) fps")
_FFMPEG_FRAMES = re.compile(r"frame=\s*(\d+)")


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    width: int
    height: int
    fps: float


def check_video_path(path: Path) -> None:
    """Refuse output paths whose extension we cannot write."""
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        found = f"the extension {path.suffix!r}" if path.suffix else "no file extension"
        raise InvalidInput(f"{path} has {found}; a video file must end in {', '.join(VIDEO_SUFFIXES)}")


def _frame_ms(suffix: str, fps: int) -> float:
    """How long each frame lasts in the file, after the container's rounding."""
    if suffix == ".gif":
        # GIF stores delays in centiseconds, and browsers slow any delay under 2 cs to 10 cs.
        return 10.0 * max(2, round(100 / fps))
    if suffix == ".webp":
        return float(max(1, round(1000 / fps)))  # whole milliseconds
    return 1000 / fps


def _frame_size(frames: Sequence[Image.Image], *, even: bool) -> tuple[int, int]:
    if not frames:
        raise OpeaMediaError("there are no frames to write")
    sizes = sorted({frame.size for frame in frames})
    if len(sizes) > 1:
        shown = ", ".join(f"{w}x{h}" for w, h in sizes)
        raise OpeaMediaError(f"all frames of a video must have one size; got {shown}")
    width, height = sizes[0]
    # libx264 refuses odd sizes, yet ffmpeg's writer reports nothing and leaves a 0-byte file.
    if even and (width % 2 or height % 2):
        raise InvalidInput(
            f"MP4 needs an even width and height, but the frames are {width}x{height};"
            " choose an even size or write .gif / .webp"
        )
    return width, height


def write_video(frames: Sequence[Image.Image], path: Path, *, fps: int) -> VideoInfo:
    """Write frames to path (format by extension), check the file, return what was written.

    The returned fps is the rate the file really plays at (a GIF at 7 fps stores 14 cs per frame,
    7.14 fps). Nothing is left at `path` if writing or the check fails.
    """
    check_video_path(path)
    FPS.check("fps", fps, integer=True)
    suffix = path.suffix.lower()
    width, height = _frame_size(frames, even=suffix == ".mp4")
    frame_ms = _frame_ms(suffix, fps)
    with atomic_output(path) as temp:
        try:
            if suffix == ".mp4":
                _write_mp4(frames, temp, fps=fps)
            else:
                _write_animation(frames, temp, suffix=suffix, frame_ms=frame_ms)
        except (OSError, RuntimeError, ValueError) as err:
            raise OpeaMediaError(f"could not encode {path.name}") from err
        _verify(temp, path, suffix=suffix, count=len(frames), size=(width, height), frame_ms=frame_ms)
    played_fps = float(fps) if suffix == ".mp4" else 1000 / frame_ms
    return VideoInfo(frames=len(frames), width=width, height=height, fps=played_fps)


def _rgb(frame: Image.Image) -> Image.Image:
    return frame if frame.mode == "RGB" else frame.convert("RGB")


def _write_mp4(frames: Sequence[Image.Image], temp: Path, *, fps: int) -> None:
    import imageio_ffmpeg

    writer = imageio_ffmpeg.write_frames(
        str(temp),
        frames[0].size,
        fps=fps,
        codec="libx264",
        pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p",  # the one H.264 layout every player and browser decodes
        quality=None,  # rate control comes from -crf below
        macro_block_size=1,  # sizes are already even; never let ffmpeg rescale
        ffmpeg_log_level="error",
        # faststart moves the index to the front, so browsers play while downloading.
        output_params=["-crf", _MP4_CRF, "-movflags", "+faststart"],
    )
    try:
        writer.send(None)
        for frame in frames:
            writer.send(_rgb(frame).tobytes())
    finally:
        writer.close()


def _write_animation(frames: Sequence[Image.Image], temp: Path, *, suffix: str, frame_ms: float) -> None:
    rgb = [_rgb(frame) for frame in frames]
    options: dict[str, object] = {}
    if suffix == ".webp":
        options = {"lossless": False, "quality": _WEBP_QUALITY}
    rgb[0].save(
        temp,
        format="GIF" if suffix == ".gif" else "WEBP",
        save_all=True,
        append_images=rgb[1:],
        loop=0,
        duration=int(frame_ms),
        **options,
    )


def _verify(
    temp: Path, path: Path, *, suffix: str, count: int, size: tuple[int, int], frame_ms: float
) -> None:
    if temp.stat().st_size == 0:
        raise OpeaMediaError(f"encoding {path.name} produced an empty file")
    try:
        stored, total_ms = _probe(temp, suffix)
    except InvalidInput:
        raise OpeaMediaError(f"{path.name} could not be read back after writing") from None
    problems = []
    if (stored.width, stored.height) != size:
        problems.append(f"{stored.width}x{stored.height} pixels instead of {size[0]}x{size[1]}")
    if suffix == ".mp4":
        if stored.frames != count:
            problems.append(f"{stored.frames} frames instead of {count}")
        if not math.isclose(stored.fps, 1000 / frame_ms, rel_tol=0.01):
            problems.append(f"{stored.fps:g} fps instead of {1000 / frame_ms:g}")
    else:
        # GIF and WebP store a run of identical frames as one longer frame: count time.
        if not 1 <= stored.frames <= count:
            problems.append(f"{stored.frames} frames instead of {count}")
        expected_ms = count * frame_ms
        # A single-frame WebP is a still image and stores no timing at all.
        if total_ms is not None and abs(total_ms - expected_ms) > 0.5:
            problems.append(f"{total_ms:g} ms long instead of {expected_ms:g} ms")
    if problems:
        raise OpeaMediaError(f"{path.name} did not read back as written: {'; '.join(problems)}")


def probe_video(path: Path) -> VideoInfo:
    """Frames, size and frame rate of a video file, as stored (GIF/WebP fps is the average)."""
    check_video_path(path)
    if not path.is_file():
        raise InvalidInput(f"{path} is not a file")
    return _probe(path, path.suffix.lower())[0]


def _probe(path: Path, suffix: str) -> tuple[VideoInfo, float | None]:
    if suffix == ".mp4":
        return _probe_mp4(path), None
    return _probe_animation(path, suffix)


def _probe_mp4(path: Path) -> VideoInfo:
    import imageio_ffmpeg

    # Decoding every frame into ffmpeg's null muxer counts frames for real (container headers
    # can claim anything), and its log names the input's size and frame rate in the same run.
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)]
    command += ["-map", "0:v:0", "-f", "null", "-"]
    unreadable = InvalidInput(f"{path} is not a readable MP4 video")
    try:
        done = subprocess.run(command, capture_output=True, timeout=_PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        raise unreadable from None
    log = done.stderr.decode("utf-8", "replace")
    stream = _FFMPEG_VIDEO_STREAM.search(log)  # the first one is the input
    counts = _FFMPEG_FRAMES.findall(log)
    size = _FFMPEG_SIZE.search(stream.group(1)) if stream else None
    fps = _FFMPEG_FPS.search(stream.group(1)) if stream else None
    if done.returncode != 0 or not counts or size is None or fps is None:
        raise unreadable
    return VideoInfo(
        frames=int(counts[-1]), width=int(size.group(1)), height=int(size.group(2)), fps=float(fps.group(1))
    )


def _probe_animation(path: Path, suffix: str) -> tuple[VideoInfo, float | None]:
    expected = "GIF" if suffix == ".gif" else "WEBP"
    try:
        with Image.open(path, formats=(expected,)) as image:
            count = getattr(image, "n_frames", 1)
            total_ms = 0.0
            for index in range(count):
                image.seek(index)
                if expected == "WEBP":
                    image.load()  # Pillow reads a WebP frame's timing only when it decodes it
                total_ms += image.info.get("duration") or 0
            width, height = image.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, EOFError):
        raise InvalidInput(f"{path} is not a readable {expected} file") from None
    fps = count * 1000 / total_ms if total_ms else 0.0
    info = VideoInfo(frames=count, width=width, height=height, fps=fps)
    return info, (total_ms or None)


def write_frames(frames: Sequence[Image.Image], folder: Path, *, stem: str) -> list[Path]:
    """Write each frame as `<stem>-001.png`, `<stem>-002.png`, ... in folder; return the paths."""
    if not stem or Path(stem).name != stem or stem in (".", ".."):
        raise InvalidInput(f"{stem!r} cannot be used as a file name")
    digits = max(3, len(str(len(frames))))
    paths = [folder / f"{stem}-{number:0{digits}d}.png" for number in range(1, len(frames) + 1)]
    if paths:
        prepare_output(paths[0])
    for frame, path in zip(frames, paths, strict=True):
        write_atomic(path, encode_png(frame))
    return paths
