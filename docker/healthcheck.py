#!/usr/bin/env python3
"""Docker HEALTHCHECK: exit 0 when the service in this container answers GET /health with 200.

The port is the one the service listens on: OPEA_MEDIA_PORT, else --port/--service from the
running `opea-media serve` command line, else OPEA_MEDIA_SERVICE, else text2image (9379).
Standard library only: the image has no curl.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

PORTS = {"text2image": 9379, "image2video": 9369}


def serve_args() -> list[str]:
    """The arguments of the `opea-media ... serve ...` process in this container, if one runs."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "serve" in argv and any(a.endswith("opea-media") or a == "opea_media" for a in argv):
            return argv[argv.index("serve") + 1 :]
    return []


def option(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def service_port() -> int:
    args = serve_args()
    port = option(args, "--port") or os.environ.get("OPEA_MEDIA_PORT")
    if port:
        return int(port)
    service = option(args, "--service") or os.environ.get("OPEA_MEDIA_SERVICE") or "text2image"
    return PORTS.get(service, PORTS["text2image"])


def main() -> int:
    url = f"http://127.0.0.1:{service_port()}/health"
    try:
        with urllib.request.urlopen(url, timeout=float(os.environ.get("HEALTHCHECK_TIMEOUT", "8"))) as r:
            print(f"{url}: {r.status}")
            return 0 if r.status == 200 else 1
    except urllib.error.HTTPError as exc:  # 503 while the model loads or after a failed load
        print(f"{url}: {exc.code} {exc.read(300).decode(errors='replace')}")
    except (OSError, ValueError) as exc:
        print(f"{url}: {exc}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
