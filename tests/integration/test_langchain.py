"""embedstack.integrations.langchain against a real server (the hashing test model), through
langchain-core's own standard suites (langchain-tests) and the rest of the contract: scores,
filters, retriever, from_texts, async variants."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator

import pytest

pytest.importorskip("langchain_core")
langchain_tests = pytest.importorskip("langchain_tests.integration_tests")

from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import DeterministicFakeEmbedding  # noqa: E402
from langchain_core.vectorstores import VectorStore  # noqa: E402

from embedstack.client import Client, NotFoundError  # noqa: E402
from embedstack.integrations.langchain import (  # noqa: E402
    EmbedStackEmbeddings,
    EmbedStackVectorStore,
)
from tests.conftest import Server  # noqa: E402

# the suites' coroutine tests run on pytest-asyncio (langchain's repos use its auto mode); the
# suites forbid overriding their tests, so the mark goes on the class, sync tests included
ASYNC_SUITE = [
    pytest.mark.asyncio,
    pytest.mark.filterwarnings(
        "ignore:The test <Function .* is marked with '@pytest.mark.asyncio'"
    ),
]


class TestEmbedStackEmbeddingsStandard(langchain_tests.EmbeddingsIntegrationTests):
    pytestmark = ASYNC_SUITE

    @property
    def embeddings_class(self) -> type[EmbedStackEmbeddings]:
        return EmbedStackEmbeddings

    @pytest.fixture
    def model(self, hashing_server: Server) -> EmbedStackEmbeddings:
        return EmbedStackEmbeddings("hashing-test", base_url=hashing_server.url)


def _name() -> str:
    return f"lc-{uuid.uuid4().hex[:12]}"


class TestServerEmbedsStandard(langchain_tests.VectorStoreIntegrationTests):
    """The server embeds: a collection with a model, texts and queries sent as text."""

    pytestmark = ASYNC_SUITE

    @property
    def has_get_by_ids(self) -> bool:
        return True  # GET /v1/collections/{name}/documents/{id}

    @pytest.fixture
    def vectorstore(self, hashing_server: Server) -> Iterator[VectorStore]:  # type: ignore[override]
        store = EmbedStackVectorStore(_name(), base_url=hashing_server.url, model="hashing-test")
        yield store
        store.client.delete_collection(store.collection)


class TestClientEmbedsStandard(langchain_tests.VectorStoreIntegrationTests):
    """The suite's own embeddings (DeterministicFakeEmbedding) make the vectors: the collection
    holds bring-your-own vectors."""

    pytestmark = ASYNC_SUITE

    @property
    def has_get_by_ids(self) -> bool:
        return True  # GET /v1/collections/{name}/documents/{id}

    @pytest.fixture
    def vectorstore(self, hashing_server: Server) -> Iterator[VectorStore]:  # type: ignore[override]
        store = EmbedStackVectorStore(_name(), self.get_embeddings(), base_url=hashing_server.url)
        yield store
        with contextlib.suppress(NotFoundError):  # never written to
            store.client.delete_collection(store.collection)


DOCS = [
    Document(
        page_content="Python is a programming language", metadata={"lang": "en", "year": 1991}
    ),
    Document(page_content="Rust is a programming language", metadata={"lang": "en", "year": 2015}),
    Document(page_content="Le chat est sur le tapis", metadata={"lang": "fr", "year": 2020}),
    Document(page_content="The cat sat on the mat", metadata={"lang": "en", "year": 2021}),
]


def test_scores_filters_and_retriever(hashing_server: Server) -> None:
    store = EmbedStackVectorStore(_name(), base_url=hashing_server.url, model="hashing-test")
    ids = store.add_documents(DOCS, ids=["py", "rs", "fr", "cat"])
    assert ids == ["py", "rs", "fr", "cat"]
    scored = store.similarity_search_with_score("programming language", k=4)
    assert [d.id for d, _ in scored[:2]] in (["py", "rs"], ["rs", "py"])
    assert [s for _, s in scored] == sorted((s for _, s in scored), reverse=True)
    hits = store.similarity_search("language", k=4, filter={"year": {"$gte": 2015}, "lang": "en"})
    assert {d.id for d in hits} == {"rs", "cat"}
    relevant = store.similarity_search_with_relevance_scores("cat mat", k=2)
    assert relevant[0][0].id == "cat" and 0.0 <= relevant[0][1] <= 1.0
    by_vector = store.similarity_search_by_vector(store.embeddings.embed_query("chat tapis"), k=1)
    assert by_vector[0].id == "fr"

    retriever = store.as_retriever(search_kwargs={"k": 1, "filter": {"lang": "fr"}})
    assert [d.id for d in retriever.invoke("programming")] == ["fr"]
    threshold = store.as_retriever(
        search_type="similarity_score_threshold", search_kwargs={"score_threshold": 0.99, "k": 4}
    )
    assert [d.id for d in threshold.invoke("The cat sat on the mat")] == ["cat"]
    store.delete(["cat", "missing"])
    assert "cat" not in {d.id for d in store.similarity_search("cat mat", k=4)}
    with pytest.raises(ValueError, match="ids"):
        store.delete()


def test_from_texts_both_ways_and_async(hashing_server: Server) -> None:
    texts = [d.page_content for d in DOCS]
    metas = [d.metadata for d in DOCS]
    name = _name()
    emb = EmbedStackEmbeddings("hashing-test", base_url=hashing_server.url)
    server_side = EmbedStackVectorStore.from_texts(texts, emb, metas, collection=name)
    assert server_side.server_embeds
    assert Client(hashing_server.url).get_collection(name).model == "hashing-test"
    assert server_side.similarity_search("cat mat", k=1)[0].page_content == "The cat sat on the mat"

    fake = DeterministicFakeEmbedding(size=16)
    mine = EmbedStackVectorStore.from_texts(
        texts, fake, metas, collection=_name(), base_url=hashing_server.url
    )
    described = mine.client.get_collection(mine.collection)
    assert described.dim == 16 and described.model is None
    assert mine.similarity_search(texts[2], k=1)[0].metadata == {"lang": "fr", "year": 2020}

    async def run() -> None:
        ids = await server_side.aadd_texts(["Go is a language"], [{"lang": "en"}], ids=["go"])
        assert ids == ["go"]
        hits = await server_side.asimilarity_search_with_score("Go language", k=1)
        assert hits[0][0].id == "go"
        retriever = server_side.as_retriever(search_kwargs={"k": 2, "filter": {"lang": "fr"}})
        assert [d.metadata["lang"] for d in await retriever.ainvoke("cat")] == ["fr"]
        await server_side.adelete(["go"])
        assert "go" not in {d.id for d in await server_side.asimilarity_search("Go", k=5)}
        assert len(await emb.aembed_documents(["a", "b"])) == 2

    asyncio.run(run())
