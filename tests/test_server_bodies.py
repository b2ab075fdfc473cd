"""Request bodies under load and from hostile clients: the body budget (503 before a byte is read),
the body timeout (408, then the connection is closed), and the settings that set them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from server_support import b64, png_bytes

from opea_media.errors import InvalidInput
from opea_media.server import bodies
from opea_media.server.config import MIB, ServerConfig

FAST = {"num_inference_steps": 2}


def head(path: str, length: int | None, content_type: str = "application/json", extra: str = "") -> bytes:
    size = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n{size}\r\n{extra}\r\n".encode()
    )


async def answer(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], dict[str, Any]]:
    """The status line, headers and JSON body of the one answer on a raw connection."""
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status, *lines = raw.decode("latin-1").strip().split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    return status.encode(), headers, json.loads(body)


async def held_bytes(client: Any) -> float:
    text = await (await client.get("/metrics")).text()
    line = next(x for x in text.splitlines() if x.startswith("opea_media_request_body_bytes_held "))
    return float(line.split()[1])


async def until_held(client: Any, condition: Callable[[float], bool]) -> None:
    for _ in range(100):
        if condition(await held_bytes(client)):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the body budget holds {await held_bytes(client)} bytes")


# --- the budget -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("announced", [True, False], ids=["content-length", "chunked"])
async def test_a_body_past_the_budget_gets_503_before_it_is_read(
    server_client: Any, server_tiny_t2i: Any, announced: bool
) -> None:
    client = await server_client(server_tiny_t2i, max_body_bytes=MIB, max_body_budget_bytes=MIB + 1000)
    # A client that announced (or, chunked, may send) a body of nearly the whole budget, and stalls.
    _, hog = await asyncio.open_connection("127.0.0.1", client.port)
    start = b"{" if announced else b"1\r\n{\r\n"
    hog.write(head("/v1/text2image", MIB - 100 if announced else None) + start)
    await hog.drain()
    await until_held(client, lambda held: held >= MIB - 100)

    # Only the headers of the next one: the answer cannot be waiting for its body.
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(head("/v1/text2image", 5000))
    await writer.drain()
    status, headers, body = await answer(reader)
    assert status == b"HTTP/1.1 503 Service Unavailable"
    assert headers["retry-after"] == "1" and headers["x-request-id"]
    assert body["status_code"] == 503 and "request bodies" in body["detail"], body
    writer.close()

    # Small and bodiless requests still fit; once the hog goes, its share comes back.
    assert (await client.get("/health")).status == 200
    hog.close()
    await until_held(client, lambda held: held == 0)
    response = await client.post("/v1/text2image", json={"prompt": "after", **FAST})
    assert response.status == 200, await response.text()
    assert await held_bytes(client) == 0


async def test_a_client_that_expects_100_continue_is_told_to_send_only_what_will_be_read(
    server_client: Any, server_tiny_t2i: Any
) -> None:
    # curl and most HTTP libraries send Expect: 100-continue before a large body and wait for the
    # go-ahead: a refused body must get its refusal instead, and never be uploaded.
    client = await server_client(
        server_tiny_t2i, max_body_bytes=MIB, max_body_budget_bytes=MIB + 1000, api_key="secret"
    )
    data = json.dumps({"prompt": "expected", **FAST}).encode()
    expect, key = "Expect: 100-continue\r\n", "Authorization: Bearer secret\r\n"

    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(head("/v1/text2image", len(data), extra=expect + key))
    await writer.drain()
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(data)
    status, _, body = await answer(reader)
    assert status == b"HTTP/1.1 200 OK", body
    writer.close()

    for refused, extra in ((b"401", expect + "Authorization: Bearer wrong\r\n"), (b"413", expect + key)):
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(head("/v1/text2image", 2 * MIB if refused == b"413" else 5000, extra=extra))
        await writer.drain()
        status, _, body = await answer(reader)  # the final answer comes first, no 100 before it
        assert status.startswith(b"HTTP/1.1 " + refused), body
        writer.close()

    _, hog = await asyncio.open_connection("127.0.0.1", client.port)
    hog.write(head("/v1/text2image", MIB - 100, extra=key) + b"{")
    await hog.drain()
    await until_held(client, lambda held: held >= MIB - 100)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(head("/v1/text2image", 5000, extra=expect + key))
    await writer.drain()
    status, headers, body = await answer(reader)
    assert status == b"HTTP/1.1 503 Service Unavailable" and headers["retry-after"] == "1", body
    writer.close()
    hog.close()


async def test_the_budget_is_released_once_the_images_are_decoded(
    server_client: Any, server_tiny_i2v: Any
) -> None:
    client = await server_client(server_tiny_i2v, service="image2video")
    body = {"images_path": [{"image_path": b64(png_bytes())}], "num_frames": 2, "num_inference_steps": 2}
    response = await client.post("/v1/image2video", json=body)
    assert response.status == 200, await response.text()
    assert await held_bytes(client) == 0


async def test_bodies_within_the_budget_are_all_served(server_client: Any, server_tiny_t2i: Any) -> None:
    client = await server_client(server_tiny_t2i, max_body_bytes=MIB, max_body_budget_bytes=4 * MIB)
    padded = json.dumps({"prompt": "x", **FAST}).encode()[:-1] + b" " * (MIB // 2) + b"}"
    headers = {"Content-Type": "application/json"}
    responses = await asyncio.gather(
        *(client.post("/v1/text2image", data=padded, headers=headers) for _ in range(6))
    )
    # Six half-limit bodies against a budget of eight halves, one model: served or queue-full 503s.
    assert {r.status for r in responses} <= {200, 503}
    assert any(r.status == 200 for r in responses)
    assert await held_bytes(client) == 0


# --- the body timeout -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/v1/text2image", "application/json"), ("/v1/images/edits", "multipart/form-data; boundary=b")],
    ids=["json", "multipart"],
)
async def test_a_stalled_body_gets_408_and_its_connection_is_closed(
    server_client: Any, server_tiny_t2i: Any, path: str, content_type: str
) -> None:
    client = await server_client(server_tiny_t2i, body_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(head(path, 1000, content_type) + b"--b\r\nContent-Disposition: form-data; name=")
    await writer.drain()
    status, headers, body = await answer(reader)
    assert status.startswith(b"HTTP/1.1 408")
    assert headers["connection"] == "close" and headers["x-request-id"]
    assert body["status_code"] == 408
    assert body["detail"] == "the request body did not arrive within the 0.5 s body timeout"
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the service, not lingering
    writer.close()
    assert (await client.post("/v1/text2image", json={"prompt": "after", **FAST})).status == 200
    assert await held_bytes(client) == 0


async def test_a_body_that_arrives_in_time_is_served(server_client: Any, server_tiny_t2i: Any) -> None:
    client = await server_client(server_tiny_t2i, body_timeout=2.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    data = json.dumps({"prompt": "slow but in time", **FAST}).encode()
    writer.write(head("/v1/text2image", len(data)) + data[:10])
    await writer.drain()
    await asyncio.sleep(0.5)
    writer.write(data[10:])
    status, _, body = await answer(reader)
    assert status == b"HTTP/1.1 200 OK", body
    writer.close()


# --- the rest of a refused body ---------------------------------------------------------------------------


async def send_until(
    writer: asyncio.StreamWriter, total: int, seconds: float
) -> tuple[int, BaseException | None]:
    """Send up to `total` bytes of JSON whitespace for `seconds`: how many went, and what ended it."""
    sent, piece = 0, b" " * (256 * 1024)
    try:
        async with asyncio.timeout(seconds):
            while sent < total:
                writer.write(piece)
                await writer.drain()
                sent += len(piece)
    except TimeoutError:
        return sent, None
    except OSError as exc:
        return sent, exc
    return sent, None


async def test_a_refused_body_is_answered_first_then_read_paced(
    server_client: Any, server_tiny_t2i: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bodies, "DRAIN_RATE", 2 * MIB)
    monkeypatch.setattr(bodies, "UNPACED_BYTES", 0)
    client = await server_client(server_tiny_t2i, max_body_bytes=MIB)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(head("/v1/text2image", 64 * MIB) + b"{")
    sending = asyncio.ensure_future(send_until(writer, 64 * MIB, seconds=4.0))
    status, _, body = await answer(reader)  # while the client is still sending
    assert status.startswith(b"HTTP/1.1 413"), body
    assert not sending.done()
    assert (await client.get("/health")).status == 200  # the service serves on meanwhile
    sent, error = await sending
    # 4 s at 2 MiB/s, plus what the sockets' buffers hold: far from the 64 MiB a client sends in
    # that time when the service reads as fast as it can (aiohttp's own lingering read).
    assert error is None and sent < 32 * MIB, (sent, error)
    writer.close()
    assert (await client.post("/v1/text2image", json={"prompt": "after", **FAST})).status == 200


async def test_a_refused_body_still_coming_after_the_body_timeout_is_cut_off(
    server_client: Any, server_tiny_t2i: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bodies, "DRAIN_RATE", 1 * MIB)
    client = await server_client(server_tiny_t2i, max_body_bytes=MIB, body_timeout=1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(head("/v1/text2image", 256 * MIB) + b"{")
    sending = asyncio.ensure_future(send_until(writer, 256 * MIB, seconds=20.0))
    status, _, _ = await answer(reader)
    assert status.startswith(b"HTTP/1.1 413")
    # The service closes the connection (with the rest unread: a reset), long before 20 s.
    sent, error = await asyncio.wait_for(sending, 10)
    assert isinstance(error, ConnectionError) and sent < 128 * MIB, (sent, error)
    writer.close()


# --- the settings -----------------------------------------------------------------------------------------


def test_the_budget_defaults_to_four_bodies_and_holds_at_least_one() -> None:
    assert ServerConfig(max_body_bytes=8 * MIB).body_budget_bytes == 32 * MIB
    assert ServerConfig(max_body_budget_bytes=200 * MIB).body_budget_bytes == 200 * MIB
    with pytest.raises(InvalidInput, match="must hold at least one body at the size limit"):
        ServerConfig(max_body_bytes=8 * MIB, max_body_budget_bytes=4 * MIB)
    for bad in ({"body_timeout": 0}, {"keepalive_timeout": -1}, {"max_connections": 0}):
        with pytest.raises(InvalidInput):
            ServerConfig(**bad)  # type: ignore[arg-type]
