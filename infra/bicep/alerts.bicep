// Azure Monitor alerts on what says the flow is stuck or losing events. Thresholds are documented
// in docs/observability.md; the services' metrics reach Application Insights (customMetrics)
// through the Azure Monitor OpenTelemetry distro under the names of the metrics table. The
// subscriber and consumer may run at zero replicas, where they report nothing: two alerts read the
// platform's own metrics of the hub and the inbox, so a scaler that never wakes them is seen too.
param location string
param tags object
param insightsId string
param workspaceId string
param serviceBusId string
param inboxQueue string
param eventHubsId string
@description('Who is told: an email address, a webhook URL, both, or neither (then no action group).')
param alertEmail string = ''
param alertWebhookUrl string = ''
@description('Seconds the oldest unpublished event may wait before the publisher lag alert fires.')
param oldestUnpublishedSeconds int = 300
@description('Seconds a partition with events waiting may go without a subscriber checkpoint.')
param checkpointAgeSeconds int = 600

var notify = !empty(alertEmail) || !empty(alertWebhookUrl)
var actionGroupName = 'ag-eventflow'

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (notify) {
  name: actionGroupName
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'eventflow' // at most 12 characters
    enabled: true
    emailReceivers: empty(alertEmail) ? [] : [ { name: 'email', emailAddress: alertEmail, useCommonAlertSchema: true } ]
    webhookReceivers: empty(alertWebhookUrl) ? [] : [ { name: 'webhook', serviceUri: alertWebhookUrl, useCommonAlertSchema: true } ]
  }
}

// Every alert notifies the action group when there is one.
var actionGroupIds = notify ? [ resourceId('Microsoft.Insights/actionGroups', actionGroupName) ] : []
var metricAlertActions = [for id in actionGroupIds: { actionGroupId: id }]

// Any message in the inbox's dead-letter queue needs a person: the platform metric, per queue.
resource deadLetters 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: 'alert-dead-letters'
  location: 'global'
  tags: tags
  properties: {
    description: 'Messages in the inbox dead-letter queue (threshold: more than 0).'
    severity: 1
    enabled: true
    scopes: [ serviceBusId ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [ {
        criterionType: 'StaticThresholdCriterion'
        name: 'dead-lettered'
        metricNamespace: 'Microsoft.ServiceBus/namespaces'
        metricName: 'DeadletteredMessages'
        dimensions: [ { name: 'EntityName', operator: 'Include', values: [ inboxQueue ] } ]
        operator: 'GreaterThan'
        threshold: 0
        timeAggregation: 'Maximum'
      } ]
    }
    actions: metricAlertActions
  }
  dependsOn: [ actionGroup ]
}

// Messages wait in the inbox and none is taken for 15 minutes: the least count of active messages
// over the window stays above zero (ActiveMessages: Average, Minimum, Maximum; dimension
// EntityName). The consumers are not running (a scaler that does not wake them at zero replicas)
// or do not keep up. Deferred messages of blocked orders are not active messages.
resource inboxWaiting 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: 'alert-inbox-waiting'
  location: 'global'
  tags: tags
  properties: {
    description: 'The inbox has not been empty for 15 minutes (least active messages over the window above 0).'
    severity: 2
    enabled: true
    scopes: [ serviceBusId ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [ {
        criterionType: 'StaticThresholdCriterion'
        name: 'active-messages'
        metricNamespace: 'Microsoft.ServiceBus/namespaces'
        metricName: 'ActiveMessages'
        dimensions: [ { name: 'EntityName', operator: 'Include', values: [ inboxQueue ] } ]
        operator: 'GreaterThan'
        threshold: 0
        timeAggregation: 'Minimum'
      } ]
    }
    actions: metricAlertActions
  }
  dependsOn: [ actionGroup ]
}

// Events reach the hub and nobody reads any for 30 minutes: the namespace's platform metrics in Log
// Analytics (AzureMetrics, from the diagnostic setting in resources.bicep; absent rows count as
// nothing read). At zero replicas the subscriber reports no checkpoint age, so this is the alert
// that sees a subscriber that never wakes.
resource hubUnread 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: 'alert-hub-unread'
  location: location
  tags: tags
  properties: {
    description: 'Events reached the hub and none was read for 30 minutes (the subscribers are not running).'
    severity: 2
    enabled: true
    scopes: [ workspaceId ]
    evaluationFrequency: 'PT10M'
    windowSize: 'PT30M'
    criteria: {
      allOf: [ {
        query: 'AzureMetrics | where ResourceId =~ "${eventHubsId}" and MetricName in ("IncomingMessages", "OutgoingMessages") | summarize incoming = sumif(Total, MetricName == "IncomingMessages"), outgoing = sumif(Total, MetricName == "OutgoingMessages") | where incoming > 0 and outgoing == 0'
        timeAggregation: 'Count'
        operator: 'GreaterThan'
        threshold: 0
        failingPeriods: { numberOfEvaluationPeriods: 1, minFailingPeriodsToAlert: 1 }
      } ]
    }
    actions: { actionGroups: actionGroupIds }
  }
  dependsOn: [ actionGroup ]
}

var logAlerts = [
  {
    name: 'alert-blocked-sessions'
    description: 'A consumer blocked an order session (threshold: any in 15 minutes).'
    severity: 2
    metric: 'eventflow_consumer_sessions_blocked'
    aggregation: 'sum(valueSum)'
    threshold: 0
  }
  {
    name: 'alert-publisher-oldest-unpublished'
    description: 'The oldest committed event not yet published is older than ${oldestUnpublishedSeconds} s.'
    severity: 2
    metric: 'eventflow_publisher_oldest_unpublished_age_seconds'
    aggregation: 'max(valueMax)'
    threshold: oldestUnpublishedSeconds
  }
  {
    name: 'alert-subscriber-checkpoint-age'
    description: 'A hub partition has gone ${checkpointAgeSeconds} s without a subscriber checkpoint.'
    severity: 3
    metric: 'eventflow_subscriber_checkpoint_age_seconds'
    aggregation: 'max(valueMax)'
    threshold: checkpointAgeSeconds
  }
]

resource metricAlerts 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = [for alert in logAlerts: {
  name: alert.name
  location: location
  tags: tags
  properties: {
    description: alert.description
    severity: alert.severity
    enabled: true
    scopes: [ insightsId ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [ {
        query: 'customMetrics | where name == "${alert.metric}" | summarize value = ${alert.aggregation} by bin(timestamp, 5m)'
        timeAggregation: 'Maximum'
        metricMeasureColumn: 'value'
        operator: 'GreaterThan'
        threshold: alert.threshold
        failingPeriods: { numberOfEvaluationPeriods: 1, minFailingPeriodsToAlert: 1 }
      } ]
    }
    actions: { actionGroups: actionGroupIds }
  }
  dependsOn: [ actionGroup ]
}]
