"""Model upgrades: shadow re-index, a gate, an atomic cutover, rollback and retirement.

1. `start` registers a shadow space for the new model and enqueues back-fill jobs (low queue
   priority, bulk batcher lane) that re-embed every stored document from its stored text; new
   writes meanwhile go to every active space, so the shadow is complete when the back-fill ends.
   The jobs live in the durable queue: a restart resumes where it stopped.
2. `refresh` (run by the server's maintenance loop) follows the jobs and marks the upgrade
   ready once the shadow index holds them all; with `auto_cutover` it then runs the gate.
3. `evaluate` compares old and new: recall@k and MRR on a labeled set, or top-k overlap and
   score distributions on sampled stored texts.
4. `cutover` flips the serving space in one store transaction; queries in flight finish in the
   space they started in. `rollback` flips back to the previous space while it is retained;
   `retire` deletes it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from embedstack.errors import Conflict, InvalidInput, NotFound
from embedstack.inference.backend import ModelRegistry
from embedstack.inference.parity import check_parity
from embedstack.ingest.queue import Queue
from embedstack.obs.metrics import Metrics
from embedstack.registry.collections import CollectionService
from embedstack.registry.indexes import IndexManager
from embedstack.registry.search import search_space
from embedstack.storage.catalog import UpgradeRecord
from embedstack.storage.store import Store

log = logging.getLogger(__name__)

EmbedFn = Callable[[str, Sequence[str]], Awaitable[np.ndarray]]
BACKFILL_PRIORITY = -10
BACKFILL_JOB_DOCUMENTS = 500


@dataclass(frozen=True)
class Gate:
    """Thresholds of the upgrade gate. Labeled: recall@k of the new space must be at least the
    old one's minus `max_recall_drop` (and at least `min_recall` when set). Unlabeled: the mean
    top-k document overlap between the spaces must be at least `min_overlap`."""

    k: int = 10
    min_recall: float | None = None
    max_recall_drop: float = 0.0
    min_overlap: float = 0.3
    sample_queries: int = 100

    @classmethod
    def parse(cls, raw: dict[str, Any] | None) -> Gate:
        """A gate from a request (or stored options), every field type- and range-checked."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise InvalidInput(f"'gate' must be an object, got {type(raw).__name__}")
        known = asdict(cls())
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise InvalidInput(f"unknown gate option(s) {unknown}; use {', '.join(known)}")
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key in _GATE_INTS:
                low, high = _GATE_INTS[key]
                exact = isinstance(value, int) and not isinstance(value, bool)
                if not exact or not low <= value <= high:
                    raise InvalidInput(
                        f"gate '{key}' must be an integer from {low} to {high}, got {value!r}"
                    )
                values[key] = value
            else:
                if value is None and key == "min_recall":
                    values[key] = None
                    continue
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int | float)
                    or not 0.0 <= value <= 1.0  # NaN fails this too
                ):
                    raise InvalidInput(f"gate '{key}' must be a number from 0 to 1, got {value!r}")
                values[key] = float(value)
        return cls(**values)


_GATE_INTS = {"k": (1, 100), "sample_queries": (1, 10_000)}
EMBED_SLICE = 256  # texts per embed call of the gate, under any bulk-lane admission limit


def parse_eval(raw: Any) -> list[tuple[str, str]] | None:
    """A labeled set: [{"query": ..., "document_id": ...}, ...]."""
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("'eval' must be a non-empty list of {query, document_id} objects")
    pairs = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("query"), str):
            raise InvalidInput(f"eval[{i}] needs a string 'query' and a 'document_id'")
        pairs.append((item["query"], str(item.get("document_id"))))
    return pairs


class UpgradeService:
    def __init__(
        self, store: Store, queue: Queue, models: ModelRegistry, indexes: IndexManager,
        collections: CollectionService, embed: EmbedFn, metrics: Metrics,
    ) -> None:  # fmt: skip
        self._store = store
        self._queue = queue
        self._models = models
        self._indexes = indexes
        self._collections = collections
        self._embed = embed
        self._metrics = metrics

    # -- start ------------------------------------------------------------------------------
    def start(
        self, name: str, model: str, auto_cutover: bool = False,
        eval_set: list[tuple[str, str]] | None = None, gate: Gate | None = None,
    ) -> UpgradeRecord:  # fmt: skip
        record = self._collections.resolve(name)
        serving = self._collections.space(record)
        if not serving.model:
            raise InvalidInput(
                f"collection {record.name!r} holds bring-your-own vectors: there is no stored "
                "text to re-embed; create a new collection instead"
            )
        spec = self._models.get(model).spec
        if spec.space_id == record.space_id:
            raise Conflict(f"collection {record.name!r} already serves model {model!r}")
        total = self._store.collection_stats(record.name)["documents"]
        options = {
            "auto_cutover": auto_cutover,
            "eval": [{"query": q, "document_id": d} for q, d in eval_set or []],
            "gate": asdict(gate or Gate()),
            "jobs": {},
        }
        up = self._store.start_shadow(record.name, spec.space_id, model, spec, total, options)
        self._indexes.open(
            self._collections.index_config(record, self._store.space(record.name, spec.space_id))
        )
        jobs = self._enqueue_backfill(up)
        log.info("upgrade %s of %s to %s: %d documents in %d jobs", up.id, record.name, model,
                 total, len(jobs))  # fmt: skip
        return self._store.get_upgrade(up.id)

    def _enqueue_backfill(self, up: UpgradeRecord) -> dict[str, int]:
        """Enqueue the back-fill jobs and record them on the upgrade. Job ids derive from the
        upgrade's, so a second call (resuming after a crash between registering the shadow and
        recording its jobs) finds the jobs already enqueued instead of adding more."""
        jobs: dict[str, int] = {}
        for n, ids in enumerate(self._store.all_documents(up.collection, BACKFILL_JOB_DOCUMENTS)):
            payload = {"collection": up.collection, "documents": ids, "space": up.to_space}
            job_id = f"{up.id}-backfill-{n}"
            jobs[self._queue.enqueue(payload, job_id, priority=BACKFILL_PRIORITY)] = len(ids)
        self._store.update_upgrade(up.id, options={**up.options, "jobs": jobs})
        return jobs

    # -- progress ---------------------------------------------------------------------------
    def status(self, name: str) -> dict[str, Any]:
        record = self._collections.resolve(name)
        up = self._store.latest_upgrade(record.name)
        if up is None:
            raise NotFound(f"collection {record.name!r} has no upgrade: start one first")
        return upgrade_status(up)

    async def refresh(self) -> None:
        """Follow back-fill jobs; mark finished shadows ready; run auto-cutovers.

        Each collection on its own: one upgrade's failure is logged (and, when it cannot heal,
        recorded on the upgrade as failed) and never stops the others or later passes."""
        for record in await asyncio.to_thread(self._store.list_collections):
            try:
                await self._refresh_one(record.name)
            except Exception:
                log.exception("upgrade refresh of %s failed; retrying next pass", record.name)
                self._metrics.maintenance_errors.labels("upgrades").inc()

    async def _refresh_one(self, name: str) -> None:
        up = await asyncio.to_thread(self._store.latest_upgrade, name)
        if up is None:
            return
        if up.state == "backfilling":
            await asyncio.to_thread(self._follow_jobs, up)
            up = await asyncio.to_thread(self._store.get_upgrade, up.id)
        self._metrics.upgrade_documents.labels(up.collection, "done").set(up.done)
        self._metrics.upgrade_documents.labels(up.collection, "total").set(up.total)
        if up.state == "ready" and up.options.get("auto_cutover") and up.report is None:
            try:
                await self.cutover(up.collection)
            except Conflict as exc:
                log.warning("auto cutover of %s refused: %s", up.collection, exc.message)
                await asyncio.to_thread(self._store.update_upgrade, up.id, state="gate_failed")
            except InvalidInput as exc:  # e.g. options stored by an older version: never heals
                log.error("auto cutover of %s cannot run: %s", up.collection, exc.message)
                await asyncio.to_thread(
                    self._store.update_upgrade, up.id, state="failed", error=exc.message
                )

    def _follow_jobs(self, up: UpgradeRecord) -> None:
        jobs: dict[str, int] = up.options.get("jobs", {})
        if not jobs and up.total > 0:  # crashed before its jobs were recorded: resume
            log.info("upgrade %s of %s: enqueuing its back-fill (resumed)", up.id, up.collection)
            jobs = self._enqueue_backfill(up)
        done = 0
        for job_id, n in jobs.items():
            try:
                job = self._queue.get(job_id)
            except NotFound:  # purged: only done jobs are, after their retention
                done += n
                continue
            if job.status == "dead":
                self._store.update_upgrade(
                    up.id, state="failed", error=f"job {job_id}: {job.error}"
                )
                return
            done += n if job.status == "done" else 0
        if done < up.total or done < sum(jobs.values()):
            self._store.update_upgrade(up.id, done=done)
            return
        self._indexes.sync(up.collection, up.to_space)
        self._store.update_upgrade(up.id, done=done, state="ready")

    # -- gate -------------------------------------------------------------------------------
    async def evaluate(
        self, up: UpgradeRecord, eval_set: list[tuple[str, str]] | None, gate: Gate
    ) -> dict[str, Any]:
        record = await asyncio.to_thread(self._store.get_collection, up.collection)
        old = await asyncio.to_thread(self._store.space, record.name, up.from_space)
        new = await asyncio.to_thread(self._store.space, record.name, up.to_space)
        if eval_set:
            queries = [q for q, _ in eval_set]
        else:
            queries = await asyncio.to_thread(
                sample_texts, self._store, record.name, up.from_space, gate.sample_queries
            )
        if not queries:
            return {"mode": "empty", "passed": True, "queries": 0}
        results = {}
        for label, space in (("old", old), ("new", new)):
            assert space.model is not None
            embedder = await asyncio.to_thread(self._models.get, space.model)
            check_parity(embedder.spec, record.name, space.space_id)
            vecs = np.concatenate(
                [
                    await self._embed(space.model, queries[i : i + EMBED_SLICE])
                    for i in range(0, len(queries), EMBED_SLICE)
                ]
            )
            results[label] = await asyncio.to_thread(
                self._ranked_documents, record.name, space.space_id, vecs, gate.k
            )
        return gate_report(gate, eval_set, len(queries), results["old"], results["new"])

    def _ranked_documents(
        self, collection: str, space_id: str, vecs: np.ndarray, k: int
    ) -> list[list[str]]:
        return [
            [h["document_id"] for h in search_space(
                self._store, self._indexes, collection, space_id, v, k, None, True)]
            for v in vecs
        ]  # fmt: skip

    # -- cutover, rollback, retire ----------------------------------------------------------
    async def cutover(
        self, name: str, eval_set: list[tuple[str, str]] | None = None, gate: Gate | None = None,
        force: bool = False,
    ) -> dict[str, Any]:  # fmt: skip
        record = await asyncio.to_thread(self._collections.resolve, name)
        up = await asyncio.to_thread(self._store.latest_upgrade, record.name)
        up, eval_set, gate = cutover_inputs(record.name, up, eval_set, gate)
        report = (
            {"mode": "forced", "passed": True} if force else await self.evaluate(up, eval_set, gate)
        )
        await asyncio.to_thread(self._store.update_upgrade, up.id, report=report)
        if not report["passed"]:
            raise Conflict(f"the upgrade gate refused the cutover: {summary(report)}")
        previous = await asyncio.to_thread(self._store.spaces, record.name, ("previous",))
        await asyncio.to_thread(self._store.cut_over, record.name, up.to_space)
        for space in previous:
            if space.space_id != up.from_space:
                self._indexes.drop(record.name, space.space_id)  # retired by the cutover
                self._metrics.forget_space(record.name, space.space_id)
        await asyncio.to_thread(self._store.update_upgrade, up.id, state="cut_over")
        log.info("cut over %s to %s (%s)", record.name, up.to_space, summary(report))
        return report

    def rollback(self, name: str) -> str:
        record = self._collections.resolve(name)
        previous = self._store.spaces(record.name, ("previous",))
        if not previous:
            raise Conflict(f"collection {record.name!r} has no previous space to roll back to")
        self._store.cut_over(record.name, previous[0].space_id)
        up = self._store.latest_upgrade(record.name)
        if up is not None and up.state == "cut_over":
            self._store.update_upgrade(up.id, state="rolled_back")
        return previous[0].space_id

    def retire(self, name: str, space_id: str | None = None) -> str:
        record = self._collections.resolve(name)
        if space_id is None:
            previous = self._store.spaces(record.name, ("previous",))
            if not previous:
                raise Conflict(f"collection {record.name!r} has no previous space to retire")
            space_id = previous[0].space_id
        self._store.retire(record.name, space_id)
        self._indexes.drop(record.name, space_id)
        self._metrics.forget_space(record.name, space_id)
        up = self._store.latest_upgrade(record.name)
        if (
            up is not None
            and up.state in ("backfilling", "ready", "gate_failed")
            and up.to_space == space_id
        ):
            self._store.update_upgrade(up.id, state="cancelled")
        return space_id


def cutover_inputs(
    name: str, up: UpgradeRecord | None, eval_set: list[tuple[str, str]] | None, gate: Gate | None
) -> tuple[UpgradeRecord, list[tuple[str, str]] | None, Gate]:
    """The upgrade a cutover flips (Conflict unless it is ready), with the labeled set and gate
    it runs: the request's, else the ones stored when the upgrade started."""
    if up is None or up.state not in ("ready", "gate_failed"):
        state = "none" if up is None else f"{up.state} ({up.done}/{up.total} documents)"
        raise Conflict(f"no upgrade of {name!r} is ready to cut over: it is {state}")
    if eval_set is None:
        eval_set = parse_eval(up.options.get("eval") or None)
    return up, eval_set, gate or Gate.parse(up.options.get("gate"))


def upgrade_status(up: UpgradeRecord) -> dict[str, Any]:
    """The API's view of an upgrade (UpgradeOut): progress, rate and time left."""
    elapsed = max(
        1e-9, (up.updated_at if up.state != "backfilling" else time.time()) - up.started_at
    )
    rate = up.done / elapsed
    eta = (up.total - up.done) / rate if rate > 0 and up.state == "backfilling" else None
    return {
        "id": up.id, "collection": up.collection, "state": up.state, "model": up.model,
        "from_space": up.from_space, "to_space": up.to_space, "total": up.total,
        "done": up.done, "rate_docs_per_s": round(rate, 2),
        "eta_s": round(eta, 1) if eta is not None else None,
        "auto_cutover": up.options.get("auto_cutover", False), "report": up.report,
        "error": up.error, "started_at": up.started_at, "updated_at": up.updated_at,
    }  # fmt: skip


def gate_report(
    gate: Gate, eval_set: list[tuple[str, str]] | None, queries: int,
    old: list[list[str]], new: list[list[str]],
) -> dict[str, Any]:  # fmt: skip
    """The gate's verdict from each space's ranked document ids for the same queries: recall@k
    and MRR against the labels, or the top-k overlap between the spaces when unlabeled."""
    report: dict[str, Any] = {"k": gate.k, "queries": queries, "gate": asdict(gate),
                              "evaluated_at": time.time()}  # fmt: skip
    if eval_set:
        wanted = [d for _, d in eval_set]
        report["old"], report["new"] = _recall_mrr(old, wanted), _recall_mrr(new, wanted)
        floor = report["old"]["recall"] - gate.max_recall_drop
        passed = report["new"]["recall"] >= floor - 1e-9
        if gate.min_recall is not None:
            passed = passed and report["new"]["recall"] >= gate.min_recall
        report.update(mode="labeled", passed=passed)
    else:
        # share of the top-k both spaces agree on; a collection with fewer than k documents
        # is measured on the documents there are (identical rankings score 1.0)
        overlap = float(
            np.mean(
                [
                    len(set(a) & set(b)) / max(1, len(a), len(b))
                    for a, b in zip(old, new, strict=True)
                ]
            )
        )
        report.update(mode="overlap", overlap=round(overlap, 4), passed=overlap >= gate.min_overlap)
    return report


def sample_texts(store: Store, collection: str, space_id: str, n: int) -> list[str]:
    """Up to `n` stored chunk texts (their first 24 words), a fixed sample: unlabeled gate
    queries."""
    ids = store.all_chunk_ids(collection, space_id)
    chosen = random.Random(0).sample(ids, min(n, len(ids)))
    rows = store.hydrate(chosen)
    return [" ".join(rows[i].text.split()[:24]) for i in chosen if i in rows]


def _recall_mrr(ranked: list[list[str]], wanted: list[str]) -> dict[str, float]:
    hits = [r.index(w) + 1 if w in r else 0 for r, w in zip(ranked, wanted, strict=True)]
    recall = sum(1 for h in hits if h) / len(hits)
    mrr = sum(1 / h for h in hits if h) / len(hits)
    return {"recall": round(recall, 4), "mrr": round(mrr, 4)}


def summary(report: dict[str, Any]) -> str:
    """One line of a gate report, for logs and refusals."""
    if report.get("mode") == "labeled":
        o, n = report["old"], report["new"]
        return (f"recall@{report['k']} old {o['recall']:.3f} -> new {n['recall']:.3f}, "
                f"MRR {o['mrr']:.3f} -> {n['mrr']:.3f}; gate {report['gate']}")  # fmt: skip
    if report.get("mode") == "overlap":
        return f"top-{report['k']} overlap {report['overlap']:.3f} (gate {report['gate']})"
    return str(report.get("mode"))
