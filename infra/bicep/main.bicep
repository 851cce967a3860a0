// azd entry point (subscription scope): one resource group with everything eventflow needs.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; part of every resource name.')
param environmentName string

@minLength(1)
@description('Azure region for all resources.')
param location string

@description('Object id of the deploying user (azd fills it): Cosmos DB Built-in Data Reader on order-summaries, for make verify-azure.')
param principalId string = ''

@description('Images azd deployed last time (kept on re-provision); the placeholder until the first deploy.')
param producerImage string = ''
param publisherImage string = ''
param subscriberImage string = ''
param consumerImage string = ''

@allowed([ 'outbox', 'entity-first', 'event-first' ])
@description('The write pattern of producer and publisher (docs/patterns.md).')
param writePattern string = 'outbox'

@minValue(0)
@maxValue(4096)
@description('Session lanes of the inbox (subscriber and consumer); 0: one session per order, as before lanes (docs/operations.md: a first deployment whose subscriber may start before its consumers).')
param inboxLanes int = 32

@description('Alert notifications: an email address and/or a webhook URL (an action group); empty: alerts notify nobody.')
param alertEmail string = ''
param alertWebhookUrl string = ''
@minLength(36)
@maxLength(36)
@description('Application (client) id of the Entra ID app registration that protects the producer API and the consumer read API (app roles Orders.Read and Orders.ReadWrite, requestedAccessTokenVersion 2; docs/operations.md). Tokens are taken from this directory (tenant) only.')
param apiClientId string

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }

resource group 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

module resources 'resources.bicep' = {
  name: 'eventflow-resources'
  scope: group
  params: {
    location: location
    resourceToken: resourceToken
    tags: tags
    writePattern: writePattern
    principalId: principalId
    inboxLanes: inboxLanes
    alertEmail: alertEmail
    alertWebhookUrl: alertWebhookUrl
    apiClientId: apiClientId
    images: {
      producer: producerImage
      publisher: publisherImage
      subscriber: subscriberImage
      consumer: consumerImage
    }
  }
}

output AZURE_LOCATION string = location
output AZURE_PRINCIPAL_ID string = principalId
output AZURE_RESOURCE_GROUP string = group.name
output AZURE_CONTAINER_REGISTRY_ENDPOINT string = resources.outputs.registryEndpoint
output AZURE_CONTAINER_ENVIRONMENT_NAME string = resources.outputs.environmentName
output AZURE_TENANT_ID string = tenant().tenantId
output EVENTFLOW_API_CLIENT_ID string = apiClientId
output SERVICE_PRODUCER_URI string = resources.outputs.producerUri
output PRODUCER_COSMOS_ENDPOINT string = resources.outputs.cosmosEndpoint
output PUBLISHER_COSMOS_ENDPOINT string = resources.outputs.cosmosEndpoint
output PUBLISHER_EVENTHUBS_NAMESPACE string = resources.outputs.eventHubsNamespace
output SUBSCRIBER_EVENTHUBS_NAMESPACE string = resources.outputs.eventHubsNamespace
output SUBSCRIBER_STORAGE_ACCOUNT_URL string = resources.outputs.storageAccountUrl
output SUBSCRIBER_SERVICEBUS_NAMESPACE string = resources.outputs.serviceBusNamespace
output CONSUMER_SERVICEBUS_NAMESPACE string = resources.outputs.serviceBusNamespace
output CONSUMER_COSMOS_ENDPOINT string = resources.outputs.cosmosEndpoint
