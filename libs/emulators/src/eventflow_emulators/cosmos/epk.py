"""Effective partition keys (EPK) and partition key ranges, as Cosmos DB computes them.

A hash-V2 container places an item by the MurmurHash3 x64-128 of the binary encoding of its
partition key value, written as 32 upper-case hex digits with the top two bits cleared (so every
EPK sorts below "40"). Ranges are half-open [min, max) over those strings, with "" the minimum
and "FF" the maximum; comparison is plain string order. The encoding follows the SDK's
`azure/cosmos/partition_key.py` (`_write_for_hashing_v2`, `_get_effective_partition_key_for_
hash_partitioning_v2`); the hash is implemented here, from the public algorithm.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MIN_EPK = ""
MAX_EPK = "FF"
EPK_SPACE = 1 << 126
"""Hash-V2 EPKs are 128-bit numbers below 2**126 (the top two bits are cleared)."""

_MASK64 = (1 << 64) - 1
_C1 = 0x87C37B91114253D5
_C2 = 0x4CF5AD432745937F

# Type markers of the binary encoding (partition_key.py `_PartitionKeyComponentType`).
_UNDEFINED, _NULL, _FALSE, _TRUE, _NUMBER, _STRING = 0x00, 0x01, 0x02, 0x03, 0x05, 0x08


class Undefined:
    """The partition key value of an item that has no value at the partition key path.

    The SDK sends it as `[{}]` in the `x-ms-documentdb-partitionkey` header."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Undefined)

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "Undefined()"


UNDEFINED = Undefined()


def _rotl(value: int, shift: int) -> int:
    return ((value << shift) | (value >> (64 - shift))) & _MASK64


def _fmix(value: int) -> int:
    value ^= value >> 33
    value = (value * 0xFF51AFD7ED558CCD) & _MASK64
    value ^= value >> 33
    value = (value * 0xC4CEB9FE1A85EC53) & _MASK64
    value ^= value >> 33
    return value


def murmurhash3_x64_128(data: bytes, seed: int = 0) -> tuple[int, int]:
    """MurmurHash3 x64 128-bit (Austin Appleby's public-domain algorithm); returns (h1, h2)."""
    h1 = h2 = seed & _MASK64
    blocks = len(data) // 16
    for index in range(blocks):
        k1, k2 = struct.unpack_from("<QQ", data, index * 16)
        k1 = (_rotl((k1 * _C1) & _MASK64, 31) * _C2) & _MASK64
        h1 ^= k1
        h1 = (_rotl(h1, 27) + h2) & _MASK64
        h1 = (h1 * 5 + 0x52DCE729) & _MASK64
        k2 = (_rotl((k2 * _C2) & _MASK64, 33) * _C1) & _MASK64
        h2 ^= k2
        h2 = (_rotl(h2, 31) + h1) & _MASK64
        h2 = (h2 * 5 + 0x38495AB5) & _MASK64
    tail = data[blocks * 16 :]
    k1 = k2 = 0
    for position in range(len(tail) - 1, 7, -1):
        k2 ^= tail[position] << (8 * (position - 8))
    if len(tail) > 8:
        h2 ^= (_rotl((k2 * _C2) & _MASK64, 33) * _C1) & _MASK64
    for position in range(min(len(tail), 8) - 1, -1, -1):
        k1 ^= tail[position] << (8 * position)
    if tail:
        h1 ^= (_rotl((k1 * _C1) & _MASK64, 31) * _C2) & _MASK64
    h1 ^= len(data)
    h2 ^= len(data)
    h1 = (h1 + h2) & _MASK64
    h2 = (h2 + h1) & _MASK64
    h1, h2 = _fmix(h1), _fmix(h2)
    h1 = (h1 + h2) & _MASK64
    h2 = (h2 + h1) & _MASK64
    return h1, h2


def _encode_component(value: Any) -> bytes:
    if value is True:
        return bytes([_TRUE])
    if value is False:
        return bytes([_FALSE])
    if value is None:
        return bytes([_NULL])
    if isinstance(value, Undefined):
        return bytes([_UNDEFINED])
    if isinstance(value, int | float):
        return bytes([_NUMBER]) + struct.pack("<d", float(value))
    if isinstance(value, str):
        return bytes([_STRING]) + value.encode("utf-8") + b"\xff"
    raise ValueError(f"a partition key value must be a string, number, boolean or null: {value!r}")


def effective_partition_key(components: Sequence[Any]) -> str:
    """The hash-V2 EPK of a partition key given as its components (one for a single path)."""
    data = b"".join(_encode_component(component) for component in components)
    h1, h2 = murmurhash3_x64_128(data)
    # The SDK reverses the little-endian bytes of (h1, h2): h2 big-endian, then h1 big-endian.
    raw = bytearray(h2.to_bytes(8, "big") + h1.to_bytes(8, "big"))
    raw[0] &= 0x3F
    return raw.hex().upper()


def epk_to_int(epk: str) -> int:
    """A range bound as a number in [0, EPK_SPACE]: "" is 0 and "FF" the end of the space."""
    if epk == MIN_EPK:
        return 0
    if epk == MAX_EPK:
        return EPK_SPACE
    return int(epk.ljust(32, "0"), 16)


def int_to_epk(value: int) -> str:
    if value <= 0:
        return MIN_EPK
    if value >= EPK_SPACE:
        return MAX_EPK
    return f"{value:032X}"


@dataclass(frozen=True)
class EpkRange:
    """A half-open range [min, max) of EPK strings."""

    min: str
    max: str

    def contains(self, epk: str) -> bool:
        return self.min <= epk < self.max

    def overlaps(self, other: EpkRange) -> bool:
        return self.min < other.max and other.min < self.max

    def intersect(self, other: EpkRange) -> EpkRange:
        return EpkRange(max(self.min, other.min), min(self.max, other.max))

    def halves(self) -> tuple[EpkRange, EpkRange]:
        """Split at the middle of the hash space the range covers (how a split cuts a range)."""
        low, high = epk_to_int(self.min), epk_to_int(self.max)
        if high - low < 2:
            raise ValueError(f"range {self} is too small to split")
        middle = int_to_epk((low + high) // 2)
        return EpkRange(self.min, middle), EpkRange(middle, self.max)


def initial_ranges(count: int) -> list[EpkRange]:
    """`count` ranges covering the whole space: an even split of the hash-V2 space, inner bounds
    i * 2**126 / n - 1 as 32 hex digits (for 4: 0FFF…F, 1FFF…F, 2FFF…F), "" and "FF" at the ends.

    The shape (32-digit bounds, "" and "FF") is the service's; its exact cut points for a new
    container depend on its physical layout and were not verified against an account.
    """
    if count < 1:
        raise ValueError("a container needs at least one partition key range")
    bounds = [MIN_EPK] + [f"{i * EPK_SPACE // count - 1:032X}" for i in range(1, count)] + [MAX_EPK]
    return [EpkRange(low, high) for low, high in itertools.pairwise(bounds)]
