// Azure Monitor alerts on what says the flow is stuck or losing events. Thresholds are documented
// in docs/observability.md; the services' metrics reach Application Insights (customMetrics)
// through the Azure Monitor OpenTelemetry distro under the names of the metrics table.
param location string
param tags object
param insightsId string
param serviceBusId string
param inboxQueue string
@description('Seconds the oldest unpublished event may wait before the publisher lag alert fires.')
param oldestUnpublishedSeconds int = 300
@description('Seconds a partition with events waiting may go without a subscriber checkpoint.')
param checkpointAgeSeconds int = 600

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
  }
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
  }
}]
