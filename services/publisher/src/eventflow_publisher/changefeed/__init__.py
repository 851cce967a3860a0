"""A change feed processor for Python: leases in a Cosmos DB container, spread evenly across
instances, checkpointed only after the handler returns. Knows nothing of Event Hubs.

    processor = ChangeFeedProcessor(feed=..., leases=..., handler=..., options=ProcessorOptions(...))
    await processor.run()      # until stop()
    await processor.stop()     # finish the in-flight page and its checkpoint, release leases
"""

from eventflow_publisher.changefeed.balancing import LeaseView, Plan, plan
from eventflow_publisher.changefeed.leases import Lease, LeaseLostError, LeaseStore, StartPosition
from eventflow_publisher.changefeed.processor import (
    Backlog,
    ChangeFeed,
    ChangeFeedProcessor,
    LeaseContext,
    LeaseStatus,
    Page,
    ProcessorOptions,
)

__all__ = [
    "Backlog",
    "ChangeFeed",
    "ChangeFeedProcessor",
    "Lease",
    "LeaseContext",
    "LeaseLostError",
    "LeaseStatus",
    "LeaseStore",
    "LeaseView",
    "Page",
    "Plan",
    "ProcessorOptions",
    "StartPosition",
    "plan",
]
