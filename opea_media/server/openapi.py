"""The service's OpenAPI 3.1 document, served at GET /openapi.json.

Generated, never written by hand: the paths from the route table (routes.py), the bodies' JSON
Schemas from the pydantic wire models (wire.py, whose limits are params.py's), the body limit,
timeout and authentication from the service's ServerConfig.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .. import __version__
from .config import MIB, ServerConfig
from .error_styles import OPENAI
from .routes import EVENT_STREAM, JSON, Answer, Parameter, Route, routes_for

OPENAPI_VERSION = "3.1.0"
_TITLES = {
    "text2image": "opea-media text2image (Stable Diffusion)",
    "image2video": "opea-media image2video (Stable Video Diffusion)",
}
_SCHEMAS = "#/components/schemas/{model}"


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _error_descriptions(config: ServerConfig) -> dict[int, str]:
    """What each error status means, once for every route that may answer it."""
    return {
        400: "Bad input: malformed JSON, NaN or Infinity, an unknown field, a field of the wrong type "
        "or out of its limits, an unusable image or a refused URL. The detail names the field.",
        401: "An API key is configured and 'Authorization: Bearer <key>' (or Basic authentication "
        "with the key as the password) is missing or wrong.",
        404: "What the path names does not exist (an unknown model id; an output file that expired).",
        408: f"The body did not arrive within the {config.body_timeout:g} s body timeout; the "
        "connection is closed.",
        409: "POST /sdapi/v1/interrupt stopped this request's job before it finished; or the job "
        "to cancel already ended.",
        413: f"The body is larger than {config.max_body_bytes / MIB:g} MiB ({config.max_body_bytes} bytes).",
        415: "The body was not sent with the Content-Type the operation takes.",
        422: "The Idempotency-Key was used before with another body.",
        500: "Inference failed: out of memory, or a library error (the log has it under X-Request-ID).",
        503: "The model is loading (Retry-After), failed to load (no Retry-After: retrying will not "
        "help), the queue is full (Retry-After), the request bodies being received hold the body "
        "budget (Retry-After) or the service is shutting down (Retry-After).",
        504: f"The request took longer than the {config.request_timeout:g} s request timeout, counted "
        "from arrival (body, image downloads, queue and inference).",
    }


def _response(answer: Answer, *, should_retry: bool = False) -> dict[str, Any]:
    headers: dict[str, Any] = {"X-Request-ID": _ref("headers", "RequestId")}
    if answer.retry_after:
        headers["Retry-After"] = _ref("headers", "RetryAfter")
    if should_retry:
        headers["x-should-retry"] = _ref("headers", "ShouldRetry")
    schema = {"type": "string"} if answer.media_type != JSON else {"type": "object"}
    if answer.media_type == EVENT_STREAM:
        schema = _text_schema(EVENT_STREAM, answer)
    elif answer.body is not None:
        schema = {"$ref": _SCHEMAS.format(model=answer.body.__name__)}
    content = {answer.media_type: {"schema": schema}}
    content |= {media_type: {"schema": _text_schema(media_type, answer)} for media_type in answer.also}
    return {"description": answer.description, "headers": headers, "content": content}


def _text_schema(media_type: str, answer: Answer) -> dict[str, Any]:
    if media_type != EVENT_STREAM:
        return {"type": "string"}
    # Each server-sent event, as schemathesis and OpenAPI 3.2's itemSchema see one.
    data: dict[str, Any] = {"type": "string", "contentMediaType": JSON}
    if answer.events:
        data["contentSchema"] = {
            "oneOf": [{"$ref": _SCHEMAS.format(model=m.__name__)} for m in answer.events]
        }
    return {
        "type": "object",
        "required": ["data"],
        "properties": {
            "event": {"type": "string"},
            "data": data,
            "id": {"type": "string"},
            "retry": {"type": "integer"},
        },
    }


def _operation(route: Route, config: ServerConfig) -> dict[str, Any]:
    errors = _error_descriptions(config)
    statuses = list(route.errors)
    secured = bool(config.api_key) and route.protected
    if secured:
        statuses.append(401)
    responses: dict[str, Any] = {str(status): _response(answer) for status, answer in route.answers.items()}
    for status in sorted(statuses):
        error = Answer(errors[status], route.error_style.body, retry_after=status == 503)
        responses[str(status)] = _response(error, should_retry=route.error_style is OPENAI)
        if status == 401:
            responses["401"]["headers"]["WWW-Authenticate"] = {"schema": {"type": "string"}, "required": True}
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "responses": responses,
    }
    described = {p.name: p for p in route.parameters if p.location == "path"}
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        | _parameter(described.get(name))
        for name in route.path_parameters
    ]
    parameters += [
        {"name": p.name, "in": p.location} | _parameter(p) for p in route.parameters if p.location != "path"
    ]
    if parameters:
        operation["parameters"] = parameters
    if route.request is not None:
        what = "A JSON object" if route.request_media_type == JSON else "A form"
        operation["requestBody"] = {
            "required": True,
            "description": f"{what} of at most {config.max_body_bytes} bytes.",
            "x-max-body-bytes": config.max_body_bytes,
            "content": {
                route.request_media_type: {"schema": {"$ref": _SCHEMAS.format(model=route.request.__name__)}}
            },
        }
    if secured:
        operation["security"] = [{"bearer": []}, {"basic": []}]
    return operation


def _parameter(parameter: Parameter | None) -> dict[str, Any]:
    if parameter is None:
        return {}
    return {"description": parameter.description, "schema": dict(parameter.schema)}


def _component_schemas(routes: list[Route]) -> dict[str, Any]:
    requests = {route.request for route in routes if route.request is not None}
    answers = {a.body for route in routes for a in route.answers.values() if a.body is not None}
    answers |= {route.error_style.body for route in routes}
    answers |= {event for route in routes for a in route.answers.values() for event in a.events}
    models: list[tuple[type[BaseModel], Any]] = [(m, "validation") for m in sorted(requests, key=_name)]
    models += [(m, "serialization") for m in sorted(answers, key=_name)]
    _, schemas = models_json_schema(models, ref_template=_SCHEMAS)
    defs = schemas.get("$defs", {})
    for route in routes:
        if route.request is not None and route.request_media_type != JSON:
            defs[route.request.__name__] = _form_schema(defs[route.request.__name__])
    return dict(sorted(defs.items()))


def _form_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A form has no null: an optional field is one left out, so the null branches go."""
    properties = {}
    for name, prop in schema["properties"].items():
        branches = [b for b in prop.get("anyOf", []) if b.get("type") != "null"]
        if len(branches) == 1:
            prop = {k: v for k, v in prop.items() if k not in ("anyOf", "default")} | branches[0]
        properties[name] = prop
    return {**schema, "properties": properties}


def _name(model: type[BaseModel]) -> str:
    return model.__name__


def openapi_document(config: ServerConfig) -> dict[str, Any]:
    """The document of the service `config` describes (its generate path, health, metrics)."""
    routes = routes_for(config.service)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.openapi_path, {})[route.method.lower()] = _operation(route, config)
    components: dict[str, Any] = {
        "schemas": _component_schemas(routes),
        "headers": {
            "RequestId": {
                "description": "The request's id; a caller's own (1-128 of A-Z a-z 0-9 . _ : -) is kept.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 128},
            },
            "RetryAfter": {
                "description": "Seconds after which a retry may succeed.",
                "schema": {"type": "integer", "minimum": 1},
            },
            "ShouldRetry": {
                "description": "For the OpenAI SDKs: true only when a retry can succeed (with Retry-After).",
                "schema": {"type": "string", "enum": ["true", "false"]},
            },
        },
    }
    if config.api_key:
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "basic": {
                "type": "http",
                "scheme": "basic",
                "description": "Any user name; the key as the password.",
            },
        }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": _TITLES[config.service],
            "version": __version__,
            "description": (
                'Every error has the body {"detail": "...", "status_code": N} (schema ErrorBody) with '
                "the same HTTP status, unknown paths (404) and undeclared methods (405, with Allow) "
                'included; the OpenAI routes add OpenAI\'s {"error": {...}} (OpenAIErrorBody), and the '
                "/sdapi routes answer as AUTOMATIC1111 does (A1111ErrorBody)."
            ),
        },
        "paths": paths,
        "components": components,
    }
