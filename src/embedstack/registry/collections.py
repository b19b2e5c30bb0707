"""Collections: validated configuration, the embedding space each lives in, and parity checks."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, NoReturn

from embedstack.errors import Conflict, InvalidInput, NotFound, SpaceMismatch, Unavailable
from embedstack.index.factory import create_index, validate_index_params
from embedstack.index.tuner import check_recall_floor, is_quantized
from embedstack.inference.backend import Embedder, ModelRegistry
from embedstack.inference.parity import check_parity
from embedstack.ingest.chunking import chunking_for_model, validate_chunking
from embedstack.ingest.records import parse_template
from embedstack.registry.hybrid import (
    Retrieval,
    check_lexical_fields,
    check_settings,
    collection_settings,
    require_lexical,
)
from embedstack.registry.indexes import IndexConfig, IndexManager, LiveIndex
from embedstack.storage.catalog import SpaceInfo
from embedstack.storage.keys import TENANT_RE, TENANT_SEP
from embedstack.storage.store import CollectionRecord, Store
from embedstack.types import METRICS, CollectionConfig, IndexSpec, Metric, byo_space_id

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_DIM = 8192
DEFAULT_RECALL_FLOOR = 0.9


def check_name(name: str) -> None:
    """InvalidInput unless `name` is a valid plain collection (or alias) name, as a user sends it
    (a tenant's stored "<tenant>:<name>" is not one)."""
    if not NAME_RE.match(name):
        raise_invalid_name(name)


def raise_invalid_name(name: str) -> NoReturn:
    raise InvalidInput(
        f"collection name {name!r} is not valid: use 1-64 letters, digits, '_', '-' or '.', "
        "starting with a letter or digit"
    )


class CollectionConfigs:
    """Checks a new collection's settings against the models: the configuration and space id
    a collection would get (nothing stored). Shared by single node and the cluster router."""

    def __init__(self, models: ModelRegistry, default_model: str) -> None:
        self._models = models
        self._default_model = default_model

    def config_for(
        self,
        name: str,
        model: str | None = None,
        dim: int | None = None,
        metric: str | None = None,
        chunking: dict[str, Any] | None = None,
        index: dict[str, Any] | None = None,
        search: dict[str, Any] | None = None,
        lexical: bool = True,
        lexical_fields: list[str] | None = None,
        template: dict[str, Any] | None = None,
    ) -> tuple[CollectionConfig, str]:
        """A new collection's checked configuration and embedding space id (nothing stored)."""
        tenant, sep, plain = name.rpartition(TENANT_SEP)  # "<tenant>:<name>" (serving/auth.py)
        if not NAME_RE.match(plain) or (sep and not TENANT_RE.match(tenant)):
            raise_invalid_name(name)
        index_spec = _index_spec(index, IndexSpec().type)
        if model is None and dim is None:
            model = self._default_model
        if model is not None:
            config = self._model_config(model, dim, metric, chunking, index_spec)
            space_id = self._models.get(model).spec.space_id
        else:
            config = self._byo_config(dim, metric, chunking, index_spec)
            space_id = byo_space_id(config.dim, config.metric)
        if search:
            config = config.with_search(check_settings(search))
        config = _with_lexical(config, lexical, lexical_fields)
        if template is not None:
            if model is None:
                raise InvalidInput(
                    "a record template needs a collection with a model (records become text); "
                    "drop 'record' or give a model"
                )
            config = config.with_record(parse_template(template))
        _check_buildable(index_spec, config.dim, config.metric)
        return config, space_id

    def _model_config(
        self,
        model: str,
        dim: int | None,
        metric: str | None,
        chunking: dict[str, Any] | None,
        index: IndexSpec,
    ) -> CollectionConfig:
        spec = self._models.get(model).spec
        if dim is not None and dim != spec.dim:
            raise InvalidInput(
                f"model {model!r} makes {spec.dim}-dim vectors; drop 'dim' or set it to {spec.dim}"
            )
        if metric is not None and metric != spec.metric:
            raise InvalidInput(
                f"model {model!r} is trained for {spec.metric!r} similarity; drop 'metric' "
                f"or set it to {spec.metric!r}"
            )
        given = chunking or {}
        unknown = set(given) - {"mode", "size", "overlap"}
        if unknown:
            raise InvalidInput(
                f"unknown chunking field(s) {sorted(unknown)}: use mode, size and overlap"
            )
        chunk = chunking_for_model(
            spec.max_tokens, given.get("mode"), given.get("size"), given.get("overlap")
        )
        chunk = validate_chunking(chunk, spec.max_tokens)
        return CollectionConfig(spec.dim, spec.metric, index, model, spec, chunk)

    def _byo_config(
        self,
        dim: int | None,
        metric: str | None,
        chunking: dict[str, Any] | None,
        index: IndexSpec,
    ) -> CollectionConfig:
        if dim is None or not 1 <= dim <= MAX_DIM:
            raise InvalidInput(
                f"'dim' must be an integer from 1 to {MAX_DIM} for a collection without a model"
            )
        if metric not in METRICS:
            raise InvalidInput(
                f"a collection without a model needs 'metric': one of {', '.join(METRICS)}"
            )
        if chunking:
            raise InvalidInput("'chunking' applies only to collections with a model; drop it")
        checked: Metric = metric  # type: ignore[assignment]
        return CollectionConfig(dim, checked, index)


class CollectionService(CollectionConfigs):
    def __init__(
        self, store: Store, models: ModelRegistry, indexes: IndexManager, default_model: str
    ) -> None:
        super().__init__(models, default_model)
        self._store = store
        self._indexes = indexes
        # collections whose indexes did not open (start, or a failed rebuild while none served),
        # and the last failed rebuild of each: reported by describe and /readyz, never fatal
        self._open_errors: dict[str, str] = {}
        self._rebuild_errors: dict[str, str] = {}

    def create(
        self,
        name: str,
        model: str | None = None,
        dim: int | None = None,
        metric: str | None = None,
        chunking: dict[str, Any] | None = None,
        index: dict[str, Any] | None = None,
        search: dict[str, Any] | None = None,
        lexical: bool = True,
        lexical_fields: list[str] | None = None,
        template: dict[str, Any] | None = None,
    ) -> CollectionRecord:
        config, space_id = self.config_for(
            name, model, dim, metric, chunking, index, search, lexical, lexical_fields, template
        )
        self._store.create_collection(name, config, space_id)
        record = self._store.get_collection(name)
        self._indexes.drop(name)  # anything left under this name is an earlier collection's
        try:
            self.open(record)
        except BaseException:
            # nothing half-made stays behind: a collection that cannot open is not created
            self.delete(name)
            raise
        return record

    def index_config(self, record: CollectionRecord, space: SpaceInfo) -> IndexConfig:
        cfg = record.config
        spec = space.model_spec
        return IndexConfig(
            collection=record.name,
            space_id=space.space_id,
            dim=spec.dim if spec else cfg.dim,
            metric=spec.metric if spec else cfg.metric,
            type=cfg.index.type,
            params=dict(cfg.index.params),
        )

    def change_index(self, name: str, index: dict[str, Any]) -> CollectionRecord:
        """Store new index settings; `rebuild` then builds and swaps the indexes."""
        record = self.resolve(name)
        shapes = []
        for space in self._store.spaces(record.name):
            cfg = self.index_config(record, space)
            shapes.append((cfg.dim, cfg.metric))
        config = indexed_config(record.config, index, shapes)
        if is_quantized(config.index.type):
            self._check_floor(record, config.index.type, config.index.params)
        self._store.update_collection_config(record.name, config)
        return self._store.get_collection(record.name)

    def change_search(self, name: str, search: dict[str, Any]) -> CollectionRecord:
        """Store new query defaults (mode, fusion, alpha, doc_scoring): merged over the old ones,
        a null value removing its key; they apply to the next query."""
        record = self.resolve(name)
        config = searched_config(record.config, record.name, search)
        self._store.update_collection_config(record.name, config)
        return self._store.get_collection(record.name)

    def _check_floor(
        self, record: CollectionRecord, index_type: str, params: dict[str, Any]
    ) -> None:
        """A quantized index is accepted only if it reaches its recall floor on this data."""
        space = self.space(record)
        cfg = self.index_config(record, space)
        sample = next(
            iter(self._store.iter_vectors(record.name, space.space_id, cfg.dim, 20_000)), None
        )
        if sample is None or len(sample[0]) < 1000:
            return  # too little data to measure; the index's own gate checks when it trains
        floor = float(params.get("recall_floor") or DEFAULT_RECALL_FLOOR)
        check_recall_floor(index_type, params, cfg.dim, cfg.metric, sample[0], sample[1], 10, floor)

    def rebuild(self, record: CollectionRecord) -> None:
        """Build each active space's index with the record's settings aside; swap atomically.

        A failure is kept (describe shows it as `last_rebuild_error`) and re-raised; the old
        index keeps serving."""
        built: list[LiveIndex] = []
        try:
            for space in self._store.spaces(record.name):
                built.append(self._indexes.replace(self.index_config(record, space)))
        except Exception as exc:
            if self._is_current(record):  # not for a later collection of the same name
                self._rebuild_errors[record.name] = _reason(exc)
            raise
        if not self._is_current(record):
            # deleted while rebuilding: what was built for it must not outlive it
            for live in built:
                space_id = live.config.space_id
                with contextlib.suppress(NotFound):
                    if self._indexes.get(record.name, space_id) is live:
                        self._indexes.drop(record.name, space_id)
            raise Conflict(f"collection {record.name!r} was deleted while its index was rebuilt")
        self._rebuild_errors.pop(record.name, None)
        self._open_errors.pop(record.name, None)

    def _is_current(self, record: CollectionRecord) -> bool:
        """Whether the collection still exists as this record's incarnation (not deleted, not
        deleted and created again under the same name)."""
        try:
            return self._store.get_collection(record.name).created_at == record.created_at
        except NotFound:
            return False

    def open(self, record: CollectionRecord) -> None:
        """Open (load or build) the index of every active space of the collection."""
        for space in self._store.spaces(record.name):
            self._indexes.open(self.index_config(record, space))
        self._open_errors.pop(record.name, None)

    def open_all(self) -> dict[str, str]:
        """Open every collection; one that fails is logged and reported, never fatal to the rest.
        Returns the failures by collection name."""
        for record in self._store.list_collections():
            try:
                self.open(record)
            except Exception as exc:
                log.exception("collection %r did not open; serving the others", record.name)
                self._open_errors[record.name] = _reason(exc)
        return dict(self._open_errors)

    def failed(self) -> dict[str, str]:
        """Collections whose indexes are not open, with the reason."""
        return dict(self._open_errors)

    def require_open(self, record: CollectionRecord) -> None:
        """Unavailable (with the reason) when the collection's indexes failed to open."""
        error = self._open_errors.get(record.name)
        if error is not None:
            raise Unavailable(
                f"collection {record.name!r} is not serving: {error}; fix its settings with "
                f"PATCH /v1/collections/{record.name} or delete it"
            )

    def resolve(self, name: str) -> CollectionRecord:
        """A collection by name or alias (from memory until the catalog changes)."""
        return self._store.resolve_collection(name)

    def cached(self, name: str) -> bool:
        """Whether resolve(name) and space() of its serving space need no I/O now."""
        return self._store.catalog_cached(name)

    def delete(self, name: str) -> None:
        self._store.delete_collection(name)
        self._indexes.drop(name)
        self._open_errors.pop(name, None)
        self._rebuild_errors.pop(name, None)

    def get(self, name: str) -> CollectionRecord:
        return self._store.get_collection(name)

    def space(self, record: CollectionRecord, space_id: str | None = None) -> SpaceInfo:
        """The serving space, or the named active space (shadow / previous) of a collection."""
        wanted = space_id or record.space_id
        spaces = self._store.serving_spaces(record.name)
        for space in spaces:
            if space.space_id == wanted:
                return space
        active = ", ".join(f"{s.space_id} ({s.state})" for s in spaces)
        raise SpaceMismatch(
            f"space {wanted} is not a space of collection {record.name!r}, whose spaces are "
            f"{active}: vectors from different models or settings cannot be mixed"
        )

    def embedder_for(self, record: CollectionRecord, space: SpaceInfo) -> Embedder:
        """The model of a space, refused if it no longer loads as exactly that space."""
        if not space.model:
            raise InvalidInput(
                f"collection {record.name!r} has no model (bring-your-own vectors): "
                "send 'vector' instead of 'text'"
            )
        embedder = self._models.get(space.model)
        check_parity(embedder.spec, record.name, space.space_id)
        return embedder

    def describe(self, record: CollectionRecord) -> dict[str, Any]:
        out = describe_config(record)
        out["state"] = "error" if record.name in self._open_errors else "ready"
        out["error"] = self._open_errors.get(record.name)
        out["last_rebuild_error"] = self._rebuild_errors.get(record.name)
        out.update(self._store.collection_stats(record.name))
        for space in self._store.spaces(record.name):
            info: dict[str, Any] = {"space_id": space.space_id, "model": space.model}
            try:
                live = self._indexes.get(record.name, space.space_id)
                info["vectors"] = live.index.count()
                info["index_memory_bytes"] = live.index.memory_bytes()
            except NotFound:
                info["vectors"] = None
            if space.state == "serving":
                out["model"] = space.model
                out.update({k: v for k, v in info.items() if k not in ("space_id", "model")})
            else:
                out[space.state] = info
        return out


def indexed_config(
    config: CollectionConfig, index: dict[str, Any], shapes: Sequence[tuple[int, str]]
) -> CollectionConfig:
    """`config` with new index settings (PATCH), checked for their family and buildable for
    every (dim, metric) of the collection's spaces (shared by single node and cluster)."""
    spec = _index_spec(index, config.index.type)
    for dim, metric in shapes:
        _check_buildable(spec, dim, metric)
    return config.with_index(spec)


def searched_config(
    config: CollectionConfig, name: str, search: dict[str, Any]
) -> CollectionConfig:
    """`config` with new query defaults merged over the old ones, a null value removing its key
    (shared by single node and cluster)."""
    merged = {**config.search, **search}
    merged = check_settings({k: v for k, v in merged.items() if v is not None})
    require_lexical(merged.get("mode", "dense"), config.lexical, name)
    return config.with_search(merged)


def describe_config(record: CollectionRecord) -> dict[str, Any]:
    """The settings half of a collection's description (CollectionOut), from its record alone:
    shared by single node and cluster API nodes."""
    cfg = record.config
    stored = cfg.to_json()
    return {
        "name": record.name,
        "model": cfg.model,
        "space_id": record.space_id,
        "shadow": None,
        "previous": None,
        "dim": cfg.dim,
        "metric": cfg.metric,
        "chunking": stored.get("chunking"),
        "index": stored["index"],
        "record": stored.get("record"),
        "search": {
            **Retrieval().as_dict(),
            **collection_settings(cfg.search, cfg.model is not None, cfg.lexical),
        },
        "lexical": cfg.lexical,
        "lexical_fields": list(cfg.lexical_fields) if cfg.lexical else [],
        "created_at": record.created_at,
    }


def _reason(exc: Exception) -> str:
    return getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"


def _check_buildable(spec: IndexSpec, dim: int, metric: str) -> None:
    """Build the empty index once: every dim-dependent check (e.g. PQ m must divide dim) runs
    before anything is stored."""
    create_index(spec.type, dim, metric, spec.params)


def _index_spec(index: dict[str, Any] | None, default_type: str) -> IndexSpec:
    """Index settings from a request, checked for their family."""
    params = dict(index or {})
    index_type = str(params.pop("type", default_type))
    return IndexSpec(index_type, validate_index_params(index_type, params))


def _with_lexical(
    config: CollectionConfig, lexical: bool, fields: list[str] | None
) -> CollectionConfig:
    """The lexical settings checked at creation (they never change after)."""
    if not isinstance(lexical, bool):
        raise InvalidInput(f"'lexical' must be true or false, got {lexical!r}")
    if not lexical and fields:
        raise InvalidInput("'lexical_fields' needs the lexical index: drop it or 'lexical': false")
    mode = config.search.get("mode", "dense")
    if not lexical and mode != "dense":
        raise InvalidInput(
            f'search mode {mode!r} needs the lexical index: drop "lexical": false, or make '
            'the search mode "dense"'
        )
    if fields is None:
        return replace(config, lexical=lexical)
    return replace(config, lexical=lexical, lexical_fields=check_lexical_fields(fields))
