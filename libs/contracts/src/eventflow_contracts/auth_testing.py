"""A token issuer on 127.0.0.1 shaped like Entra ID, for tests: its discovery document at
`/<tenant>/v2.0/.well-known/openid-configuration`, its key set at `/<tenant>/discovery/v2.0/keys`,
and RS256-signed v2 access tokens, so the APIs validate test tokens through the very code path
they use for Entra ID's. Also forges the tokens an attacker would send (`alg: none`, HS256 with the
public key as the secret, another key).

Needs the `auth` extra; production code never imports this module.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from eventflow_contracts.auth import USER_SCOPE, AuthConfig


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class SigningKey:
    def __init__(self, kid: str | None = None) -> None:
        self.kid = kid or uuid.uuid4().hex
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self) -> dict[str, Any]:
        public = jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**public, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class LocalIssuer:
    """Serves discovery and keys while `down` is false (503 otherwise); mints tokens."""

    def __init__(self) -> None:
        self.tenant_id = str(uuid.uuid4())
        self.client_id = str(uuid.uuid4())
        self.key = SigningKey()
        self.published = [self.key]
        self.down = False
        self.keys_url: str | None = None
        """Where the discovery document says the keys are (default: this server)."""
        self.named_issuer: str | None = None
        """The issuer the discovery document names (default: this one's)."""
        self.other_keys: list[object] = []
        """More entries of the key set, as they are (keys of other kinds, malformed ones)."""
        self.requests = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.authority = f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def issuer(self) -> str:
        return f"{self.authority}/{self.tenant_id}/v2.0"

    def config(self, **overrides: Any) -> AuthConfig:
        values: dict[str, Any] = {"tenant_id": self.tenant_id, "audience": self.client_id,
                                  "authority": self.authority, "https_only": False}  # fmt: skip
        return AuthConfig(**{**values, "key_refresh_seconds": 0.0, **overrides})

    def settings(self) -> dict[str, Any]:
        """The AuthFields values that trust this issuer (for a service's Settings(...))."""
        return {
            "auth_tenant_id": self.tenant_id,
            "auth_client_id": self.client_id,
            "auth_authority": self.authority,
            "auth_key_refresh_seconds": 0.0,
        }

    def environment(self, prefix: str) -> dict[str, str]:
        """The settings an API takes to trust this issuer, e.g. prefix "PRODUCER_"."""
        return {
            f"{prefix}AUTH_TENANT_ID": self.tenant_id,
            f"{prefix}AUTH_CLIENT_ID": self.client_id,
            f"{prefix}AUTH_AUTHORITY": self.authority,
            f"{prefix}AUTH_KEY_REFRESH_SECONDS": "0",
        }

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "aud": self.client_id, "iss": self.issuer, "tid": self.tenant_id, "ver": "2.0",
            "iat": now, "nbf": now, "exp": now + 3600, "oid": str(uuid.uuid4()),
            "sub": str(uuid.uuid4()), "azp": str(uuid.uuid4()),
        }  # fmt: skip
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not None}

    def token(
        self, *roles: str, key: SigningKey | None = None, user: bool = False, **claims: Any
    ) -> str:
        """An RS256 token with `roles`; `user=True` makes it delegated (with the API's scope)."""
        values = self.claims(**claims)
        if roles:
            values["roles"] = list(roles)
        if user:
            values.setdefault("scp", USER_SCOPE)
        signer = key or self.key
        return jwt.encode(values, signer.private, algorithm="RS256", headers={"kid": signer.kid})

    def unsigned_token(self, *roles: str) -> str:
        """`alg: none`: what an attacker sends to skip the signature."""
        header = {"alg": "none", "typ": "JWT", "kid": self.key.kid}
        body = {**self.claims(), "roles": list(roles)}
        return f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(body))}."

    def hmac_token(self, *roles: str) -> str:
        """HS256 with the public key as the secret: the algorithm-confusion attack."""
        header = {"alg": "HS256", "typ": "JWT", "kid": self.key.kid}
        body = {**self.claims(), "roles": list(roles)}
        signing_input = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(body))}"
        mac = hmac.new(self.key.public_pem(), signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(mac)}"

    def rotate(self) -> SigningKey:
        """A new signing key, published beside the old one; tokens are signed with it from now."""
        self.key = SigningKey()
        self.published.append(self.key)
        return self.key

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.requests += 1
                base = f"/{issuer.tenant_id}"
                if issuer.down:
                    self._answer(503, {"error": "temporarily_unavailable"})
                elif self.path == f"{base}/v2.0/.well-known/openid-configuration":
                    self._answer(200, {"issuer": issuer.named_issuer or issuer.issuer, "jwks_uri": issuer.keys_url or f"{issuer.authority}{base}/discovery/v2.0/keys",
                                       "id_token_signing_alg_values_supported": ["RS256"]})  # fmt: skip
                elif self.path == f"{base}/discovery/v2.0/keys":
                    self._answer(
                        200,
                        {"keys": [*issuer.other_keys, *(key.jwk() for key in issuer.published)]},
                    )
                else:
                    self._answer(404, {"error": "not_found"})

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                payload = orjson.dumps(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_: Any) -> None:
                pass

        return Handler

    def start(self) -> None:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def running_issuer() -> Iterator[LocalIssuer]:
    """A running LocalIssuer, stopped on exit."""
    issuer = LocalIssuer()
    issuer.start()
    try:
        yield issuer
    finally:
        issuer.stop()
