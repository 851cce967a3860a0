"""Shared access signatures, checked the way the services check them.

A token is `SharedAccessSignature sr=<url-encoded resource>&sig=<signature>&se=<expiry>&skn=<key
name>`, the signature being base64(HMAC-SHA256(key, "<url-encoded resource>\\n<expiry>")) with the
key's UTF-8 bytes (https://learn.microsoft.com/azure/service-bus-messaging/service-bus-sas,
"Generate a Shared Access Signature token"; azure-eventhub _client_base.py `_generate_sas_token`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlparse


@dataclass(frozen=True)
class Grant:
    """What a valid token allows: entity paths under `path` until `expires` (epoch seconds)."""

    path: str
    expires: float


class TokenRefused(Exception):
    pass


def resource_path(resource: str) -> str:
    """`sb://host:port/hub/x` or `amqp://...` or `hub/x` -> `hub/x` (lowercase, no slashes at the ends)."""
    if "://" in resource:
        resource = urlparse(resource).path
    return resource.strip("/").lower()


def verify(token: str, keys: dict[str, str], *, now: float | None = None) -> Grant:
    if not token.startswith("SharedAccessSignature "):
        raise TokenRefused("not a shared access signature")
    fields = {k: v[0] for k, v in parse_qs(token[len("SharedAccessSignature ") :]).items()}
    raw = dict(part.split("=", 1) for part in token[len("SharedAccessSignature ") :].split("&"))
    try:
        resource, signature, expiry, key_name = raw["sr"], fields["sig"], raw["se"], fields["skn"]
    except KeyError as missing:
        raise TokenRefused(f"the token has no {missing}") from None
    key = keys.get(key_name)
    if key is None:
        raise TokenRefused(f"unknown key name {key_name!r}")
    expected = base64.b64encode(
        hmac.new(key.encode(), f"{resource}\n{expiry}".encode(), hashlib.sha256).digest()
    ).decode()
    if not hmac.compare_digest(expected, signature):
        raise TokenRefused("the signature does not match the key")
    expires = float(expiry)
    if expires < (now if now is not None else time.time()):
        raise TokenRefused("the token has expired")
    return Grant(resource_path(unquote(resource)), expires)
