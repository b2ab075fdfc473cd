"""Long strings (base64 images) are taken out of a body before json.loads parses it and put back
after, so that no single step holds the GIL for the whole body: what the service reads must be
exactly what json.loads would have read, and bad JSON must still be refused."""

from __future__ import annotations

import base64
import json
import os
import random
from typing import Any

import pytest

from opea_media.errors import InvalidInput
from opea_media.server import validation
from opea_media.server.validation import parse_json_object

ALPHABET = 'ab "\\/\n\t\u00e9\u4e2d\U0001f600=+'


def document(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.choice(["str", "long", "num", "list", "dict"] if depth < 4 else ["str", "long", "num"])
    if kind == "str":
        return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(6)))
    if kind == "long":  # past the (lowered) threshold, with or without escapes in it
        plain = "".join(rng.choice("AZaz09+/=") for _ in range(rng.randrange(16, 60)))
        return plain if rng.random() < 0.7 else plain + rng.choice(ALPHABET)
    if kind == "num":
        return rng.choice([0, -1, 2.5, 10**20, True, None])
    if kind == "list":
        return [document(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = [document(rng, 4) if rng.random() < 0.8 else "k" * 20 for _ in range(rng.randrange(4))]
    return {str(k): document(rng, depth + 1) for k in keys}


def test_what_is_read_is_what_json_loads_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validation, "LIFT_CHARS", 16)
    rng = random.Random(0)
    lifted = 0
    for _ in range(400):
        data = {"image": document(rng), "more": document(rng)}
        body = json.dumps(data, ensure_ascii=rng.random() < 0.5).encode("utf-8")
        body = body.replace(b", ", b",") if rng.random() < 0.5 else body
        assert parse_json_object(body) == json.loads(body), body
        lifted += bool(validation._lift_long_strings(body)[1])
    assert lifted > 200  # most documents did go the lifted way


def test_a_body_of_a_32_mib_image_reads_back_whole() -> None:
    image = base64.b64encode(os.urandom(24 * 1024 * 1024)).decode()
    body = json.dumps({"prompt": 'a "quoted" word', "image": f"data:image/png;base64,{image}", "n": [1]})
    small, lifted = validation._lift_long_strings(body.encode())
    assert len(small) < 200 and len(lifted) == 1  # json.loads saw only the small part
    assert parse_json_object(body.encode()) == json.loads(body)


@pytest.mark.parametrize(
    ("body", "refusal"),
    [
        (b'{"image": "' + b"A" * 300_000 + b'\n"}', "a string holds a control character"),
        (b'{"image": "' + b"A" * 300_000 + b'\xff"}', "not UTF-8"),
        (b'{"image": "' + b"A" * 300_000 + b'", }', "not valid JSON"),
        (b'{"image": "' + b"A" * 300_000 + b'" "x": 1}', "not valid JSON"),
    ],
    ids=["raw newline", "not utf-8", "trailing comma", "missing comma"],
)
def test_bad_json_around_a_long_string_is_refused(body: bytes, refusal: str) -> None:
    with pytest.raises(InvalidInput, match=refusal):
        parse_json_object(body)


def test_a_utf16_body_is_parsed_as_json_loads_would() -> None:
    body = json.dumps({"image": "A" * 300_000, "prompt": "x"}).encode("utf-16")
    assert parse_json_object(body) == json.loads(body)
