// One Container App: its own user-assigned identity (registry pull and data access), single
// revision mode (partitions and leases are not shared across revisions), a grace period long
// enough for the app to finish in-flight work after SIGTERM, and its scale rules.
param name string
param serviceName string
param location string
param tags object
param environmentId string
param registryServer string
param identityId string
param identityClientId string
param image string
@description('0: no ingress (workers expose health on their own port inside the app).')
param targetPort int
param external bool
param minReplicas int
param maxReplicas int
param scaleRules array
param env array
@description('Where the app sends its telemetry (Entra ID auth: the identity needs Monitoring Metrics Publisher).')
param appInsightsConnectionString string

resource app 'Microsoft.App/containerApps@2024-10-02-preview' = {
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': serviceName })
  identity: { type: 'UserAssigned', userAssignedIdentities: { '${identityId}': {} } }
  properties: {
    environmentId: environmentId
    configuration: {
      activeRevisionsMode: 'Single'
      registries: [ { server: registryServer, identity: identityId } ]
      ingress: targetPort == 0 ? null : { external: external, targetPort: targetPort, transport: 'auto' }
    }
    template: {
      terminationGracePeriodSeconds: 60
      containers: [ {
        name: serviceName
        image: image
        resources: { cpu: json('0.5'), memory: '1Gi' }
        // DefaultAzureCredential picks the user-assigned identity by its client id. The Application
        // Insights connection string is no secret: the component has local auth off, ingestion
        // takes the identity's token (the one named exception to "no connection strings").
        env: concat(env, [
          { name: 'AZURE_CLIENT_ID', value: identityClientId }
          { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: appInsightsConnectionString }
        ])
      } ]
      scale: { minReplicas: minReplicas, maxReplicas: maxReplicas, rules: scaleRules }
    }
  }
}

output fqdn string = targetPort == 0 ? '' : app.properties.configuration.ingress.fqdn
