"""The token validation both APIs use, against a real issuer on 127.0.0.1 (discovery + key set)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from eventflow_contracts.auth import (
    ANONYMOUS,
    ENTRA_AUTHORITY,
    KEY_SET_MAX_AGE_S,
    READ_ROLE,
    USER_SCOPE,
    WRITE_ROLE,
    Authenticator,
    AuthError,
    AuthFields,
    Caller,
    ForbiddenError,
    KeySet,
    KeySetUnavailableError,
    MissingTokenError,
    TokenValidator,
    authorize,
)
from eventflow_contracts.auth_testing import LocalIssuer, SigningKey, running_issuer


@pytest.fixture
def issuer() -> Iterator[LocalIssuer]:
    with running_issuer() as running:
        yield running


@pytest.fixture
async def keys(issuer: LocalIssuer) -> AsyncIterator[KeySet]:
    key_set = KeySet(issuer.config())
    yield key_set
    await key_set.close()


@pytest.fixture
def validator(issuer: LocalIssuer, keys: KeySet) -> TokenValidator:
    return TokenValidator(issuer.config(), keys)


async def test_a_valid_app_token_names_its_caller_and_roles(
    issuer: LocalIssuer, validator: TokenValidator
) -> None:
    caller = await validator.caller("Bearer " + issuer.token(WRITE_ROLE, oid="app-1"))
    assert caller == Caller("app-1", frozenset({WRITE_ROLE}), frozenset())
    assert caller.app_only
    assert caller.may(WRITE_ROLE)
    assert caller.may(READ_ROLE)


def _bad_tokens(issuer: LocalIssuer) -> dict[str, str]:
    now = int(time.time())
    return {
        "garbage": "not-a-jwt",
        "another key": issuer.token(WRITE_ROLE, key=SigningKey(kid=issuer.key.kid)),
        "alg none": issuer.unsigned_token(WRITE_ROLE),
        "hs256 with the public key": issuer.hmac_token(WRITE_ROLE),
        "expired": issuer.token(WRITE_ROLE, exp=now - 120, iat=now - 4000, nbf=now - 4000),
        "not yet valid": issuer.token(WRITE_ROLE, nbf=now + 600),
        "wrong audience": issuer.token(WRITE_ROLE, aud="api://someone-else"),
        "wrong issuer": issuer.token(WRITE_ROLE, iss="https://sts.windows.net/x/"),
        "wrong tenant": issuer.token(WRITE_ROLE, tid="00000000-0000-0000-0000-000000000000"),
        "v1": issuer.token(WRITE_ROLE, ver="1.0"),
        "no object id": issuer.token(WRITE_ROLE, oid=None),
        # An ID token for the API's own registration (a sign-in at /docs or a SPA): same issuer,
        # tenant, version, audience and the user's app roles, but no client (azp) and a nonce.
        "id token": issuer.token(
            WRITE_ROLE, azp=None, nonce="n-1", preferred_username="someone@example.com"
        ),
        "nonce": issuer.token(WRITE_ROLE, nonce="n-1"),
        "too long": "x" * 20000,
    }


@pytest.mark.parametrize(
    "case",
    ["garbage", "another key", "alg none", "hs256 with the public key", "expired", "not yet valid",
     "wrong audience", "wrong issuer", "wrong tenant", "v1", "no object id", "id token", "nonce",
     "too long"],
)  # fmt: skip
async def test_a_bad_token_is_refused(
    issuer: LocalIssuer, validator: TokenValidator, case: str
) -> None:
    with pytest.raises(AuthError) as refused:
        await validator.caller("Bearer " + _bad_tokens(issuer)[case])
    assert refused.value.status == 401
    assert 'error="invalid_token"' in refused.value.headers["WWW-Authenticate"]


@pytest.mark.parametrize("header", [None, "", "Basic dXNlcjpwYXNz", "Bearer ", "Bearer"])
async def test_a_missing_token_asks_for_one(validator: TokenValidator, header: str | None) -> None:
    with pytest.raises(MissingTokenError) as refused:
        await validator.caller(header)
    assert refused.value.headers == {"WWW-Authenticate": 'Bearer realm="eventflow"'}


async def test_a_small_clock_skew_is_tolerated(
    issuer: LocalIssuer, validator: TokenValidator
) -> None:
    now = int(time.time())
    assert await validator.caller("Bearer " + issuer.token(READ_ROLE, nbf=now + 10, exp=now - 10))


def test_roles_and_scopes_decide_what_a_caller_may_do() -> None:
    app_reader = Caller("a", frozenset({READ_ROLE}), frozenset())
    user_writer = Caller("u", frozenset({WRITE_ROLE}), frozenset({USER_SCOPE}))
    user_scope_only = Caller("u", frozenset(), frozenset({USER_SCOPE}))
    user_other_scope = Caller("u", frozenset({WRITE_ROLE}), frozenset({"Other.Scope"}))
    assert app_reader.may(READ_ROLE)
    assert not app_reader.may(WRITE_ROLE)
    assert user_writer.may(WRITE_ROLE)
    assert user_writer.may(READ_ROLE)
    assert not user_scope_only.may(READ_ROLE)
    assert not user_other_scope.may(READ_ROLE)
    assert authorize(user_writer, WRITE_ROLE) is user_writer
    with pytest.raises(ForbiddenError) as refused:
        authorize(app_reader, WRITE_ROLE)
    assert refused.value.status == 403
    assert 'error="insufficient_scope"' in refused.value.headers["WWW-Authenticate"]
    assert ANONYMOUS.may(WRITE_ROLE)


async def test_a_new_key_is_fetched_once_for_its_first_token(
    issuer: LocalIssuer, validator: TokenValidator, keys: KeySet
) -> None:
    await validator.caller("Bearer " + issuer.token(READ_ROLE))
    assert keys.fetches == 1
    issuer.rotate()
    token = "Bearer " + issuer.token(READ_ROLE)
    await asyncio.gather(*(validator.caller(token) for _ in range(5)))
    assert keys.fetches == 2
    await validator.caller(token)
    assert keys.fetches == 2


async def test_an_unknown_key_is_refused_with_the_key_set_up_and_unavailable_with_it_down(
    issuer: LocalIssuer, validator: TokenValidator
) -> None:
    known = "Bearer " + issuer.token(READ_ROLE)
    await validator.caller(known)
    stranger = "Bearer " + issuer.token(READ_ROLE, key=SigningKey())
    with pytest.raises(AuthError) as refused:
        await validator.caller(stranger)
    assert refused.value.status == 401
    issuer.down = True
    with pytest.raises(KeySetUnavailableError) as unavailable:
        await validator.caller(stranger)
    assert unavailable.value.status == 503
    assert unavailable.value.headers["Retry-After"]
    assert await validator.caller(known)  # cached keys keep working through the outage
    issuer.down = False
    with pytest.raises(AuthError) as refused_again:
        await validator.caller(stranger)
    assert refused_again.value.status == 401


async def test_unknown_keys_fetch_the_key_set_at_most_once_per_refresh_interval(
    issuer: LocalIssuer,
) -> None:
    clock = [1000.0]
    keys = KeySet(issuer.config(key_refresh_seconds=60.0), clock=lambda: clock[0])
    validator = TokenValidator(issuer.config(), keys)
    try:
        for _ in range(3):
            with pytest.raises(AuthError):
                await validator.caller("Bearer " + issuer.token(READ_ROLE, key=SigningKey()))
        assert keys.fetches == 1
        clock[0] += 61
        assert await validator.caller("Bearer " + issuer.token(READ_ROLE, key=issuer.rotate()))
        assert keys.fetches == 2
    finally:
        await keys.close()


async def test_a_failed_fetch_is_retried_after_its_retry_after_not_after_the_refresh_interval(
    issuer: LocalIssuer,
) -> None:
    clock = [1000.0]
    keys = KeySet(issuer.config(key_refresh_seconds=60.0), clock=lambda: clock[0])
    validator = TokenValidator(issuer.config(), keys)
    token = "Bearer " + issuer.token(READ_ROLE)
    try:
        issuer.down = True  # a cold start during a blip: nothing cached yet
        with pytest.raises(KeySetUnavailableError) as unavailable:
            await validator.caller(token)
        retry_after = float(unavailable.value.headers["Retry-After"])
        issuer.down = False
        clock[0] += retry_after / 2
        with pytest.raises(KeySetUnavailableError):  # not hammered: one fetch per Retry-After
            await validator.caller(token)
        assert keys.fetches == 1
        clock[0] += retry_after / 2
        assert await validator.caller(token)
        assert keys.fetches == 2
    finally:
        await keys.close()


async def test_a_key_set_on_another_host_is_refused_where_only_https_is_trusted(
    issuer: LocalIssuer,
) -> None:
    # Entra ID's discovery document names a key set on its own host; one that names another host
    # is not trusted where only the authority's host is (azure mode).
    issuer.keys_url = f"{issuer.authority.replace('127.0.0.1', 'localhost')}/{issuer.tenant_id}/discovery/v2.0/keys"
    token = "Bearer " + issuer.token(READ_ROLE)
    strict = KeySet(issuer.config(https_only=True))
    lenient = KeySet(issuer.config(https_only=False))
    try:
        with pytest.raises(KeySetUnavailableError):
            await TokenValidator(issuer.config(), strict).caller(token)
        assert await TokenValidator(issuer.config(), lenient).caller(token)
    finally:
        await strict.close()
        await lenient.close()


async def test_authentication_off_lets_everyone_in_and_on_needs_a_token(
    issuer: LocalIssuer,
) -> None:
    off = Authenticator(None)
    assert not off.enabled
    assert await off.caller(None) is ANONYMOUS
    await off.close()
    on = Authenticator(issuer.config())
    try:
        assert on.enabled
        with pytest.raises(MissingTokenError):
            await on.caller(None)
        assert (await on.caller("Bearer " + issuer.token(READ_ROLE, oid="o"))).object_id == "o"
    finally:
        await on.close()


def test_settings_turn_authentication_on_and_azure_mode_requires_entra_id() -> None:
    tenant, client = "0b7c6a3c-8d1e-4a5f-9f00-1a2b3c4d5e6f", "1c8d7b4d-9e2f-4b60-8a11-2b3c4d5e6f70"
    assert AuthFields().auth_config() is None
    on = AuthFields(auth_tenant_id=tenant, auth_client_id=client)
    config = on.auth_config()
    assert config is not None
    assert config.https_only
    assert config.issuer == f"{ENTRA_AUTHORITY}/{tenant}/v2.0"
    on.refuse_insecure_auth("azure")
    with pytest.raises(ValueError, match="needs AUTH_TENANT_ID"):
        AuthFields().refuse_insecure_auth("azure")
    AuthFields().refuse_insecure_auth("local")
    local = AuthFields(
        auth_tenant_id=tenant, auth_client_id=client, auth_authority="http://127.0.0.1:1"
    )
    with pytest.raises(ValueError, match="only"):
        local.refuse_insecure_auth("azure")
    with pytest.raises(ValueError, match="both"):
        AuthFields(auth_tenant_id=tenant)
    with pytest.raises(ValueError, match="GUID"):
        AuthFields(auth_tenant_id="contoso", auth_client_id=client)


async def test_keys_of_other_kinds_are_skipped_and_a_token_must_name_its_key(
    issuer: LocalIssuer, validator: TokenValidator
) -> None:
    issuer.other_keys = [
        {"kty": "EC", "kid": "ec", "crv": "P-256"}, {**issuer.key.jwk(), "kid": "enc", "use": "enc"},
        {"kty": "RSA", "kid": "broken", "n": "!", "e": "AQAB"}, "not a key",
    ]  # fmt: skip
    assert await validator.caller("Bearer " + issuer.token(READ_ROLE))
    for kid in ("ec", "enc", "broken"):
        with pytest.raises(AuthError, match="unknown"):
            await validator.caller("Bearer " + issuer.token(READ_ROLE, key=SigningKey(kid)))
    no_kid = issuer.token(READ_ROLE).split(".")
    no_kid[0] = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9"  # {"alg":"RS256","typ":"JWT"}
    with pytest.raises(AuthError, match="names no signing key"):
        await validator.caller("Bearer " + ".".join(no_kid))


async def test_a_discovery_document_of_another_issuer_is_not_trusted(
    issuer: LocalIssuer, validator: TokenValidator
) -> None:
    issuer.named_issuer = "https://login.microsoftonline.com/common/v2.0"
    with pytest.raises(KeySetUnavailableError):
        await validator.caller("Bearer " + issuer.token(READ_ROLE))


async def test_a_day_old_key_set_is_fetched_again_and_withdrawn_keys_stop_validating(
    issuer: LocalIssuer,
) -> None:
    clock = [1000.0]
    keys = KeySet(issuer.config(key_refresh_seconds=60.0), clock=lambda: clock[0])
    validator = TokenValidator(issuer.config(), keys)
    old = "Bearer " + issuer.token(READ_ROLE)
    try:
        assert await validator.caller(old)
        clock[0] += KEY_SET_MAX_AGE_S + 1
        issuer.down = True  # cannot be fetched: the cached keys keep validating
        assert await validator.caller(old)
        assert keys.fetches == 2
        clock[0] += 61
        issuer.down = False
        issuer.published = [issuer.rotate()]  # the old key withdrawn
        with pytest.raises(AuthError, match="unknown"):
            await validator.caller(old)
        assert await validator.caller("Bearer " + issuer.token(READ_ROLE))
        assert keys.fetches == 3
    finally:
        await keys.close()
