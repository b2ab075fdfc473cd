"""Output files: check the folder early, write atomically (temp file in the same folder + rename)."""

from __future__ import annotations

import errno
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import InvalidInput

_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is used up",
    errno.ENOTDIR: "part of the path is a file, not a folder",
    errno.ENOENT: "the folder does not exist",
    errno.EISDIR: "it is a folder",
    errno.ENAMETOOLONG: "the name is too long",
    errno.ELOOP: "the path has too many symbolic links",
}


def describe_os_error(err: OSError) -> str:
    """A short reason in words for a file system error (no errno numbers, no repr)."""
    if err.errno in _REASONS:
        return _REASONS[err.errno]
    return (err.strerror or "an unexpected file system error").lower()


def _shown(folder: Path) -> Path:
    # "cannot write to ." helps nobody; name the actual folder.
    return folder.absolute() if folder == Path(".") else folder


def prepare_output(path: Path) -> None:
    """Make the folder for `path` and prove we can create files in it, before any slow work."""
    folder = path.parent
    if path.is_dir():
        raise InvalidInput(f"cannot write to {path}: it is a folder; give a file name")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InvalidInput(f"cannot write to {folder}: it is a file, not a folder") from None
    except OSError as err:
        raise InvalidInput(f"cannot write to {_shown(folder)}: {describe_os_error(err)}") from None
    # We run as root in CI and in containers, where os.access says yes to everything; only an
    # actual file tells the truth (read-only mounts, full disks, odd permissions).
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".opea-media-probe-")
    except OSError as err:
        # A folder that exists but takes no new files (/proc, /sys) answers "no such file".
        reason = "files cannot be created in it" if err.errno == errno.ENOENT else describe_os_error(err)
        raise InvalidInput(f"cannot write to {_shown(folder)}: {reason}") from None
    os.close(fd)
    os.unlink(probe)


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable; some file systems refuse fsync on folders, which is fine.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _new_temp(path: Path) -> tuple[int, Path]:
    # Same folder (so the rename is atomic) and same suffix (writers pick the format by it).
    # Not mkstemp: its 0600 mode would end up on the output; 0666 lets the umask decide, as
    # for any file the user creates.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for _ in range(100):
        temp = path.parent / f".{path.stem[:100]}-{secrets.token_hex(6)}.tmp{path.suffix}"
        try:
            return os.open(temp, flags, 0o666), temp
        except FileExistsError:
            continue
        except OSError as err:
            raise InvalidInput(f"cannot write to {_shown(path.parent)}: {describe_os_error(err)}") from None
    raise InvalidInput(f"cannot write to {_shown(path.parent)}: no free temporary file name")


def _finish(temp: Path, path: Path) -> None:
    try:
        with open(temp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temp, path)
    except OSError as err:
        raise InvalidInput(f"cannot write {path}: {describe_os_error(err)}") from None
    _fsync_folder(path.parent)


def write_atomic(path: Path, data: bytes) -> None:
    """Write data to path so that readers see the old file or the whole new one, never a part."""
    fd, temp = _new_temp(path)
    try:
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        except OSError as err:
            raise InvalidInput(f"cannot write {path}: {describe_os_error(err)}") from None
        _finish(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temp path next to `path` (same suffix) for a writer that wants a file name.

    On a normal exit the temp file replaces `path`; on an exception it is removed and `path` is
    left as it was.
    """
    fd, temp = _new_temp(path)
    os.close(fd)
    try:
        yield temp
        _finish(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
