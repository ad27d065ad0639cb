"""Exact and near-duplicate detection that works on Chinese, in memory that does not hold the texts.

Near duplicates: MinHash LSH over character n-gram shingles (Chinese has no spaces, so word
shingles would see one "word" per sentence), then an exact Jaccard check of every candidate.
The banding (bands x rows) is chosen for the threshold: the most rows per band (the fewest chance
candidates) that still make a pair at exactly the threshold a candidate with probability
LSH_RECALL; pairs above it are found more surely still (qc/README.md has the figures).

Two passes over the texts, so that memory per record is ~140 bytes, not its text and shingles
(~20 KB each: 20 GB for a million records):
1. `add` each text in order: kept are its exact hash and its MinHash signature, one byte per
   permutation (the low byte: two different values share it 1 time in 256, which the estimate
   corrects for).
2. `resolve` finds candidates: records sharing a band, each compared with the first BUCKET_CAP
   records of its bucket (a bucket of thousands is a cluster, and its first members are the ones
   kept). Answers written from one template share a third of their shingles and fill buckets
   by the thousand; the signatures' estimate of the Jaccard similarity drops those pairs in bulk
   (numpy) before any text is read. Then it reads the same texts again in the same order and
   checks the remaining candidates exactly, holding a text only from its first to its last use.

Greedy clustering in the given order: the first text of a group is kept, each later one that is
a duplicate of a kept text is reported against it. So only one copy of each group survives, and
nothing is dropped for resembling a text that was itself dropped.
"""

from __future__ import annotations

import functools
import hashlib
import zlib
from collections.abc import Callable, Iterable

import numpy as np
from pydantic import BaseModel

from distillery.errors import DistilleryError

from .text import grams, jaccard, normalize

NUM_PERM = 128
LSH_RECALL = 0.98  # chance that a pair at exactly the threshold becomes a candidate
BUCKET_CAP = 4  # a record is compared with at most the first this many records of each of its buckets
# Candidates whose estimated Jaccard (128 permutations: standard error 0.043 at 0.6) is this far
# below the threshold are dropped unread: a pair at exactly the threshold survives 99% of the time.
ESTIMATE_MARGIN = 0.1
BLOCK = 4096  # texts hashed at a time
PAIRS_AT_ONCE = 1 << 15  # candidate pairs estimated at a time (two 128-byte rows each)
SHINGLES_CACHED = 2048  # shingle sets of held texts kept between comparisons (~10 KB each)

class Duplicate(BaseModel):
    key: str  # the duplicate
    of: str  # the kept text it duplicates
    jaccard: float  # of their shingle sets; 1.0 for exact duplicates
    exact: bool  # equal after normalization (case, width, whitespace, punctuation)


class ChangedDuringCheck(DistilleryError):
    """The texts read the second time are not the ones read the first time."""


def lsh_bands(threshold: float, num_perm: int = NUM_PERM, recall: float = LSH_RECALL) -> tuple[int, int]:
    """(bands, rows per band) for the threshold: the most rows whose banding still makes a pair of
    Jaccard `threshold` a candidate with probability >= recall (1 - (1 - t^r)^b)."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


def candidate_chance(similarity: float, bands: int, rows: int) -> float:
    """The chance that banding makes a pair of this Jaccard similarity a candidate."""
    return 1 - (1 - similarity**rows) ** bands


def _exact_hash(norm: str) -> int:
    return int.from_bytes(hashlib.blake2b(norm.encode("utf-8"), digest_size=8).digest(), "little")


class DuplicateFinder:
    """Duplicates among texts given in priority order (earlier texts are the ones kept): `add`
    every text, then `resolve` with the same texts again, in the same order, with their keys."""

    def __init__(self, *, threshold: float = 0.6, k: int = 3) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
        self.threshold, self.k = threshold, k
        self.bands, self.rows = lsh_bands(threshold)
        rng = np.random.default_rng(0)
        self._weights = rng.integers(1, 2**63, size=self.rows, dtype=np.uint64) | np.uint64(1)
        self._pending: list[str] = []
        self._hashes: list[np.ndarray] = []  # per block: exact hash of each normalized text (0: empty)
        self._signatures: list[np.ndarray] = []  # per block: (texts, NUM_PERM) low bytes of the MinHash values
        self.count = 0

    def add(self, text: str) -> None:
        self._pending.append(normalize(text))
        self.count += 1
        if len(self._pending) >= BLOCK:
            self._flush()

    def _flush(self) -> None:
        # Imported here: datasketch pulls in scipy, half a second every other qc command need not pay.
        from datasketch import MinHash

        norms, self._pending = self._pending, []
        if not norms:
            return
        self._hashes.append(np.array([_exact_hash(n) if n else 0 for n in norms], dtype=np.uint64))
        # crc32 instead of datasketch's default sha1: ~3x faster; candidates are checked exactly anyway.
        minhashes = MinHash.bulk([[g.encode("utf-8") for g in grams(n, self.k)] for n in norms],
                                 num_perm=NUM_PERM, hashfunc=zlib.crc32)
        self._signatures.append(np.vstack([m.hashvalues for m in minhashes]).astype(np.uint8))

    def _estimate(self, signatures: np.ndarray, pairs: np.ndarray) -> np.ndarray:
        """The Jaccard similarity of each (later, earlier) pair, estimated from the signatures."""
        equal = (signatures[pairs[:, 0]] == signatures[pairs[:, 1]]).mean(axis=1)
        return (equal - 1 / 256) / (1 - 1 / 256)  # unequal values share the low byte 1 time in 256

    def _candidates(self, unique: np.ndarray, signatures: np.ndarray) -> np.ndarray:
        """(later, earlier) index pairs of unique texts that share a band and whose estimated
        similarity is near the threshold or above, each pair once, sorted."""
        floor = self.threshold - ESTIMATE_MARGIN
        found = np.empty(0, dtype=np.int64)  # pairs packed as later << 32 | earlier: sorted, each once
        for b in range(self.bands):
            with np.errstate(over="ignore"):  # wrapping multiply-add is the hash
                band = (signatures[unique, b * self.rows : (b + 1) * self.rows] * self._weights).sum(axis=1, dtype=np.uint64)
            order = np.argsort(band, kind="stable")  # stable: a bucket's members stay in text order
            ordered, members = band[order], unique[order].astype(np.int64)
            new_run = np.r_[True, ordered[1:] != ordered[:-1]]
            run = np.cumsum(new_run) - 1
            starts = np.flatnonzero(new_run)
            pos = np.arange(len(ordered)) - starts[run]
            in_band = []
            for c in range(BUCKET_CAP):
                later = np.flatnonzero(pos > c)
                if not len(later):
                    break
                for chunk in np.array_split(later, -(-len(later) // PAIRS_AT_ONCE)):
                    pairs = np.stack([members[chunk], members[starts[run[chunk]] + c]], axis=1)
                    kept = pairs[self._estimate(signatures, pairs) >= floor]
                    in_band.append(kept[:, 0] << 32 | kept[:, 1])
            if in_band:
                found = np.union1d(found, np.concatenate(in_band))  # a pair shares many bands: held once
        return np.stack([found >> 32, found & 0xFFFFFFFF], axis=1)

    def resolve(self, items: Iterable[tuple[str, str]]) -> list[Duplicate]:
        """The duplicates, given the added texts again in order as (key, text)."""
        self._flush()
        n = self.count
        hashes = np.concatenate(self._hashes) if self._hashes else np.zeros(0, dtype=np.uint64)
        signatures = np.concatenate(self._signatures) if self._signatures else np.zeros((0, NUM_PERM), dtype=np.uint8)
        self._hashes, self._signatures = [], []
        # Exact duplicates: equal hashes; the first of each group (a stable sort keeps text order) is kept.
        exact_of = np.full(n, -1, dtype=np.int64)
        order = np.argsort(hashes, kind="stable")
        ordered = hashes[order]
        same = np.r_[False, ordered[1:] == ordered[:-1]] & (ordered != 0)
        first = np.maximum.accumulate(np.where(~same, np.arange(n), 0))
        exact_of[order[same]] = order[first[same]]
        unique = np.flatnonzero((exact_of < 0) & (hashes != 0))
        pairs = self._candidates(unique, signatures)
        del signatures
        # Which texts must be held during the second pass, and until when.
        last_use = np.full(n, -1, dtype=np.int64)
        np.maximum.at(last_use, pairs[:, 1], pairs[:, 0])
        dups = np.flatnonzero(exact_of >= 0)
        np.maximum.at(last_use, exact_of[dups], dups)
        starts = np.searchsorted(pairs[:, 0], np.arange(n + 1))
        kept = np.zeros(n, dtype=bool)
        kept[unique] = True
        held: dict[int, tuple[str, str]] = {}  # index -> (key, normalized text), from first to last use
        cached_grams = functools.lru_cache(maxsize=SHINGLES_CACHED)(grams)  # a cluster's first text is compared often
        found: list[Duplicate] = []
        seen = 0
        for j, (key, text) in enumerate(items):
            seen += 1
            if j >= n:
                break
            lo, hi = starts[j], starts[j + 1]
            if last_use[j] < 0 and exact_of[j] < 0 and lo == hi:
                continue  # no part in any duplicate: not even normalized
            norm = normalize(text)
            if (_exact_hash(norm) if norm else 0) != hashes[j]:
                raise ChangedDuringCheck(f"text {j} ({key}) changed between the two passes")
            if last_use[j] > j:
                held[j] = (key, norm)
            if exact_of[j] >= 0:
                found.append(Duplicate(key=key, of=held[int(exact_of[j])][0], jaccard=1.0, exact=True))
                self._release(held, int(exact_of[j]), j, last_use)
                continue
            best: tuple[float, str] | None = None  # (Jaccard, key) of the closest kept text
            own = grams(norm, self.k) if lo < hi else set()
            for i in pairs[lo:hi, 1].tolist():
                if kept[i]:
                    other_key, other = held[i]
                    score = jaccard(own, cached_grams(other, self.k))
                    if score >= self.threshold and (best is None or score > best[0]):
                        best = (score, other_key)
                self._release(held, i, j, last_use)
            if best is not None:
                kept[j] = False
                found.append(Duplicate(key=key, of=best[1], jaccard=best[0], exact=False))
        if seen != n:
            raise ChangedDuringCheck(f"{n} texts were added but {seen} were given back")
        return found

    @staticmethod
    def _release(held: dict[int, tuple[str, str]], i: int, j: int, last_use: np.ndarray) -> None:
        if last_use[i] == j:
            held.pop(i, None)


def find_duplicates(
    items: Iterable[tuple[str, str]] | Callable[[], Iterable[tuple[str, str]]],
    *,
    threshold: float = 0.6,
    k: int = 3,
) -> list[Duplicate]:
    """Duplicates among (key, text) items, in priority order: earlier items are the ones kept.
    `items` is read twice: a collection, or a function that yields the same items each call."""
    again = items if callable(items) else (lambda: items)
    finder = DuplicateFinder(threshold=threshold, k=k)
    for _, text in again():
        finder.add(text)
    return finder.resolve(again())
