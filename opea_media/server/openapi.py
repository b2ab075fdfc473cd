"""The service's OpenAPI 3.1 document, served at GET /openapi.json.

Generated, never written by hand: request fields from fields.py, their limits, defaults and text
rules from params.py, image limits from media/images.py (the schemas: openapi_schemas.py), the body
limit, timeout and authentication from the service's ServerConfig. Change a limit there and this
document follows.
"""

from __future__ import annotations

from typing import Any

from .. import __version__
from .config import MIB, ServerConfig
from .openapi_schemas import component_schemas, ref

OPENAPI_VERSION = "3.1.0"
JSON = "application/json"

GENERATE_PATHS = {"text2image": "/v1/text2image", "image2video": "/v1/image2video"}
_TITLES = {
    "text2image": "opea-media text2image (Stable Diffusion)",
    "image2video": "opea-media image2video (Stable Video Diffusion)",
}


def _error(description: str, *, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"X-Request-ID": ref("headers", "RequestId"), **(headers or {})},
        "content": {JSON: {"schema": ref("schemas", "Error")}},
    }


def _responses(config: ServerConfig) -> dict[str, Any]:
    retry_after = {"Retry-After": ref("headers", "RetryAfter")}
    return {
        "BadRequest": _error(
            "Bad input: malformed JSON, NaN or Infinity, an unknown field, a field of the wrong type "
            "or out of its limits, an unusable image or a refused URL. The detail names the field."
        ),
        "Unauthorized": _error(
            "An API key is configured and 'Authorization: Bearer <key>' is missing or wrong.",
            headers={"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}},
        ),
        "PayloadTooLarge": _error(
            f"The body is larger than {config.max_body_bytes / MIB:g} MiB ({config.max_body_bytes} bytes)."
        ),
        "UnsupportedMediaType": _error("The body was not sent as Content-Type: application/json."),
        "InferenceFailed": _error(
            "Inference failed: out of memory, or a library error (the log has it under X-Request-ID)."
        ),
        "Unavailable": _error(
            "The model is loading (Retry-After), failed to load (no Retry-After: retrying will not "
            "help), the queue is full (Retry-After) or the service is shutting down (Retry-After).",
            headers=retry_after,
        ),
        "Timeout": _error(
            f"The request took longer than the {config.request_timeout:g} s request timeout, counted "
            "from arrival (body, image downloads, queue and inference)."
        ),
    }


def _ok(description: str, schema: dict[str, Any], media_type: str = JSON) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"X-Request-ID": ref("headers", "RequestId")},
        "content": {media_type: {"schema": schema}},
    }


def _health_operation(operation_id: str, summary: str) -> dict[str, Any]:
    unavailable = _ok("Not serving: loading, failed to load, or draining.", ref("schemas", "Unhealthy"))
    unavailable["headers"]["Retry-After"] = ref("headers", "RetryAfter")
    return {
        "get": {
            "operationId": operation_id,
            "summary": summary,
            "responses": {"200": _ok("The model serves.", ref("schemas", "Healthy")), "503": unavailable},
        }
    }


def _generate_operation(config: ServerConfig) -> dict[str, Any]:
    name = "Text2Image" if config.service == "text2image" else "Image2Video"
    responses: dict[str, Any] = {
        "200": _ok("The result.", ref("schemas", f"{name}Response")),
        "400": ref("responses", "BadRequest"),
        "413": ref("responses", "PayloadTooLarge"),
        "415": ref("responses", "UnsupportedMediaType"),
        "500": ref("responses", "InferenceFailed"),
        "503": ref("responses", "Unavailable"),
        "504": ref("responses", "Timeout"),
    }
    operation: dict[str, Any] = {
        "operationId": config.service,
        "summary": "Generate images from a prompt" if name == "Text2Image" else "Animate images into clips",
        "requestBody": {
            "required": True,
            "description": f"A JSON object of at most {config.max_body_bytes} bytes.",
            "x-max-body-bytes": config.max_body_bytes,
            "content": {JSON: {"schema": ref("schemas", f"{name}Request")}},
        },
        "responses": responses,
    }
    if config.api_key:
        operation["security"] = [{"bearer": []}]
        responses["401"] = ref("responses", "Unauthorized")
    return {"post": operation}


def openapi_document(config: ServerConfig) -> dict[str, Any]:
    """The document of the service `config` describes (its one generate path, health, metrics)."""
    components: dict[str, Any] = {
        "schemas": component_schemas(config),
        "responses": _responses(config),
        "headers": {
            "RequestId": {
                "description": "The request's id; a caller's own (1-128 of A-Z a-z 0-9 . _ : -) is kept.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 128},
            },
            "RetryAfter": {
                "description": "Seconds after which a retry may succeed.",
                "schema": {"type": "integer", "minimum": 1},
            },
        },
    }
    if config.api_key:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": _TITLES[config.service],
            "version": __version__,
            "description": (
                'Every error has the body {"detail": "...", "status_code": N} (schema Error) with '
                "the same HTTP status, unknown paths (404) and undeclared methods (405, with Allow) "
                "included."
            ),
        },
        "paths": {
            GENERATE_PATHS[config.service]: _generate_operation(config),
            "/health": _health_operation("health", "Readiness: 200 once the model serves"),
            "/health/ready": _health_operation("ready", "The same as /health"),
            "/health/live": {
                "get": {
                    "operationId": "live",
                    "summary": "Liveness: 200 while the process can serve; 503 once its worker thread died",
                    "responses": {
                        "200": _ok("The process runs.", ref("schemas", "Alive")),
                        "503": _ok("The worker thread died: restart the process.", ref("schemas", "Dead")),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics",
                    "responses": {"200": _ok("Prometheus text format.", {"type": "string"}, "text/plain")},
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {"200": _ok("OpenAPI 3.1.", {"type": "object"})},
                }
            },
        },
        "components": components,
    }
