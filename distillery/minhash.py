"""MinHash over character shingles, in numpy: what near_dup needs to find and check near duplicates.

Shingles are character `SHINGLE`-grams of a text with its whitespace removed (Chinese has no
spaces, and a text wrapped or spaced differently is the same text), each hashed to 64 bits: the
"exact" Jaccard is that of the hash sets (a collision among a chunk's ~1000 shingles: ~1e-13).

Signatures are one-permutation MinHash (Li, Owen & Zhang 2012): each shingle is hashed once and
falls into one of `BINS` bins by its top bits; a bin keeps its smallest hash, of which one byte is
stored. Two texts agree on a bin with probability their Jaccard similarity (plus 1/128 for two
different hashes that share the byte, which `estimate` takes out), as with k-permutation MinHash,
for the cost of one hash per shingle instead of one per bin. Computed over many texts at once:
13 us a chunk of 700 characters, where datasketch's MinHash.bulk (64 permutations, crc32; it
hashes each shingle in a Python loop) takes 213 us, as long as the rest of ingest together.

Its own module because numpy costs 0.2 s and 15 MB to import: only an ingest that stores chunks
pays it, not every command that opens the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from .near_dup import BANDS, BINS, ROWS, SHINGLE

BLOCK_CHARS = 8192  # characters hashed at a time (see signatures)
_EMPTY = np.uint8(0xFF)  # a bin no shingle fell into; stored bytes are even, so never this
_SHARED = 1 / 128  # chance that the bytes of two different hashes agree
_MASK = (1 << 64) - 1


def _constants(seed: int, n: int) -> list[int]:
    """n 64-bit constants from splitmix64, in plain Python: signatures and band keys are stored, so
    they must not change with a numpy release (its generators' streams may)."""
    out = []
    for _ in range(n):
        seed = (seed + 0x9E3779B97F4A7C15) & _MASK
        z = ((seed ^ (seed >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        out.append(z ^ (z >> 31))
    return out


# Changing these, SHINGLE, BINS, BANDS or ROWS changes every signature: the store's band index
# would then have to be rebuilt by a migration.
_GRAM_WEIGHTS = np.array(_constants(1, SHINGLE), dtype=np.uint64) | np.uint64(1)
_BAND_WEIGHTS = np.array(_constants(2, BANDS * ROWS), dtype=np.uint64).reshape(BANDS, ROWS) | np.uint64(1)
_BAND_SALT = np.array(_constants(3, BANDS), dtype=np.uint64)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place: every input bit reaches every output bit (wrapping uint64
    arithmetic). In place, as the rest of the hashing: fewer arrays to allocate and keep in cache."""
    tmp = np.empty_like(h)
    for shift, factor in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        np.right_shift(h, np.uint64(shift), out=tmp)
        h ^= tmp
        h *= np.uint64(factor)
    np.right_shift(h, np.uint64(31), out=tmp)
    h ^= tmp
    return h


def _gram_hashes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, owner): the hash of every shingle of every text, in order, and the index of its text."""
    bare = ["".join(t.split()) for t in texts]
    lengths = np.fromiter((len(b) for b in bare), dtype=np.int64, count=len(bare))
    points = np.frombuffer("".join(bare).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    n = len(points) - SHINGLE + 1
    if n <= 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    h = points[:n] * _GRAM_WEIGHTS[0]
    tmp = np.empty_like(h)
    for j in range(1, SHINGLE):
        np.multiply(points[j : j + n], _GRAM_WEIGHTS[j], out=tmp)
        h += tmp
    owner = np.repeat(np.arange(len(bare)), lengths)
    inside = owner[:n] == owner[SHINGLE - 1 :]  # a shingle counts when its first and last character share a text
    return _mix(h[inside]), owner[:n][inside]


class Shingles(NamedTuple):
    in_order: np.ndarray  # the hash of the shingle at each position
    unique: np.ndarray  # the set: sorted, each once


def shingles(text: str) -> Shingles:
    """The text's shingles (none for a text shorter than SHINGLE)."""
    in_order = _gram_hashes([text])[0]
    return Shingles(in_order, np.unique(in_order))


def jaccard(a: Shingles, b: Shingles) -> float:
    """Jaccard similarity of two texts' shingle sets."""
    if not len(a.unique) and not len(b.unique):
        return 1.0
    common = len(np.intersect1d(a.unique, b.unique, assume_unique=True))
    return common / (len(a.unique) + len(b.unique) - common)


def longest_edit(a: Shingles, b: Shingles) -> int:
    """Characters in the longest passage of either text that the other lacks: a changed date is a
    few, a new sentence is the sentence. A passage of c characters is c + SHINGLE - 1 shingles; a
    phrase the other text also has (under 2 * SHINGLE shingles: a common word or two) does not end it,
    so a new sentence in the document's own words still counts whole."""
    longest = 0
    for text, other in ((a, b), (b, a)):
        lacking = np.flatnonzero(~np.isin(text.in_order, other.unique))
        if not len(lacking):
            continue
        cut = np.flatnonzero(np.diff(lacking) > 2 * SHINGLE)  # passages part where both share a long phrase
        starts, ends = np.r_[lacking[0], lacking[cut + 1]], np.r_[lacking[cut], lacking[-1]]
        longest = max(longest, int((ends - starts).max()) + 1 - (SHINGLE - 1))
    return max(longest, 0)


def signatures(texts: Sequence[str]) -> np.ndarray:
    """(len(texts), BINS) uint8 one-permutation MinHash signatures; _EMPTY marks an empty bin."""
    # Hashed a few thousand characters at a time: the arrays (8 bytes a character) then stay in the
    # CPU's cache; ten times as many at once took twice as long (measured: 11 against 22 us a chunk).
    blocks, size, start = [], 0, 0
    for i, text in enumerate(texts):
        size += len(text)
        if size >= BLOCK_CHARS or i == len(texts) - 1:
            blocks.append(_signatures(texts[start : i + 1]))
            size, start = 0, i + 1
    return np.concatenate(blocks) if blocks else np.zeros((0, BINS), dtype=np.uint8)


def _signatures(texts: Sequence[str]) -> np.ndarray:
    h, owner = _gram_hashes(texts)
    smallest = np.full(len(texts) * BINS, np.iinfo(np.uint64).max, dtype=np.uint64)
    np.minimum.at(smallest, owner * BINS + (h >> np.uint64(64 - 6)).astype(np.int64), h)  # the top 6 bits: one of 64 bins
    out = (smallest & np.uint64(0xFE)).astype(np.uint8)
    out[smallest == np.iinfo(np.uint64).max] = _EMPTY
    return out.reshape(len(texts), BINS)


def band_keys(sigs: np.ndarray) -> np.ndarray:
    """(n, BANDS) int64 keys, one per band of each signature: equal keys, equal bands. 0 for a band
    of empty bins only (it says nothing about the text and is neither indexed nor looked up)."""
    rows = sigs[:, : BANDS * ROWS].reshape(len(sigs), BANDS, ROWS).astype(np.uint64)
    keys = _mix((rows * _BAND_WEIGHTS).sum(axis=2, dtype=np.uint64) + _BAND_SALT).view(np.int64)  # a new array: in place is safe
    keys[(rows == np.uint64(_EMPTY)).all(axis=2)] = 0
    return keys


def estimate(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity of each row pair of two signature arrays: the share of the bins
    holding a shingle of either text on which both agree."""
    used = (a != _EMPTY) | (b != _EMPTY)
    agree = ((a == b) & used).sum(axis=1) / np.maximum(used.sum(axis=1), 1)
    return (agree - _SHARED) / (1 - _SHARED)
