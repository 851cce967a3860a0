"""The deployment protects both APIs: the app registration is a parameter (no default), and the
producer and the consumer get the tenant and the registration's client id, which their settings
require in azure mode (a deployment without them would not start)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from eventflow_consumer.settings import Settings as ConsumerSettings
from eventflow_producer.settings import Settings as ProducerSettings

BICEP = Path(__file__).resolve().parents[2] / "infra" / "bicep"


def test_the_api_registration_is_a_required_parameter_passed_on_to_the_resources() -> None:
    main = (BICEP / "main.bicep").read_text()
    assert re.search(r"^param apiClientId string$", main, re.MULTILINE), "no default: always named"
    assert "apiClientId: apiClientId" in main
    assert "output EVENTFLOW_API_CLIENT_ID string = apiClientId" in main
    assert "output AZURE_TENANT_ID string = tenant().tenantId" in main
    parameters = json.loads((BICEP / "main.parameters.json").read_text())["parameters"]
    assert parameters["apiClientId"]["value"] == "${EVENTFLOW_API_CLIENT_ID}"


@pytest.mark.parametrize("prefix", ["PRODUCER", "CONSUMER"])
def test_both_apis_get_the_tenant_and_the_audience(prefix: str) -> None:
    resources = (BICEP / "resources.bicep").read_text()
    assert f"{{ name: '{prefix}_AUTH_TENANT_ID', value: tenant().tenantId }}" in resources
    assert f"{{ name: '{prefix}_AUTH_CLIENT_ID', value: apiClientId }}" in resources
    assert f"{prefix}_AUTH_AUTHORITY" not in resources, "Entra ID's, never another issuer"


def test_azure_mode_refuses_to_start_without_the_registration() -> None:
    with pytest.raises(ValueError, match="PRODUCER_AUTH_TENANT_ID"):
        ProducerSettings(mode="azure", cosmos_endpoint="https://a.documents.azure.com:443/")
    with pytest.raises(ValueError, match="CONSUMER_AUTH_TENANT_ID"):
        ConsumerSettings(mode="azure", cosmos_endpoint="https://a.documents.azure.com:443/",
                         servicebus_namespace="n.servicebus.windows.net")  # fmt: skip
