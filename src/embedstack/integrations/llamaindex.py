"""LlamaIndex on embedstack: `EmbedStackVectorStore` (a `BasePydanticVectorStore` over one
collection) and `EmbedStackEmbedding` (through `/v1/embeddings`).
`pip install embedstack[llamaindex]`.

    from llama_index.core import StorageContext, VectorStoreIndex
    from embedstack.integrations.llamaindex import EmbedStackEmbedding, EmbedStackVectorStore

    store = EmbedStackVectorStore(collection="docs", base_url="http://127.0.0.1:8080")
    index = VectorStoreIndex.from_documents(
        documents, storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=EmbedStackEmbedding(base_url="http://127.0.0.1:8080"))

By default LlamaIndex embeds (its `embed_model`) and the collection holds those vectors (`dim`
from the first node, `metric` as given). With `server_embeds=True` the collection has a model,
nodes go as text and queries as `query_str` (`is_embedding_query` is False), so LlamaIndex's
own embedding of the nodes is not used. Nodes round-trip whole (LlamaIndex's
`_node_content`); filters are `MetadataFilters` with AND of `== != > >= < <= in nin`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.schema import BaseNode, MetadataMode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict

from embedstack.client import AsyncClient, Client, NotFoundError
from embedstack.serving.responses import QueryOut

_OPS = {
    FilterOperator.EQ: "$eq", FilterOperator.NE: "$ne", FilterOperator.GT: "$gt",
    FilterOperator.GTE: "$gte", FilterOperator.LT: "$lt", FilterOperator.LTE: "$lte",
    FilterOperator.IN: "$in", FilterOperator.NIN: "$nin",
}  # fmt: skip


def to_filter(filters: MetadataFilters | None) -> dict[str, Any]:
    """LlamaIndex filters -> embedstack's `{"field": {"$op": value}}` (AND only)."""
    out: dict[str, Any] = {}
    if filters is None:
        return out
    if filters.condition not in (None, FilterCondition.AND) and len(filters.filters) > 1:
        raise NotImplementedError(
            f"embedstack filters AND conditions only, not {filters.condition}"
        )
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            for key, ops in to_filter(f).items():
                out.setdefault(key, {}).update(ops)
            continue
        op = _OPS.get(FilterOperator(f.operator))
        if op is None:
            raise NotImplementedError(
                f"filter operator {f.operator!r} is not supported by embedstack; use one of "
                f"{', '.join(o.value for o in _OPS)}"
            )
        value = list(f.value) if isinstance(f.value, list | tuple) else f.value
        out.setdefault(f.key, {})[op] = value
    return out


class EmbedStackVectorStore(BasePydanticVectorStore):
    """A LlamaIndex vector store over one embedstack collection (created when first written)."""

    stores_text: bool = True
    flat_metadata: bool = False

    collection: str
    base_url: str | None = None
    server_embeds: bool = False
    model: str | None = None
    metric: str = "cosine"
    max_k: int = 1000  # the server's EMBEDSTACK_MAX_K
    wait_timeout: float | None = None

    _client: Client = PrivateAttr()

    def __init__(
        self,
        collection: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        server_embeds: bool = False,
        model: str | None = None,
        metric: str = "cosine",
        client: Client | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            collection=collection, base_url=base_url, server_embeds=server_embeds, model=model,
            metric=metric, is_embedding_query=not server_embeds, **kwargs,
        )  # fmt: skip
        self._client = client or Client(base_url, api_key=api_key)

    @classmethod
    def class_name(cls) -> str:
        return "EmbedStackVectorStore"

    @property
    def client(self) -> Client:
        return self._client

    # -- writes --------------------------------------------------------------------------------
    def _documents(self, nodes: Sequence[BaseNode]) -> list[dict[str, Any]]:
        docs = []
        for node in nodes:
            meta = node_to_metadata_dict(
                node, remove_text=not self.server_embeds, flat_metadata=self.flat_metadata
            )
            doc: dict[str, Any] = {
                "id": node.node_id,
                "text": node.get_content(metadata_mode=MetadataMode.NONE),
                "metadata": meta,
            }
            if not self.server_embeds:
                doc["vector"] = node.get_embedding()  # ValueError names a node without one
            docs.append(doc)
        return docs

    def _create_args(self, docs: list[dict[str, Any]]) -> dict[str, Any]:
        if self.server_embeds:
            return {"model": self.model}
        return {"dim": len(docs[0]["vector"]), "metric": self.metric}

    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Store nodes (replacing same ids) and wait until queries see them."""
        if not nodes:
            return []
        docs = self._documents(nodes)
        try:
            self._client.get_collection(self.collection)
        except NotFoundError:
            self._client.create_collection(self.collection, **self._create_args(docs))
        self._client.add_documents(self.collection, docs, timeout=self.wait_timeout)
        return [n.node_id for n in nodes]

    async def async_add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        if not nodes:
            return []
        docs = self._documents(nodes)
        async with AsyncClient.like(self._client.settings) as ac:
            try:
                await ac.get_collection(self.collection)
            except NotFoundError:
                await ac.create_collection(self.collection, **self._create_args(docs))
            await ac.add_documents(self.collection, docs, timeout=self.wait_timeout)
        return [n.node_id for n in nodes]

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node of source document `ref_doc_id`."""
        self.delete_nodes(filters=MetadataFilters(filters=[
            MetadataFilter(key="ref_doc_id", value=ref_doc_id)]))  # fmt: skip

    def delete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        """Delete nodes by id, or every node matching `filters` (both: the ids that match)."""
        if node_ids is None and filters is None:
            raise ValueError("pass node_ids or filters; clear() deletes everything")
        if filters is None:
            for node_id in node_ids or []:
                self._client.delete_document(self.collection, node_id, missing_ok=True)
            return
        wanted = None if node_ids is None else set(node_ids)
        while True:  # a filtered search finds up to max_k at a time: until none is left
            targets = [
                t for t in self._matching(to_filter(filters)) if wanted is None or t in wanted
            ]
            if not targets:
                return
            for node_id in targets:
                self._client.delete_document(self.collection, node_id, missing_ok=True)

    def clear(self) -> None:
        """Delete the collection (it is made again by the next add)."""
        with contextlib.suppress(NotFoundError):
            self._client.delete_collection(self.collection)

    def _matching(self, flt: dict[str, Any]) -> list[str]:
        """Ids of the nodes whose metadata match `flt`: a filtered query with an arbitrary
        probe finds every match up to max_k (the API has no listing route)."""
        try:
            described = self._client.get_collection(self.collection)
        except NotFoundError:
            return []
        ids: list[str] = []
        probe: dict[str, Any] = {"text": "a", "mode": "dense"}
        if not self.server_embeds:
            probe = {"vector": [1.0] + [0.0] * (described.dim - 1)}
        probe["space_id"] = None if self.server_embeds else described.space_id
        # the widest HNSW search (an index without ef_search, e.g. ivf_flat, refuses the knob)
        if "ef_search" in described.index.get("params", {}):
            probe["ef_search"] = 4096
        seen: set[str] = set()
        while True:
            found = self._client.query(self.collection, k=self.max_k, filter=flt or None,
                                       group_by="document", **probe)  # fmt: skip
            new = [h.document_id for h in found.hits if h.document_id not in seen]
            ids += new
            seen.update(new)
            if len(found.hits) < self.max_k or not new:
                return ids

    # -- reads ---------------------------------------------------------------------------------
    def _query_args(self, query: VectorStoreQuery) -> dict[str, Any]:
        if query.mode != VectorStoreQueryMode.DEFAULT:
            raise NotImplementedError(f"embedstack answers DEFAULT queries, not {query.mode}")
        if query.node_ids:
            raise NotImplementedError("query by node_ids is not supported; filter by metadata")
        flt = to_filter(query.filters)
        if query.doc_ids:
            flt.setdefault("ref_doc_id", {})["$in"] = list(query.doc_ids)
        args: dict[str, Any] = {"k": query.similarity_top_k, "filter": flt or None,
                                "group_by": "document", "mode": "dense"}  # fmt: skip
        if self.server_embeds and query.query_str is not None:
            args["text"] = query.query_str
        elif query.query_embedding is not None:
            args["vector"] = list(query.query_embedding)
        else:
            raise ValueError("the query has no embedding (and this store does not embed text)")
        return args

    def _result(self, out: QueryOut) -> VectorStoreQueryResult:
        nodes, scores, ids = [], [], []
        for hit in out.hits:
            text = None if self.server_embeds else hit.text  # server mode: text in the node
            nodes.append(metadata_dict_to_node(hit.metadata, text=text))
            scores.append(hit.score)
            ids.append(hit.document_id)
        return VectorStoreQueryResult(nodes=nodes, similarities=scores, ids=ids)

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        args = self._query_args(query)
        try:
            if "vector" in args and self.server_embeds:
                args["space_id"] = self._client.get_collection(self.collection).space_id
            return self._result(self._client.query(self.collection, **args))
        except NotFoundError:
            if self.server_embeds:
                raise
            return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])  # nothing added

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        args = self._query_args(query)
        async with AsyncClient.like(self._client.settings) as ac:
            try:
                if "vector" in args and self.server_embeds:
                    args["space_id"] = (await ac.get_collection(self.collection)).space_id
                return self._result(await ac.query(self.collection, **args))
            except NotFoundError:
                if self.server_embeds:
                    raise
                return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])


class EmbedStackEmbedding(BaseEmbedding):
    """LlamaIndex embeddings from an embedstack server's `/v1/embeddings`."""

    base_url: str | None = None
    _client: Client = PrivateAttr()

    def __init__(
        self,
        model_name: str = "all-MiniLM-L6-v2",
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        client: Client | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model_name=model_name, base_url=base_url, **kwargs)
        self._client = client or Client(base_url, api_key=api_key)

    @classmethod
    def class_name(cls) -> str:
        return "EmbedStackEmbedding"

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._client.embed([query], self.model_name)[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._client.embed([text], self.model_name)[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._client.embed(texts, self.model_name) if texts else []

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return (await self._aget_text_embeddings([query]))[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return (await self._aget_text_embeddings([text]))[0]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        async with AsyncClient.like(self._client.settings) as ac:
            return await ac.embed(texts, self.model_name) if texts else []
