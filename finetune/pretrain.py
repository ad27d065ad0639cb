"""The user's own documents as plain text, for continued pre-training before SFT (stage pt).

Task-adaptive pre-training reads every stored document's chunks, not only the annotated ones,
split by document like the rest: a validation document's text is the pt validation set, and a
test document's text is in no pt set, so the test split stays unseen in every form.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from distillery.workspace import Workspace

from .workspace import FinetuneError


def document_chunks(workspace: Path | None) -> dict[str, list[str]]:
    """Each stored document's chunk texts, in document order; a near-duplicate chunk is left out
    (the chunk it repeats is there)."""
    if workspace is None or not Workspace(workspace).exists():
        where = Workspace(workspace).db if workspace is not None else "the workspace store"
        raise FinetuneError(f"pre-training text comes from the store's chunks, and {where} does not exist: "
                            "give the workspace (-w) that ingested the documents, or leave out --also pt")
    from distillery.store import Store

    out: dict[str, list[str]] = defaultdict(list)
    with Store.open(workspace) as store:
        for chunk_id in store.chunk_ids():  # duplicates are skipped there already
            chunk = store.chunk(chunk_id)
            if chunk is not None and chunk.text.strip():
                out[chunk.document_id].append(chunk.text)
    return dict(out)
