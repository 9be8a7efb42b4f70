"""Perceptual hash (DCT pHash, 64 bits as 16 hex digits) and near-duplicate search.

Used at ingest (hash of what is stored), by the worker to flag near-duplicates (`HashIndex`), and by
training to keep near-duplicates of one lesion inside one split (`bit_blocks`).
"""
from __future__ import annotations

from itertools import combinations
from math import comb

import cv2
import numpy as np
from PIL import Image

HASH_SIDE = 32  # the image is reduced to 32x32 grey; the 8x8 lowest frequencies make the hash
LOW = 8


def perceptual_hash(image: Image.Image | np.ndarray) -> str:
    if isinstance(image, Image.Image):
        grey = np.asarray(image.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BOX), np.float32)
    else:
        rgb = cv2.resize(image, (HASH_SIDE, HASH_SIDE), interpolation=cv2.INTER_AREA)
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    low = cv2.dct(grey)[:LOW, :LOW].flatten()
    # The DC term says only how bright the image is; compare the rest with their median.
    bits = low > np.median(low[1:])
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def nearest(ids: np.ndarray, hashes: np.ndarray, at: int, max_distance: int) -> int | None:
    """Id of the hash closest to `hashes[at]` among the others (ids and 64-bit hashes side by side),
    within max_distance, ties to the lowest id; None if none is that close. One vectorised pass over
    every hash: the plain rule, which `HashIndex.nearest` answers without the full pass."""
    distance = popcount(hashes ^ hashes[at]).astype(np.int64)
    distance[at] = max_distance + 1  # never itself
    close = np.flatnonzero(distance <= max_distance)
    if close.size == 0:
        return None
    best = close[np.lexsort((ids[close], distance[close]))[0]]
    return int(ids[best])


def hash_values(hex_hashes: list[str]) -> np.ndarray:
    """16-hex-digit hashes as uint64, parsed in one call (4x faster than int() per hash)."""
    if all(len(h) == 16 for h in hex_hashes):
        return np.frombuffer(bytes.fromhex("".join(hex_hashes)), ">u8").astype(np.uint64)
    return np.array([int(h, 16) for h in hex_hashes], np.uint64)


_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount(values: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # NumPy 2
        return np.bitwise_count(values)
    as_bytes = values[..., None].view(np.uint8)
    return _BYTE_BITS[as_bytes].sum(axis=-1)


def bit_blocks(count: int) -> list[tuple[int, int]]:
    """(shift, width) of `count` contiguous blocks covering 64 bits (at most 64 blocks).

    Two hashes within d bits of each other agree exactly on at least one of d + 1 disjoint blocks
    (pigeonhole): the candidates of an exact near-duplicate search are those sharing a block value.
    """
    count = max(1, min(count, 64))
    widths = [64 // count + (1 if i < 64 % count else 0) for i in range(count)]
    shifts = np.cumsum([0, *widths[:-1]])
    return [(int(s), w) for s, w in zip(shifts, widths)]


def block_masks(width: int, radius: int) -> np.ndarray:
    """Every `width`-bit value with at most `radius` bits set: XORed with a key, its neighbours."""
    masks = [sum(1 << b for b in bits) for r in range(radius + 1) for bits in combinations(range(width), r)]
    return np.array(masks, np.uint32)


class HashIndex:
    """Ids and 64-bit hashes in memory, searched exactly within a few bits without comparing them all.

    The pigeonhole as `bit_blocks` states it, widened: hashes within d bits differ in at most d // m
    bits of at least one of m blocks. Per block the entries are sorted by the block's value; a lookup
    finds, by binary search, those whose block is within d // m bits of its own, and compares only
    them. m is chosen at each sort for the least estimated time at that size: at 8 bits, 5 blocks of
    12-13 bits for 200,000 entries (69 keys searched, about 2,000 entries compared) and 3 blocks of
    21-22 bits for a million (718 keys, about 300 entries), where the plain d + 1 blocks of 7 bits
    would compare 14,000 and 70,000. Entries added since the last sort sit in a tail compared in full,
    sorted in once it outgrows a thirty-second of the rest. From LINEAR_FROM bits on every entry is
    compared.
    Memory: 16 bytes per entry, plus 8 per entry and block.
    """

    LINEAR_FROM = 24
    MIN_TAIL = 4096
    # Rough costs in µs of one block looked at, one key searched and one entry compared, for the choice of m.
    BLOCK_COST, KEY_COST, ENTRY_COST = 10.0, 0.2, 0.05  # measured on a 2-core machine

    def __init__(self, max_distance: int):
        self.max_distance = max_distance
        self._ids = np.empty(0, np.int64)  # -1: an entry taken out
        self._hashes = np.empty(0, np.uint64)
        self._n = 0
        self._sorted = 0  # entries [0, _sorted) are in the block tables
        # per block: (shift, width, neighbour masks, block values sorted, entry of each)
        self._tables: list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]] = []

    def __len__(self) -> int:
        return int(np.count_nonzero(self._ids[:self._n] >= 0))

    def add(self, ids, hashes) -> None:
        ids, hashes = np.asarray(ids, np.int64), np.asarray(hashes, np.uint64)
        if ids.size == 0:
            return
        end = self._n + ids.size
        if end > self._ids.size:
            capacity = max(end, 2 * self._ids.size, 1024)
            self._ids = np.concatenate([self._ids[:self._n], np.full(capacity - self._n, -1, np.int64)])
            self._hashes = np.concatenate([self._hashes[:self._n], np.zeros(capacity - self._n, np.uint64)])
        self._ids[self._n:end], self._hashes[self._n:end] = ids, hashes
        self._n = end

    def discard(self, ids) -> None:
        """Take these ids out (a row deleted, or about to be added again with another hash)."""
        self._ids[:self._n][np.isin(self._ids[:self._n], np.asarray(ids, np.int64))] = -1

    def nearest(self, value: int, exclude_id: int, max_distance: int | None = None) -> int | None:
        """What `nearest` would answer for `value` among every entry but `exclude_id`: the closest
        within max_distance, ties to the lowest id, else None."""
        found = self.closest(value, exclude_id, max_distance)
        return None if found is None else found[1]

    def closest(self, value: int, exclude_id: int, max_distance: int | None = None) -> tuple[int, int, int] | None:
        """(distance, id, hash) of the entry `nearest` names, or None."""
        return self.closest_many([value], [exclude_id], max_distance)[0]

    def closest_many(self, values, exclude_ids, max_distance: int | None = None) -> list[tuple[int, int, int] | None]:
        """`closest` for several hashes at once (a batch's), in one pass of each step."""
        d = self.max_distance if max_distance is None else max_distance
        if d > self.max_distance:  # blocks chosen for fewer bits would miss some
            self.max_distance, self._sorted, self._tables = d, 0, []
        if self.max_distance < self.LINEAR_FROM and self._n - self._sorted > max(self.MIN_TAIL, self._sorted // 32):
            self._sort()
        values, exclude = np.asarray(values, np.uint64), np.asarray(exclude_ids, np.int64)
        queries = np.arange(values.size)
        tail = np.arange(self._sorted, self._n)
        ats, owners = [np.tile(tail, values.size)], [np.repeat(queries, tail.size)]
        for shift, width, masks, keys, entries in self._tables:
            own = ((values >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.uint32)
            near = (own[:, None] ^ masks[None, :]).ravel()
            positions, segment = _ranges(np.searchsorted(keys, near, "left"), np.searchsorted(keys, near, "right"))
            ats.append(entries[positions])
            owners.append(segment // masks.size)
        at, owner = np.concatenate(ats), np.concatenate(owners)
        ids = self._ids[at]
        distance = popcount(self._hashes[at] ^ values[owner]).astype(np.int64)
        close = np.flatnonzero((distance <= d) & (ids >= 0) & (ids != exclude[owner]))
        found: list[tuple[int, int, int] | None] = [None] * values.size
        ranked = close[np.lexsort((ids[close], distance[close], owner[close]))]
        firsts = ranked[np.flatnonzero(np.r_[True, owner[ranked][1:] != owner[ranked][:-1]])] if ranked.size else ranked
        for k in firsts:
            found[int(owner[k])] = (int(distance[k]), int(ids[k]), int(self._hashes[at[k]]))
        return found

    def _sort(self) -> None:
        alive = self._ids[:self._n] >= 0
        if not alive.all():  # compact: entries taken out are dropped for good
            keep = np.flatnonzero(alive)
            self._ids[:keep.size], self._hashes[:keep.size] = self._ids[keep], self._hashes[keep]
            self._ids[keep.size:self._n] = -1
            self._n = keep.size
        hashes = self._hashes[:self._n]
        index_type = np.int32 if self._n < 2**31 else np.int64
        tables = []
        for shift, width in bit_blocks(self._blocks(self._n)):
            keys = ((hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.uint32)
            order = np.argsort(keys).astype(index_type)
            tables.append((shift, width, order, keys[order]))
        m = len(tables)
        self._tables = [(shift, width, block_masks(width, self.max_distance // m), keys, order)
                        for shift, width, order, keys in tables]
        self._sorted = self._n

    def _blocks(self, n: int) -> int:
        """The number of blocks (2 to d + 1, none wider than 32 bits) with the least estimated cost."""
        def cost(m: int) -> float:
            radius = self.max_distance // m
            total = 0.0
            for _, width in bit_blocks(m):
                keys = sum(comb(width, r) for r in range(radius + 1))
                total += self.BLOCK_COST + self.KEY_COST * keys + self.ENTRY_COST * keys * n / 2 ** width
            return total
        return min(range(2, max(self.max_distance + 2, 3)), key=cost)


def _ranges(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The concatenation of arange(lo[k], hi[k]) for every k, without a loop, and the k of each."""
    lengths = hi - lo
    keep = np.flatnonzero(lengths > 0)
    lo, lengths = lo[keep], lengths[keep]
    if lo.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    ends = np.cumsum(lengths)
    return np.arange(ends[-1]) + np.repeat(lo - (ends - lengths), lengths), np.repeat(keep, lengths)
