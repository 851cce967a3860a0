"""RFC 9457 problem details: every error of the API, with a stable `type` per kind of problem."""

from __future__ import annotations

import math
from typing import Any

import orjson
from pydantic import BaseModel, Field
from starlette.responses import Response

PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:eventflow:problem:"


class FieldProblem(BaseModel):
    location: list[str | int]
    message: str
    kind: str


class Problem(BaseModel):
    """application/problem+json"""

    type: str = Field(examples=[f"{TYPE_PREFIX}order-not-open"])
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldProblem] | None = Field(default=None, description="for validation-error only")


def problem(
    status: int,
    code: str,
    title: str,
    detail: str | None = None,
    *,
    instance: str | None = None,
    errors: list[FieldProblem] | None = None,
    retry_after_seconds: float | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = Problem(
        type=TYPE_PREFIX + code,
        title=title,
        status=status,
        detail=detail,
        instance=instance,
        errors=errors,
    )
    headers = dict(headers or {})
    if retry_after_seconds:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after_seconds)))
    return Response(
        orjson.dumps(body.model_dump(exclude_none=True)),
        status_code=status,
        media_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


PROBLEM_REFERENCE = "#/components/schemas/Problem"


def component_schemas() -> dict[str, Any]:
    """Problem and the models it uses, for the OpenAPI document's components: every problem
    response refers to them there (one Problem model in generated clients)."""
    schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    definitions: dict[str, Any] = schema.pop("$defs", {})
    return {"Problem": schema, **definitions}


def described(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for problem statuses a route may answer."""
    titles = {
        400: "Body is not UTF-8 JSON", 401: "Bearer token missing or invalid",
        403: "The caller lacks the app role", 404: "No such order", 409: "The order's state does not allow this", 412: "If-Match is stale",
        413: "Body too large", 415: "Unsupported media type", 422: "Invalid request",
        428: "If-Match required", 503: "Store (or the token's signing keys) unavailable; retry after Retry-After",
    }  # fmt: skip
    return {
        status: {
            "description": titles[status],
            "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": PROBLEM_REFERENCE}}},
        }
        for status in statuses
    }
