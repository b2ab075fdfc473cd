"""How a request body becomes a wire model: JSON read and parsed under limits, each field checked
by its params.py rule (the CLI's click types read the same ones), refusals in one line a person
reads: `<field>: <what is wrong>`, the 400's detail."""

from __future__ import annotations

import asyncio
import codecs
import json
import secrets
import sys
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler, GetJsonSchemaHandler, model_validator
from pydantic import ValidationError as _ValidationError
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from ..errors import InvalidInput
from ..media.lane import one_at_a_time
from ..params import NO_NUL_PATTERN, NOT_BLANK_PATTERN, Number, Rule, Text
from .bodies import body_done, read_body
from .keys import CONFIG, IO_POOL

_INVALID = "invalid"  # the error type of every refusal worded here


def refuse(message: str) -> PydanticCustomError:
    return PydanticCustomError(_INVALID, message)


def json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


@dataclass(frozen=True)
class Ruled:
    """Annotated metadata: check a value with its params.py rule, and show the rule in the schema."""

    rule: Rule

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_before_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {**handler(schema), **self._keywords()}

    def _check(self, value: Any) -> Any:
        if value is None:
            raise refuse("is required")  # optional fields take None before this runs
        rule = self.rule
        if isinstance(rule, Number) and rule.integer and isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON Schema's integer: 2.0 is the integer 2
        problem = rule.problem(value)
        if problem:
            raise refuse(problem)
        return value

    def _keywords(self) -> dict[str, Any]:
        rule = self.rule
        if isinstance(rule, Text):
            if rule.allow_blank:
                return {"maxLength": rule.max_chars, "pattern": NO_NUL_PATTERN}
            patterns = [{"pattern": NOT_BLANK_PATTERN}, {"pattern": NO_NUL_PATTERN}]
            return {"maxLength": rule.max_chars, "minLength": 1, "allOf": patterns}
        limit, whole = rule.limit, rule.integer
        keywords: dict[str, Any] = {
            "minimum": int(limit.min) if whole else limit.min,
            "maximum": int(limit.max) if whole else limit.max,
        }
        if limit.multiple_of:
            keywords["multipleOf"] = limit.multiple_of
        return keywords


@dataclass(frozen=True, eq=False)  # hashed by identity: `X | None` hashes its metadata
class SchemaExtra:
    """Annotated metadata: keywords the JSON Schema shows beyond what the type says."""

    keywords: dict[str, Any]

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {**handler(schema), **self.keywords}


_SHOWN_UNKNOWN = 5  # a body of 100,000 made-up keys must not make an error message of megabytes
_SHOWN_NAME_CHARS = 60


class Body(BaseModel):
    """A request body: a JSON object of known fields only (unknown ones are named in the 400)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_fields_only(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise refuse(f"must be an object, not {json_type(data)}")
        known = [field.alias or name for name, field in cls.model_fields.items()]
        unknown = [key for key in data if key not in known]
        if unknown:
            shown = [
                repr(k if len(k) <= _SHOWN_NAME_CHARS else k[:_SHOWN_NAME_CHARS] + "...") for k in unknown
            ]
            names = ", ".join(shown[:_SHOWN_UNKNOWN])
            if len(unknown) > _SHOWN_UNKNOWN:
                names += f" and {len(unknown) - _SHOWN_UNKNOWN} more"
            noun = "field" if len(unknown) == 1 else "fields"
            raise PydanticCustomError(
                "unknown_fields",
                "unknown {noun} {names}; accepted fields: {accepted}",
                {"noun": noun, "names": names, "accepted": ", ".join(known)},
            )
        return data


class LenientBody(BaseModel):
    """A request body of clients that send every field they know (AUTOMATIC1111's): unknown
    fields are ignored, as the API they were written for ignores them."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _an_object(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise refuse(f"must be an object, not {json_type(data)}")
        return data


def _loc(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def describe(error: _ValidationError) -> str:
    """The first problem of a validation error as one line: `<field>: <what is wrong>`."""
    where, message = _first_problem(error)
    return f"{where}: {message}" if where else message


def _first_problem(error: _ValidationError) -> tuple[str | None, str]:
    """(the field at fault or None, what is wrong with it)."""
    first = error.errors(include_url=False)[0]
    where = _loc(first["loc"])
    if first["type"] == "unknown_fields":
        ctx = first.get("ctx") or {}
        inside = f" in {where}" if where else ""
        return None, f"unknown {ctx['noun']} {ctx['names']}{inside}; accepted fields: {ctx['accepted']}"
    if first["type"] == "missing":
        message = "is required"
    elif first["type"] == _INVALID:
        message = first["msg"]
    else:  # pydantic's own words (rare: our rules refuse first)
        message = first["msg"][:1].lower() + first["msg"][1:]
    return where or None, message


B = TypeVar("B", bound=BaseModel)


def validate(model: type[B], data: Any) -> B:
    """`data` as `model`, or InvalidInput naming the first field that is wrong (also as `.field`)."""
    try:
        return model.model_validate(data)
    except _ValidationError as exc:
        where, message = _first_problem(exc)
        raise InvalidInput(message, field=where) from None


# --- reading a request body -------------------------------------------------------------------------

JSON_CONTENT_TYPES = ("application/json",)


async def read_json_body(request: web.Request, model: type[B], *, holds_body: bool = False) -> B:
    """The body as `model`; 415 for another content type, 413 over the size limit, 408 past the
    body timeout, 400 if malformed. Parsed and validated in the I/O threads, whatever its size.

    Its reservation of the body budget ends here, unless `holds_body`: the model keeps what is
    large in it (base64 images), and the handler calls body_done once it has decoded them.
    """
    content_type = request.content_type
    if content_type not in JSON_CONTENT_TYPES and not content_type.endswith("+json"):
        sent = content_type if "Content-Type" in request.headers else "no Content-Type"
        raise web.HTTPUnsupportedMediaType(
            text=f"send the request as JSON (Content-Type: application/json), not {sent}"
        )
    config = request.app[CONFIG]
    body = await read_body(request, max_bytes=config.max_body_bytes, timeout=config.body_timeout)
    loop = asyncio.get_running_loop()
    parsed = await loop.run_in_executor(
        request.app[IO_POOL], lambda: validate(model, parse_json_object(body))
    )
    if not holds_body:
        del body  # the raw bytes go before their reservation does
        body_done(request)
    return parsed


def _refuse_constant(name: str) -> Any:
    raise InvalidInput(f"the request body is not valid JSON: {name} is not a JSON number")


# Strings at least this long (base64 images) leave the text before json.loads sees it and become
# str in slices. json.loads holds the GIL for the whole text (30-60 ms for 32 MiB), and the event
# loop, /health with it, would wait that long for each upload being parsed.
LIFT_CHARS = 256 * 1024
_SLICE = 1024 * 1024
_MAX_QUOTES = 10_000  # bodies with more strings than this are parsed whole
_CONTROL = bytes(range(32))  # not allowed raw in a JSON string


def _lifted_text(view: memoryview) -> str:
    """A JSON string's contents without escapes, as str, one slice at a time."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    pieces = []
    for at in range(0, len(view), _SLICE):
        raw = bytes(view[at : at + _SLICE])
        if len(raw.translate(None, _CONTROL)) != len(raw):
            raise InvalidInput("the request body is not valid JSON: a string holds a control character")
        pieces.append(decoder.decode(raw))
    pieces.append(decoder.decode(b"", final=True))
    return "".join(pieces)


def _lift_long_strings(body: bytes | bytearray) -> tuple[bytes | bytearray, dict[str, str]]:
    """The body with each long string without escapes replaced by a short placeholder, and what
    each placeholder stands for. The quotes are found with bytes.find: a body holds few."""
    if len(body) < LIFT_CHARS or json.detect_encoding(bytes(body[:4])) != "utf-8":
        return body, {}
    spans, at, opened = [], 0, -1
    for _ in range(_MAX_QUOTES):
        quote = body.find(b'"', at)
        if quote < 0:
            break
        at = quote + 1
        if opened < 0:
            opened = at
            continue
        backslashes = 0
        while body[quote - 1 - backslashes] == 0x5C:  # stops at the opening quote at the latest
            backslashes += 1
            if backslashes > 64:
                return body, {}  # not worth it: parsed whole
        if backslashes % 2:
            continue  # an escaped quote, inside the string
        if quote - opened >= LIFT_CHARS and body.find(b"\\", opened, quote) < 0:
            spans.append((opened, quote))
        opened = -1
    else:
        return body, {}
    if not spans:
        return body, {}
    view, nonce = memoryview(body), secrets.token_hex(8)
    parts: list[Any] = []
    lifted: dict[str, str] = {}
    previous = 0
    for number, (start, end) in enumerate(spans):
        parts += [view[previous:start], f"\\u0000{nonce}:{number}".encode()]
        lifted[f"\x00{nonce}:{number}"] = _lifted_text(view[start:end])
        previous = end
    parts.append(view[previous:])
    return b"".join(parts), lifted


def _put_back(data: Any, lifted: dict[str, str]) -> None:
    """Each placeholder in the parsed body (a value or a key, at any depth) back to its string."""
    stack = [data]
    while stack and lifted:
        node = stack.pop()
        is_object = isinstance(node, dict)
        for key, value in list(node.items()) if is_object else list(enumerate(node)):
            if is_object and key in lifted:
                del node[key]
                key = lifted.pop(key)
                node[key] = value
            if isinstance(value, str) and value in lifted:
                node[key] = lifted.pop(value)
            elif isinstance(value, dict | list):
                stack.append(value)


@one_at_a_time
def parse_json_object(body: bytes | bytearray) -> dict[str, Any]:
    if not body or body.isspace():  # not strip(): that copies megabytes
        raise InvalidInput("the request body is empty; send a JSON object")
    try:
        small, lifted = _lift_long_strings(body)
        data = json.loads(small, parse_constant=_refuse_constant)
        _put_back(data, lifted)
    except UnicodeDecodeError:
        raise InvalidInput("the request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"the request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:
        raise InvalidInput("the request body is nested too deeply") from None
    except ValueError:
        # Python refuses to convert integers of more than sys.get_int_max_str_digits() digits.
        digits = sys.get_int_max_str_digits()
        raise InvalidInput(
            f"the request body is not valid JSON: a number has more than {digits} digits"
        ) from None
    if not isinstance(data, dict):
        raise InvalidInput(f"the request body must be a JSON object, not {json_type(data)}")
    return data
