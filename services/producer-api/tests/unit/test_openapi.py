"""The OpenAPI document the producer serves is valid OpenAPI (generated clients build from it)."""

from __future__ import annotations

import json

from openapi_spec_validator import validate

from eventflow_producer.api import create_app
from eventflow_producer.bootstrap import write_strategy
from eventflow_producer.settings import Settings


def test_the_served_openapi_document_is_valid_and_every_reference_resolves() -> None:
    document = create_app(Settings(mode="local"), write_strategy(Settings(mode="local"))).openapi()
    validate(document)  # raises on an invalid document, unresolvable references included
    assert "#/$defs/" not in json.dumps(document), (
        "schema-local references do not resolve in OpenAPI"
    )
