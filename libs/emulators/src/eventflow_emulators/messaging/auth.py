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
    """What a valid token allows: entity paths under `path` of the namespace `host` (None when
    the token names no host) until `expires` (epoch seconds)."""

    host: str | None
    path: str
    expires: float

    def covers(self, host: str | None, path: str) -> bool:
        """True when this grant reaches `path` (an entity, or a path under it) in `host`'s
        namespace: a token for the namespace root covers every entity, one for an entity only
        that entity and its sub-paths (service-bus-sas, "Rights required"; the same scheme for
        Event Hubs)."""
        return same_namespace(self.host, host) and (
            self.path in ("", path) or path.startswith(self.path + "/")
        )


class TokenRefused(Exception):
    pass


def resource_path(resource: str) -> str:
    """`sb://host:port/hub/x` or `amqp://...` or `hub/x` -> `hub/x` (lowercase, no slashes at the ends)."""
    if "://" in resource:
        resource = urlparse(resource).path
    return resource.strip("/").lower()


def resource_host(resource: str) -> str | None:
    """`sb://host:port/hub` -> `host` (lowercase, no port); None when the resource has no host."""
    if "://" not in resource:
        return None
    host = urlparse(resource).hostname
    return host.lower() if host else None


def same_namespace(granted: str | None, used: str | None) -> bool:
    """A token names the namespace it was issued for; used on another one it grants nothing.
    Hosts compare without the port; when the connection named no host there is nothing to
    compare with, and a token without a host names no namespace."""
    if used is None:
        return True
    return granted is not None and granted == used.lower().split(":")[0]


def covered(grants: list[Grant], host: str | None, path: str, now: float) -> Grant | None:
    """The unexpired grant that reaches `path`, if any."""
    for grant in grants:
        if grant.expires > now and grant.covers(host, path):
            return grant
    return None


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
    return Grant(resource_host(unquote(resource)), resource_path(unquote(resource)), expires)
