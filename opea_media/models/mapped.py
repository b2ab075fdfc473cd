"""Pages of memory-mapped checkpoint files that a loaded pipeline no longer reads.

safetensors maps each weight file into the process, and a weight loaded in the file's own dtype
stays a view of that mapping. Every page of it that the load touched stays resident (RssFile: it
counts in RSS and in a container's memory limit) even when the view was replaced by a copy
afterwards, as channels_last does with every convolution weight. Measured on SD 2.1 in float32
(docs/performance.md): 1.7 GiB more peak than the same weights held in the process's own memory.

Dropping the resident pages of those mappings (madvise MADV_DONTNEED) costs nothing that is
still needed: a weight that is still a view of the file faults its pages back in from the page
cache when it is next read, and the pages of replaced views are never read again. A mapping with
pages written to (copy-on-write: private copies that MADV_DONTNEED would discard) is left alone.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

log = logging.getLogger(__name__)

MADV_DONTNEED = 4
_MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s+(.*)$")


@dataclass(frozen=True)
class Mapping:
    path: str
    start: int
    length: int
    resident_kb: int = 0
    written_kb: int = 0  # "Anonymous": pages copied on write, which MADV_DONTNEED would discard


def weight_mappings(smaps: str) -> list[Mapping]:
    """The mappings of .safetensors files in /proc/PID/smaps text."""
    found: list[Mapping] = []
    inside = False  # the field lines that follow belong to a weight file's mapping
    for line in smaps.splitlines():
        head = _MAPPING.match(line)
        if head:
            inside = head.group(3).endswith(".safetensors")
            if inside:
                start, end = int(head.group(1), 16), int(head.group(2), 16)
                found.append(Mapping(head.group(3), start, end - start))
        elif inside and line.startswith("Rss:"):
            found[-1] = replace(found[-1], resident_kb=int(line.split()[1]))
        elif inside and line.startswith("Anonymous:"):
            found[-1] = replace(found[-1], written_kb=int(line.split()[1]))
    return found


def release_weight_pages(smaps: Path = Path("/proc/self/smaps")) -> int:
    """Drop the resident pages of this process's unwritten .safetensors mappings; returns bytes
    of address range released (0 where /proc or madvise is not there: other systems)."""
    gc.collect()  # views of the files that nothing holds any more: unmapped now
    try:
        mappings = weight_mappings(smaps.read_text())
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    released = 0
    for m in mappings:
        if m.written_kb:
            continue
        if madvise(m.start, m.length, MADV_DONTNEED) == 0:
            released += m.length
        else:
            log.debug("madvise failed on a weight mapping (errno %d)", ctypes.get_errno())
    return released
