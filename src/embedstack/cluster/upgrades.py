"""Model upgrades in cluster mode: the single-node lifecycle (registry/upgrade.py: a shadow
space, its back-fill, the gate, an atomic cutover, rollback, retire) with the Redis catalog as
the one owner of which space serves.

- `start` registers the shadow space and the upgrade in the catalog (one transaction), then
  appends a `shadow` space record to every shard partition. Each replica applies it in log
  order: its store gets the shadow space, every later write fills it, and the replica
  re-embeds the documents it already had from its own store (replica.py `backfill_step`).
- Progress is what the replicas report: a shard is complete when every placed live replica
  (the same quorum as a job's `done`) has applied the shadow record and finished its back-fill;
  the upgrade is `ready` when every shard is complete.
- `cutover` runs the same gate as single node (labeled recall/MRR or unlabeled top-k overlap,
  each space searched across all shards) and then flips the serving space, the previous space
  and the upgrade's state in one catalog transaction: every API node's next query embeds with
  the new model and searches the new space; a query in flight keeps the space it resolved.
  `rollback` flips back while the previous space is kept (replicas keep writing it); `retire`
  drops a previous or shadow space. Each flip is then appended to the log so the replicas'
  stores mirror it (they retire the spaces the catalog no longer keeps).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import asdict, replace
from typing import Any

import numpy as np

from embedstack.cluster.catalog import ClusterCollection, SpaceRef
from embedstack.cluster.router import ClusterRouter
from embedstack.errors import Conflict, InvalidInput, NotFound, Unavailable
from embedstack.registry.upgrade import (
    EMBED_SLICE,
    Gate,
    cutover_inputs,
    gate_report,
    summary,
    upgrade_status,
)
from embedstack.storage.catalog import UpgradeRecord

log = logging.getLogger(__name__)

IN_PROGRESS = ("backfilling", "ready", "gate_failed")


class ClusterUpgrades:
    def __init__(self, router: ClusterRouter) -> None:
        self._router = router
        self._catalog = router.catalog

    # -- start --------------------------------------------------------------------------------
    def start(
        self, name: str, model: str, auto_cutover: bool = False,
        eval_set: list[tuple[str, str]] | None = None, gate: Gate | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        coll = self._catalog.resolve(name)
        if not coll.model:
            raise InvalidInput(
                f"collection {coll.name!r} holds bring-your-own vectors: there is no stored "
                "text to re-embed; create a new collection instead"
            )
        spec = self._router.models.get(model).spec
        total = sum(_shard_documents(states) for states in self._states(coll).values())
        options = {
            "auto_cutover": auto_cutover,
            "eval": [{"query": q, "document_id": d} for q, d in eval_set or []],
            "gate": asdict(gate or Gate()),
        }

        def change(
            c: ClusterCollection, up: UpgradeRecord | None
        ) -> tuple[ClusterCollection, UpgradeRecord | None]:
            if spec.space_id == c.space_id:
                raise Conflict(f"collection {c.name!r} already serves model {model!r}")
            if c.shadow is not None:
                busy = up.id if up is not None else c.shadow.space_id
                raise Conflict(
                    f"collection {c.name!r} has upgrade {busy} in progress: cut it over "
                    "or cancel it first (retire its shadow space)"
                )
            now = time.time()
            new = UpgradeRecord(
                uuid.uuid4().hex, c.name, c.space_id, spec.space_id, model, "backfilling",
                total, 0, options, None, None, now, now,
            )  # fmt: skip
            return replace(c, shadow=SpaceRef(spec.space_id, model)), new

        coll, up = self._catalog.update(coll.name, change)
        assert up is not None
        try:
            offsets = self._router.append_space(
                coll, {"action": "shadow", "space_id": up.to_space, "model": model}
            )
        except Unavailable as exc:  # no replica heard of it: undo, the client may retry
            self._catalog.update(coll.name, _undo_start(up.id, exc.message))
            raise
        with_offsets = {**up.options, "offsets": {str(s): o for s, o in offsets.items()}}
        self._catalog.update(coll.name, _set(up.id, options=with_offsets))
        log.info("upgrade %s of %s to %s: %d documents", up.id, coll.name, model, total)
        return self.status(coll.name)

    # -- progress -----------------------------------------------------------------------------
    def status(self, name: str) -> dict[str, Any]:
        coll = self._catalog.resolve(name)
        return upgrade_status(self._current(coll))

    def _current(self, coll: ClusterCollection) -> UpgradeRecord:
        """The latest upgrade, with a back-fill's progress read from the replicas (and marked
        ready in the catalog once every shard is complete)."""
        up = self._catalog.upgrade(coll.name)
        if up is None:
            raise NotFound(f"collection {coll.name!r} has no upgrade: start one first")
        if up.state != "backfilling":
            return up
        offsets = {int(s): int(o) for s, o in up.options.get("offsets", {}).items()}
        done, complete = 0, len(offsets) == coll.shards
        for shard, states in self._states(coll).items():
            per: list[int] = []
            for r in states:
                u = r.upgrade
                heard = shard in offsets and r.position > offsets[shard]
                if not heard or u is None or u["to_space"] != up.to_space:
                    per.append(0)
                    complete = False
                    continue
                complete = complete and u["state"] in ("ready", "cut_over")
                per.append(int(u["done"]))
            complete = complete and bool(states)
            done += min(per, default=0)
        if not complete:
            return replace(up, done=min(done, up.total))
        _, marked = self._catalog.update(
            coll.name, _set(up.id, "backfilling", state="ready", done=up.total)
        )
        return marked or up

    def _states(self, coll: ClusterCollection) -> dict[int, list[Any]]:
        return self._router.replica_states(coll)

    # -- gate ---------------------------------------------------------------------------------
    def evaluate(
        self, coll: ClusterCollection, up: UpgradeRecord,
        eval_set: list[tuple[str, str]] | None, gate: Gate,
    ) -> dict[str, Any]:  # fmt: skip
        """The single-node gate (gate_report) on the cluster: each space searched across every
        shard, its queries embedded with its own model."""
        if coll.space_id != up.from_space or coll.model is None:
            raise Conflict(
                f"collection {coll.name!r} no longer serves {up.from_space}, the space upgrade "
                f"{up.id} started from: start a new upgrade"
            )
        if eval_set:
            queries = [q for q, _ in eval_set]
        else:
            queries = self._router.sample_texts(coll, up.from_space, gate.sample_queries)
        if not queries:
            return {"mode": "empty", "passed": True, "queries": 0}
        ranked = {}
        for label, space_id, model in (
            ("old", up.from_space, coll.model),
            ("new", up.to_space, up.model),
        ):
            vecs = np.concatenate(
                [
                    self._router.embed(coll.name, space_id, model, queries[i : i + EMBED_SLICE])
                    for i in range(0, len(queries), EMBED_SLICE)
                ]
            )
            search = self._router.search
            ranked[label] = [
                [h["document_id"] for h in search(coll, space_id, v, gate.k, None, True)]
                for v in vecs
            ]
        return gate_report(gate, eval_set, len(queries), ranked["old"], ranked["new"])

    # -- cutover, rollback, retire ------------------------------------------------------------
    def cutover(
        self, name: str, eval_set: list[tuple[str, str]] | None = None, gate: Gate | None = None,
        force: bool = False,
    ) -> dict[str, Any]:  # fmt: skip
        coll = self._catalog.resolve(name)
        up = self._catalog.upgrade(coll.name)
        up = self._current(coll) if up is not None else None
        up, eval_set, gate = cutover_inputs(coll.name, up, eval_set, gate)
        report = (
            {"mode": "forced", "passed": True} if force else self.evaluate(coll, up, eval_set, gate)
        )
        if not report["passed"]:
            self._catalog.update(coll.name, _set(up.id, report=report))
            raise Conflict(f"the upgrade gate refused the cutover: {summary(report)}")
        upgrade_id = up.id

        def flip(
            c: ClusterCollection, u: UpgradeRecord | None
        ) -> tuple[ClusterCollection, UpgradeRecord | None]:
            if u is None or u.id != upgrade_id or u.state not in ("ready", "gate_failed"):
                raise Conflict(f"upgrade {upgrade_id} of {c.name!r} changed meanwhile: retry")
            if c.shadow is None or c.shadow.space_id != u.to_space:
                raise Conflict(f"the shadow space of {c.name!r} changed meanwhile: retry")
            flipped = replace(
                c, space_id=u.to_space, model=u.model, shadow=None,
                previous=SpaceRef(c.space_id, c.model),
            )  # fmt: skip
            return flipped, replace(u, state="cut_over", report=report, updated_at=time.time())

        coll, _ = self._catalog.update(coll.name, flip)
        self._tell(coll, "cutover", coll.space_id)
        log.info("cut over %s to %s (%s)", coll.name, coll.space_id, summary(report))
        return report

    def rollback(self, name: str) -> str:
        def back(
            c: ClusterCollection, u: UpgradeRecord | None
        ) -> tuple[ClusterCollection, UpgradeRecord | None]:
            if c.previous is None:
                raise Conflict(f"collection {c.name!r} has no previous space to roll back to")
            flipped = replace(
                c, space_id=c.previous.space_id, model=c.previous.model,
                previous=SpaceRef(c.space_id, c.model),
            )  # fmt: skip
            rolled = replace(u, state="rolled_back", updated_at=time.time()) if u else None
            return flipped, rolled if u is not None and u.state == "cut_over" else None

        coll, _ = self._catalog.update(self._catalog.resolve(name).name, back)
        self._tell(coll, "rollback", coll.space_id)
        return coll.space_id

    def retire(self, name: str, space_id: str | None = None) -> str:
        """Delete a previous space (default) or cancel an upgrade by retiring its shadow."""
        retired: list[str] = []

        def drop(
            c: ClusterCollection, u: UpgradeRecord | None
        ) -> tuple[ClusterCollection, UpgradeRecord | None]:
            target = space_id or (c.previous.space_id if c.previous else None)
            if target is None:
                raise Conflict(f"collection {c.name!r} has no previous space to retire")
            if target == c.space_id:
                raise Conflict(f"space {target} is serving {c.name!r}: it cannot be retired")
            retired[:] = [target]
            if c.previous is not None and c.previous.space_id == target:
                return replace(c, previous=None), None
            if c.shadow is None or c.shadow.space_id != target:
                raise NotFound(f"collection {c.name!r} has no space {target}")
            cancelled = None
            if u is not None and u.to_space == target and u.state in IN_PROGRESS:
                cancelled = replace(u, state="cancelled", updated_at=time.time())
            return replace(c, shadow=None), cancelled

        coll, _ = self._catalog.update(self._catalog.resolve(name).name, drop)
        self._tell(coll, "retire", retired[0])
        return retired[0]

    def _tell(self, coll: ClusterCollection, action: str, space_id: str) -> None:
        """Mirror a catalog flip in the replicas' stores. The catalog already decides what
        queries read, so a broker failure here is logged, not raised: replicas keep writing
        every space they have until the next space record reaches them."""
        try:
            self._router.append_space(coll, {"action": action, "space_id": space_id})
        except Unavailable:
            log.exception("%s of %s: the log did not take the space record", action, coll.name)

    # -- auto cutover -------------------------------------------------------------------------
    def tick(self) -> None:
        """Run the auto cutovers that became ready (called by the router's reconcile loop)."""
        for coll in self._catalog.list():
            up = self._catalog.upgrade(coll.name)
            if up is None or up.state != "backfilling" or not up.options.get("auto_cutover"):
                continue
            if self._current(coll).state != "ready":
                continue
            try:
                self.cutover(coll.name)
            except Conflict as exc:
                log.warning("auto cutover of %s refused: %s", coll.name, exc.message)
                self._catalog.update(coll.name, _set(up.id, state="gate_failed"))
            except InvalidInput as exc:
                log.error("auto cutover of %s cannot run: %s", coll.name, exc.message)
                self._catalog.update(coll.name, _set(up.id, state="failed", error=exc.message))


def _shard_documents(states: list[Any]) -> int:
    return max((int(r.stats.get("documents", 0)) for r in states), default=0)


def _set(upgrade_id: str, when: str | None = None, **fields: Any) -> Any:
    """A catalog change that sets fields of upgrade `upgrade_id` (only while it is in state
    `when`, when given); the collection is left as it is."""

    def change(
        c: ClusterCollection, u: UpgradeRecord | None
    ) -> tuple[ClusterCollection, UpgradeRecord | None]:
        if u is None or u.id != upgrade_id or (when is not None and u.state != when):
            return c, None
        return c, replace(u, **fields, updated_at=time.time())

    return change


def _undo_start(upgrade_id: str, error: str) -> Any:
    def change(
        c: ClusterCollection, u: UpgradeRecord | None
    ) -> tuple[ClusterCollection, UpgradeRecord | None]:
        failed = replace(u, state="failed", error=error) if u and u.id == upgrade_id else None
        return replace(c, shadow=None), failed

    return change
