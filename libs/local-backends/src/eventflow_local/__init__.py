"""Local stand-ins for the async Azure SDK clients (Cosmos DB, Event Hubs, Service Bus) on SQLite.

Dev and test only. See this package's README for every supported call and known difference.
"""

from eventflow_local.environment import LocalEnvironment
from eventflow_local.faults import FaultKind

__all__ = ["FaultKind", "LocalEnvironment"]
