"""The Bicep files parse (tree-sitter-bicep and pycep), and a walk over the parsed resources checks
the security and scaling properties the deployment promises, resource by resource. Nothing here
compiles or deploys: there is no Azure subscription on this machine, and no Bicep CLI (it is not
shipped by any PyPI, npm or Debian package reachable here; the PyPI packages named after Bicep call
an installed CLI)."""

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
    text = (BICEP / "container-app.bicep").read_text()
    broken = text[: text.index("output fqdn") - 8]  # the resource's closing braces cut off
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
    leaked = "param cosmosConnectionString string\n" + (BICEP / "main.bicep").read_text()
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


def test_zero_replicas_are_covered_by_the_inbox_and_hub_alerts() -> None:
    """At zero replicas the subscriber and consumer report nothing: the platform's metrics of the
    inbox (messages waiting all window long) and of the hub (events in, none read) still do."""
    alerts = parsed("alerts.bicep")
    waiting = alerts["resources"]["inboxWaiting"]["config"]["properties"]
    (criterion,) = waiting["criteria"]["allOf"]
    assert (criterion["metricName"], criterion["timeAggregation"], criterion["operator"],
            criterion["threshold"]) == ("ActiveMessages", "Minimum", "GreaterThan", 0)  # fmt: skip
    assert criterion["dimensions"] == [
        {"name": "EntityName", "operator": "Include", "values": ["inboxQueue"]}
    ]
    assert waiting["scopes"] == ["serviceBusId"]
    assert waiting["windowSize"] == "PT15M"
    unread = alerts["resources"]["hubUnread"]["config"]["properties"]
    assert unread["scopes"] == ["workspaceId"]
    (criterion,) = unread["criteria"]["allOf"]
    query = criterion["query"]
    for part in (
        "AzureMetrics",
        '"IncomingMessages"',
        '"OutgoingMessages"',
        "incoming > 0 and outgoing == 0",
    ):
        assert part in query, part
    assert "${eventHubsId}" in (BICEP / "alerts.bicep").read_text()
    resources = parsed("resources.bicep")
    (diagnostics,) = [r for n, r in of_type(resources, "Microsoft.Insights/diagnosticSettings").items()
                      if r["config"]["scope"] == "eventHubs"]  # fmt: skip
    assert diagnostics["config"]["properties"]["metrics"] == [
        {"category": "AllMetrics", "enabled": True}
    ]
    params = resources["modules"]["alerts"]["config"]["params"]
    assert params["workspaceId"] == {"operator": {"type": "property_accessor", "operands": {
        "operand_1": "logs", "operand_2": "id"}}}  # fmt: skip


def test_an_optional_action_group_is_told_of_every_alert() -> None:
    alerts = parsed("alerts.bicep")
    group = alerts["resources"]["actionGroup"]
    assert group["config"]["condition"] == "notify"
    properties = group["config"]["config"]["properties"]
    assert len(properties["groupShortName"]) <= 12
    for receivers, parameter in (
        ("emailReceivers", "alertEmail"),
        ("webhookReceivers", "alertWebhookUrl"),
    ):
        assert parameter in json.dumps(properties[receivers])
        assert alerts["parameters"][parameter]["default"] == ""
    assert (
        "var notify = !empty(alertEmail) || !empty(alertWebhookUrl)"
        in (BICEP / "alerts.bicep").read_text()
    )
    for name, resource in alerts["resources"].items():
        if name == "actionGroup":
            continue
        actions = json.dumps(body(resource)["properties"]["actions"])
        assert "metricAlertActions" in actions or "actionGroupIds" in actions, name
    parameters = json.loads((BICEP / "main.parameters.json").read_text())["parameters"]
    assert parameters["alertEmail"]["value"] == "${EVENTFLOW_ALERT_EMAIL=}"
    assert parameters["alertWebhookUrl"]["value"] == "${EVENTFLOW_ALERT_WEBHOOK_URL=}"
    main = parsed("main.bicep")["modules"]["resources"]["config"]["params"]
    assert (main["alertEmail"], main["alertWebhookUrl"]) == ("alertEmail", "alertWebhookUrl")


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
        "consumerScalerIdentity",
        "producerIdentity",
        "publisherIdentity",
        "pullIdentity",
        "subscriberIdentity",
    ]
    assignments = of_type(resources, "Microsoft.Authorization/roleAssignments")
    granted = {(name, r["config"].get("scope") or r["config"]["config"]["scope"])
               for name, r in assignments.items()}  # fmt: skip
    assert granted == {
        ("publisherSends", "hub"), ("subscriberReceives", "hub"), ("subscriberCheckpoints", "checkpoints"),
        ("subscriberFillsInbox", "inbox"), ("consumerReadsInbox", "inbox"), ("consumerScalerReadsQueue", "inbox"),
        ("pull", "registry"),
        ("publishesTelemetry", "insights"),  # one per app (a loop): see the telemetry test
    }  # fmt: skip
    data_roles = json.dumps({n: r for n, r in assignments.items() if n != "publishesTelemetry"})
    assert "producerIdentity" not in data_roles, (
        "the producer touches only Cosmos DB (and telemetry)"
    )
    assert "modules" not in resources or "pull" not in resources["modules"]


def body(resource: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = resource["config"]
    return config["config"] if "loop_type" in config or "condition" in config else config


def role_of(assignment: dict[str, Any]) -> str:
    return json.dumps(body(assignment)["properties"]["roleDefinitionId"])


def principal_of(assignment: dict[str, Any]) -> str:
    return json.dumps(body(assignment)["properties"]["principalId"])


def test_the_consumer_keeps_data_receiver_and_only_its_scaler_identity_holds_data_owner() -> None:
    """Least privilege: Service Bus Data Owner ("Manage", needed by the KEDA scaler only) belongs to
    an identity that the consumer's containers cannot use (identitySettings lifecycle None)."""
    resources = parsed("resources.bicep")
    assignments = of_type(resources, "Microsoft.Authorization/roleAssignments")
    owners = [n for n, r in assignments.items() if '"serviceBusDataOwner"' in role_of(r)]
    assert owners == ["consumerScalerReadsQueue"]
    assert "consumerScalerIdentity" in principal_of(assignments["consumerScalerReadsQueue"])
    assert "consumerIdentity" in principal_of(assignments["consumerReadsInbox"])
    assert '"serviceBusDataReceiver"' in role_of(assignments["consumerReadsInbox"])
    for name, assignment in assignments.items():
        if "consumerIdentity" in principal_of(assignment) and "Scaler" not in principal_of(
            assignment
        ):
            assert '"serviceBusDataOwner"' not in role_of(assignment), name
    consumer = resources["modules"]["consumer"]["config"]["params"]
    assert consumer["identityId"]["operator"]["operands"]["operand_1"] == "consumerIdentity"
    assert (
        consumer["scalerIdentityId"]["operator"]["operands"]["operand_1"]
        == "consumerScalerIdentity"
    )
    (rule,) = [r for r in consumer["scaleRules"] if "custom" in r]
    assert (
        rule["custom"]["identity"]["operator"]["operands"]["operand_1"] == "consumerScalerIdentity"
    )
    (app,) = parsed("container-app.bicep")["resources"].values()
    configuration = app["config"]["properties"]["configuration"]
    assert configuration["identitySettings"] == "platformOnly"
    platform_only = json.dumps(parsed("container-app.bicep")["variables"]["platformOnly"])
    assert platform_only.count('"lifecycle": "None"') == 2
    assert '"identity": "scalerIdentityId"' in platform_only
    assert '"identity": "pullIdentityId"' in platform_only


def test_images_are_pulled_by_an_identity_the_apps_cannot_use() -> None:
    resources = parsed("resources.bicep")
    pull = of_type(resources, "Microsoft.Authorization/roleAssignments")["pull"]
    assert '"acrPull"' in role_of(pull)
    assert "pullIdentity" in principal_of(pull)
    for name in ("producer", "publisher", "subscriber", "consumer"):
        params = resources["modules"][name]["config"]["params"]
        assert params["pullIdentityId"]["operator"]["operands"]["operand_1"] == "pullIdentity", name
    (app,) = parsed("container-app.bicep")["resources"].values()
    (registry,) = app["config"]["properties"]["configuration"]["registries"]
    assert registry["identity"] == "pullIdentityId"


COSMOS_SCOPE = "${cosmos.id}/dbs/${database.name}/colls/${grant.container}"


def test_cosmos_roles_are_scoped_to_the_containers_each_service_uses_and_created_one_at_a_time() -> (
    None
):
    resources = parsed("resources.bicep")
    cosmos_roles = of_type(resources, "Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments")
    assert sorted(cosmos_roles) == ["cosmosDataAccess", "userReadsSummaries"]
    grants = {(g["app"], g["container"]) for g in resources["variables"]["cosmosGrants"]["value"]}
    assert grants == {("producer", "orders"), ("publisher", "orders"), ("publisher", "leases"),
                      ("consumer", "order-summaries"), ("consumer", "consumer-members")}, (
        "the subscriber never uses Cosmos DB")  # fmt: skip
    loop = cosmos_roles["cosmosDataAccess"]
    assert loop["config"]["loop_type"]["detail"] == {
        "item_name": "grant",
        "array_name": "cosmosGrants",
    }
    assert {"type": "batchSize", "argument": 1} in loop["decorators"]
    text = (BICEP / "resources.bicep").read_text()
    assert "@batchSize(1)\nresource cosmosDataAccess" in text, "serialised: one operation at a time"
    dependencies = set(loop["config"]["config"]["dependsOn"])
    assert {"ordersContainer", "leasesContainer", "summariesContainer", "membersContainer"} <= (
        dependencies
    )
    properties = loop["config"]["config"]["properties"]
    assert f"scope: '{COSMOS_SCOPE}'" in text
    assert json.dumps(properties["scope"]).count("colls") == 1, "container scope, not the account"
    assert "var cosmosDataContributor = '00000000-0000-0000-0000-000000000002'" in text


def test_the_deploying_user_may_read_the_consumers_store_after_the_other_roles() -> None:
    """make verify-azure reads order-summaries as the signed-in user: azd passes its principalId."""
    main = parsed("main.bicep")
    assert main["modules"]["resources"]["config"]["params"]["principalId"] == "principalId"
    resources = parsed("resources.bicep")
    assert resources["parameters"]["principalId"]["default"] == ""
    user = of_type(resources, "Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments")[
        "userReadsSummaries"
    ]
    assert user["config"]["condition"] == {"operator": {"type": "not", "operands": {
        "bool_value": {"function": {"type": "empty", "parameters": {"item_to_test": "principalId"}}}}}}  # fmt: skip
    assert user["config"]["config"]["dependsOn"] == ["cosmosDataAccess"], (
        "after the batched loop: never beside another Cosmos DB role operation"
    )
    text = (BICEP / "resources.bicep").read_text()
    assert "var cosmosDataReader = '00000000-0000-0000-0000-000000000001'" in text
    assert "roleDefinitionId: '${cosmos.id}/sqlRoleDefinitions/${cosmosDataReader}'" in text
    assert "scope: '${cosmos.id}/dbs/${database.name}/colls/${summariesContainer.name}'" in text
    parameters = json.loads((BICEP / "main.parameters.json").read_text())["parameters"]
    assert parameters["principalId"]["value"] == "${AZURE_PRINCIPAL_ID}"


def test_cosmos_containers_have_ttl_on_and_the_partition_keys_the_services_use() -> None:
    containers = of_type(
        parsed("resources.bicep"), "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers"
    )
    keys = {
        r["config"]["properties"]["resource"]["id"]: r["config"]["properties"]["resource"]
        for r in containers.values()
    }
    assert {name: k["partitionKey"]["paths"] for name, k in keys.items()} == {
        "orders": ["/order_id"], "leases": ["/id"], "order-summaries": ["/order_id"],
        "consumer-members": ["/queue"]}  # fmt: skip
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
    producer, _publisher, subscriber, consumer = (
        scale(modules[n]) for n in ("producer", "publisher", "subscriber", "consumer")
    )
    assert "http" in producer["scaleRules"][0]
    assert producer["external"] is True
    (hub_rule,) = subscriber["scaleRules"]
    assert hub_rule["custom"]["type"] == "azure-eventhub"
    assert hub_rule["custom"]["metadata"]["checkpointStrategy"] == "blobMetadata"
    assert "identity" in hub_rule["custom"]
    assert subscriber["maxReplicas"] == "hubPartitions", "never more replicas than partitions"
    (queue_rule,) = [rule for rule in consumer["scaleRules"] if "custom" in rule]
    assert queue_rule["custom"]["type"] == "azure-servicebus"
    assert "identity" in queue_rule["custom"]
    # with lanes a replica drains hundreds of events per second: a replica per 1,000 waiting
    assert queue_rule["custom"]["metadata"]["messageCount"] == "consumerMessagesPerReplica"
    variables = parsed("resources.bicep")["variables"]
    per_replica = variables["consumerMessagesPerReplica"]["value"]
    assert [_evaluate(per_replica, variables, lanes) for lanes in (32, 0)] == ["1000", "20"]


# KEDA activates a scaler only when the value is GREATER than its activation threshold (keda-docs
# 2.19, concepts/scaling-deployments.md): a threshold of 1 lets one event wait at zero replicas.
ACTIVATION_KEYS = {"azure-eventhub": "activationUnprocessedEventThreshold",
                   "azure-servicebus": "activationMessageCount"}  # fmt: skip


def test_every_keda_rule_activates_on_one_waiting_event_or_message() -> None:
    modules = parsed("resources.bicep")["modules"]
    custom_rules = [
        (name, rule["custom"])
        for name, module in modules.items()
        if "scaleRules" in module["config"]["params"]
        for rule in module["config"]["params"]["scaleRules"]
        if "custom" in rule
    ]
    assert {name for name, _ in custom_rules} == {"subscriber", "consumer"}
    for name, rule in custom_rules:
        metadata = rule["metadata"]
        activation = {key: value for key, value in metadata.items() if key.startswith("activation")}
        assert activation == {ACTIVATION_KEYS[rule["type"]]: "0"}, (name, activation)
        assert not any(isinstance(value, int) for value in metadata.values()), (
            "metadata are strings"
        )


def test_replicas_say_what_they_do() -> None:
    """The publisher: one lease owner and one hot spare that really runs (no scale rule could tell
    when more help). The consumer: its read API wakes it from zero (an HTTP rule), and it never runs
    more replicas than reach the smallest fair share of the inbox lanes within 10 (ceil(lanes /
    replicas) each: 32 lanes, 8 replicas of 4; more would leave 4 to some)."""
    modules = parsed("resources.bicep")["modules"]
    publisher, consumer = scale(modules["publisher"]), scale(modules["consumer"])
    assert (publisher["minReplicas"], publisher["maxReplicas"], publisher["scaleRules"]) == (
        2,
        2,
        [],
    )
    assert consumer["minReplicas"] == 0
    assert consumer["targetPort"] == {"operator": {"type": "property_accessor",
                                                   "operands": {"operand_1": "ports", "operand_2": "consumer"}}}  # fmt: skip
    http_rules = [rule for rule in consumer["scaleRules"] if "http" in rule]
    assert len(http_rules) == 1, "a request to the read API wakes the consumer at zero replicas"
    assert consumer["maxReplicas"] == "consumerMaxReplicas"
    variables = parsed("resources.bicep")["variables"]
    for lanes, most in ((32, 8), (16, 8), (10, 10), (12, 6), (4, 4), (1, 1), (100, 10), (0, 10)):
        replicas = _evaluate(variables["consumerMaxReplicas"]["value"], variables, lanes)
        assert replicas == most, (lanes, replicas)
        if lanes:
            share = -(-lanes // replicas)
            assert share == -(-lanes // min(10, lanes)), "the smallest share within 10 replicas"
            assert replicas == 1 or -(-lanes // (replicas - 1)) > share, "no replica too many"
    text = (BICEP / "resources.bicep").read_text()
    assert (
        "bootstrap (one on a new serverless account); instances beyond the lease count run as hot"
        in text
    )
    assert "Replicas share the lanes fairly: each holds at most ceil(lanes / replicas)" in text


def _evaluate(node: Any, variables: dict[str, Any], lanes: int) -> Any:
    """A Bicep expression as pycep parses it, for the integer operators the variables here use."""
    if isinstance(node, int | str) and not isinstance(node, bool):
        if node == "inboxLanes":
            return lanes
        if isinstance(node, str) and node in variables:
            return _evaluate(variables[node]["value"], variables, lanes)
        return node
    operator = node["operator"]
    kind, operands = operator["type"], operator["operands"]
    if kind == "conditional":
        chosen = (
            "true_value" if _evaluate(operands["condition"], variables, lanes) else "false_value"
        )
        return _evaluate(operands[chosen], variables, lanes)
    left = _evaluate(operands["operand_1"], variables, lanes)
    right = _evaluate(operands["operand_2"], variables, lanes)
    return {"add": left + right, "substract": left - right, "equals": left == right,
            "divide": left // right if right else None}[kind]  # fmt: skip


def test_inbox_lanes_reach_the_subscriber_and_the_consumer_and_the_inbox_keeps_sessions() -> None:
    main = parsed("main.bicep")
    assert main["parameters"]["inboxLanes"]["default"] == 32
    assert main["modules"]["resources"]["config"]["params"]["inboxLanes"] == "inboxLanes"
    resources = parsed("resources.bicep")
    assert resources["parameters"]["inboxLanes"]["default"] == 32
    lanes = {"function": {"type": "string", "parameters": {"value_to_convert": "inboxLanes"}}}
    for app, setting in (
        ("subscriber", "SUBSCRIBER_INBOX_LANES"),
        ("consumer", "CONSUMER_INBOX_LANES"),
    ):
        env = scale(resources["modules"][app])["env"]
        assert {"name": setting, "value": lanes} in env, app
    (queue,) = of_type(resources, "Microsoft.ServiceBus/namespaces/queues").values()
    assert queue["config"]["properties"]["requiresSession"] is True, "a lane is a session"


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


def test_every_app_has_liveness_on_healthz_and_readiness_on_readyz_at_its_own_port() -> None:
    """Container Apps ignores the Dockerfile HEALTHCHECK and adds default probes only with ingress:
    each app declares its own, on the port its service listens on (set explicitly in its env)."""
    container_app = parsed("container-app.bicep")
    probes = {probe["type"]: probe for probe in container_app["variables"]["probes"]["value"]}
    assert set(probes) == {"Startup", "Liveness", "Readiness"}
    for kind, path in (("Startup", "/healthz"), ("Liveness", "/healthz"), ("Readiness", "/readyz")):
        assert probes[kind]["httpGet"] == {"path": path, "port": "healthPort"}, kind
    for probe in probes.values():  # the API's limits
        assert 1 <= probe["failureThreshold"] <= 10
        assert 1 <= probe["periodSeconds"] <= 240
        assert 1 <= probe["timeoutSeconds"] <= 240
        assert probe.get("initialDelaySeconds", 1) <= 60
    startup = probes["Startup"]
    assert startup["initialDelaySeconds"] + startup["periodSeconds"] * startup["failureThreshold"] >= 90, (
        "start-up may wait for a backend that is still coming"
    )  # fmt: skip
    (app,) = container_app["resources"].values()
    (container,) = app["config"]["properties"]["template"]["containers"]
    assert container["probes"] == {"operator": {"type": "conditional", "operands": {
        "condition": "probed", "true_value": "probes", "false_value": []}}}  # fmt: skip
    modules = parsed("resources.bicep")["modules"]
    ports = parsed("resources.bicep")["variables"]["ports"]["value"]
    assert ports == {"producer": 8000, "publisher": 8001, "subscriber": 8002, "consumer": 8003}
    port_settings = {"producer": "PRODUCER_PORT", "publisher": "PUBLISHER_HEALTH_PORT",
                     "subscriber": "SUBSCRIBER_HEALTH_PORT", "consumer": "CONSUMER_HTTP_PORT"}  # fmt: skip
    dockerfiles = {"producer": "producer-api", "publisher": "publisher", "subscriber": "subscriber",
                   "consumer": "consumer"}  # fmt: skip
    for name, setting in port_settings.items():
        params = modules[name]["config"]["params"]
        port = {
            "operator": {
                "type": "property_accessor",
                "operands": {"operand_1": "ports", "operand_2": name},
            }
        }
        assert params["healthPort"] == port, name
        assert {"name": setting, "value": {"function": {"type": "string", "parameters": {
            "value_to_convert": port}}}} in params["env"], name  # fmt: skip
        host = setting.replace("PORT", "HOST")
        assert {"name": host, "value": "0.0.0.0"} in params["env"], (
            f"{name}: probes come from outside"
        )
        dockerfile = (BICEP.parents[1] / "services" / dockerfiles[name] / "Dockerfile").read_text()
        assert f"{setting}={ports[name]}" in dockerfile, name
        assert params["probed"] == {"operator": {"type": "not", "operands": {"bool_value": {
            "function": {"type": "empty", "parameters": {"item_to_test": {"operator": {
                "type": "property_accessor", "operands": {"operand_1": "images", "operand_2": name}}}}}}}}}, (
            f"{name}: the placeholder image of the first provision cannot answer the probes"
        )  # fmt: skip


def test_azd_keeps_the_scale_rule_identities_on_deploy() -> None:
    """azd deploy writes each app back; with `apiVersion` (azd >= 1.10.2) it does so as JSON at the
    API version the Bicep uses, so nothing the SDK's model lacks (scale-rule identity) is lost."""
    azure = yaml.safe_load((BICEP.parents[1] / "azure.yaml").read_text())
    required = azure["requiredVersions"]["azd"]
    assert required.startswith(">= ")
    minimum = tuple(int(part) for part in required.removeprefix(">= ").split("."))
    assert minimum >= (1, 10, 2), "per-service apiVersion exists since azd 1.10.2"
    (app,) = parsed("container-app.bicep")["resources"].values()
    assert app["type"] == "Microsoft.App/containerApps"
    for name, service in azure["services"].items():
        assert service["apiVersion"] == app["api_version"], name
    assert app["api_version"] >= "2024-02-02-preview", "scale-rule identity and identitySettings"


def test_the_lane_count_takes_zero_and_stops_at_the_contracts_limit() -> None:
    """0 (one session per order) is what docs/operations.md tells a first deployment to use when
    its subscriber may start before its consumers; the top is what the services accept."""
    from eventflow_contracts.lanes import MAX_LANES  # noqa: PLC0415

    for name in ("main.bicep", "resources.bicep"):
        text = (BICEP / name).read_text()
        decorators = text[: text.index("param inboxLanes int")].rsplit("\nparam ", 1)[-1]
        assert "@minValue(0)" in decorators, name
        assert f"@maxValue({MAX_LANES})" in decorators, name
