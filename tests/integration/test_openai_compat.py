"""LangChain's stock `OpenAIEmbeddings` pointed at `/v1/embeddings`: token ids (its default)
are refused with a message naming the fix, and with `check_embedding_ctx_length=False` it
works."""

from __future__ import annotations

import httpx
import pytest

from embedstack.serving.schemas import TOKEN_IDS_REFUSED
from tests.conftest import Server


@pytest.mark.parametrize("tokens", [[1, 2, 3], [[1, 2], [3]], 7])
def test_token_ids_are_refused_naming_the_fix(hashing_server: Server, tokens: object) -> None:
    r = httpx.post(f"{hashing_server.url}/v1/embeddings", json={"input": tokens})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["type"] == "InvalidInput"
    assert err["message"] == f"invalid request: input: {TOKEN_IDS_REFUSED}"
    assert "check_embedding_ctx_length=False" in err["message"]


def _local_tiktoken(monkeypatch: pytest.MonkeyPatch) -> None:
    """tiktoken downloads its vocabularies; give langchain-openai a real tiktoken Encoding
    built here (byte-level) so its default path sends token ids as it would with cl100k."""
    import tiktoken
    from langchain_openai.embeddings import base

    enc = tiktoken.Encoding(
        "bytes-only",
        pat_str=r"\S+|\s+",
        mergeable_ranks={bytes([i]): i for i in range(256)},
        special_tokens={},
    )
    monkeypatch.setattr(base.tiktoken, "encoding_for_model", lambda _name: enc)
    monkeypatch.setattr(base.tiktoken, "get_encoding", lambda _name: enc)


def test_stock_openai_embeddings_both_ways(
    hashing_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("langchain_openai")
    import openai
    from langchain_openai import OpenAIEmbeddings

    monkeypatch.setenv("OPENAI_API_KEY", "sk-dummy")
    _local_tiktoken(monkeypatch)
    url = f"{hashing_server.url}/v1"
    default = OpenAIEmbeddings(model="hashing-test", base_url=url, max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        default.embed_documents(["hello world"])
    assert "check_embedding_ctx_length=False" in str(refused.value)

    fixed = OpenAIEmbeddings(
        model="hashing-test", base_url=url, check_embedding_ctx_length=False, max_retries=0
    )
    vecs = fixed.embed_documents(["hello world", "goodbye"])
    ours = httpx.post(f"{url}/embeddings", json={"input": ["hello world", "goodbye"]}).json()
    assert len(vecs) == 2
    for got, want in zip(vecs, ours["data"], strict=True):
        assert got == pytest.approx(want["embedding"], abs=1e-6)
    assert fixed.embed_query("hello world") == pytest.approx(vecs[0], abs=1e-6)
