"""The client and both integrations end to end on the real bundled all-MiniLM-L6-v2 (one
module-scoped server: the model is slow to load on a busy machine)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from embedstack.client import AsyncClient, Client, Progress
from tests.conftest import DATA, Server, load_jsonl, server_env

pytestmark = pytest.mark.slow

PINNED = '{"all-MiniLM-L6-v2": "onnx-fp32"}'  # gated at startup, not raced in the background
FILES = ("tutorial/errors.rst.txt", "tutorial/datastructures.rst.txt")
SNIPPETS = [
    ("py", "Python is a programming language that lets you work quickly.", "code"),
    ("cat", "The cat sat on the mat and purred in the sun.", "pets"),
    ("bread", "Knead the dough, let it rise, then bake the bread for forty minutes.", "food"),
    ("rust", "Rust is a systems programming language focused on memory safety.", "code"),
]


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = server_env(EMBEDSTACK_MODEL_BACKENDS=PINNED)
    server = Server(tmp_path_factory.mktemp("real-client") / "data", env).start(timeout=300)
    yield server
    server.stop()


def test_client_ingests_and_queries_real_documents(real_server: Server) -> None:
    docs = [d for d in load_jsonl(DATA / "pydoc_sections.jsonl")
            if d["metadata"]["file"] in FILES]  # type: ignore[index]  # fmt: skip
    with Client(real_server.url, max_documents=8, timeout=120) as es:
        assert es.ready().backends["all-MiniLM-L6-v2"] == "pinned:onnx-fp32"
        made = es.create_collection("pydoc")
        assert made.model == "all-MiniLM-L6-v2" and made.dim == 384
        seen: list[Progress] = []
        done = es.add_documents("pydoc", docs, progress=lambda p: seen.append(Progress(**vars(p))),
                                timeout=600)  # fmt: skip
        assert done.documents == len(docs) and len(done.submitted) == -(-len(docs) // 8)
        assert seen[-1].finished and seen[-1].jobs_done == len(done.submitted)
        hits = es.query("pydoc", "how do I catch an exception with try and except?", k=3,
                        group_by="document", mode="dense").hits  # fmt: skip
        assert hits[0].metadata["file"] == "tutorial/errors.rst.txt"
        assert len({h.document_id for h in hits}) == 3
        only = es.query("pydoc", "exceptions", k=5,
                        filter={"file": {"$in": ["tutorial/datastructures.rst.txt"]}})  # fmt: skip
        assert only.hits and {h.metadata["file"] for h in only.hits} == {FILES[1]}
        vec = es.embed(["how do I catch an exception with try and except?"])[0]
        same = es.query("pydoc", vector=vec, space_id=made.space_id, k=3, group_by="document")
        assert [h.document_id for h in same.hits] == [h.document_id for h in hits]

    async def aio() -> None:
        async with AsyncClient(real_server.url) as ac:
            out = await ac.query("pydoc", "list comprehensions", k=1, group_by="document")
            assert out.hits[0].metadata["file"] == "tutorial/datastructures.rst.txt"

    asyncio.run(aio())


def test_records_route_on_the_real_model(real_server: Server) -> None:
    """Records posted through the route are found by meaning; a bad one is listed by the job."""
    template = {"id": "key", "text": ["body"], "metadata": ["topic"]}
    records = [{"key": i, "body": t, "topic": c} for i, t, c in SNIPPETS]
    records.append({"body": "A record without its key.", "topic": "none"})
    with Client(real_server.url, timeout=120) as es:
        es.create_collection("rec-real", record=template)
        out = es.add_records("rec-real", records, timeout=600)
        assert (out.documents, out.rejected) == (len(SNIPPETS), 1)
        assert out.rejections[0].where == f"records[{len(SNIPPETS)}]"
        assert "no value for 'key'" in out.rejections[0].reason
        hits = es.query("rec-real", "a kitten resting in the sunshine", k=1, mode="dense").hits
        assert hits[0].document_id == "cat" and hits[0].metadata == {"topic": "pets"}


def test_langchain_retriever_on_the_real_model(real_server: Server) -> None:
    pytest.importorskip("langchain_core")
    from embedstack.integrations.langchain import EmbedStackEmbeddings, EmbedStackVectorStore

    store = EmbedStackVectorStore(f"lc-{uuid.uuid4().hex[:8]}", base_url=real_server.url)
    store.add_texts([t for _, t, _ in SNIPPETS], [{"topic": c} for *_, c in SNIPPETS],
                    ids=[i for i, *_ in SNIPPETS])  # fmt: skip
    retriever = store.as_retriever(search_kwargs={"k": 1})
    assert retriever.invoke("which language should I write my program in?")[0].id in ("py", "rust")
    assert retriever.invoke("a kitten resting")[0].id == "cat"
    code = store.similarity_search("baking", k=2, filter={"topic": "code"})
    assert {d.id for d in code} == {"py", "rust"}
    emb = EmbedStackEmbeddings(base_url=real_server.url)
    assert len(emb.embed_query("hello")) == 384


def test_llamaindex_index_on_the_real_model(real_server: Server) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core import Document, Settings, StorageContext, VectorStoreIndex

    from embedstack.integrations.llamaindex import EmbedStackEmbedding, EmbedStackVectorStore

    before = Settings._tokenizer
    Settings.tokenizer = str.split  # tiktoken would download its vocabulary
    try:
        store = EmbedStackVectorStore(f"li-{uuid.uuid4().hex[:8]}", base_url=real_server.url)
        index = VectorStoreIndex.from_documents(
            [Document(text=t, doc_id=i, metadata={"topic": c}) for i, t, c in SNIPPETS],
            storage_context=StorageContext.from_defaults(vector_store=store),
            embed_model=EmbedStackEmbedding("all-MiniLM-L6-v2", base_url=real_server.url),
        )
        top = index.as_retriever(similarity_top_k=1).retrieve("how long to bake a loaf?")
        assert top[0].node.ref_doc_id == "bread"
        assert store.client.get_collection(store.collection).dim == 384
    finally:
        Settings._tokenizer = before


def test_the_readme_rag_retriever_runs(real_server: Server) -> None:
    pytest.importorskip("langchain_core")
    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    start = readme.index("```python\nfrom embedstack.integrations.langchain")
    code = readme[start + len("```python\n") : readme.index("```", start + 10)]
    assert len(code.strip().splitlines()) <= 10, "the README promises ten lines"
    scope: dict[str, object] = {}
    exec(code.replace("http://127.0.0.1:8080", real_server.url), scope)
    assert scope["context"] == "Refunds are paid within 14 days."
