"""OpenAI-shaped error bodies, for every refusal of the agent's API, and their documentation.

``{"error": {"message": ..., "type": "invalid_request_error", "code": ...}}``: from the
routes, from request validation (400, never FastAPI's 422) and from the body guard.
"""

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

# What /openapi.json says of a 503 while no tier (or model) allowed for the request can answer.
UNAVAILABLE: dict[str, Any] = {
    "description": "No tier (or model) can answer now; retry after Retry-After seconds",
    "content": {"application/json": {}},
}

_OPENAI_ERROR: dict[str, Any] = {
    "description": "Invalid request: an OpenAI-shaped error saying what is wrong",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["message", "type", "code"],
                        "properties": {
                            "message": {"type": "string"},
                            "type": {"type": "string"},
                            "code": {"type": "string"},
                        },
                    }
                },
            }
        }
    },
}


def error(
    status: int, message: str, code: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def guard_error(status: int, reason: str, message: str) -> tuple[bytes, str]:
    """The body guard's refusals in this API's OpenAI error shape."""
    body = {"error": {"message": message, "type": "invalid_request_error", "code": reason}}
    return json.dumps(body).encode(), "application/json"


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return error(400, f"{where}: {first.get('msg')}", "invalid_request")


def install_errors(app: FastAPI) -> None:
    """Invalid requests answer 400 with an OpenAI error, and /openapi.json says so."""
    app.add_exception_handler(RequestValidationError, _invalid)
    _document_errors(app)


def _document_errors(app: FastAPI) -> None:
    """/openapi.json as this API answers: invalid requests are 400 with an OpenAI error
    (the validation handler and the body guard), never FastAPI's 422 validation document."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for path_item in schema.get("paths", {}).values():
                for operation in path_item.values():
                    responses = operation.get("responses", {})
                    if responses.pop("422", None) is not None:
                        responses["400"] = _OPENAI_ERROR
            schemas = schema.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
