"""Partition-key routing: Jenkins lookup3 (`hashlittle2`) of the key's UTF-8 bytes, the two 32-bit
halves XOR-ed and folded to a signed 16-bit value, then |hash mod partitions|.

Azure's own routing is internal; this is the algorithm the SDKs reproduce client-side for their
buffered producers (azure-eventhub 5.15.1 `_buffered_producer/_partition_resolver.py`, the .NET
`PartitionResolver`), so the emulator places a key where those SDKs predict. The remainder is taken
the .NET way (truncated toward zero), which the Python SDK's `%` differs from for negative hashes.
"""

from __future__ import annotations

_M = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = ((a - c) & _M) ^ _rot(c, 4)
    c = (c + b) & _M
    b = ((b - a) & _M) ^ _rot(a, 6)
    a = (a + c) & _M
    c = ((c - b) & _M) ^ _rot(b, 8)
    b = (b + a) & _M
    a = ((a - c) & _M) ^ _rot(c, 16)
    c = (c + b) & _M
    b = ((b - a) & _M) ^ _rot(a, 19)
    a = (a + c) & _M
    c = ((c - b) & _M) ^ _rot(b, 4)
    b = (b + a) & _M
    return a, b, c


def _final(a: int, b: int, c: int) -> tuple[int, int, int]:
    c = (c ^ b) - _rot(b, 14) & _M
    a = (a ^ c) - _rot(c, 11) & _M
    b = (b ^ a) - _rot(a, 25) & _M
    c = (c ^ b) - _rot(b, 16) & _M
    a = (a ^ c) - _rot(c, 4) & _M
    b = (b ^ a) - _rot(a, 14) & _M
    c = (c ^ b) - _rot(b, 24) & _M
    return a, b, c


def lookup3(data: bytes) -> tuple[int, int]:
    """hashlittle2 with both initial values 0: (primary, secondary)."""
    length = len(data)
    a = b = c = (0xDEADBEEF + length) & _M
    pos = 0
    while length > 12:
        a = (a + int.from_bytes(data[pos : pos + 4], "little")) & _M
        b = (b + int.from_bytes(data[pos + 4 : pos + 8], "little")) & _M
        c = (c + int.from_bytes(data[pos + 8 : pos + 12], "little")) & _M
        a, b, c = _mix(a, b, c)
        pos += 12
        length -= 12
    if length == 0:
        return c, b
    tail = data[pos:] + b"\0" * (12 - length)
    a = (a + int.from_bytes(tail[0:4], "little")) & _M
    b = (b + int.from_bytes(tail[4:8], "little")) & _M
    c = (c + int.from_bytes(tail[8:12], "little")) & _M
    a, b, c = _final(a, b, c)
    return c, b


def hash_code(key: str) -> int:
    if not key:
        return 0
    primary, secondary = lookup3(key.encode("utf-8"))
    value = (primary ^ secondary) & 0xFFFF
    return value - 0x10000 if value >= 0x8000 else value


def partition_for_key(key: str, partition_count: int) -> int:
    code = hash_code(key)
    return abs(code) % partition_count  # C#: Math.Abs(code % count), truncated remainder
