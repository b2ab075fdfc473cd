"""opea_media.media.files and .video: atomic output files, MP4 / GIF / WebP written and read back."""

from __future__ import annotations

import errno
import io
import os
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from opea_media.errors import InvalidInput, OpeaMediaError
from opea_media.media import files, video
from opea_media.media.files import atomic_output, prepare_output, write_atomic
from opea_media.media.video import (
    VIDEO_SUFFIXES,
    VideoInfo,
    check_video_path,
    probe_video,
    write_frames,
    write_video,
)


def _frames(count: int = 6, size: tuple[int, int] = (32, 24)) -> list[Image.Image]:
    """Frames that all differ, so no container can merge two of them."""
    return [Image.new("RGB", size, (40 * i % 256, 100, 255 - 30 * i % 256)) for i in range(count)]


def _listing(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


# --- output files ------------------------------------------------------------------------------


def test_write_atomic_writes_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    write_atomic(target, b"first")
    write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert _listing(tmp_path) == ["out.png"]


def test_write_atomic_honours_the_umask(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "out.png", b"x")
    finally:
        os.umask(umask)
    assert (tmp_path / "out.png").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_write_atomic_leaves_nothing_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"old")

    def disk_full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, failing, disk_full)
    with pytest.raises(InvalidInput, match="no space left on the device") as caught:
        write_atomic(target, b"new")
    assert "OSError" not in str(caught.value) and "Errno" not in str(caught.value)
    assert _listing(tmp_path) == ["out.png"]
    assert target.read_bytes() == b"old"


def test_write_atomic_into_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot write to .*missing: the folder does not exist"):
        write_atomic(tmp_path / "missing" / "out.png", b"x")


def test_atomic_output_renames_on_success(tmp_path: Path) -> None:
    target = tmp_path / "clip.mp4"
    with atomic_output(target) as temp:
        assert temp.parent == tmp_path
        assert temp.suffix == ".mp4"  # writers such as ffmpeg choose the format by it
        assert temp != target
        temp.write_bytes(b"video")
    assert target.read_bytes() == b"video"
    assert _listing(tmp_path) == ["clip.mp4"]


def test_atomic_output_removes_the_temp_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "clip.gif"
    with pytest.raises(RuntimeError, match="encoder broke"), atomic_output(target) as temp:
        temp.write_bytes(b"half a video")
        raise RuntimeError("encoder broke")
    assert _listing(tmp_path) == []


def test_prepare_output_makes_missing_folders(tmp_path: Path) -> None:
    prepare_output(tmp_path / "a" / "b" / "out.png")
    assert (tmp_path / "a" / "b").is_dir()
    assert _listing(tmp_path / "a" / "b") == []  # the probe file is gone


def test_prepare_output_under_a_regular_file(tmp_path: Path) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("I am a file")
    with pytest.raises(InvalidInput, match=r"cannot write to .*notes\.txt: it is a file, not a folder"):
        prepare_output(blocker / "out.png")
    with pytest.raises(InvalidInput, match="part of the path is a file, not a folder"):
        prepare_output(blocker / "sub" / "out.png")


def test_prepare_output_refuses_a_folder_as_the_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="it is a folder; give a file name"):
        prepare_output(tmp_path)


def test_prepare_output_on_a_read_only_file_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # We run as root in CI, where permissions cannot make a folder unwritable: simulate the mount.
    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    with pytest.raises(InvalidInput, match=f"cannot write to {tmp_path}: the file system is read-only"):
        prepare_output(tmp_path / "out.png")


# --- video -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "fps", "played_fps"),
    [(".mp4", 7, 7.0), (".gif", 7, 100 / 14), (".gif", 10, 10.0), (".webp", 7, 1000 / 143)],
)
def test_write_video_reads_back(tmp_path: Path, suffix: str, fps: int, played_fps: float) -> None:
    target = tmp_path / f"clip{suffix}"
    info = write_video(_frames(6), target, fps=fps)
    assert (info.frames, info.width, info.height) == (6, 32, 24)
    assert info.fps == pytest.approx(played_fps)
    probed = probe_video(target)
    assert (probed.frames, probed.width, probed.height) == (6, 32, 24)
    assert probed.fps == pytest.approx(played_fps, rel=1e-3)
    assert _listing(tmp_path) == [target.name]


def test_mp4_is_h264_yuv420p(tmp_path: Path) -> None:
    import imageio_ffmpeg

    target = tmp_path / "clip.mp4"
    write_video(_frames(4, (64, 48)), target, fps=8)
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(target)]
    log = subprocess.run(command, capture_output=True, text=True, check=False).stderr
    stream = next(line for line in log.splitlines() if "Video:" in line)
    assert "h264" in stream and "yuv420p" in stream and "64x48" in stream


def test_rgba_frames_and_uppercase_suffix(tmp_path: Path) -> None:
    frames = [frame.convert("RGBA") for frame in _frames(3)]
    info = write_video(frames, tmp_path / "CLIP.GIF", fps=5)
    assert info.frames == 3


def test_identical_frames_are_merged_but_accepted(tmp_path: Path) -> None:
    # GIF and WebP store a run of equal frames as one longer frame; the check counts time instead.
    still = _frames(1)[0]
    frames = [still, still, still, *_frames(2)]
    for suffix in (".gif", ".webp"):
        info = write_video(frames, tmp_path / f"still{suffix}", fps=10)
        assert info.frames == 5
        assert probe_video(tmp_path / f"still{suffix}").frames < 5


def test_single_frame(tmp_path: Path) -> None:
    for suffix in VIDEO_SUFFIXES:
        assert write_video(_frames(1), tmp_path / f"one{suffix}", fps=7).frames == 1


def test_odd_size_mp4_is_refused_and_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="MP4 needs an even width and height.*33x24"):
        write_video(_frames(3, (33, 24)), tmp_path / "odd.mp4", fps=7)
    assert _listing(tmp_path) == []


def test_odd_size_is_fine_for_gif_and_webp(tmp_path: Path) -> None:
    assert write_video(_frames(3, (33, 25)), tmp_path / "odd.gif", fps=7).width == 33
    assert write_video(_frames(3, (33, 25)), tmp_path / "odd.webp", fps=7).height == 25


def test_mixed_frame_sizes_are_refused(tmp_path: Path) -> None:
    frames = _frames(2, (32, 24)) + _frames(1, (16, 16))
    with pytest.raises(OpeaMediaError, match="one size; got 16x16, 32x24"):
        write_video(frames, tmp_path / "mixed.gif", fps=7)
    assert _listing(tmp_path) == []


def test_no_frames(tmp_path: Path) -> None:
    with pytest.raises(OpeaMediaError, match="no frames"):
        write_video([], tmp_path / "empty.mp4", fps=7)


@pytest.mark.parametrize("fps", [0, 61, 7.5])
def test_fps_out_of_range(tmp_path: Path, fps: float) -> None:
    with pytest.raises(InvalidInput, match="^fps: "):
        write_video(_frames(2), tmp_path / "clip.gif", fps=fps)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["clip.avi", "clip", "clip.mp4.tmp"])
def test_unsupported_extension(name: str) -> None:
    with pytest.raises(InvalidInput, match=r"must end in \.mp4, \.gif, \.webp"):
        check_video_path(Path(name))


def test_a_file_that_does_not_read_back_is_not_left_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "clip.mp4"
    target.write_bytes(b"the previous video")

    def short_read(path: Path, suffix: str) -> tuple[VideoInfo, float | None]:
        return VideoInfo(frames=2, width=32, height=24, fps=7.0), None

    monkeypatch.setattr(video, "_probe", short_read)
    with pytest.raises(OpeaMediaError, match="did not read back as written: 2 frames instead of 6"):
        write_video(_frames(6), target, fps=7)
    assert _listing(tmp_path) == ["clip.mp4"]
    assert target.read_bytes() == b"the previous video"


def test_an_empty_encoder_output_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What libx264 does with odd sizes (FACTS.md): no error, a 0-byte file.
    monkeypatch.setattr(video, "_write_mp4", lambda frames, temp, fps: None)
    with pytest.raises(OpeaMediaError, match="produced an empty file"):
        write_video(_frames(2), tmp_path / "clip.mp4", fps=7)
    assert _listing(tmp_path) == []


def test_probe_refuses_files_that_are_not_videos(tmp_path: Path) -> None:
    for suffix in VIDEO_SUFFIXES:
        bogus = tmp_path / f"bogus{suffix}"
        bogus.write_bytes(b"not a video")
        with pytest.raises(InvalidInput, match="is not a readable"):
            probe_video(bogus)
    with pytest.raises(InvalidInput, match="is not a file"):
        probe_video(tmp_path / "missing.mp4")


def test_write_frames_names_and_content(tmp_path: Path) -> None:
    frames = _frames(3)
    paths = write_frames(frames, tmp_path / "frames", stem="cat")
    assert [path.name for path in paths] == ["cat-001.png", "cat-002.png", "cat-003.png"]
    assert _listing(tmp_path / "frames") == ["cat-001.png", "cat-002.png", "cat-003.png"]
    with Image.open(io.BytesIO(paths[1].read_bytes())) as image:
        assert image.convert("RGB").tobytes() == frames[1].tobytes()


def test_write_frames_number_width_grows_with_the_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[str] = []
    # 1000 real fsyncs take seconds; only the names matter here.
    monkeypatch.setattr(video, "encode_png", lambda frame: b"png")
    monkeypatch.setattr(video, "write_atomic", lambda path, data: written.append(path.name))
    paths = write_frames([Image.new("RGB", (2, 2))] * 1000, tmp_path, stem="f")
    assert (paths[0].name, paths[-1].name) == ("f-0001.png", "f-1000.png")
    assert written == [path.name for path in paths]


@pytest.mark.parametrize("stem", ["", "a/b", "..", "."])
def test_write_frames_refuses_a_stem_that_is_not_a_name(tmp_path: Path, stem: str) -> None:
    with pytest.raises(InvalidInput, match="cannot be used as a file name"):
        write_frames(_frames(1), tmp_path, stem=stem)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_folder_that_takes_no_files_is_not_called_missing() -> None:
    # /proc exists, but creating a file there fails with ENOENT, which read as "does not exist".
    with pytest.raises(InvalidInput, match="cannot write to /proc: files cannot be created in it"):
        prepare_output(Path("/proc/x.png"))
