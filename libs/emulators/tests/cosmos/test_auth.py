"""Master-key signatures (protocol/auth.py) against the SDK's own signing code path.

The SDK builds the header in azure/cosmos/_base.py `GetHeaders` via azure/cosmos/auth.py; these
tests sign with the documented scheme by hand and check the emulator accepts and refuses alike.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote

import pytest

from eventflow_emulators.cosmos.errors import CosmosError
from eventflow_emulators.cosmos.protocol.auth import MasterKey, resource_of
from eventflow_emulators.cosmos.server import EMULATOR_KEY

DATE = "Sat, 28 Nov 2026 07:00:00 GMT"


def header(key: str, verb: str, resource_type: str, link: str) -> str:
    text = f"{verb.lower()}\n{resource_type}\n{link}\n{DATE.lower()}\n\n"
    sig = base64.b64encode(
        hmac.new(base64.b64decode(key), text.encode(), hashlib.sha256).digest()
    ).decode()
    return quote(f"type=master&ver=1.0&sig={sig}", "-_.!~*'()")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("", ("", "")),
        ("dbs", ("dbs", "")),
        ("dbs/d", ("dbs", "dbs/d")),
        ("dbs/d/colls", ("colls", "dbs/d")),
        ("dbs/d/colls/c/docs", ("docs", "dbs/d/colls/c")),
        ("dbs/d/colls/c/docs/My Id", ("docs", "dbs/d/colls/c/docs/My Id")),
        ("dbs/d/colls/c/pkranges", ("pkranges", "dbs/d/colls/c")),
    ],
)
def test_resource_type_and_link_of_a_path(path: str, expected: tuple[str, str]) -> None:
    assert resource_of(path.split("/") if path else []) == expected


def test_a_correct_signature_is_accepted() -> None:
    segments = ["dbs", "d", "colls", "c", "docs", "My Id"]
    authorization = header(EMULATOR_KEY, "GET", "docs", "dbs/d/colls/c/docs/My Id")
    MasterKey(EMULATOR_KEY).verify("GET", segments, authorization, DATE, "")


def test_another_key_or_verb_or_missing_header_is_refused() -> None:
    other = base64.b64encode(b"k" * 64).decode()
    segments = ["dbs", "d"]
    for authorization in (
        header(other, "GET", "dbs", "dbs/d"),
        header(EMULATOR_KEY, "DELETE", "dbs", "dbs/d"),
        None,
    ):
        with pytest.raises(CosmosError) as caught:
            MasterKey(EMULATOR_KEY).verify("GET", segments, authorization, DATE, "")
        assert caught.value.status == 401
