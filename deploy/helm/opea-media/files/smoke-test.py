"""The chart's `helm test`: wait until each service is ready, then call its API once.

Standard library only, so the chart's own image or any Python 3.8+ image runs it. Environment:
  OPEA_TEST_TARGETS         "text2image=http://host:9379 image2video=http://host:9369" (either)
  OPEA_TEST_READY_TIMEOUT   seconds to wait for /health/ready per service (default 1800)
  OPEA_TEST_SIZE, OPEA_TEST_STEPS, OPEA_TEST_FRAMES   the request (default 256 px, 2 steps, 4 frames)
  OPEA_MEDIA_API_KEY        when the services require a key: sent, and a call without it must be 401
Unlike a probe of the TCP port, waiting on /health/ready covers the model download; a refused
connection, a timeout and a 503 are all "not yet". Exits 0 when every call succeeded.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import sys
import time
import urllib.error
import urllib.request
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png(size: int) -> str:
    """A plain orange size x size PNG as a data URI, built without Pillow."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes((200, 120, 40)) * size
    raw = PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
    raw += chunk(b"IDAT", zlib.compress(row * size)) + chunk(b"IEND", b"")
    return "data:image/png;base64," + base64.b64encode(raw).decode()


def call(url: str, payload: dict | None = None, key: str = "", timeout: float = 900):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")[:300]


def wait_ready(base: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            status, body = call(base + "/health/ready", timeout=10)
            if status == 200:
                print(f"{base}: ready", flush=True)
                return
            state = f"{status} {body.get('status') if isinstance(body, dict) else body}"
        except OSError as exc:  # refused, reset, timed out, no such host yet
            state = f"{type(exc).__name__}: {exc}"
        if state != last:
            print(f"{base}: not ready ({state})", flush=True)
            last = state
        if time.monotonic() > deadline:
            raise SystemExit(f"{base}: not ready after {timeout:.0f} s ({state})")
        time.sleep(5)


def is_png(b64: object) -> bool:
    return isinstance(b64, str) and base64.b64decode(b64).startswith(PNG_SIGNATURE)


def check(service: str, base: str, key: str, size: int, steps: int, frames: int) -> None:
    if service == "text2image":
        payload = {
            "prompt": "An astronaut riding a green horse",
            "num_images_per_prompt": 1,
            "num_inference_steps": steps,
            "height": size,
            "width": size,
        }
        field, expected = "images", 1
    else:
        payload = {
            "images_path": [{"image_path": png(size)}],
            "num_frames": frames,
            "num_inference_steps": steps,
            "height": size,
            "width": size,
        }
        field, expected = "frames", frames
    url = f"{base}/v1/{service}"
    if key:
        status, body = call(url, payload, key="", timeout=60)
        if status != 401:
            raise SystemExit(f"{url} without the API key: {status}, expected 401")
    started = time.monotonic()
    status, body = call(url, payload, key=key)
    seconds = time.monotonic() - started
    if status != 200 or not isinstance(body, dict) or body.get("status") != "success":
        raise SystemExit(f"{url}: {status} {body}")
    items = body.get(field)
    if not isinstance(items, list) or len(items) != expected or not all(is_png(i) for i in items):
        raise SystemExit(f"{url}: expected {expected} PNG {field}, got {str(items)[:200]}")
    print(f"{url}: 200, {len(items)} {field} in {seconds:.1f} s", flush=True)


def main() -> int:
    targets = [t.split("=", 1) for t in os.environ["OPEA_TEST_TARGETS"].split()]
    timeout = float(os.environ.get("OPEA_TEST_READY_TIMEOUT", "1800"))
    size = int(os.environ.get("OPEA_TEST_SIZE", "256"))
    steps = int(os.environ.get("OPEA_TEST_STEPS", "2"))
    frames = int(os.environ.get("OPEA_TEST_FRAMES", "4"))
    key = os.environ.get("OPEA_MEDIA_API_KEY", "")
    for service, base in targets:
        if service not in ("text2image", "image2video"):
            raise SystemExit(f"unknown service {service!r} in OPEA_TEST_TARGETS")
        wait_ready(base.rstrip("/"), timeout)
    for service, base in targets:
        check(service, base.rstrip("/"), key, size, steps, frames)
    print("all services answered", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
