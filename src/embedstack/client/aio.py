"""`AsyncClient`: the whole embedstack HTTP API for asyncio (httpx); the twin of `Client`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel

from embedstack.client import _core as core
from embedstack.client._core import Call, IngestResult, Progress, call, query_call, seg
from embedstack.client.errors import (
    ConnectError,
    InvalidInputError,
    JobFailedError,
    NotFoundError,
    PayloadTooLargeError,
    RequestTimeout,
    WaitTimeout,
)
from embedstack.serving.responses import (
    AliasesOut,
    AliasOut,
    AuditEntryOut,
    AuditOut,
    BaselineOut,
    CollectionOut,
    CollectionsOut,
    DeletedOut,
    DocumentOut,
    EmbeddingsOut,
    FeedbackOut,
    HealthOut,
    HistoryOut,
    JobOut,
    KeyCreatedOut,
    KeyOut,
    KeysOut,
    ModelsOut,
    QueryOut,
    ReadyOut,
    RetireOut,
    RollbackOut,
    StatsOut,
    UpgradeOut,
)

T = TypeVar("T")
Doc = Mapping[str, Any] | BaseModel


class AsyncClient:
    """A typed asyncio client for one embedstack server; the same methods as `Client`, awaited.

    `base_url` defaults to `$EMBEDSTACK_URL` or http://127.0.0.1:8080, `api_key` to
    `$EMBEDSTACK_API_KEY` (sent as `Authorization: Bearer`). Requests that meet 429 (honouring
    `Retry-After`), 502/503/504 or a failed connection are re-sent up to `retries` times with
    exponential backoff. Uploads are split to `max_documents` documents and `max_body_bytes`
    bytes per request (set them to the server's `EMBEDSTACK_MAX_DOCUMENTS_PER_REQUEST` /
    `EMBEDSTACK_MAX_BODY_BYTES` if they differ from the defaults). Errors raise the typed
    exceptions of `embedstack.client.errors`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_documents: int = core.MAX_DOCUMENTS_PER_REQUEST,
        max_inputs: int = core.MAX_INPUTS_PER_EMBEDDING_REQUEST,
        max_body_bytes: int = core.MAX_BODY_BYTES,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = core.settings(base_url, api_key, timeout, retries, backoff,
                                      max_documents, max_inputs, max_body_bytes)  # fmt: skip
        s = self.settings
        self._http = httpx.AsyncClient(
            base_url=s.base_url, headers=s.headers, timeout=s.timeout, transport=transport
        )

    @classmethod
    def like(cls, settings: core.Settings) -> AsyncClient:
        """An AsyncClient with another client's settings (URL, key, limits, retries)."""
        s = settings
        ac = cls(s.base_url, timeout=s.timeout, retries=s.retry.retries, backoff=s.retry.backoff,
                 max_documents=s.max_documents, max_inputs=s.max_inputs,
                 max_body_bytes=s.max_body_bytes)  # fmt: skip
        ac.settings = s
        ac._http.headers = httpx.Headers(s.headers)
        return ac

    @property
    def base_url(self) -> str:
        return self.settings.base_url

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- sending --------------------------------------------------------------------------------
    async def _run(self, c: Call[T]) -> T:
        policy = self.settings.retry
        attempt = 0
        while True:
            headers = {"content-type": "application/json"} if c.body is not None else None
            try:
                r = await self._http.request(c.method, c.path, content=c.body, headers=headers)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if policy.should_retry(c, attempt, None):
                    await asyncio.sleep(policy.delay(attempt, None))
                    attempt += 1
                    continue
                raise ConnectError(c.method, self.base_url + c.path, exc) from exc
            except httpx.TimeoutException as exc:  # sent, maybe processed: not re-sent
                raise RequestTimeout(c.method, self.base_url + c.path, exc) from exc
            except httpx.TransportError as exc:  # a broken connection: maybe processed
                raise ConnectError(c.method, self.base_url + c.path, exc) from exc
            if r.status_code not in c.ok and policy.should_retry(c, attempt, r.status_code):
                await asyncio.sleep(policy.delay(attempt, r))
                attempt += 1
                continue
            return core.check(c, r)

    # -- admin ----------------------------------------------------------------------------------
    async def health(self) -> HealthOut:
        """GET /healthz: the process is up."""
        return await self._run(call("GET", "/healthz", HealthOut))

    async def ready(self) -> ReadyOut:
        """GET /readyz: models, engines and indexes; `ready` is False while starting (503)."""
        return await self._run(call("GET", "/readyz", ReadyOut, ok=(200, 503), retry=False))

    async def metrics(self) -> str:
        """GET /metrics: the Prometheus exposition text."""
        return await self._run(Call("GET", "/metrics", core.text_of))

    async def stats(self) -> dict[str, float]:
        """The server's metrics as `{"name{label=...}": value}` (parsed from /metrics)."""
        return core.stats_of(await self.metrics())

    async def metrics_history(self, since: float | None = None) -> HistoryOut:
        """GET /v1/metrics/history: the dashboard's samples of the last hour (after `since`,
        a unix time, when given)."""
        path = "/v1/metrics/history" + (f"?since={since!r}" if since is not None else "")
        return await self._run(call("GET", path, HistoryOut))

    async def models(self) -> ModelsOut:
        """GET /v1/models."""
        return await self._run(call("GET", "/v1/models", ModelsOut))

    # -- embeddings -----------------------------------------------------------------------------
    async def embeddings(
        self,
        input: str | Sequence[str],
        model: str | None = None,
        *,
        encoding_format: Literal["float", "base64"] = "float",
        dimensions: int | None = None,
    ) -> EmbeddingsOut:
        """POST /v1/embeddings, split into requests under the server's limits."""
        texts = [input] if isinstance(input, str) else list(input)
        s = self.settings
        parts = [
            await self._run(core.embeddings_call(part, model, encoding_format, dimensions))
            for part in core.split_texts(texts, s.max_inputs, s.max_body_bytes)
        ] or [await self._run(core.embeddings_call(texts, model, encoding_format, dimensions))]
        return parts[0] if len(parts) == 1 else core.merge_embeddings(parts)

    async def embed(self, texts: Sequence[str], model: str | None = None) -> list[list[float]]:
        """Vectors of `texts`, in order (fetched as base64: a third of the bytes of floats)."""
        return core.vectors_of(await self.embeddings(list(texts), model, encoding_format="base64"))

    # -- collections ----------------------------------------------------------------------------
    async def create_collection(
        self,
        name: str,
        *,
        model: str | None = None,
        dim: int | None = None,
        metric: Literal["cosine", "ip", "l2"] | None = None,
        chunking: Mapping[str, Any] | None = None,
        index: Mapping[str, Any] | None = None,
        lexical: bool | None = None,
        lexical_fields: Sequence[str] | None = None,
        record: Mapping[str, Any] | None = None,
    ) -> CollectionOut:
        """POST /v1/collections: `model` (default the server's), or `dim` + `metric` for
        your own vectors; `lexical=False`: no lexical index (dense queries only);
        `lexical_fields`: metadata keys indexed as the weighted title column; `record`: the
        record template of `add_records`, e.g. `{"id": "sku", "text": ["title", "body"],
        "metadata": ["price"]}` (fixed at creation)."""
        payload = {"name": name, "model": model, "dim": dim, "metric": metric,
                   "chunking": chunking, "index": index, "lexical": lexical,
                   "lexical_fields": lexical_fields, "record": record}  # fmt: skip
        return await self._run(call("POST", "/v1/collections", CollectionOut, payload, retry=False))

    async def list_collections(self) -> list[CollectionOut]:
        """GET /v1/collections."""
        return (await self._run(call("GET", "/v1/collections", CollectionsOut))).collections

    async def get_collection(self, name: str) -> CollectionOut:
        """GET /v1/collections/{name} (an alias resolves to its collection)."""
        return await self._run(call("GET", f"/v1/collections/{seg(name)}", CollectionOut))

    async def delete_collection(self, name: str) -> DeletedOut:
        """DELETE /v1/collections/{name}."""
        return await self._run(call("DELETE", f"/v1/collections/{seg(name)}", DeletedOut))

    async def update_index(self, name: str, index: Mapping[str, Any]) -> CollectionOut:
        """PATCH /v1/collections/{name}: new index settings, built aside and swapped in."""
        path = f"/v1/collections/{seg(name)}"
        return await self._run(call("PATCH", path, CollectionOut, {"index": dict(index)}))

    # -- documents and jobs ---------------------------------------------------------------------
    async def add_documents(
        self,
        collection: str,
        documents: Iterable[Doc],
        *,
        wait: bool = True,
        timeout: float | None = None,
        progress: Callable[[Progress], None] | None = None,
        raise_on_failure: bool = True,
    ) -> IngestResult:
        """POST /v1/collections/{name}/documents, split under the server's limits (one job per
        request). With `wait`, returns once every job is `done` (the index serves it) or
        `failed` (JobFailedError unless `raise_on_failure=False`); `progress` is called after
        each request and each finished job."""
        return await self._add(
            collection, "documents", documents, wait, timeout, progress, raise_on_failure
        )

    async def add_records(
        self,
        collection: str,
        records: Iterable[Mapping[str, Any]],
        *,
        wait: bool = True,
        timeout: float | None = None,
        progress: Callable[[Progress], None] | None = None,
        raise_on_failure: bool = True,
    ) -> IngestResult:
        """POST /v1/collections/{name}/records: JSON objects made documents by the collection's
        record template, split and waited for like `add_documents`. A record that does not fit
        is rejected on its own, never failing the rest: `result.rejected` counts them and, with
        `wait`, `result.rejections` says where (records[i] of its request) and why."""
        return await self._add(
            collection, "records", records, wait, timeout, progress, raise_on_failure
        )

    async def _add(
        self, collection: str, kind: str, items: Iterable[Doc], wait: bool,
        timeout: float | None, progress: Callable[[Progress], None] | None,
        raise_on_failure: bool,
    ) -> IngestResult:  # fmt: skip
        s = self.settings
        bodies = core.split_documents(items, s.max_documents, s.max_body_bytes, kind)
        state = Progress(documents=sum(n for n, _ in bodies))
        result = IngestResult()
        for n, body in bodies:
            for submitted in await self._submit(collection, n, body):
                core.note_submitted(result, state, submitted, progress)
        return await self._finish(result, state, wait, timeout, progress, raise_on_failure)

    async def add_vectors(
        self,
        collection: str,
        ids: Sequence[str],
        vectors: Any,
        *,
        texts: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any]] | None = None,
        space_id: str | None = None,
        wait: bool = True,
        timeout: float | None = None,
        raise_on_failure: bool = True,
    ) -> IngestResult:
        """POST /v1/collections/{name}/vectors: your own vectors in bulk (an (n, dim) array
        or n lists of floats, sent as base64 float32) for a collection without a model, one
        request and one job (the server's limit: EMBEDSTACK_MAX_VECTORS_PER_REQUEST)."""
        body = core.vectors_body(ids, vectors, texts, metadata, space_id)
        state = Progress(documents=len(ids))
        result = IngestResult()
        submitted = await self._run(core.documents_call(collection, body, "vectors"))
        core.note_submitted(result, state, submitted, None)
        return await self._finish(result, state, wait, timeout, None, raise_on_failure)

    async def _finish(
        self, result: IngestResult, state: Progress, wait: bool, timeout: float | None,
        progress: Callable[[Progress], None] | None, raise_on_failure: bool,
    ) -> IngestResult:  # fmt: skip
        if wait:
            result.jobs = await self.wait_jobs(result.job_ids, timeout=timeout, progress=progress,
                                         state=state)  # fmt: skip
            if raise_on_failure and result.failed:
                first = result.failed[0]
                raise JobFailedError(
                    f"{len(result.failed)} of {len(result.jobs)} ingest jobs failed; "
                    f"job {first.id}: {first.error}",
                    result.jobs,
                )
        return result

    async def _submit(self, collection: str, n: int, body: bytes) -> list[Any]:
        kind, items = core.documents_of(body)
        try:
            return [await self._run(core.documents_call(collection, body, kind))]
        except PayloadTooLargeError:
            if n < 2:
                raise
            parts = core.halves(body)  # over the server's byte limit: halve and try again
        except InvalidInputError as exc:
            limit = core.documents_limit(exc.message)
            if limit is None or n <= limit:
                raise
            self.settings.max_documents = limit  # the server's own setting: keep to it
            parts = core.split_documents(items, limit, self.settings.max_body_bytes, kind)
        out: list[Any] = []
        for m, b in parts:
            out += await self._submit(collection, m, b)
        return out

    async def get_job(self, job_id: str) -> JobOut:
        """GET /v1/jobs/{job_id}."""
        return await self._run(core.job_call(job_id))

    async def wait_job(self, job_id: str, *, timeout: float | None = None) -> JobOut:
        """Poll a job until it is `done` or `failed` (WaitTimeout after `timeout` seconds)."""
        return (await self.wait_jobs([job_id], timeout=timeout))[0]

    async def wait_jobs(
        self,
        job_ids: Sequence[str],
        *,
        timeout: float | None = None,
        progress: Callable[[Progress], None] | None = None,
        state: Progress | None = None,
    ) -> list[JobOut]:
        deadline = None if timeout is None else time.monotonic() + timeout
        final: dict[str, JobOut] = {}
        interval = 0.02
        while True:
            for job_id in job_ids:
                if job_id in final:
                    continue
                job = await self.get_job(job_id)
                if job.status in core.FINAL_JOB:
                    final[job_id] = job
                    if state is not None:
                        state.jobs_done += job.status == "done"
                        state.jobs_failed += job.status == "failed"
                        if progress:
                            progress(state)
            if len(final) == len(job_ids):
                return [final[j] for j in job_ids]
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"{len(job_ids) - len(final)} jobs not finished in {timeout} s")
            await asyncio.sleep(interval)
            interval = core.next_poll(interval)

    async def get_document(self, collection: str, document_id: str, *,
                     missing_ok: bool = False) -> DocumentOut | None:  # fmt: skip
        """GET /v1/collections/{name}/documents/{id}: the stored text and metadata; with
        `missing_ok`, None for an unknown document instead of NotFoundError."""
        path = f"/v1/collections/{seg(collection)}/documents/{seg(document_id)}"
        try:
            return await self._run(call("GET", path, DocumentOut))
        except NotFoundError:
            if missing_ok:
                return None
            raise

    async def delete_document(self, collection: str, document_id: str, *,
                        missing_ok: bool = False) -> DeletedOut | None:  # fmt: skip
        """DELETE /v1/collections/{name}/documents/{id}; with `missing_ok`, None for an
        unknown document instead of NotFoundError."""
        path = f"/v1/collections/{seg(collection)}/documents/{seg(document_id)}"
        try:
            return await self._run(call("DELETE", path, DeletedOut))
        except NotFoundError:
            if missing_ok:
                return None
            raise

    # -- query ----------------------------------------------------------------------------------
    async def query(
        self,
        collection: str,
        text: str | None = None,
        *,
        vector: Sequence[float] | None = None,
        space_id: str | None = None,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        group_by: Literal["document"] | None = None,
        ef_search: int | None = None,
        params: Mapping[str, int] | None = None,
        mode: Literal["dense", "lexical", "hybrid"] | None = None,
        fusion: Literal["rrf", "blend"] | None = None,
        alpha: float | None = None,
        doc_scoring: Literal["max", "max_sum", "first_prior"] | None = None,
    ) -> QueryOut:
        """POST /v1/collections/{name}/query: `text` or `vector` (+ `space_id`); `filter` like
        `{"lang": "en", "year": {"$gte": 2020}}`; `group_by="document"` for one hit per
        document; `mode` dense / lexical / hybrid (default: the collection's), `fusion`,
        `alpha`, `doc_scoring` (README "Search modes"); `params`: the index's search parameters
        for this query only, e.g. {"nprobe": 64, "refine_factor": 32} (README "HTTP API"), with
        `ef_search` a shorthand for params["ef_search"]."""
        return await self._run(query_call(collection, text, vector, params, space_id=space_id, k=k,
                                    filter=filter, group_by=group_by, ef_search=ef_search,
                                    mode=mode, fusion=fusion, alpha=alpha,
                                    doc_scoring=doc_scoring))  # fmt: skip

    # -- quality --------------------------------------------------------------------------------
    async def feedback(
        self, query_id: str, document_id: str, *, kind: Literal["click", "grade"] = "click",
        grade: int | None = None,
    ) -> FeedbackOut:  # fmt: skip
        """POST /v1/feedback: a click (or, with kind="grade", a relevance grade 0-3) on the hit
        `document_id` of the query answered with `query_id`."""
        payload = {"query_id": query_id, "document_id": document_id, "kind": kind, "grade": grade}
        return await self._run(call("POST", "/v1/feedback", FeedbackOut, payload))

    async def collection_stats(self, collection: str) -> StatsOut:
        """GET /v1/collections/{name}/stats: per space, drift, online recall, feedback."""
        return await self._run(call("GET", f"/v1/collections/{seg(collection)}/stats", StatsOut))

    async def reset_drift_baseline(self, collection: str) -> BaselineOut:
        """POST /v1/collections/{name}/drift/baseline: the next queries form a new baseline."""
        path = f"/v1/collections/{seg(collection)}/drift/baseline"
        return await self._run(call("POST", path, BaselineOut))

    # -- upgrades -------------------------------------------------------------------------------
    async def start_upgrade(
        self,
        collection: str,
        model: str,
        *,
        auto_cutover: bool = False,
        eval: Sequence[Mapping[str, Any]] | None = None,
        gate: Mapping[str, Any] | None = None,
    ) -> UpgradeOut:
        """POST /v1/collections/{name}/upgrade: shadow re-index into `model`'s space."""
        payload = {"model": model, "auto_cutover": auto_cutover,
                   "eval": list(eval) if eval is not None else None, "gate": gate}  # fmt: skip
        path = f"/v1/collections/{seg(collection)}/upgrade"
        return await self._run(call("POST", path, UpgradeOut, payload, retry=False))

    async def upgrade_status(self, collection: str) -> UpgradeOut:
        """GET /v1/collections/{name}/upgrade: progress, ETA, gate report."""
        return await self._run(
            call("GET", f"/v1/collections/{seg(collection)}/upgrade", UpgradeOut)
        )

    async def wait_upgrade(self, collection: str, *, timeout: float | None = None,
                     poll: float = 0.5) -> UpgradeOut:  # fmt: skip
        """Poll until the upgrade stops back-filling (ready, gate_failed, cut_over, failed...)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = await self.upgrade_status(collection)
            if status.state in core.SETTLED_UPGRADE:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"upgrade of {collection!r} still {status.state} after "
                                  f"{timeout} s ({status.done}/{status.total})")  # fmt: skip
            await asyncio.sleep(poll)

    async def cutover(
        self,
        collection: str,
        *,
        eval: Sequence[Mapping[str, Any]] | None = None,
        gate: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> UpgradeOut:
        """POST /v1/collections/{name}/upgrade/cutover: run the gate, flip the serving space."""
        payload = {"eval": list(eval) if eval is not None else None, "gate": gate,
                   "force": force}  # fmt: skip
        path = f"/v1/collections/{seg(collection)}/upgrade/cutover"
        return await self._run(call("POST", path, UpgradeOut, payload, retry=False))

    async def rollback(self, collection: str) -> RollbackOut:
        """POST /v1/collections/{name}/rollback: serve the previous space again."""
        path = f"/v1/collections/{seg(collection)}/rollback"
        return await self._run(call("POST", path, RollbackOut, {}, retry=False))

    async def retire(self, collection: str, space_id: str | None = None) -> RetireOut:
        """POST /v1/collections/{name}/retire: delete a retained space (default: previous)."""
        path = f"/v1/collections/{seg(collection)}/retire"
        return await self._run(call("POST", path, RetireOut, {"space_id": space_id}, retry=False))

    # -- aliases --------------------------------------------------------------------------------
    async def set_alias(self, alias: str, collection: str) -> AliasOut:
        """POST /v1/aliases: point `alias` at `collection` (atomically)."""
        payload = {"alias": alias, "collection": collection}
        return await self._run(call("POST", "/v1/aliases", AliasOut, payload))

    async def list_aliases(self) -> dict[str, str]:
        """GET /v1/aliases: alias -> collection."""
        return (await self._run(call("GET", "/v1/aliases", AliasesOut))).aliases

    async def delete_alias(self, alias: str) -> DeletedOut:
        """DELETE /v1/aliases/{alias}."""
        return await self._run(call("DELETE", f"/v1/aliases/{seg(alias)}", DeletedOut))

    # -- API keys and the audit log (admin scope; the caller's tenant) ---------------------------
    async def create_key(
        self, scopes: Sequence[str] = ("read",), *, collections: Sequence[str] | None = None,
        rate_rps: float | None = None, rate_texts: float | None = None, name: str | None = None,
    ) -> KeyCreatedOut:  # fmt: skip
        """POST /v1/keys: a new key of this key's tenant; `.key` is shown only in this answer."""
        grants = list(collections) if collections is not None else None
        payload = {"scopes": list(scopes), "collections": grants, "rate_rps": rate_rps,
                   "rate_texts": rate_texts, "name": name}  # fmt: skip
        return await self._run(call("POST", "/v1/keys", KeyCreatedOut, payload, retry=False))

    async def list_keys(self) -> list[KeyOut]:
        """GET /v1/keys: this tenant's keys, by prefix (never the secret)."""
        return (await self._run(call("GET", "/v1/keys", KeysOut))).keys

    async def rotate_key(self, prefix: str, *, grace_s: float = 0.0) -> KeyCreatedOut:
        """POST /v1/keys/{prefix}/rotate: a new key with the same grants; the old one is
        revoked now or after `grace_s` seconds."""
        path = f"/v1/keys/{seg(prefix)}/rotate"
        return await self._run(call("POST", path, KeyCreatedOut, {"grace_s": grace_s}, retry=False))

    async def revoke_key(self, prefix: str) -> KeyOut:
        """DELETE /v1/keys/{prefix}: refused from the next request on."""
        return await self._run(call("DELETE", f"/v1/keys/{seg(prefix)}", KeyOut))

    async def audit(self, limit: int = 100, before: int | None = None) -> list[AuditEntryOut]:
        """GET /v1/audit: this tenant's audit entries, newest first."""
        path = f"/v1/audit?limit={int(limit)}" + (f"&before={int(before)}" if before else "")
        return (await self._run(call("GET", path, AuditOut))).entries
