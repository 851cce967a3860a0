// Everything eventflow runs on, in one resource group. No keys or connection strings: local auth is
// disabled on Cosmos DB, Event Hubs, Service Bus and Storage; each app has its own user-assigned
// identity with only the data roles it needs, and what only the platform needs (image pull, the
// consumer's scale rule) has identities of its own that the apps cannot use.
param location string
param resourceToken string
param tags object
param images object
@allowed([ 'outbox', 'entity-first', 'event-first' ])
param writePattern string = 'outbox'
@description('Object id of the deploying user: Cosmos DB Built-in Data Reader on order-summaries (make verify-azure). Empty: nothing granted.')
param principalId string = ''
@minValue(0)
@maxValue(4096)
@description('Session lanes of the inbox: the subscriber spreads orders over them; the consumer replicas share them, ceil(lanes / replicas) each at most. 0: one session per order.')
param inboxLanes int = 32

// The consumer's scale-out with lanes: see the consumer app's maxReplicas and scale rule below.
var consumerLeastShare = (inboxLanes + 9) / 10 // ceil(lanes / 10): the smallest share 10 replicas reach
var consumerMaxReplicas = (inboxLanes == 0) ? 10 : (inboxLanes + consumerLeastShare - 1) / consumerLeastShare
// A replica applies hundreds of events per second on its lanes (docs/performance.md): a backlog of
// 1,000 per replica (a few seconds of its work) before another one is added, since every replica
// added moves lanes (a rebalance). With one session per order a replica drains far less: 20.
var consumerMessagesPerReplica = (inboxLanes == 0) ? '20' : '1000'
@description('Alert notifications: an email address, a webhook URL, both or neither (no action group).')
param alertEmail string = ''
param alertWebhookUrl string = ''
@description('The API app registration\'s client id: the audience of the tokens both APIs accept.')
param apiClientId string

var placeholderImage = 'mcr.microsoft.com/azuredocs/containerapps-helloworld:latest'
var hubName = 'orders'
var hubPartitions = 4
var consumerGroup = 'inbox-subscriber'
var checkpointContainer = 'checkpoints'
var inboxQueue = 'inbox'
var roles = {
  acrPull: '7f951dda-4ed3-4680-a7ca-43fe172d538d'
  eventHubsDataSender: '2b629674-e913-4c01-ae53-ef4638d8f975'
  eventHubsDataReceiver: 'a638d3c7-ab3a-418d-83e6-5f17a39d4fde'
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  serviceBusDataSender: '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39'
  serviceBusDataReceiver: '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0'
  serviceBusDataOwner: '090c5cfd-751d-490a-894a-3ce6f1109419'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}
var cosmosDataReader = '00000000-0000-0000-0000-000000000001'
var cosmosDataContributor = '00000000-0000-0000-0000-000000000002'

// -- observability -------------------------------------------------------------------------------

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-${resourceToken}'
  location: location
  tags: tags
  properties: { sku: { name: 'PerGB2018' }, retentionInDays: 30 }
}

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-${resourceToken}'
  location: location
  tags: tags
  kind: 'web'
  properties: { Application_Type: 'web', WorkspaceResourceId: logs.id, DisableLocalAuth: true }
}

// -- identities ----------------------------------------------------------------------------------

resource producerIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-producer-${resourceToken}'
  location: location
  tags: tags
}

resource publisherIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-publisher-${resourceToken}'
  location: location
  tags: tags
}

resource subscriberIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-subscriber-${resourceToken}'
  location: location
  tags: tags
}

resource consumerIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-consumer-${resourceToken}'
  location: location
  tags: tags
}

// Identities the platform uses and the applications cannot (lifecycle None in container-app.bicep):
// image pull for the four apps, and the consumer's scale rule, which needs more than the consumer.
resource pullIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-pull-${resourceToken}'
  location: location
  tags: tags
}

resource consumerScalerIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-consumer-scaler-${resourceToken}'
  location: location
  tags: tags
}

// -- registry and Container Apps environment ----------------------------------------------------

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  name: 'cr${resourceToken}'
  location: location
  tags: tags
  sku: { name: 'Basic' }
  properties: { adminUserEnabled: false }
}

resource environment 'Microsoft.App/managedEnvironments@2024-03-01' = {
  name: 'cae-${resourceToken}'
  location: location
  tags: tags
  properties: {
    appLogsConfiguration: { destination: 'azure-monitor' }
  }
}

resource environmentLogs 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: environment
  properties: {
    workspaceId: logs.id
    logs: [ { categoryGroup: 'allLogs', enabled: true } ]
  }
}

// -- Cosmos DB -----------------------------------------------------------------------------------

resource cosmos 'Microsoft.DocumentDB/databaseAccounts@2024-05-15' = {
  name: 'cosmos-${resourceToken}'
  location: location
  tags: tags
  kind: 'GlobalDocumentDB'
  properties: {
    databaseAccountOfferType: 'Standard'
    disableLocalAuth: true
    consistencyPolicy: { defaultConsistencyLevel: 'Session' }
    locations: [ { locationName: location, failoverPriority: 0 } ]
    capabilities: [ { name: 'EnableServerless' } ]
  }
}

resource database 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases@2024-05-15' = {
  parent: cosmos
  name: 'eventflow'
  properties: { resource: { id: 'eventflow' } }
}

resource ordersContainer 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-05-15' = {
  parent: database
  name: 'orders'
  properties: { resource: { id: 'orders', partitionKey: { paths: [ '/order_id' ], kind: 'Hash' }, defaultTtl: -1 } }
}

resource leasesContainer 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-05-15' = {
  parent: database
  name: 'leases'
  properties: { resource: { id: 'leases', partitionKey: { paths: [ '/id' ], kind: 'Hash' }, defaultTtl: -1 } }
}

resource summariesContainer 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-05-15' = {
  parent: database
  name: 'order-summaries'
  properties: { resource: { id: 'order-summaries', partitionKey: { paths: [ '/order_id' ], kind: 'Hash' }, defaultTtl: -1 } }
}

// The consumer replicas' membership records (the lanes' fair share, services/consumer share.py):
// one item per replica, partition key the inbox queue, expired by its own `ttl` (TTL on, default -1).
resource membersContainer 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-05-15' = {
  parent: database
  name: 'consumer-members'
  properties: { resource: { id: 'consumer-members', partitionKey: { paths: [ '/queue' ], kind: 'Hash' }, defaultTtl: -1 } }
}

// Loops must be known when the deployment starts, so they run over names; principal ids are read
// from the identities by name.
var apps = [ 'producer', 'publisher', 'subscriber', 'consumer' ]

// Cosmos DB data-plane roles, each on the containers its service uses (Cosmos DB RBAC scopes: account,
// database or container, https://learn.microsoft.com/azure/cosmos-db/how-to-setup-rbac). The subscriber
// never uses Cosmos DB. One at a time, after the containers exist: the account takes one such
// operation at a time and answers a parallel one with a conflict ("another operation in progress
// which requires an exclusive lock", as reported in hashicorp/terraform-provider-azurerm#15842).
// Container scope covers what the services read in azure mode: items, the change feed and the
// container's own metadata (`container.read()`; they create nothing, CREATE_CONTAINERS is off). A
// reader of the database's metadata would need database scope (a 403 on `dbs/<name>`, as the .NET
// change feed processor hits: Azure/azure-cosmos-dotnet-v3#3638). Deployments made before these
// grants keep their account-scope assignments until deleted (`az cosmosdb sql role assignment list`).
var cosmosGrants = [
  { app: 'producer', container: 'orders' }
  { app: 'publisher', container: 'orders' }
  { app: 'publisher', container: 'leases' }
  { app: 'consumer', container: 'order-summaries' }
  { app: 'consumer', container: 'consumer-members' }
]

@batchSize(1)
resource cosmosDataAccess 'Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments@2024-05-15' = [for grant in cosmosGrants: {
  parent: cosmos
  name: guid(cosmos.id, grant.app, grant.container, cosmosDataContributor)
  properties: {
    principalId: reference(resourceId('Microsoft.ManagedIdentity/userAssignedIdentities', 'id-${grant.app}-${resourceToken}'), '2023-01-31').principalId
    roleDefinitionId: '${cosmos.id}/sqlRoleDefinitions/${cosmosDataContributor}'
    scope: '${cosmos.id}/dbs/${database.name}/colls/${grant.container}'
  }
  dependsOn: [ producerIdentity, publisherIdentity, consumerIdentity, ordersContainer, leasesContainer, summariesContainer, membersContainer ]
}]

// The deploying user reads the consumer's store (make verify-azure); after the other assignments,
// never beside them.
resource userReadsSummaries 'Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments@2024-05-15' = if (!empty(principalId)) {
  parent: cosmos
  name: guid(cosmos.id, principalId, summariesContainer.name, cosmosDataReader)
  properties: {
    principalId: principalId
    roleDefinitionId: '${cosmos.id}/sqlRoleDefinitions/${cosmosDataReader}'
    scope: '${cosmos.id}/dbs/${database.name}/colls/${summariesContainer.name}'
  }
  dependsOn: [ cosmosDataAccess ]
}

// -- Event Hubs ----------------------------------------------------------------------------------

resource eventHubs 'Microsoft.EventHub/namespaces@2024-01-01' = {
  name: 'evhns-${resourceToken}'
  location: location
  tags: tags
  sku: { name: 'Standard', tier: 'Standard', capacity: 1 }
  properties: { disableLocalAuth: true, minimumTlsVersion: '1.2' }
}

resource hub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' = {
  parent: eventHubs
  name: hubName
  properties: { partitionCount: hubPartitions, messageRetentionInDays: 7 }
}

resource subscriberGroup 'Microsoft.EventHub/namespaces/eventhubs/consumergroups@2024-01-01' = {
  parent: hub
  name: consumerGroup
}

// -- Storage (checkpoints and partition ownership) ---------------------------------------------

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: 'st${resourceToken}'
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: { name: 'Standard_LRS' }
  properties: {
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
  }
}

resource blobs 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource checkpoints 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobs
  name: checkpointContainer
}

// -- Service Bus (the consumer's inbox) --------------------------------------------------------

resource serviceBus 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' = {
  name: 'sbns-${resourceToken}'
  location: location
  tags: tags
  sku: { name: 'Standard', tier: 'Standard' }
  properties: { disableLocalAuth: true, minimumTlsVersion: '1.2' }
}

resource inbox 'Microsoft.ServiceBus/namespaces/queues@2022-10-01-preview' = {
  parent: serviceBus
  name: inboxQueue
  properties: {
    requiresSession: true
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT10M'
    maxDeliveryCount: 10
    lockDuration: 'PT30S'
    deadLetteringOnMessageExpiration: true
  }
}

// -- data-plane roles ---------------------------------------------------------------------------

// Image pull: one identity for the four apps, kept out of their containers.
resource pull 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(registry.id, pullIdentity.id, roles.acrPull)
  scope: registry
  properties: {
    principalId: pullIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.acrPull)
  }
}

resource publisherSends 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hub.id, publisherIdentity.id, roles.eventHubsDataSender)
  scope: hub
  properties: {
    principalId: publisherIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.eventHubsDataSender)
  }
}

resource subscriberReceives 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hub.id, subscriberIdentity.id, roles.eventHubsDataReceiver)
  scope: hub
  properties: {
    principalId: subscriberIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.eventHubsDataReceiver)
  }
}

resource subscriberCheckpoints 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(checkpoints.id, subscriberIdentity.id, roles.storageBlobDataContributor)
  scope: checkpoints
  properties: {
    principalId: subscriberIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
  }
}

resource subscriberFillsInbox 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(inbox.id, subscriberIdentity.id, roles.serviceBusDataSender)
  scope: inbox
  properties: {
    principalId: subscriberIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataSender)
  }
}

resource consumerReadsInbox 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(inbox.id, consumerIdentity.id, roles.serviceBusDataReceiver)
  scope: inbox
  properties: {
    principalId: consumerIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataReceiver)
  }
}

// KEDA's azure-servicebus scaler reads queue length through the management plane of the entity
// ("Manage" rights); no narrower documented role serves it, so Data Owner is granted on the inbox
// queue only, to an identity that only the scale rule uses: the consumer itself keeps Data Receiver.
resource consumerScalerReadsQueue 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(inbox.id, consumerScalerIdentity.id, roles.serviceBusDataOwner)
  scope: inbox
  properties: {
    principalId: consumerScalerIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataOwner)
  }
}

// Telemetry: Application Insights takes no keys (DisableLocalAuth), so each app's identity may
// publish to it and nothing else.
resource publishesTelemetry 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for app in apps: {
  name: guid(insights.id, app, roles.monitoringMetricsPublisher)
  scope: insights
  properties: {
    principalId: reference(resourceId('Microsoft.ManagedIdentity/userAssignedIdentities', 'id-${app}-${resourceToken}'), '2023-01-31').principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
  }
  dependsOn: [ producerIdentity, publisherIdentity, subscriberIdentity, consumerIdentity ]
}]

// Event Hubs platform metrics into Log Analytics (AzureMetrics), for the alert on events nobody reads.
resource eventHubsMetrics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'metrics-to-log-analytics'
  scope: eventHubs
  properties: {
    workspaceId: logs.id
    metrics: [ { category: 'AllMetrics', enabled: true } ]
  }
}

module alerts 'alerts.bicep' = {
  name: 'alerts'
  params: {
    location: location
    tags: tags
    insightsId: insights.id
    workspaceId: logs.id
    serviceBusId: serviceBus.id
    inboxQueue: inboxQueue
    eventHubsId: eventHubs.id
    alertEmail: alertEmail
    alertWebhookUrl: alertWebhookUrl
  }
}

// -- the four apps ------------------------------------------------------------------------------
// Each app's probes use its health port, given to it explicitly below (the images say the same).

var ports = { producer: 8000, publisher: 8001, subscriber: 8002, consumer: 8003 }

module producer 'container-app.bicep' = {
  name: 'app-producer'
  params: {
    name: 'ca-producer-${resourceToken}'
    serviceName: 'producer'
    location: location
    tags: tags
    environmentId: environment.id
    registryServer: registry.properties.loginServer
    identityId: producerIdentity.id
    identityClientId: producerIdentity.properties.clientId
    pullIdentityId: pullIdentity.id
    image: empty(images.producer) ? placeholderImage : images.producer
    probed: !empty(images.producer)
    targetPort: ports.producer
    healthPort: ports.producer
    external: true
    minReplicas: 1
    maxReplicas: 10
    scaleRules: [ { name: 'http', http: { metadata: { concurrentRequests: '50' } } } ]
    appInsightsConnectionString: insights.properties.ConnectionString
    env: [
      { name: 'PRODUCER_MODE', value: 'azure' }
      { name: 'PRODUCER_HOST', value: '0.0.0.0' }
      { name: 'PRODUCER_PORT', value: string(ports.producer) }
      { name: 'PRODUCER_COSMOS_ENDPOINT', value: cosmos.properties.documentEndpoint }
      { name: 'PRODUCER_WRITE_PATTERN', value: writePattern }
      { name: 'PRODUCER_AUTH_TENANT_ID', value: tenant().tenantId }
      { name: 'PRODUCER_AUTH_CLIENT_ID', value: apiClientId }
    ]
  }
  dependsOn: [ pull, cosmosDataAccess, ordersContainer ]
}

module publisher 'container-app.bicep' = {
  name: 'app-publisher'
  params: {
    name: 'ca-publisher-${resourceToken}'
    serviceName: 'publisher'
    location: location
    tags: tags
    environmentId: environment.id
    registryServer: registry.properties.loginServer
    identityId: publisherIdentity.id
    identityClientId: publisherIdentity.properties.clientId
    pullIdentityId: pullIdentity.id
    image: empty(images.publisher) ? placeholderImage : images.publisher
    probed: !empty(images.publisher)
    targetPort: 0
    healthPort: ports.publisher
    external: false
    // The lease design (services/publisher/README.md): leases are one per physical partition at
    // bootstrap (one on a new serverless account); instances beyond the lease count run as hot
    // spares and take a lease over when its owner stops renewing. No scale rule could tell from
    // load when a spare helps, so the count is fixed: one owner and one running spare.
    minReplicas: 2
    maxReplicas: 2
    scaleRules: []
    appInsightsConnectionString: insights.properties.ConnectionString
    env: [
      { name: 'PUBLISHER_MODE', value: 'azure' }
      { name: 'PUBLISHER_HEALTH_HOST', value: '0.0.0.0' }
      { name: 'PUBLISHER_HEALTH_PORT', value: string(ports.publisher) }
      { name: 'PUBLISHER_COSMOS_ENDPOINT', value: cosmos.properties.documentEndpoint }
      { name: 'PUBLISHER_EVENTHUBS_NAMESPACE', value: '${eventHubs.name}.servicebus.windows.net' }
      { name: 'PUBLISHER_EVENTHUB_NAME', value: hubName }
      { name: 'PUBLISHER_WRITE_PATTERN', value: writePattern }
    ]
  }
  dependsOn: [ pull, cosmosDataAccess, publisherSends, leasesContainer ]
}

// KEDA activates a scaler only when its value is greater than the activation threshold, never equal
// (keda-docs, concepts/scaling-deployments.md, "Activating and Scaling thresholds"): with 0, one
// waiting event or message wakes an app at zero replicas. Both rules say so explicitly.
module subscriber 'container-app.bicep' = {
  name: 'app-subscriber'
  params: {
    name: 'ca-subscriber-${resourceToken}'
    serviceName: 'subscriber'
    location: location
    tags: tags
    environmentId: environment.id
    registryServer: registry.properties.loginServer
    identityId: subscriberIdentity.id
    identityClientId: subscriberIdentity.properties.clientId
    pullIdentityId: pullIdentity.id
    image: empty(images.subscriber) ? placeholderImage : images.subscriber
    probed: !empty(images.subscriber)
    targetPort: 0
    healthPort: ports.subscriber
    external: false
    minReplicas: 0
    maxReplicas: hubPartitions // KEDA never scales an Event Hubs consumer past the partition count
    // The scaler reads the hub (Event Hubs Data Receiver) and the checkpoint blobs (Storage Blob
    // Data Reader or more): the subscriber's own roles, so it uses the subscriber's identity.
    scaleRules: [ {
      name: 'hub-lag'
      custom: {
        type: 'azure-eventhub'
        identity: subscriberIdentity.id
        metadata: {
          eventHubNamespace: eventHubs.name
          eventHubName: hubName
          consumerGroup: consumerGroup
          storageAccountName: storage.name
          blobContainer: checkpointContainer
          checkpointStrategy: 'blobMetadata'
          unprocessedEventThreshold: '64'
          activationUnprocessedEventThreshold: '0'
        }
      }
    } ]
    appInsightsConnectionString: insights.properties.ConnectionString
    env: [
      { name: 'SUBSCRIBER_MODE', value: 'azure' }
      { name: 'SUBSCRIBER_HEALTH_HOST', value: '0.0.0.0' }
      { name: 'SUBSCRIBER_HEALTH_PORT', value: string(ports.subscriber) }
      { name: 'SUBSCRIBER_EVENTHUBS_NAMESPACE', value: '${eventHubs.name}.servicebus.windows.net' }
      { name: 'SUBSCRIBER_EVENTHUB_NAME', value: hubName }
      { name: 'SUBSCRIBER_CONSUMER_GROUP', value: consumerGroup }
      { name: 'SUBSCRIBER_STORAGE_ACCOUNT_URL', value: storage.properties.primaryEndpoints.blob }
      { name: 'SUBSCRIBER_CHECKPOINT_CONTAINER', value: checkpointContainer }
      { name: 'SUBSCRIBER_SERVICEBUS_NAMESPACE', value: '${serviceBus.name}.servicebus.windows.net' }
      { name: 'SUBSCRIBER_INBOX_QUEUE', value: inboxQueue }
      { name: 'SUBSCRIBER_INBOX_LANES', value: string(inboxLanes) }
    ]
  }
  dependsOn: [ pull, subscriberReceives, subscriberCheckpoints, subscriberFillsInbox, subscriberGroup ]
}

module consumer 'container-app.bicep' = {
  name: 'app-consumer'
  params: {
    name: 'ca-consumer-${resourceToken}'
    serviceName: 'consumer'
    location: location
    tags: tags
    environmentId: environment.id
    registryServer: registry.properties.loginServer
    identityId: consumerIdentity.id
    identityClientId: consumerIdentity.properties.clientId
    pullIdentityId: pullIdentity.id
    scalerIdentityId: consumerScalerIdentity.id
    image: empty(images.consumer) ? placeholderImage : images.consumer
    probed: !empty(images.consumer)
    targetPort: ports.consumer
    healthPort: ports.consumer
    external: false
    minReplicas: 0
    // Replicas share the lanes fairly: each holds at most ceil(lanes / replicas). Past the fewest
    // replicas that reach the smallest share within 10, more replicas do not lower any replica's
    // load (32 lanes: 8 replicas hold 4 each; 9 or 10 would still leave 4 to some), and past the
    // lane count they would hold nothing. Without lanes (0), sessions per order: up to 10.
    maxReplicas: consumerMaxReplicas
    // Either rule wakes the consumer from zero: a message in the inbox (KEDA, activation at one
    // message, through the scaler's own identity) or a request to the read API (an HTTP rule: a
    // custom rule alone never wakes an app for its ingress).
    scaleRules: [
      {
        name: 'inbox-length'
        custom: {
          type: 'azure-servicebus'
          identity: consumerScalerIdentity.id
          metadata: { namespace: serviceBus.name, queueName: inboxQueue, messageCount: consumerMessagesPerReplica, activationMessageCount: '0' }
        }
      }
      { name: 'read-api', http: { metadata: { concurrentRequests: '50' } } }
    ]
    appInsightsConnectionString: insights.properties.ConnectionString
    env: [
      { name: 'CONSUMER_MODE', value: 'azure' }
      { name: 'CONSUMER_HTTP_HOST', value: '0.0.0.0' }
      { name: 'CONSUMER_HTTP_PORT', value: string(ports.consumer) }
      { name: 'CONSUMER_COSMOS_ENDPOINT', value: cosmos.properties.documentEndpoint }
      { name: 'CONSUMER_SERVICEBUS_NAMESPACE', value: '${serviceBus.name}.servicebus.windows.net' }
      { name: 'CONSUMER_INBOX_QUEUE', value: inboxQueue }
      { name: 'CONSUMER_INBOX_LANES', value: string(inboxLanes) }
      { name: 'CONSUMER_AUTH_TENANT_ID', value: tenant().tenantId }
      { name: 'CONSUMER_AUTH_CLIENT_ID', value: apiClientId }
    ]
  }
  dependsOn: [ pull, cosmosDataAccess, consumerReadsInbox, consumerScalerReadsQueue, summariesContainer ]
}

output registryEndpoint string = registry.properties.loginServer
output environmentName string = environment.name
output producerUri string = 'https://${producer.outputs.fqdn}'
output cosmosEndpoint string = cosmos.properties.documentEndpoint
output eventHubsNamespace string = '${eventHubs.name}.servicebus.windows.net'
output storageAccountUrl string = storage.properties.primaryEndpoints.blob
output serviceBusNamespace string = '${serviceBus.name}.servicebus.windows.net'
output insightsName string = insights.name
