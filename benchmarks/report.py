"""The suite's figures as tables: rich on the terminal, markdown in results.md."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console(width=180)


def _s(summary: dict[str, Any], scale: float = 1.0, digits: int = 3, unit: str | None = None) -> str:
    """'median [p25-p75] unit' from a Sample.summary()."""
    u = summary.get("unit", "") if unit is None else unit
    return (
        f"{summary['median'] * scale:.{digits}f} [{summary['p25'] * scale:.{digits}f}-"
        f"{summary['p75'] * scale:.{digits}f}] {u}"
    ).rstrip()


def _mib(value: Any) -> str:
    return "-" if value is None or value != value else f"{value / 1024:.2f} GiB"


def _sec(value: Any) -> str:
    return "-" if value is None or value != value else f"{value:.1f} s"


def tables(section: str, data: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for one section."""
    f = data["figures"]
    if section == "startup":
        rows = [
            [name, _s(s, digits=2), str(s["n"])]
            for name, s in f.get("presets", {}).get("samples", {}).items()
        ]
        rows += [[name, _s(s), str(s["n"])] for name, s in f["cli_help"].items()]
        rows += [[name, _s(s, digits=2), str(s["n"])] for name, s in f["serve"]["samples"].items()]
        return [("Start-up (median [p25-p75])", ["what", "seconds", "n"], rows)]
    if section == "overhead":
        rows = [
            [
                r["model"],
                f"{r['size']}, {r['steps']} steps, {r['dtype']}",
                _s(r["service"]),
                _s(r["direct"]),
                _s(r["ratio"], unit="x"),
                str(r["ratio"]["n"]),
            ]
            for r in f
        ]
        return [
            (
                "Service overhead: POST /v1/text2image vs a direct pipeline call",
                ["model", "request", "service", "direct (floor)", "ratio", "rounds"],
                rows,
            )
        ]
    if section == "jobs":
        rows = [
            [
                r["model"],
                f"{r['size']}, {r['steps']} steps",
                _s(r["synchronous"]),
                _s(r["job"]),
                _s(r["ratio"], unit="x"),
                f"{r['event_delay_ms']['median']:.2f} / {r['event_delay_ms']['p99']:.2f} ms",
            ]
            for r in f
        ]
        return [
            (
                "Jobs API: a job (submit, events, download) vs POST /v1/text2image; event delay behind the step",
                ["model", "request", "synchronous", "job", "ratio", "event delay p50 / p99"],
                rows,
            )
        ]
    if section == "concurrency":
        out = []
        for run in f:
            rows = [
                [
                    str(r["max_batch_size"]),
                    str(r["clients"]),
                    str(r["requests"]),
                    f"{r['rps']:.2f}",
                    f"{r['p50']:.2f}",
                    f"{r['p95']:.2f}",
                    f"{r['p99']:.2f}",
                    f"{r['health_p99_ms']:.1f}",
                    str(r["failures"] or "-"),
                ]
                for r in run["rows"]
            ]
            body = ", ".join(f"{k}={v}" for k, v in run["body"].items() if k != "prompt")
            out.append(
                (
                    f"Concurrency: {run['service']} {run['model']} ({body})",
                    [
                        "max batch",
                        "clients",
                        "requests",
                        "req/s",
                        "p50 s",
                        "p95 s",
                        "p99 s",
                        "/health p99 ms",
                        "errors",
                    ],
                    rows,
                )
            )
        return out
    if section == "encoding":
        rows = [[name, _s(s, digits=2)] for name, s in f["samples"].items()]
        sizes = ", ".join(f"{k}: {v:.1f} MiB" for k, v in f["base64_mib"].items())
        return [(f"Encoding {f['frames']} ({sizes})", ["how", "seconds"], rows)]
    if section == "levers":
        rows = []
        for r in f:
            names = list(r["samples"])
            rows.append(
                [
                    r["lever"],
                    f"{r.get('model', '')} {r.get('size', '')} px {r.get('steps', '')} steps",
                    "; ".join(f"{n}: {_s(r['samples'][n], digits=2)}" for n in names),
                    _s(r["ratio"], unit="x") if "ratio" in r else "-",
                ]
            )
        return [
            (
                "Levers, speed (interleaved; ratio = second / first)",
                ["lever", "run", "seconds", "ratio"],
                rows,
            )
        ]
    if section == "shapes":
        from opea_media.models.shapes import ATTRIBUTES

        quality = [
            [f"{r['guidance']:g}", str(r["n"]), *(f"{r['share'][k]:.0%}" for k in (*ATTRIBUTES, "all"))]
            for r in f["quality"]
        ]
        speed = [[f"64 px, {r['steps']} steps", _s(r), str(r["n"])] for r in f["speed"]]
        return [
            (
                f"Built-in {f['model']}: held-out prompts read back right (share of pictures)",
                ["guidance", "prompts", *ATTRIBUTES, "all four"],
                quality,
            ),
            (f"Built-in {f['model']}: one picture (median [p25-p75])", ["request", "seconds", "n"], speed),
        ]
    if section == "memory":
        rows = [
            [
                r["label"],
                str(r["dtype"]),
                _mib(r["weights_mib"]),
                _mib(r["rss_after_load_mib"]),
                _mib(r["peak_denoise_mib"]),
                _mib(r["peak_decode_mib"]),
                _mib(r["peak_mib"]),
                _sec(r["seconds"]),
                _mib(r.get("cuda_peak_mib")),
                "error" if r.get("error") else "",
            ]
            for r in f["rows"]
        ]
        header = ["configuration", "dtype", "weights", "RSS after load", "peak RSS denoising"]
        header += ["peak RSS decoding", "peak RSS", "time", "CUDA peak", ""]
        tables = [("Peak memory, a fresh process for each row", header, rows)]
        if f.get("layouts"):
            tables.append(_layouts_table(f["layouts"]))
        return tables
    if section == "backends":
        return [_backends_table(run) for run in f]
    return []


def _layouts_table(layouts: dict[str, Any]) -> tuple[str, list[str], list[list[str]]]:
    """Preset vs saved folders: RSS as anonymous + file-backed (memory-mapped weight pages)."""

    def split(r: dict[str, Any], prefix: str) -> str:
        total = r.get(f"{prefix}_mib")
        if total is None:
            return "-"
        return (
            f"{_mib(total)} ({_mib(r.get(f'{prefix}_anon_mib'))} + {_mib(r.get(f'{prefix}_file_mib'))} file)"
        )

    rows = [
        [
            r["label"],
            r["layout"],
            f"{_mib(r['peak_load_mib'])} (file {_mib(r['peak_load_file_mib'])})",
            split(r, "rss_settled"),
            split(r, "rss_anonymous_weights"),
            _mib(r["peak_denoise_mib"]),
            _mib(r["peak_decode_mib"]),
            "error" if r.get("error") else "",
        ]
        for r in layouts["rows"]
    ]
    files = ", ".join(f"{name} {gib:.2f} GiB" for name, gib in layouts.get("files_gib", {}).items())
    header = ["configuration", "weights from", "peak RSS loading", "RSS after load (anon + file)"]
    header += ["weights copied to anonymous memory", "peak RSS denoising", "peak RSS decoding", ""]
    return (f"Preset in memory vs saved folders (safetensors: {files})", header, rows)


def _backends_table(run: dict[str, Any]) -> tuple[str, list[str], list[list[str]]]:
    if "samples" in run:  # CUDA: eager against torch.compile
        names = list(run["samples"])
        rows = [[run["run"], *(_s(run["samples"][n], digits=2) for n in names), _s(run["ratio"], unit="x")]]
        rows[0].append(_sec(run["compile_first_request_seconds"]))
        header = ["run", *names, "ratio", "compile: first request"]
        return (f"Backends (CUDA): {run['task']}", header, rows)
    rows = []
    for r in run["rows"]:
        a = r["agreement"]
        psnr = "identical" if a["psnr_db"] == float("inf") else f"{a['psnr_db']:.1f} dB"
        if "request" not in r:  # the reference, run once
            rows.append([r["backend"], "", "", "", "", "", _mib(r["resident_added_mib"])])
            rows[-1] += [_sec(r["first_request_seconds"]), f"{psnr}, max {a['max_abs']:.0f}"]
            continue
        rows.append(
            [
                r["backend"],
                f"{_s(r['step'], digits=2)} ({_s(r['step_ratio'], digits=2, unit='x')})",
                f"{_s(r['decode'], digits=2)} ({_s(r['decode_ratio'], digits=2, unit='x')})",
                _s(r["request"], digits=1),
                _s(r["ratio"], digits=2, unit="x"),
                _mib(r["peak_rss_mib"]),
                _mib(r["resident_added_mib"]),
                f"{_sec(r['first_request_seconds'])}" + (f" ({r['setup_note']})" if r["setup_note"] else ""),
                f"{psnr}, max {a['max_abs']:.0f}",
            ]
        )
    restart = run["second_start"]
    title = (
        f"Backends: {run['task']} {run['model']} {run['run']}, {run['rounds']} interleaved rounds "
        f"(agreement with {run['reference']}, same seed; OpenVINO's second start: {restart['note']})"
    )
    header = ["backend", "step (ratio)", "decode (ratio)", "request", "request ratio to default"]
    header += ["peak RSS (process)", "resident added", "first request (setup)"]
    header += ["agreement: PSNR, max |diff| /255"]
    return (title, header, rows)


def table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    out = Table(title=escape(title), title_justify="left")
    for h in header:
        out.add_column(escape(h))
    for row in rows:
        out.add_row(*(escape(cell) for cell in row))
    return out


def machine_line(m: dict[str, Any]) -> str:
    """Which machine the figures are from: processor, cores, memory, bf16 in hardware, versions.

    Takes the `machine` of results.json; results written before a key existed print "unknown".
    """
    where = ", ".join(
        f"{name} {m[key]}"
        for name, key in (("family", "cpu_family"), ("model", "cpu_model"), ("stepping", "cpu_stepping"))
        if m.get(key) is not None
    )
    cpu = f"{m['cpu']} ({where})" if where else str(m["cpu"])
    cores = f"{m['cores']} cores"
    if m.get("cores_usable") not in (None, m["cores"]):
        cores += f" ({m['cores_usable']} usable)"
    flags: dict[str, bool] | None = m.get("cpu_flags")

    def has(*names: str) -> str:
        if flags is None:
            return "unknown"
        return "yes" if any(flags.get(n) for n in names) else "no"

    features = (
        f"AVX2: {has('avx2')}, AVX-512: {has('avx512f')}, "
        f"native bf16: {has('avx512_bf16', 'amx_bf16')} (AVX512-BF16: {has('avx512_bf16')}, "
        f"AMX: {has('amx_bf16', 'amx_tile')}), torch bf16 path: {m['cpu_bf16']}"
    )
    return (
        f"Machine: {cpu}, {cores}, {m['memory_gib']} GiB; {features}; CUDA: {m['cuda']}; "
        f"Python {m['python']}, torch {m['torch']}, diffusers {m['diffusers']}, "
        f"transformers {m['transformers']}."
    )


def print_machine(m: dict[str, Any]) -> None:
    console.print(escape(machine_line(m)), soft_wrap=True)


def print_section(section: str, data: dict[str, Any]) -> None:
    for title, header, rows in tables(section, data):
        console.print(table(title, header, rows))
    console.print(
        f"[dim]{section}: {data['seconds']:.0f} s, "
        f"load average {data['load_before']} -> {data['load_after']}[/dim]"
    )


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"# Benchmark results {results['started']}{' (quick)' if results['quick'] else ''}",
        "",
        f"`{results['command']}`",
        "",
        machine_line(m),
        "",
    ]
    for section, data in results["sections"].items():
        lines.append(
            f"## {section} ({data['seconds']:.0f} s; "
            f"load average {data['load_before']} -> {data['load_after']})"
        )
        lines.append("")
        for title, header, rows in tables(section, data):
            lines += [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
            lines.append("")
    return "\n".join(lines) + "\n"
