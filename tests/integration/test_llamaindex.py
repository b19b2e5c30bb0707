"""embedstack.integrations.llamaindex with the real llama-index-core against a real server (the
hashing test model): an index over the store, add, delete by source document, metadata filters,
async, and the server-embeds mode."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Document, Settings, StorageContext, VectorStoreIndex
from llama_index.core.schema import NodeRelationship, TextNode
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
)

from embedstack.integrations.llamaindex import (
    EmbedStackEmbedding,
    EmbedStackVectorStore,
    to_filter,
)
from tests.conftest import Server

DOCS = [
    Document(
        text="Python is a programming language", doc_id="py", metadata={"lang": "en", "year": 1991}
    ),
    Document(
        text="Rust is a programming language", doc_id="rs", metadata={"lang": "en", "year": 2015}
    ),
    Document(text="Le chat est sur le tapis", doc_id="fr", metadata={"lang": "fr", "year": 2020}),
    Document(text="The cat sat on the mat", doc_id="cat", metadata={"lang": "en", "year": 2021}),
]


@pytest.fixture(autouse=True)
def offline_tokenizer() -> Iterator[None]:
    """LlamaIndex's default splitter counts tokens with tiktoken, which downloads its
    vocabulary: count words here instead."""
    before = Settings._tokenizer
    Settings.tokenizer = str.split
    yield
    Settings._tokenizer = before


def _where(**conds: object) -> MetadataFilters:
    return MetadataFilters(filters=[MetadataFilter(key=k, value=v) for k, v in conds.items()])


def test_index_retrieve_filter_delete(hashing_server: Server) -> None:
    store = EmbedStackVectorStore(f"li-{uuid.uuid4().hex[:8]}", base_url=hashing_server.url)
    embed = EmbedStackEmbedding("hashing-test", base_url=hashing_server.url)
    index = VectorStoreIndex.from_documents(
        DOCS, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=embed
    )
    described = store.client.get_collection(store.collection)
    assert described.documents == 4 and described.model is None  # LlamaIndex's vectors

    top = index.as_retriever(similarity_top_k=1).retrieve("The cat sat on the mat")
    assert top[0].node.ref_doc_id == "cat" and top[0].node.get_content() == "The cat sat on the mat"
    assert top[0].node.metadata == {"lang": "en", "year": 2021}
    assert top[0].score is not None and top[0].score > 0.5  # LlamaIndex embeds metadata too

    recent = MetadataFilters(filters=[
        MetadataFilter(key="year", value=2015, operator=FilterOperator.GTE),
        MetadataFilter(key="lang", value=["en"], operator=FilterOperator.IN),
    ])  # fmt: skip
    got = index.as_retriever(similarity_top_k=4, filters=recent).retrieve("language")
    assert {n.node.ref_doc_id for n in got} == {"rs", "cat"}

    index.delete_ref_doc("cat")
    left = index.as_retriever(similarity_top_k=4).retrieve("The cat sat on the mat")
    assert "cat" not in {n.node.ref_doc_id for n in left} and len(left) == 3
    index.insert(
        Document(text="Go is a programming language", doc_id="go", metadata={"lang": "en"})
    )

    async def run() -> None:
        hits = await index.as_retriever(similarity_top_k=1).aretrieve("Go programming language")
        assert hits[0].node.ref_doc_id == "go"
        q = VectorStoreQuery(query_embedding=await embed.aget_query_embedding("chat tapis"),
                             similarity_top_k=1, filters=_where(lang="fr"))  # fmt: skip
        got = await store.aquery(q)
        assert got.ids == store.query(q).ids and got.nodes is not None
        assert got.nodes[0].ref_doc_id == "fr"

    asyncio.run(run())
    store.clear()
    assert store.query(VectorStoreQuery(query_embedding=[1.0] * 8, similarity_top_k=2)).ids == []


def test_server_embeds_mode(hashing_server: Server) -> None:
    store = EmbedStackVectorStore(
        f"li-{uuid.uuid4().hex[:8]}", base_url=hashing_server.url, server_embeds=True,
        model="hashing-test",
    )  # fmt: skip
    assert store.is_embedding_query is False
    source = NodeRelationship.SOURCE
    nodes = [
        TextNode(text=d.text, id_=f"{d.doc_id}-0", metadata=d.metadata,
                 relationships={source: d.as_related_node_info()})
        for d in DOCS
    ]  # fmt: skip
    assert store.add(nodes) == [n.node_id for n in nodes]
    assert store.client.get_collection(store.collection).model == "hashing-test"
    out = store.query(VectorStoreQuery(query_str="programming language", similarity_top_k=4,
                                       filters=_where(lang="en")))  # fmt: skip
    assert set(out.ids or []) == {"py-0", "rs-0", "cat-0"}
    assert out.nodes is not None and out.nodes[0].get_content() in {d.text for d in DOCS}
    only = store.query(VectorStoreQuery(query_str="language", similarity_top_k=4, doc_ids=["py"]))
    assert only.ids == ["py-0"]
    store.delete("py")
    store.delete_nodes(filters=_where(lang="fr"))
    rest = store.query(VectorStoreQuery(query_str="language", similarity_top_k=4))
    assert set(rest.ids or []) == {"rs-0", "cat-0"}
    store.delete_nodes(["rs-0", "missing"])
    assert store.query(VectorStoreQuery(query_str="x", similarity_top_k=4)).ids == ["cat-0"]
    store.clear()


def test_filters_translate_or_refuse() -> None:
    f = MetadataFilters(filters=[
        MetadataFilter(key="year", value=2000, operator=FilterOperator.GT),
        MetadataFilter(key="year", value=2020, operator=FilterOperator.LTE),
        MetadataFilter(key="tag", value=["a", "b"], operator=FilterOperator.NIN),
        MetadataFilter(key="lang", value="en"),
    ])  # fmt: skip
    assert to_filter(f) == {"year": {"$gt": 2000, "$lte": 2020}, "tag": {"$nin": ["a", "b"]},
                            "lang": {"$eq": "en"}}  # fmt: skip
    either = MetadataFilters(filters=f.filters[:2], condition=FilterCondition.OR)
    with pytest.raises(NotImplementedError, match="AND"):
        to_filter(either)
    text = _where(body="x")
    text.filters[0].operator = FilterOperator.TEXT_MATCH
    with pytest.raises(NotImplementedError, match="text_match"):
        to_filter(text)
