"""The write path's front half: commit documents to the store, then enqueue their job."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from embedstack.ingest.queue import Queue
from embedstack.storage.store import DocumentRow, Store


@dataclass(frozen=True)
class Submitted:
    job_id: str
    documents: int
    unchanged: int


def submit_documents(
    store: Store, queue: Queue, collection: str, rows: Sequence[DocumentRow]
) -> Submitted:
    """Acknowledge only after both the documents and their job are durable.

    A crash between the two leaves documents stored but not indexed; start-up recovery
    (`Store.pending_documents`) re-enqueues them, so nothing acknowledged is lost.
    """
    changed = store.put_documents(collection, rows)
    job_id = queue.enqueue({"collection": collection, "documents": [r.id for r in rows]})
    return Submitted(job_id, len(rows), len(rows) - len(changed))
