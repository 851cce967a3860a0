"""Who may call the eventflow APIs (the producer's orders API and the consumer's read API): the
contract between their callers and them, so it travels with the contracts (the `auth` extra)
instead of in two copies that could drift apart.

The contract: Entra ID access tokens of version 2 (the API's app manifest sets
`requestedAccessTokenVersion: 2`), signed RS256 by the tenant's published keys, issued by
`https://login.microsoftonline.com/<tenant>/v2.0` for the audience `<the API's client id>`, with
the app role `Orders.ReadWrite` for commands and `Orders.Read` (or `Orders.ReadWrite`) for reads.
An app-only token (client credentials, a managed identity) needs the role in `roles`; a delegated
(user) token needs the API's scope `user_impersonation` in `scp` *and* the role assigned to the
user: the scope only says which client may ask on the user's behalf.

Signatures are checked with PyJWT (already in every service through msal, kept, with a narrow
decode API that takes the pinned algorithm list). The key set is fetched with aiohttp on the event
loop, cached, refreshed once for an unknown `kid` (at most every `auth_key_refresh_seconds`);
keys already cached keep validating while the key set is unreachable, and an unknown `kid` then
answers 503 (KeySetUnavailableError), never a 401 that would make the caller drop a good token.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Self
from urllib.parse import urlsplit

import aiohttp
import jwt
from pydantic import BaseModel, Field, model_validator

Role = Literal["Orders.Read", "Orders.ReadWrite"]
READ_ROLE: Final[Role] = "Orders.Read"
WRITE_ROLE: Final[Role] = "Orders.ReadWrite"
USER_SCOPE = "user_impersonation"
ENTRA_AUTHORITY = "https://login.microsoftonline.com"
TOKEN_VERSION = "2.0"
ALGORITHM = "RS256"
MAX_TOKEN_CHARS = 16 * 1024
"""Entra ID tokens are a few KB; a longer one is refused before it is parsed."""
REALM = "eventflow"
KEY_SET_MAX_AGE_S = 24 * 3600.0
"""Past this, a key set that fetched fine is fetched again at the next token, so keys the tenant
withdrew stop validating (while the fetch fails, the cached keys keep validating)."""
_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_IMPLIES = {READ_ROLE: {READ_ROLE, WRITE_ROLE}, WRITE_ROLE: {WRITE_ROLE}}


class AuthFields(BaseModel):
    """The settings both APIs read for their callers' tokens; a service's settings class inherits
    them (under its own prefix, e.g. PRODUCER_AUTH_TENANT_ID). Without tenant and client id the
    API authenticates nobody and lets everyone in, which only the emulator modes allow."""

    auth_tenant_id: str | None = Field(
        default=None, description="the Entra ID tenant (directory) id that issues the tokens"
    )
    auth_client_id: str | None = Field(
        default=None, description="the API's application (client) id: the tokens' audience"
    )
    auth_authority: str = Field(
        default=ENTRA_AUTHORITY,
        description="where the tenant's discovery document is; only Entra ID in azure mode",
    )
    auth_leeway_seconds: float = Field(default=30.0, ge=0, le=300)
    auth_key_refresh_seconds: float = Field(
        default=60.0,
        ge=0,
        description="an unknown kid fetches the key set again at most this often",
    )
    auth_key_timeout_seconds: float = Field(default=5.0, gt=0)

    @property
    def _prefix(self) -> str:
        """The service's environment prefix (PRODUCER_, CONSUMER_), for messages."""
        return str(type(self).model_config.get("env_prefix", ""))

    @model_validator(mode="after")
    def _auth_settings_agree(self) -> Self:
        prefix = self._prefix
        if (self.auth_tenant_id is None) != (self.auth_client_id is None):
            raise ValueError(
                f"set both {prefix}AUTH_TENANT_ID and {prefix}AUTH_CLIENT_ID, or neither"
            )
        for name in ("auth_tenant_id", "auth_client_id"):
            value = getattr(self, name)
            if value is not None and not _GUID.match(value.lower()):
                raise ValueError(f"{prefix}{name.upper()} must be a GUID")
        return self

    @property
    def auth_enabled(self) -> bool:
        return self.auth_tenant_id is not None

    def refuse_insecure_auth(self, mode: str) -> None:
        """In azure mode tokens are required, and only Entra ID may issue them. Raises ValueError."""
        if mode != "azure":
            return
        prefix = self._prefix
        if not self.auth_enabled:
            raise ValueError(
                f"mode=azure needs {prefix}AUTH_TENANT_ID and {prefix}AUTH_CLIENT_ID (Entra ID)"
            )
        if self.auth_authority.rstrip("/") != ENTRA_AUTHORITY:
            raise ValueError(
                f"mode=azure takes tokens from {ENTRA_AUTHORITY} only ({prefix}AUTH_AUTHORITY)"
            )

    def auth_config(self) -> AuthConfig | None:
        """The validation's configuration, or None when authentication is off."""
        if self.auth_tenant_id is None or self.auth_client_id is None:
            return None
        authority = self.auth_authority.rstrip("/")
        return AuthConfig(
            tenant_id=self.auth_tenant_id.lower(),
            audience=self.auth_client_id.lower(),
            authority=authority,
            leeway_seconds=self.auth_leeway_seconds,
            key_refresh_seconds=self.auth_key_refresh_seconds,
            key_timeout_seconds=self.auth_key_timeout_seconds,
            https_only=authority == ENTRA_AUTHORITY,
        )


@dataclass(frozen=True, slots=True)
class AuthConfig:
    tenant_id: str
    audience: str
    authority: str
    leeway_seconds: float = 30.0
    key_refresh_seconds: float = 60.0
    key_timeout_seconds: float = 5.0
    https_only: bool = True

    @property
    def issuer(self) -> str:
        return f"{self.authority}/{self.tenant_id}/v2.0"

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who called: the token's object id (a user's or a service principal's), what it may do."""

    object_id: str
    roles: frozenset[str]
    scopes: frozenset[str]

    @property
    def app_only(self) -> bool:
        return not self.scopes

    def may(self, role: Role) -> bool:
        """An app needs the role; a user needs the role and the API's scope."""
        has_role = bool(self.roles & _IMPLIES[role])
        return has_role and (self.app_only or USER_SCOPE in self.scopes)


ANONYMOUS = Caller("anonymous", frozenset({READ_ROLE, WRITE_ROLE}), frozenset())
"""The caller when authentication is off (emulator modes only): may do everything."""


class AuthError(Exception):
    """A request the API refuses; `status`, `code`, `title`, `headers` make its problem+json."""

    status = 401
    code = "invalid-token"
    title = "Invalid bearer token"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token", '
                                    f'error_description="{self.detail}"'}  # fmt: skip


class MissingTokenError(AuthError):
    code = "token-required"
    title = "Bearer token required"

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": f'Bearer realm="{REALM}"'}  # RFC 6750 §3.1: no error code


class ForbiddenError(AuthError):
    status = 403
    code = "forbidden"
    title = "The caller lacks the app role"

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": f'Bearer realm="{REALM}", error="insufficient_scope", '
                                    f'error_description="{self.detail}"'}  # fmt: skip


class KeySetUnavailableError(AuthError):
    """The token names a key this API has not seen, and the key set cannot be fetched now."""

    status = 503
    code = "key-set-unavailable"
    title = "The token's signing keys cannot be fetched; retry after Retry-After"
    retry_after_seconds = 5

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_seconds)}


def authorize(caller: Caller, role: Role) -> Caller:
    """`caller` if it may act with `role`; raises ForbiddenError (never names its claims)."""
    if not caller.may(role):
        raise ForbiddenError(f"this needs the app role {role}")
    return caller


class KeySet:
    """The tenant's signing keys by `kid`, fetched from its discovery document's `jwks_uri`."""

    def __init__(self, config: AuthConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._session: aiohttp.ClientSession | None = None
        self._clock = clock
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None  # the last fetch, and whether it worked
        self._fetch_worked = False
        self._current_since: float | None = None  # the last fetch that worked
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def key(self, kid: str) -> Any | None:
        """The public key for `kid`, or None when the key set (fetched now or a moment ago) does
        not have it. Raises KeySetUnavailableError when `kid` is unknown and the key set could
        not be fetched (now or a moment ago)."""
        if kid in self._keys and not self._old():
            return self._keys[kid]
        seen = self.fetches
        async with self._lock:  # one fetch at a time; waiters use its outcome
            if kid in self._keys and not self._old():
                return self._keys[kid]
            if self.fetches == seen and not self._fetched_recently():
                await self._fetch()
        if kid in self._keys:
            return self._keys[kid]
        if not self._fetch_worked:
            raise KeySetUnavailableError(
                "the token's signing key is unknown and the key set is unreachable"
            )
        return None

    def _old(self) -> bool:
        return (
            self._current_since is not None
            and self._clock() - self._current_since > KEY_SET_MAX_AGE_S
        )

    def _fetched_recently(self) -> bool:
        """A fetch that worked is not repeated for `key_refresh_seconds`; one that failed is
        repeated after the Retry-After its 503 announced (or sooner), so one failed fetch at a
        cold start does not refuse every caller for a whole refresh interval."""
        if self._fetched_at is None:
            return False
        wait = self._config.key_refresh_seconds
        if not self._fetch_worked:
            wait = min(wait, KeySetUnavailableError.retry_after_seconds)
        return self._clock() - self._fetched_at < wait

    async def _fetch(self) -> None:
        self.fetches += 1
        self._fetched_at = self._clock()
        try:
            async with asyncio.timeout(self._config.key_timeout_seconds):
                discovery = await self._json(self._config.discovery_url)
                if discovery.get("issuer") != self._config.issuer:
                    raise ValueError("the discovery document names another issuer")
                keys = _signing_keys(await self._json(self._jwks_uri(discovery)))
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
            self._fetch_worked = False
            return
        self._keys = keys  # a key the tenant no longer publishes no longer validates
        self._fetch_worked = True
        self._current_since = self._fetched_at

    def _jwks_uri(self, discovery: Mapping[str, Any]) -> str:
        uri = str(discovery["jwks_uri"])
        if self._config.https_only:
            wanted = urlsplit(self._config.authority)
            found = urlsplit(uri)
            if (found.scheme, found.netloc) != (wanted.scheme, wanted.netloc):
                raise ValueError("the key set is not on the authority's host")
        return uri

    async def _json(self, url: str) -> dict[str, Any]:
        if self._session is None:  # made on the loop that uses it
            # No proxies or ~/.netrc from the environment: the keys are fetched directly.
            self._session = aiohttp.ClientSession(trust_env=False)
        async with self._session.get(url, allow_redirects=False) as response:
            response.raise_for_status()
            body = await response.json(content_type=None)
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
        return body

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _signing_keys(jwks: Mapping[str, Any]) -> dict[str, Any]:
    keys: dict[str, Any] = {}
    for entry in jwks.get("keys", []):
        if not isinstance(entry, dict) or entry.get("kty") != "RSA" or "kid" not in entry:
            continue
        if entry.get("use", "sig") != "sig":
            continue
        try:
            keys[str(entry["kid"])] = jwt.PyJWK(entry, ALGORITHM).key
        except jwt.PyJWTError:
            continue  # a key this API cannot use is skipped, not the whole set
    return keys


class TokenValidator:
    """Turns an `Authorization` header into a Caller, or raises AuthError."""

    def __init__(self, config: AuthConfig, keys: KeySet) -> None:
        self._config = config
        self._keys = keys

    async def caller(self, authorization: str | None) -> Caller:
        token = _bearer_token(authorization)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("the token is not a JWT") from None
        if header.get("alg") != ALGORITHM:
            raise AuthError(f"the token must be signed {ALGORITHM}")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise AuthError("the token names no signing key")
        key = await self._keys.key(kid)
        if key is None:
            raise AuthError("the token's signing key is unknown")
        return self._verified(token, key)

    def _verified(self, token: str, key: Any) -> Caller:
        config = self._config
        try:
            claims = jwt.decode(
                token, key, algorithms=[ALGORITHM], audience=config.audience, issuer=config.issuer,
                leeway=config.leeway_seconds,
                options={"require": ["exp", "nbf", "iat", "iss", "aud", "ver", "tid", "oid", "azp"]},
            )  # fmt: skip
        except jwt.ExpiredSignatureError:
            raise AuthError("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("the token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise AuthError("the token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise AuthError("the token is from another issuer") from None
        except jwt.MissingRequiredClaimError as error:
            if error.claim == "azp":  # v2 access tokens name their client; ID tokens do not
                raise AuthError("the token is not an access token") from None
            raise AuthError(f"the token has no {error.claim} claim") from None
        except jwt.PyJWTError:
            raise AuthError("the token's signature does not verify") from None
        if "nonce" in claims:  # an ID token (a sign-in's), never an access token for this API
            raise AuthError("the token is not an access token")
        if claims["ver"] != TOKEN_VERSION:
            raise AuthError(f"the token must be version {TOKEN_VERSION}")
        if str(claims["tid"]).lower() != config.tenant_id:
            raise AuthError("the token is from another tenant")
        return Caller(
            object_id=str(claims["oid"]),
            roles=frozenset(_strings(claims.get("roles"))),
            scopes=frozenset(str(claims.get("scp", "")).split()),
        )


def _strings(value: object) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def _bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise MissingTokenError("send Authorization: Bearer <token>")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise MissingTokenError("send Authorization: Bearer <token>")
    token = token.strip()
    if len(token) > MAX_TOKEN_CHARS:
        raise AuthError("the token is too long")
    return token


class Authenticator:
    """What an API holds: `caller(authorization)` → Caller (ANONYMOUS when authentication is off),
    raising AuthError; `close()` at shutdown."""

    def __init__(self, config: AuthConfig | None) -> None:
        self._keys = KeySet(config) if config is not None else None
        self._validator = TokenValidator(config, self._keys) if config and self._keys else None

    @property
    def enabled(self) -> bool:
        return self._validator is not None

    async def caller(self, authorization: str | None) -> Caller:
        if self._validator is None:
            return ANONYMOUS
        return await self._validator.caller(authorization)

    async def close(self) -> None:
        if self._keys is not None:
            await self._keys.close()
