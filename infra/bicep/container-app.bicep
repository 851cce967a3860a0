// One Container App: its own user-assigned identity (data access), identities only the platform uses
// (registry pull, a scale rule's), single revision mode (partitions and leases are not shared across
// revisions), health probes on the service's own port, a grace period long enough for the app to
// finish in-flight work after SIGTERM, and its scale rules.
param name string
param serviceName string
param location string
param tags object
param environmentId string
param registryServer string
param identityId string
param identityClientId string
@description('Pulls the image from the registry; lifecycle None: the platform uses it, the app cannot get its tokens.')
param pullIdentityId string
@description('Used only by a scale rule (lifecycle None), or empty.')
param scalerIdentityId string = ''
param image string
@description('False for the placeholder image of the first provision, which cannot answer the probes.')
param probed bool
@description('0: no ingress (workers expose health on their own port inside the app).')
param targetPort int
param external bool
@description('The port of /healthz and /readyz; probes need no ingress.')
param healthPort int
param minReplicas int
param maxReplicas int
param scaleRules array
param env array
@description('Where the app sends its telemetry (Entra ID auth: the identity needs Monitoring Metrics Publisher).')
param appInsightsConnectionString string

// Identity availability (API 2024-02-02-preview and later): lifecycle None keeps an identity out of
// the containers, for registry pull and scale rules only
// (https://learn.microsoft.com/azure/container-apps/managed-identity#control-managed-identity-availability).
var platformOnly = concat(
  [ { identity: pullIdentityId, lifecycle: 'None' } ],
  empty(scalerIdentityId) ? [] : [ { identity: scalerIdentityId, lifecycle: 'None' } ]
)
var assigned = union(
  { '${identityId}': {} },
  { '${pullIdentityId}': {} },
  empty(scalerIdentityId) ? {} : { '${scalerIdentityId}': {} }
)

// Container Apps adds default TCP probes only where ingress is on and ignores the Dockerfile
// HEALTHCHECK (https://learn.microsoft.com/azure/container-apps/health-probes), so every app
// declares its own. Start-up: /healthz may take until the service has connected to its backends
// (the producer's and consumer's HTTP servers start after that), so the startup probe allows
// 5 + 10 x 10 s before a restart; liveness then restarts a replica that stops answering for 30 s;
// readiness (/readyz) never restarts, it only reports a replica waiting for a backend as not
// ready. Limits: failureThreshold 1-10, initialDelaySeconds up to 60, periodSeconds up to 240.
var probes = [
  {
    type: 'Startup'
    httpGet: { path: '/healthz', port: healthPort }
    initialDelaySeconds: 5
    periodSeconds: 10
    timeoutSeconds: 3
    failureThreshold: 10
  }
  {
    type: 'Liveness'
    httpGet: { path: '/healthz', port: healthPort }
    periodSeconds: 10
    timeoutSeconds: 3
    failureThreshold: 3
  }
  {
    type: 'Readiness'
    httpGet: { path: '/readyz', port: healthPort }
    periodSeconds: 5
    timeoutSeconds: 3
    failureThreshold: 3
    successThreshold: 1
  }
]

resource app 'Microsoft.App/containerApps@2024-10-02-preview' = {
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': serviceName })
  identity: { type: 'UserAssigned', userAssignedIdentities: assigned }
  properties: {
    environmentId: environmentId
    configuration: {
      activeRevisionsMode: 'Single'
      identitySettings: platformOnly
      registries: [ { server: registryServer, identity: pullIdentityId } ]
      ingress: targetPort == 0 ? null : { external: external, targetPort: targetPort, transport: 'auto' }
    }
    template: {
      terminationGracePeriodSeconds: 60
      containers: [ {
        name: serviceName
        image: image
        resources: { cpu: json('0.5'), memory: '1Gi' }
        probes: probed ? probes : []
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
