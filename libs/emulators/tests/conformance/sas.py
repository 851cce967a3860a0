"""Connection strings that carry a shared access signature of the test's choosing (a resource,
another namespace, a short life), made from a key-based connection string as an application
would make them ("Service Bus authentication and authorization with SAS", "Generate a Shared
Access Signature token": sr = URL-encoded resource URI, signature = HMAC-SHA256 of
"<sr>\\n<expiry>" with the key). Both SDKs take `SharedAccessSignature=` in a connection string."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from urllib.parse import quote


def _parts(connection_string: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in connection_string.split(";") if "=" in part)


def namespace_host(connection_string: str) -> str:
    """`Endpoint=sb://host[:port]/` -> `host[:port]`."""
    return _parts(connection_string)["Endpoint"].removeprefix("sb://").strip("/")


def sas_token(key_name: str, key: str, resource: str, expires_at: int) -> str:
    encoded = quote(resource, safe="").lower()
    signature = base64.b64encode(
        hmac.new(key.encode(), f"{encoded}\n{expires_at}".encode(), hashlib.sha256).digest()
    ).decode()
    return (
        f"SharedAccessSignature sr={encoded}&sig={quote(signature, safe='')}"
        f"&se={expires_at}&skn={key_name}"
    )


def with_signature(
    connection_string: str, entity: str, *, namespace: str | None = None, lifetime_s: int = 3600
) -> str:
    """The connection string with a SAS for `sb://<namespace>/<entity>` (entity "" = the
    namespace root) in place of its key, signed with that key, valid for `lifetime_s`."""
    parts = _parts(connection_string)
    host = namespace or namespace_host(connection_string)
    resource = f"sb://{host}/{entity}".rstrip("/") + ("/" if not entity else "")
    token = sas_token(
        parts["SharedAccessKeyName"], parts["SharedAccessKey"], resource,
        int(time.time()) + lifetime_s,
    )  # fmt: skip
    kept = {k: v for k, v in parts.items() if k not in ("SharedAccessKeyName", "SharedAccessKey")}
    kept["SharedAccessSignature"] = token
    return ";".join(f"{k}={v}" for k, v in kept.items())
