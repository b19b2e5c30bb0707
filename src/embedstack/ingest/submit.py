"""The write path's front half: commit documents to the store, then enqueue their job."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from embedstack.ingest.queue import Queue
from embedstack.ingest.records import Rejected
from embedstack.storage.store import DocumentRow, Store

# a rejection kept with its job is bounded: where it was and why, cut to these many characters
MAX_WHERE_CHARS = 512
MAX_REASON_CHARS = 1000


@dataclass(frozen=True)
class Submitted:
    job_id: str
    documents: int
    unchanged: int
    rejected: int = 0


def submit_documents(
    store: Store,
    queue: Queue,
    collection: str,
    rows: Sequence[DocumentRow],
    rejected: Sequence[Rejected] = (),
) -> Submitted:
    """Acknowledge only after both the documents and their job are durable.

    `rejected`: the inputs of the same submission that did not become documents; they are kept
    in the job's payload (durable with it: GET /v1/jobs/{id} lists them), so a rejection is
    never a silent skip. A submission of rejections only still gets its job.

    A crash between the two leaves documents stored but not indexed; start-up recovery
    (`Store.pending_documents`) re-enqueues them, so nothing acknowledged is lost.

    Rows that all carry vectors (bring-your-own) are stored with their chunks in the same
    transaction (`Store.put_vectors`): the index catches up from the change log, at start-up
    too, so they are not lost either, and the job only carries the seq to wait for.
    """
    payload: dict[str, Any] = {"collection": collection, "documents": [r.id for r in rows]}
    done = store.put_vectors(collection, rows) if rows and all(r.vector for r in rows) else None
    if done is not None:  # vectors stored once, with their chunks: the job only wakes the index
        changed = done.changed
        payload["stored"] = {"seq": done.seq, "added": done.added, "removed": done.removed}
    else:
        changed = store.put_documents(collection, rows)
    if rejected:
        payload["rejected"] = [rejection_entry(r) for r in rejected]
    job_id = queue.enqueue(payload)
    return Submitted(job_id, len(rows), len(rows) - len(changed), len(rejected))


def rejection_entry(item: Rejected) -> dict[str, str]:
    """A rejection as stored with its job, bounded in size."""
    return {
        "where": _cut(item.where, MAX_WHERE_CHARS),
        "reason": _cut(item.reason, MAX_REASON_CHARS),
    }


def job_rejections(payload: dict[str, Any]) -> list[dict[str, str]]:
    """The rejections a job's payload carries (none for jobs made before they were kept)."""
    items = payload.get("rejected")
    if not isinstance(items, list):
        return []
    return [
        {"where": str(i.get("where", "")), "reason": str(i.get("reason", ""))}
        for i in items
        if isinstance(i, dict)
    ]


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
