"""Near-duplicate chunks: which stored chunk a new one nearly repeats, so it is not paid for again.

A chunk whose text is nearly that of a stored chunk (a re-issued clause with another date, amount
or name) is linked to it. The store keeps the chunks that can be linked to in a band index
(distillery/store.py), so a new chunk's candidates are a few rows read by key, never a scan of all
chunks. Candidates are screened by their MinHash signatures (distillery.minhash), and the few left
are checked exactly before anything is linked: Jaccard similarity of the two shingle sets at or
above the threshold, and no differing passage longer than MAX_EDIT characters.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import numpy as np

    from .minhash import Shingles

SHINGLE = 5  # characters per shingle (docs/ingest.md has the figures that chose it)
DEFAULT_THRESHOLD = 0.9  # Jaccard at and above which a chunk is linked (docs/ingest.md: why)
MIN_THRESHOLD = 0.8  # the bands find pairs from here on (98.4% of pairs at 0.80-0.81, all at 0.90-0.91)
# A candidate is linked only when the two texts differ in no passage longer than this: a date, an
# amount or a name is shorter; a rewritten or added sentence is longer, however long the chunk (in
# an 800-character Chinese chunk one new sentence of 30 characters still leaves Jaccard 0.91).
MAX_EDIT = 20
BINS = 64  # bytes per signature: the estimate's standard error is 0.035 at 0.9
BANDS, ROWS = 8, 4  # LSH over the first 32 bins: a pair agreeing on all 4 bins of any band is a candidate
# A bucket (chunks sharing a band key) takes its first BUCKET_CAP members only: templated text fills
# some buckets by the thousand, and a true near duplicate shares several bands with its chunk.
BUCKET_CAP = 2
# Candidates whose signatures estimate their similarity this far below the threshold are dropped
# unread (of pairs within 0.01 above the threshold, 0.08% are dropped at 0.9, 0.44% at 0.8).
ESTIMATE_MARGIN = 0.12


class NewChunk(NamedTuple):
    id: str
    text: str
    text_key: str


class Placement(NamedTuple):
    """What becomes of one new chunk."""

    duplicate_of: str | None  # the chunk it is annotated through; None: it is annotated itself
    similarity: float | None  # Jaccard with that chunk, 1.0 for the same text
    signature: bytes | None  # stored with its bands: None for a duplicate (never linked to)
    bands: list[int]  # band keys to index it under: its non-empty bands whose buckets are not full


def place(
    chunks: Sequence[NewChunk],
    *,
    threshold: float,
    same_text: Mapping[str, str],
    buckets: Callable[[Collection[int]], Iterable[tuple[int, str, bytes]]],
    texts: Callable[[Collection[str]], Mapping[str, str]],
) -> list[Placement]:
    """Decide, in order, which stored or earlier chunk each of `chunks` duplicates: the same text
    first (`same_text`: text key -> stored chunk), then the most similar near duplicate (1.0: the
    same text only). `buckets(keys)` reads the index: (band key, chunk id, signature) of stored
    chunks; `texts(ids)` the stored texts of the candidates worth checking."""
    from .minhash import band_keys, shingles, signatures

    sigs = signatures([c.text for c in chunks])
    keys = band_keys(sigs)
    members: dict[int, list[str]] = {}  # band key -> its chunks, stored then this batch's
    known: dict[str, bytes] = {}  # signatures of the stored ones
    for key, chunk_id, sig in buckets(set(keys.ravel().tolist()) - {0}):
        members.setdefault(key, []).append(chunk_id)
        known[chunk_id] = sig
    likely = _screen(chunks, sigs, keys, members, known, threshold) if threshold < 1.0 else [[] for _ in chunks]
    batch = {c.id: c.text for c in chunks}
    stored = {cid for found in likely for cid in found if cid not in batch}
    shingled = {cid: shingles(text) for cid, text in texts(stored).items()} if stored else {}
    originals: set[str] = set()  # chunks of this batch placed as themselves: they may be linked to
    seen: dict[str, tuple[str, float]] = {}  # text key -> the link of this batch's first chunk with it
    out: list[Placement] = []
    blob = sigs.tobytes()
    for i, (chunk, chunk_keys, found) in enumerate(zip(chunks, keys.tolist(), likely)):
        link = seen.get(chunk.text_key)
        if link is None and same_text.get(chunk.text_key, chunk.id) != chunk.id:
            link = same_text[chunk.text_key], 1.0
        if link is None and found:
            found = [cid for cid in found if cid not in batch or cid in originals]
            link = _nearest(chunk, found, threshold, shingled, batch)
        if link is not None:
            seen.setdefault(chunk.text_key, link)
            out.append(Placement(link[0], link[1], None, []))
            continue
        seen.setdefault(chunk.text_key, (chunk.id, 1.0))
        originals.add(chunk.id)
        free = []
        for key in chunk_keys:
            bucket = members.setdefault(key, [])
            if key and len(bucket) < BUCKET_CAP:
                bucket.append(chunk.id)
                free.append(key)
        out.append(Placement(None, None, blob[i * BINS : (i + 1) * BINS], free))
    return out


def _screen(chunks: Sequence[NewChunk], sigs: np.ndarray, keys: np.ndarray, members: Mapping[int, list[str]],
            known: Mapping[str, bytes], threshold: float) -> list[list[str]]:
    """For each chunk, the stored and earlier chunks of the batch that share a band with it and
    whose signatures estimate their similarity near the threshold or above, most similar first.
    (Whether an earlier chunk of the batch may be linked to is decided later, in order.)"""
    import numpy as np

    from .minhash import estimate

    ids = [*known, *(c.id for c in chunks)]  # candidates by row: stored ones, then this batch's
    where = {cid: n for n, cid in enumerate(known)}
    rows = {key: [where[cid] for cid in found] for key, found in members.items()}  # band key -> rows with it
    everyone = np.concatenate([np.frombuffer(b"".join(known.values()), dtype=np.uint8).reshape(len(known), BINS), sigs])
    pair_chunk: list[int] = []
    pair_other: list[int] = []
    for i, chunk_keys in enumerate(keys.tolist()):
        others: list[int] = []
        for key in chunk_keys:
            if key:
                found = rows.setdefault(key, [])
                others += found
                if len(found) < BUCKET_CAP:
                    found.append(len(known) + i)  # the chunks after it see it, as they would once it is stored
        pair_chunk += [i] * len(others)
        pair_other += others
    pairs = np.unique(np.array(pair_chunk, dtype=np.int64) * len(ids) + np.array(pair_other, dtype=np.int64))  # each once
    chunk_row, other_row = pairs // len(ids), pairs % len(ids)
    itself = np.array([where.get(c.id, -1) for c in chunks], dtype=np.int64)  # a chunk stored already: not its own duplicate
    keep = (other_row != itself[chunk_row]) & (other_row != chunk_row + len(known))
    chunk_row, other_row = chunk_row[keep], other_row[keep]
    guess = estimate(sigs[chunk_row], everyone[other_row])
    likely: list[list[str]] = [[] for _ in chunks]
    for p in np.argsort(-guess, kind="stable"):
        if guess[p] < threshold - ESTIMATE_MARGIN:
            break
        likely[int(chunk_row[p])].append(ids[int(other_row[p])])
    return likely


def _nearest(chunk: NewChunk, found: list[str], threshold: float, shingled: dict[str, Shingles],
             batch: Mapping[str, str]) -> tuple[str, float] | None:
    """The most similar of the screened candidates at or above the threshold that differs from the
    chunk by short edits only, checked exactly; None when none is."""
    from .minhash import jaccard, longest_edit, shingles

    mine = shingles(chunk.text)
    best: tuple[str, float] | None = None
    for cid in found:
        if cid not in shingled and cid in batch:
            shingled[cid] = shingles(batch[cid])
        if cid not in shingled:
            continue  # gone from the store (not expected: chunks are never deleted)
        similarity = jaccard(mine, shingled[cid])
        if similarity >= threshold and (best is None or similarity > best[1]) and longest_edit(mine, shingled[cid]) <= MAX_EDIT:
            best = cid, similarity
    return best
