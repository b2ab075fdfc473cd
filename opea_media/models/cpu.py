"""What the processor can do, read from /proc/cpuinfo: no torch needed."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

# /proc/cpuinfo flags that decide which kernels run: AVX2 / AVX-512 float32, and bfloat16 in
# hardware (AVX512-BF16, AMX). Without those, bfloat16 arithmetic is emulated in float32.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_info(cpuinfo: str | None = None) -> dict[str, Any]:
    """The processor as lscpu names it (model name, family, model, stepping) and its CPU_FLAGS.

    `cpuinfo`: the text of /proc/cpuinfo (read when None). Hypervisors often shorten the model
    name ("AMD EPYC"); family and model still tell the generation (AMD 25/1: Zen 3, 25/17: Zen 4).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    first: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if first:
                break  # the first processor's block describes them all
            continue
        key, _, value = line.partition(":")
        first.setdefault(key.strip(), value.strip())

    def number(key: str) -> int | None:
        try:
            return int(first[key])
        except (KeyError, ValueError):
            return None

    flags = set(first.get("flags", first.get("Features", "")).split())
    return {
        "cpu": first.get("model name") or platform.processor() or "unknown",
        "cpu_family": number("cpu family"),
        "cpu_model": number("model"),
        "cpu_stepping": number("stepping"),
        # None: this kernel lists no flags (not x86 Linux), so nothing is known either way.
        "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS} if flags else None,
    }


# Native bfloat16 arithmetic; elsewhere (AVX-512 without AVX512-BF16 included) torch emulates it,
# slower than float32.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_supports_bf16(cpuinfo: str | None = None) -> bool:
    """True on CPUs with bfloat16 in hardware (AVX512-BF16 or AMX); what `--dtype auto` goes by."""
    flags = cpu_info(cpuinfo)["cpu_flags"] or {}
    return any(flags.get(flag) for flag in NATIVE_BF16_FLAGS)
