"""Request units: a documented, simple ESTIMATE of what Azure would charge.

Not Azure's cost model (which depends on indexing, item shape and consistency); close enough to
make throttling and `x-ms-request-charge` behave like the service under load:

- point read: 1 RU per started KB of the item (minimum 1);
- write (create, replace, upsert, patch, delete): 5.71 RU per started KB (delete: of the old item);
- transactional batch: the sum of its operations;
- query: 2.5 RU + 0.1 RU per document scanned + 1 RU per started KB returned;
- change feed read: 1 RU per started KB returned (minimum 1, also for an empty read);
- metadata (account, databases, containers, partition key ranges): 1 RU, never throttled.
"""

from __future__ import annotations

KB = 1024
READ_PER_KB = 1.0
WRITE_PER_KB = 5.71
QUERY_BASE = 2.5
QUERY_PER_SCANNED = 0.1
METADATA = 1.0


def _started_kb(size: int) -> int:
    return max(1, -(-size // KB))


def point_read(size: int) -> float:
    return READ_PER_KB * _started_kb(size)


def write(size: int) -> float:
    return round(WRITE_PER_KB * _started_kb(size), 2)


def query(scanned: int, returned_bytes: int) -> float:
    returned = -(-returned_bytes // KB)
    return round(QUERY_BASE + QUERY_PER_SCANNED * scanned + READ_PER_KB * returned, 2)


def change_feed(returned_bytes: int) -> float:
    return READ_PER_KB * _started_kb(returned_bytes)
