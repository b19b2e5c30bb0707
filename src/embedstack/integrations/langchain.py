"""LangChain on embedstack: `EmbedStackEmbeddings` (through `/v1/embeddings`) and
`EmbedStackVectorStore` (a collection). `pip install embedstack[langchain]`.

    from embedstack.integrations.langchain import EmbedStackVectorStore

    store = EmbedStackVectorStore("docs", base_url="http://127.0.0.1:8080")
    store.add_texts(["Python is a language."], metadatas=[{"lang": "en"}], ids=["py"])
    retriever = store.as_retriever(search_kwargs={"k": 4, "filter": {"lang": "en"}})

Two ways to embed. Without `embedding` (or with an `EmbedStackEmbeddings`), the server embeds:
the collection has a model, texts are chunked by the model's tokenizer, queries go as text. With
any other LangChain `Embeddings`, vectors are made client-side and the collection holds your
own vectors (`dim` from the first batch, `metric` as given).

Adds wait for the ingest job (202 + job on the server), so a search right after sees them. A
hit is the best chunk of a document (`group_by="document"`): for a document longer than the
model's chunk size, `page_content` is that chunk, not the whole text.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from embedstack.client import AsyncClient, Client, NotFoundError
from embedstack.serving.responses import DocumentOut, HitOut, QueryOut

Metric = Literal["cosine", "ip", "l2"]


class EmbedStackEmbeddings(Embeddings):
    """Embeddings from an embedstack server's `/v1/embeddings` (the model's own tokenizer)."""

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        client: Client | None = None,
        **client_options: Any,
    ) -> None:
        self.model = model
        self._options = {"api_key": api_key, **client_options}
        self.client = client or Client(base_url, **self._options)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.client.embed(texts, self.model) if texts else []

    def embed_query(self, text: str) -> list[float]:
        return self.client.embed([text], self.model)[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        async with _async_client(self.client) as ac:
            return await ac.embed(texts, self.model)

    async def aembed_query(self, text: str) -> list[float]:
        return (await self.aembed_documents([text]))[0]


@asynccontextmanager
async def _async_client(client: Client) -> AsyncIterator[AsyncClient]:
    """An AsyncClient like `client`, for one call: httpx async pools belong to one event loop,
    and LangChain callers bring their own loops."""
    ac = AsyncClient.like(client.settings)
    try:
        yield ac
    finally:
        await ac.close()


class EmbedStackVectorStore(VectorStore):
    """A LangChain vector store over one embedstack collection (created when missing)."""

    def __init__(
        self,
        collection: str,
        embedding: Embeddings | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        client: Client | None = None,
        model: str | None = None,
        metric: Metric = "cosine",
        chunking: dict[str, Any] | None = None,
        index: dict[str, Any] | None = None,
        timeout: float | None = None,
        **client_options: Any,
    ) -> None:
        if isinstance(embedding, EmbedStackEmbeddings):  # the server embeds with that model
            model = model or embedding.model
            client = client or embedding.client
            embedding = None
        self.collection = collection
        self._options = {"api_key": api_key, **client_options}
        self.client = client or Client(base_url, **self._options)
        self._embedding = embedding
        self.model = model
        self.metric: Metric = metric
        self._create = {"chunking": chunking, "index": index}
        self.wait_timeout = timeout
        self._space_id: str | None = None
        if embedding is None:  # a text collection: make sure it exists now
            self._ensure(None)

    # -- LangChain's contract ------------------------------------------------------------------
    @property
    def embeddings(self) -> Embeddings:
        if self._embedding is not None:
            return self._embedding
        return EmbedStackEmbeddings(self.model, client=self.client)

    @property
    def server_embeds(self) -> bool:
        return self._embedding is None

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Store texts (replacing documents with the same ids) and wait until search sees them."""
        texts = list(texts)
        if not texts:
            return []
        vectors = self._embedding.embed_documents(texts) if self._embedding else None
        self._ensure(len(vectors[0]) if vectors else None)
        docs, out_ids = _documents(texts, metadatas, ids, vectors)
        self.client.add_documents(self.collection, docs, timeout=self.wait_timeout)
        return out_ids

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        texts = list(texts)
        if not texts:
            return []
        vectors = await self._embedding.aembed_documents(texts) if self._embedding else None
        async with _async_client(self.client) as ac:
            await self._aensure(ac, len(vectors[0]) if vectors else None)
            docs, out_ids = _documents(texts, metadatas, ids, vectors)
            await ac.add_documents(self.collection, docs, timeout=self.wait_timeout)
        return out_ids

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete documents by id (unknown ids are ignored). `ids=None` is refused: dropping
        the whole collection is `client.delete_collection(name)`."""
        for doc_id in _required(ids):
            self.client.delete_document(self.collection, doc_id, missing_ok=True)
        return True

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        async with _async_client(self.client) as ac:
            for doc_id in _required(ids):
                await ac.delete_document(self.collection, doc_id, missing_ok=True)
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The stored documents with these ids (unknown ids are left out)."""
        found = [self.client.get_document(self.collection, i, missing_ok=True) for i in ids]
        return [_stored(d) for d in found if d is not None]

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        async with _async_client(self.client) as ac:
            found = [await ac.get_document(self.collection, i, missing_ok=True) for i in ids]
        return [_stored(d) for d in found if d is not None]

    def similarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    async def asimilarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        pairs = await self.asimilarity_search_with_score(query, k, filter, **kwargs)
        return [d for d, _ in pairs]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Best documents first with the server's dense score (cosine/ip: similarity, higher
        is closer; l2: distance): similarity search asks for mode "dense". `filter` is
        embedstack's: `{"lang": "en", "year": {"$gte": 2020}}` with `$in $nin $ne $gt $gte $lt
        $lte`."""
        if self._embedding is not None:
            vector = self._embedding.embed_query(query)
            return self.similarity_search_by_vector_with_score(vector, k, filter, **kwargs)
        return self._search(lambda: self.client.query(
            self.collection, query, k=k, filter=filter, group_by=_group(kwargs), mode="dense",
        ))  # fmt: skip

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        vector = await self._embedding.aembed_query(query) if self._embedding else None
        async with _async_client(self.client) as ac:
            try:
                if vector is not None:
                    out = await ac.query(self.collection, vector=vector, k=k, filter=filter,
                                         group_by=_group(kwargs))  # fmt: skip
                else:
                    out = await ac.query(self.collection, query, k=k, filter=filter,
                                         group_by=_group(kwargs), mode="dense")  # fmt: skip
            except NotFoundError:
                if vector is not None:  # its collection is made by the first add
                    return []
                raise
        return _pairs(out)

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:  # fmt: skip
        pairs = self.similarity_search_by_vector_with_score(embedding, k, filter, **kwargs)
        return [d for d, _ in pairs]

    def similarity_search_by_vector_with_score(
        self, embedding: list[float], k: int = 4, filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:  # fmt: skip
        """A raw vector; for a text collection it must come from the collection's model
        (`self.embeddings`), and is sent with the collection's space id."""
        space = None
        if self._embedding is None:
            space = self._space_id or self.client.get_collection(self.collection).space_id
            self._space_id = space
        return self._search(lambda: self.client.query(
            self.collection, vector=embedding, space_id=space, k=k, filter=filter,
            group_by=_group(kwargs),
        ), missing_ok=self._embedding is not None)  # fmt: skip

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        if self.metric == "l2":
            return lambda d: min(1.0, max(0.0, 1.0 - d / math.sqrt(2)))
        return lambda s: min(1.0, max(0.0, s))  # cosine similarity (unit vectors for "ip")

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        collection: str = "langchain",
        **kwargs: Any,
    ) -> EmbedStackVectorStore:
        """A store over `collection` holding `texts`. With an `EmbedStackEmbeddings` the
        server embeds (its model); with any other `Embeddings` the vectors are yours."""
        store = cls(collection, embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    # -- helpers -------------------------------------------------------------------------------
    def _search(
        self, run: Callable[[], QueryOut], missing_ok: bool = False
    ) -> list[tuple[Document, float]]:
        try:
            return _pairs(run())
        except NotFoundError:
            if missing_ok:  # a vector collection is made by the first add
                return []
            raise

    def _create_args(self, dim: int | None) -> dict[str, Any]:
        extra = {k: v for k, v in self._create.items() if v is not None}
        if dim is not None:
            return {"dim": dim, "metric": self.metric, **extra}
        return {"model": self.model, **extra}

    def _ensure(self, dim: int | None) -> None:
        try:
            self.client.get_collection(self.collection)
        except NotFoundError:
            self.client.create_collection(self.collection, **self._create_args(dim))

    async def _aensure(self, ac: AsyncClient, dim: int | None) -> None:
        try:
            await ac.get_collection(self.collection)
        except NotFoundError:
            await ac.create_collection(self.collection, **self._create_args(dim))


def _required(ids: list[str] | None) -> list[str]:
    if ids is None:
        raise ValueError("pass the ids to delete; to drop everything delete the collection")
    return ids


def _group(kwargs: dict[str, Any]) -> Literal["document"] | None:
    """One hit per document unless `group_by=None` asks for chunks."""
    group: Literal["document"] | None = kwargs.get("group_by", "document")
    return group


def _documents(
    texts: Sequence[str],
    metadatas: Sequence[dict[str, Any]] | None,
    ids: Sequence[str | None] | None,
    vectors: Sequence[Sequence[float]] | None,
) -> tuple[list[dict[str, Any]], list[str]]:
    if metadatas is not None and len(metadatas) != len(texts):
        raise ValueError(f"{len(metadatas)} metadatas for {len(texts)} texts")
    if ids is not None and len(ids) != len(texts):
        raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
    out_ids = [
        (ids[i] if ids is not None else None) or str(uuid.uuid4()) for i in range(len(texts))
    ]
    docs = []
    for i, text in enumerate(texts):
        doc: dict[str, Any] = {"id": out_ids[i], "text": text,
                               "metadata": dict(metadatas[i]) if metadatas else {}}  # fmt: skip
        if vectors is not None:
            doc["vector"] = list(vectors[i])
        docs.append(doc)
    return docs, out_ids


def _stored(doc: DocumentOut) -> Document:
    return Document(page_content=doc.text, metadata=dict(doc.metadata), id=doc.id)


def _document(hit: HitOut) -> Document:
    return Document(page_content=hit.text, metadata=dict(hit.metadata), id=hit.document_id)


def _pairs(out: QueryOut) -> list[tuple[Document, float]]:
    return [(_document(h), h.score) for h in out.hits]
