"""The output folder: files the services hand back by URL (clips, images), kept for a while.

Each file gets a generated name (the caller's prefix, cleaned, plus 128 random bits), so a name is
never chosen by a client, never collides, and cannot be guessed: the URL that names it is the
capability to read it. Files older than the retention time, and the oldest ones past the disk
budget, are deleted; nothing here ever grows without bound.
"""

from __future__ import annotations

import logging
import mimetypes
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import NotFound, OpeaMediaError
from .files import describe_os_error, prepare_output, write_atomic

log = logging.getLogger(__name__)

# A stored name: no separators, no leading dot (temp files and the probe start with one), short.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
_PREFIX_JUNK = re.compile(r"[^A-Za-z0-9_-]+")
_SUFFIX = re.compile(r"(-[A-Za-z0-9_-]{1,40})?\.[a-z0-9]{1,5}")
_TOKEN_BYTES = 16
CONTENT_TYPES = {".mp4": "video/mp4", ".png": "image/png", ".jpeg": "image/jpeg", ".webp": "image/webp"}


@dataclass(frozen=True)
class StoredFile:
    name: str
    path: Path
    content_type: str


class OutputStore:
    """Write files under `folder`, find them by name, delete them past `retention` or `max_bytes`."""

    def __init__(
        self, folder: Path, *, retention: float, max_bytes: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.folder = folder
        self.retention = retention
        self.max_bytes = max_bytes
        self._clock = clock

    def prepare(self) -> None:
        """Create the folder and prove it is writable (InvalidInput naming it if not)."""
        prepare_output(self.folder / "probe")
        self.prune()

    def new_name(self, prefix: str, suffix: str) -> str:
        """A fresh name `<prefix>-<32 hex><suffix>`; `suffix` such as ".png" or "-generated.mp4"."""
        if not _SUFFIX.fullmatch(suffix):
            raise ValueError(f"unusable suffix {suffix!r}")
        clean = _PREFIX_JUNK.sub("-", prefix).strip("-_")[:64] or "output"
        return f"{clean}-{secrets.token_hex(_TOKEN_BYTES)}{suffix}"

    def write_bytes(self, data: bytes, *, prefix: str, suffix: str) -> str:
        """Store `data` atomically under a new name; returns the name."""
        name = self.new_name(prefix, suffix)
        write_atomic(self.folder / name, data)
        self.prune(keep=name)
        return name

    def write_with(self, writer: Callable[[Path], object], *, prefix: str, suffix: str) -> str:
        """Let `writer` create the file at the path given (it must write atomically); returns the name."""
        name = self.new_name(prefix, suffix)
        writer(self.folder / name)
        self.prune(keep=name)
        return name

    def find(self, name: str) -> StoredFile:
        """The stored file of that name; NotFound if it never existed, expired or was pruned."""
        gone = NotFound(f"no output file {name[:80]!r}: it expired, was removed, or never existed")
        if not _NAME.fullmatch(name) or ".." in name:
            raise gone
        path = self.folder / name
        try:
            stat = path.stat()
        except OSError:
            raise gone from None
        if not path.is_file() or self._expired(stat.st_mtime):
            raise gone
        suffix = path.suffix.lower()
        content_type = (
            CONTENT_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
        )
        return StoredFile(name, path, content_type)

    def _expired(self, mtime: float) -> bool:
        return mtime < self._clock() - self.retention

    def prune(self, *, keep: str | None = None) -> int:
        """Delete expired files, then the oldest until the rest fit the budget; returns how many.

        `keep` (the file just written) survives the budget even when it alone exceeds it: the
        caller is about to hand out its name.
        """
        try:
            entries = [entry for entry in self.folder.iterdir() if entry.is_file()]
        except FileNotFoundError:
            return 0
        except OSError as err:
            raise OpeaMediaError(
                f"cannot read the output folder {self.folder}: {describe_os_error(err)}"
            ) from None
        files: list[tuple[float, int, Path]] = []
        for entry in entries:
            try:
                stat = entry.stat()
            except FileNotFoundError:
                continue  # removed meanwhile, by another prune
            files.append((stat.st_mtime, stat.st_size, entry))
        files.sort()
        removed = 0
        total = sum(size for _, size, _ in files)
        for mtime, size, path in files:
            # Temp files (a leading dot) of a crashed writer are removed once expired.
            over_budget = total > self.max_bytes and path.name != keep and not path.name.startswith(".")
            if self._expired(mtime) or over_budget:
                path.unlink(missing_ok=True)
                total -= size
                removed += 1
        if removed:
            log.info(
                "removed %d output files", removed, extra={"removed": removed, "folder": str(self.folder)}
            )
        return removed
