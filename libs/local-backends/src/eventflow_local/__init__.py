"""Local stand-ins for the async Azure SDK clients of Event Hubs and Service Bus on SQLite. Cosmos DB
runs through the real SDK against the wire-level emulator in libs/emulators.

Dev and test only. See this package's README for every supported call and known difference.
"""

from eventflow_local.environment import LocalEnvironment
from eventflow_local.faults import FaultKind

__all__ = ["FaultKind", "LocalEnvironment"]
