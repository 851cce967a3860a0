"""The Bicep files parse (tree-sitter-bicep and pycep), and a walk over the parsed resources checks
the security and scaling properties the deployment promises. Nothing here compiles or deploys:
there is no Bicep CLI or Azure subscription on this machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import tree_sitter_bicep
import yaml
from pycep import BicepParser
from tree_sitter import Language, Parser

BICEP = Path(__file__).resolve().parents[2] / "infra" / "bicep"
FILES = sorted(BICEP.glob("*.bicep"))


def parsed(name: str) -> dict[str, Any]:
    result: dict[str, Any] = BicepParser().parse(text=(BICEP / name).read_text())
    return result


def of_type(document: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in document["resources"].items() if r["type"] == kind}


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.name)
def test_every_bicep_file_parses(path: Path) -> None:
    tree = Parser(Language(tree_sitter_bicep.language())).parse(path.read_bytes())
    assert not tree.root_node.has_error
    assert BicepParser().parse(text=path.read_text())


def test_the_parsers_reject_a_broken_file() -> None:
    broken = (BICEP / "role.bicep").read_text()[:-40]
    assert Parser(Language(tree_sitter_bicep.language())).parse(broken.encode()).root_node.has_error


# The one named exception: the Application Insights connection string is no secret once the
# component's local auth is off (ingestion needs the identity's token). It may appear only as this
# parameter, this property and this environment variable.
TELEMETRY_EXCEPTION = (
    "appInsightsConnectionString",
    "insights.properties.ConnectionString",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
)


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.name)
def test_no_keys_or_connection_strings_anywhere(path: Path) -> None:
    text = path.read_text()
    for allowed in TELEMETRY_EXCEPTION:
        text = text.replace(allowed, "")
    for forbidden in (
        "listKeys",
        "listConnectionStrings",
        "connectionString",
        "connection_string",
        "AccountKey",
        "SharedAccessKey",
        "primaryKey",
        "InstrumentationKey",
    ):
        assert forbidden.lower() not in text.lower(), forbidden


def test_the_telemetry_exception_is_what_the_no_keys_check_lets_through() -> None:
    leaked = "param cosmosConnectionString string\n" + (BICEP / "role.bicep").read_text()
    for allowed in TELEMETRY_EXCEPTION:
        leaked = leaked.replace(allowed, "")
    assert "connectionstring" in leaked.lower(), "any other connection string is still caught"


def test_application_insights_takes_only_entra_id_and_every_app_may_publish_to_it() -> None:
    resources = parsed("resources.bicep")
    (insights,) = of_type(resources, "Microsoft.Insights/components").values()
    assert insights["config"]["properties"]["DisableLocalAuth"] is True
    publishers = of_type(resources, "Microsoft.Authorization/roleAssignments")["publishesTelemetry"]
    assert publishers["config"]["loop_type"]["detail"] == {"item_name": "app", "array_name": "apps"}
    assert publishers["config"]["config"]["scope"] == "insights"
    text = (BICEP / "resources.bicep").read_text()
    assert "monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'" in text
    assert "var apps = [ 'producer', 'publisher', 'subscriber', 'consumer' ]" in text
    role = json.dumps(publishers["config"]["config"]["properties"]["roleDefinitionId"])
    assert '"monitoringMetricsPublisher"' in role


def test_every_app_gets_the_application_insights_connection_string_as_a_setting() -> None:
    modules = parsed("resources.bicep")["modules"]
    wanted = {"operator": {"type": "property_accessor", "operands": {"operand_1": "insights",
              "operand_2": {"operator": {"type": "property_accessor",
                                         "operands": {"operand_1": "properties", "operand_2": "ConnectionString"}}}}}}  # fmt: skip
    for name in ("producer", "publisher", "subscriber", "consumer"):
        assert modules[name]["config"]["params"]["appInsightsConnectionString"] == wanted, name
    (app,) = parsed("container-app.bicep")["resources"].values()
    (container,) = app["config"]["properties"]["template"]["containers"]
    added = container["env"]["function"]["parameters"]["arg_2"]
    assert {
        "name": "APPLICATIONINSIGHTS_CONNECTION_STRING",
        "value": "appInsightsConnectionString",
    } in added


def test_alerts_cover_dead_letters_blocked_sessions_publisher_lag_and_checkpoint_age() -> None:
    alerts = parsed("alerts.bicep")
    (dead,) = alerts["resources"]["deadLetters"]["config"]["properties"]["criteria"]["allOf"]
    assert (dead["metricName"], dead["operator"], dead["threshold"]) == (
        "DeadletteredMessages",
        "GreaterThan",
        0,
    )
    assert dead["dimensions"] == [
        {"name": "EntityName", "operator": "Include", "values": ["inboxQueue"]}
    ]
    rules = {rule["metric"]: rule for rule in alerts["variables"]["logAlerts"]["value"]}
    assert {name: rule["threshold"] for name, rule in rules.items()} == {
        "eventflow_consumer_sessions_blocked": 0,
        "eventflow_publisher_oldest_unpublished_age_seconds": "oldestUnpublishedSeconds",
        "eventflow_subscriber_checkpoint_age_seconds": "checkpointAgeSeconds",
    }
    assert alerts["parameters"]["oldestUnpublishedSeconds"]["default"] == 300
    assert alerts["parameters"]["checkpointAgeSeconds"]["default"] == 600
    rule = alerts["resources"]["metricAlerts"]
    assert rule["config"]["loop_type"]["detail"]["array_name"] == "logAlerts"
    assert rule["config"]["config"]["properties"]["scopes"] == ["insightsId"]
    assert parsed("resources.bicep")["modules"]["alerts"]["detail"]["path"] == "alerts.bicep"


def test_local_auth_is_disabled_on_every_data_service() -> None:
    resources = parsed("resources.bicep")
    for kind in (
        "Microsoft.DocumentDB/databaseAccounts",
        "Microsoft.EventHub/namespaces",
        "Microsoft.ServiceBus/namespaces",
    ):
        (resource,) = of_type(resources, kind).values()
        assert resource["config"]["properties"]["disableLocalAuth"] is True, kind
    (storage,) = of_type(resources, "Microsoft.Storage/storageAccounts").values()
    assert storage["config"]["properties"]["allowSharedKeyAccess"] is False
    assert storage["config"]["properties"]["allowBlobPublicAccess"] is False
    (registry,) = of_type(resources, "Microsoft.ContainerRegistry/registries").values()
    assert registry["config"]["properties"]["adminUserEnabled"] is False


def test_each_app_has_its_own_identity_and_only_the_data_roles_it_needs() -> None:
    resources = parsed("resources.bicep")
    identities = of_type(resources, "Microsoft.ManagedIdentity/userAssignedIdentities")
    assert sorted(identities) == [
        "consumerIdentity",
        "producerIdentity",
        "publisherIdentity",
        "subscriberIdentity",
    ]
    assignments = of_type(resources, "Microsoft.Authorization/roleAssignments")
    text = json.dumps(assignments)
    granted = {(name, r["config"].get("scope") or r["config"]["config"]["scope"])
               for name, r in assignments.items()}  # fmt: skip
    assert granted == {
        ("publisherSends", "hub"), ("subscriberReceives", "hub"), ("subscriberCheckpoints", "checkpoints"),
        ("subscriberFillsInbox", "inbox"), ("consumerReadsInbox", "inbox"), ("consumerScalerReadsQueue", "inbox"),
        ("publishesTelemetry", "insights"),  # one per app (a loop): see the telemetry test
    }  # fmt: skip
    data_roles = json.dumps({n: r for n, r in assignments.items() if n != "publishesTelemetry"})
    assert "producerIdentity" not in data_roles, (
        "the producer touches only Cosmos DB (and telemetry)"
    )
    (cosmos_roles,) = of_type(
        resources, "Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments"
    ).values()
    assert cosmos_roles["config"]["loop_type"]["detail"]["item_name"] == "writer"
    text = (BICEP / "resources.bicep").read_text()
    assert "var cosmosDataContributor = '00000000-0000-0000-0000-000000000002'" in text
    assert "var cosmosWriters = [ 'producer', 'publisher', 'consumer' ]" in text, (
        "the subscriber never uses Cosmos DB"
    )
    assert resources["modules"]["pull"]["detail"]["path"] == "role.bicep"


def test_cosmos_containers_have_ttl_on_and_the_partition_keys_the_services_use() -> None:
    containers = of_type(
        parsed("resources.bicep"), "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers"
    )
    keys = {
        r["config"]["properties"]["resource"]["id"]: r["config"]["properties"]["resource"]
        for r in containers.values()
    }
    assert {name: k["partitionKey"]["paths"] for name, k in keys.items()} == {
        "orders": ["/order_id"], "leases": ["/id"], "order-summaries": ["/order_id"]}  # fmt: skip
    minus_one = {
        "operator": {"type": "minus", "operands": {"integer_value": 1}}
    }  # how pycep reads -1
    assert all(k["defaultTtl"] == minus_one for k in keys.values())


def test_the_inbox_has_sessions_and_duplicate_detection_and_the_hub_a_lowercase_consumer_group() -> (
    None
):
    resources = parsed("resources.bicep")
    (queue,) = of_type(resources, "Microsoft.ServiceBus/namespaces/queues").values()
    properties = queue["config"]["properties"]
    assert (properties["requiresSession"], properties["requiresDuplicateDetection"]) == (True, True)
    (namespace,) = of_type(resources, "Microsoft.ServiceBus/namespaces").values()
    assert namespace["config"]["sku"]["name"] == "Standard", (
        "sessions and duplicate detection need Standard or Premium"
    )
    assert "consumerGroup = 'inbox-subscriber'" in (BICEP / "resources.bicep").read_text()


def scale(module: dict[str, Any]) -> dict[str, Any]:
    return module["config"]["params"]


def test_keda_rules_and_replica_bounds() -> None:
    modules = parsed("resources.bicep")["modules"]
    producer, publisher, subscriber, consumer = (
        scale(modules[n]) for n in ("producer", "publisher", "subscriber", "consumer")
    )
    assert "http" in producer["scaleRules"][0]
    assert producer["external"] is True
    assert publisher["minReplicas"] >= 1, "the change feed processor must always run"
    (hub_rule,) = subscriber["scaleRules"]
    assert hub_rule["custom"]["type"] == "azure-eventhub"
    assert hub_rule["custom"]["metadata"]["checkpointStrategy"] == "blobMetadata"
    assert "identity" in hub_rule["custom"]
    assert subscriber["maxReplicas"] == "hubPartitions", "never more replicas than partitions"
    (queue_rule,) = consumer["scaleRules"]
    assert queue_rule["custom"]["type"] == "azure-servicebus"
    assert "identity" in queue_rule["custom"]


def test_every_app_runs_single_revision_with_a_grace_period_and_its_azd_tag() -> None:
    (app,) = parsed("container-app.bicep")["resources"].values()
    assert app["config"]["properties"]["configuration"]["activeRevisionsMode"] == "Single"
    assert app["config"]["properties"]["template"]["terminationGracePeriodSeconds"] >= 30
    assert "azd-service-name" in json.dumps(app["config"]["tags"])
    assert app["config"]["identity"]["type"] == "UserAssigned"


def test_azure_yaml_names_the_four_services_and_main_outputs_the_settings() -> None:
    azure = yaml.safe_load((BICEP.parents[1] / "azure.yaml").read_text())
    assert sorted(azure["services"]) == ["consumer", "producer", "publisher", "subscriber"]
    assert all(service["host"] == "containerapp" for service in azure["services"].values())
    outputs = parsed("main.bicep")["outputs"]
    for name in ("AZURE_CONTAINER_REGISTRY_ENDPOINT", "PRODUCER_COSMOS_ENDPOINT", "PUBLISHER_EVENTHUBS_NAMESPACE",
                 "SUBSCRIBER_STORAGE_ACCOUNT_URL", "CONSUMER_SERVICEBUS_NAMESPACE"):  # fmt: skip
        assert name in outputs
    assert "targetScope = 'subscription'" in (BICEP / "main.bicep").read_text()


def test_producer_and_publisher_get_one_write_pattern_outbox_by_default() -> None:
    main = (BICEP / "main.bicep").read_text()
    assert "param writePattern string = 'outbox'" in main
    assert "writePattern: writePattern" in main
    resources = (BICEP / "resources.bicep").read_text()
    for setting in ("PRODUCER_WRITE_PATTERN", "PUBLISHER_WRITE_PATTERN"):
        assert f"{{ name: '{setting}', value: writePattern }}" in resources
    parameters = json.loads((BICEP / "main.parameters.json").read_text())["parameters"]
    assert parameters["writePattern"]["value"] == "${EVENTFLOW_WRITE_PATTERN=outbox}"
