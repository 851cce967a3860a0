"""Cosmos DB errors as the service reports them: HTTP status, `code`, message, sub-status.

The SDK turns the status into its exception class (404 -> CosmosResourceNotFoundError, 409 ->
CosmosResourceExistsError, 412 -> CosmosAccessConditionFailedError; see
`azure/cosmos/aio/_asynchronous_request.py`) and reads the sub-status from `x-ms-substatus`.
"""

from __future__ import annotations

CODES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    408: "RequestTimeout",
    409: "Conflict",
    410: "Gone",
    412: "PreconditionFailed",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    424: "FailedDependency",
    429: "TooManyRequests",
    500: "InternalServerError",
    503: "ServiceUnavailable",
}

# Sub-status codes (azure/cosmos/http_constants.py `SubStatusCodes`).
PARTITION_KEY_MISMATCH = 1001
PARTITION_KEY_RANGE_GONE = 1002
CROSS_PARTITION_QUERY_NOT_SERVABLE = 1004
COLLECTION_RID_MISMATCH = 1024
RU_BUDGET_EXCEEDED = 3200


class CosmosError(Exception):
    """A request the service refuses; `status` and `sub_status` go on the wire as they are."""

    def __init__(self, status: int, message: str, sub_status: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.sub_status = sub_status

    @property
    def code(self) -> str:
        return CODES.get(self.status, "Error")

    def body(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def bad_request(message: str, sub_status: int = 0) -> CosmosError:
    return CosmosError(400, message, sub_status)


def not_found(
    message: str = "Entity with the specified id does not exist in the system.",
) -> CosmosError:
    return CosmosError(404, message)


def conflict() -> CosmosError:
    return CosmosError(409, "Entity with the specified id already exists in the system.")


def precondition_failed() -> CosmosError:
    return CosmosError(
        412, "Operation cannot be performed because one of the specified precondition is not met."
    )


def range_gone(range_id: str) -> CosmosError:
    return CosmosError(
        410,
        f"The partition key range {range_id} is gone (it was split); refresh the routing map.",
        PARTITION_KEY_RANGE_GONE,
    )
