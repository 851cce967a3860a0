"""Master-key authorization, as the service checks it.

The client signs `verb\\nresourceType\\nresourceLink\\nx-ms-date\\ndate\\n` (lower-cased, except a
name-based resource link) with HMAC-SHA256 under the base64-decoded key and sends
`type=master&ver=1.0&sig=<base64>` URL-encoded in `Authorization`
(learn.microsoft.com/rest/api/cosmos-db/access-control-on-cosmosdb-resources; the SDK side is
azure/cosmos/auth.py `__get_authorization_token_using_master_key`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import unquote

from eventflow_emulators.cosmos.errors import CosmosError


def resource_of(segments: list[str]) -> tuple[str, str]:
    """(resource type, resource link) of a path: a feed (`dbs/d/colls`) names its parent, an
    item (`dbs/d/colls/c`) names itself."""
    if not segments:
        return "", ""
    if len(segments) % 2:
        return segments[-1], "/".join(segments[:-1])
    return segments[-2], "/".join(segments)


def signature(key: bytes, verb: str, resource_type: str, link: str, x_date: str, date: str) -> str:
    text = f"{verb.lower()}\n{resource_type.lower()}\n{link}\n{x_date.lower()}\n{date.lower()}\n"
    return base64.b64encode(hmac.new(key, text.encode(), hashlib.sha256).digest()).decode()


class MasterKey:
    def __init__(self, key: str) -> None:
        self._key = base64.b64decode(key)

    def verify(self, verb: str, segments: list[str], authorization: str | None,
               x_date: str, date: str) -> None:  # fmt: skip
        """Raise 401 (with the service's wording) unless the request is dated and signed with the
        key."""
        if not authorization:
            raise CosmosError(
                401,
                "Required Header authorization is missing. Ensure a valid Authorization token is defined for the request.",
            )
        if not x_date and not date:
            # The signature covers the date; a request without one is refused before any check
            # of the signature (REST reference "Common Azure Cosmos DB REST request headers":
            # x-ms-date is required, Date may stand in for it).
            raise CosmosError(
                401, "The request has neither an x-ms-date nor a Date header; one is required."
            )
        fields = dict(part.partition("=")[::2] for part in unquote(authorization).split("&"))
        if fields.get("type") != "master" or "sig" not in fields:
            raise CosmosError(
                401, "The emulator accepts master-key authorization only (type=master)."
            )
        resource_type, link = resource_of(segments)
        expected = signature(self._key, verb, resource_type, link, x_date, date)
        if not hmac.compare_digest(expected, fields["sig"]):
            raise CosmosError(
                401,
                "The input authorization token can't serve the request. The wrong key is being "
                "used or the expected payload is not built as per the protocol. Server used the "
                f"following payload to sign: '{verb.lower()}\\n{resource_type}\\n{link}\\n"
                f"{x_date.lower()}\\n{date.lower()}\\n'",
            )
