"""The API's error shape in its OpenAPI document.

Every error the controller answers is RFC 9457 problem details (``application/problem+json``,
see ``controller.app``), but FastAPI documents each operation's 422 as its own
``HTTPValidationError`` in ``application/json`` and no other error at all.
``document_problems`` rewrites the generated document once: 422 as problem details listing
the invalid fields, and every other 4xx (401, 403, 404, 409, 413 ...) as problem details, so
that clients, generated SDKs and the API fuzz (tests/test_api_fuzz.py) see what the API
really sends.
"""

import json
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

__all__ = ["Problem", "document_problems"]

PROBLEM_JSON = "application/problem+json"


class Problem(BaseModel):
    """RFC 9457 problem details; ``detail`` is a sentence, or the list of invalid fields
    (``loc``, ``msg``) of a request that failed validation."""

    type: str = "about:blank"
    title: str
    status: int
    detail: Any = None


def document_problems(app: FastAPI) -> None:
    """Make ``app.openapi()`` document validation errors and refusals as problem details."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        problem = {
            "description": "Invalid request (problem details listing the invalid fields)",
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        refused = {
            "description": "Refused (problem details saying why)",
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                responses = operation.get("responses", {})
                if "422" in responses:
                    responses["422"] = problem
                responses.setdefault("4XX", refused)
        # Drop FastAPI's own error models unless something else still refers to them.
        for name in ("HTTPValidationError", "ValidationError"):
            model = schemas.pop(name, None)
            if model is not None and f'"#/components/schemas/{name}"' in json.dumps(schema):
                schemas[name] = model
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
