"""`embedstack ingest` on rich documents and records, end to end into a collection that a real
server searches: section and page metadata on hits, bad files reported, the rest ingested."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from embedstack.storage.store import Store
from embedstack.testing import EMBEDSTACK
from tests.conftest import Server, server_env
from tests.sample_files import HTML, MARKDOWN, RST, make_pdf

HASHING = server_env(EMBEDSTACK_DEFAULT_MODEL="hashing-test")


def ingest(*args: str, env: dict[str, str] = HASHING) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EMBEDSTACK, "ingest", *args], env=env, capture_output=True, text=True, timeout=300
    )


def sample_folder(root: Path) -> Path:
    folder = root / "docs"
    folder.mkdir()
    (folder / "tea.html").write_text(HTML)
    (folder / "sail.md").write_text(MARKDOWN)
    (folder / "astro.rst").write_text(RST)
    (folder / "geo.pdf").write_bytes(
        make_pdf(["Volcanoes erupt molten lava and ash.", "Glaciers are slow rivers of ice."])
    )
    (folder / "corrupt.pdf").write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog")
    (folder / "products.csv").write_text(
        "sku,title,body,price\n"
        "k1,Kettle,An electric kettle boils water quickly.,20\n"
        'k2,"Teapot,A broken quote runs on,5\n'
        "k3,Mug,A ceramic mug holds hot tea.,5\n"
        ",Spoon,A spoon without its id.,1\n"
    )
    return folder


def stored(data: Path, collection: str, indexed: bool = True) -> dict[str, str]:
    store = Store(data / "store.db")
    try:
        ids = store.document_ids(collection)
        rows = store.get_documents(collection, ids)
        assert not indexed or all(r.indexed_hash == r.content_hash for r in rows)  # --wait did
        return {r.id: r.text for r in rows}
    finally:
        store.close()


def hits(server: Server, text: str, **extra: object) -> list[dict[str, object]]:
    with server.client() as c:
        r = c.post("/v1/collections/kb/query", json={"text": text, "k": 3, **extra})
        assert r.status_code == 200, r.text
        return list(r.json()["hits"])


def test_rich_files_and_records_into_a_searchable_collection(
    tmp_path: Path, make_server: Callable[..., Server]
) -> None:
    data = tmp_path / "data"
    template = ("--record-id", "sku", "--record-text", "title,body", "--record-metadata", "price")
    out = ingest(str(sample_folder(tmp_path)), "-c", "kb", "--data-dir", str(data), *template)
    # 4 html + 3 md + 3 rst sections, 2 pdf pages, 2 csv rows; three inputs rejected by name
    assert "queued 14 documents" in out.stdout and "3 inputs rejected" in out.stdout, out.stdout
    assert out.returncode == 1
    rejected = [line for line in out.stderr.splitlines() if line.startswith("rejected ")]
    assert len(rejected) == 3, out.stderr
    assert "corrupt.pdf: not a readable PDF" in rejected[0]
    assert "products.csv:3: malformed CSV" in rejected[1]
    assert "products.csv:5: record has no value for 'sku'" in rejected[2]

    server = make_server(HASHING, data=data)
    top = hits(server, "Glaciers are slow rivers of ice.")[0]
    assert top["document_id"] == "geo.pdf#page=2"
    assert top["metadata"]["page"] == 2  # type: ignore[index]
    top = hits(server, "Assam black tea grows in the lowlands of north-east India.")[0]
    assert top["metadata"]["section"] == "Tea > Black tea > Assam"  # type: ignore[index]
    assert top["metadata"]["title"] == "Tea Guide"  # type: ignore[index]
    assert "Copyright" not in str(top["text"])
    top = hits(server, "Europa is an icy moon of Jupiter.")[0]
    assert top["metadata"]["section"] == "Astronomy > Planets > Moons"  # type: ignore[index]
    only_pages = hits(server, "lava", filter={"page": {"$gte": 1}})
    assert {h["document_id"] for h in only_pages} == {"geo.pdf#page=1", "geo.pdf#page=2"}
    top = hits(server, "Mug\nA ceramic mug holds hot tea.")[0]
    assert (top["document_id"], top["metadata"]["price"]) == ("k3", "5")  # type: ignore[index]
    with server.client() as c:
        assert c.get("/v1/collections/kb").json()["record"] == {
            "id": "sku", "text": ["title", "body"], "metadata": ["price"], "separator": "\n",
        }  # fmt: skip
    # an edited file: its sections are replaced, and the one that is gone is deleted
    (tmp_path / "docs" / "sail.md").write_text(
        "# Sailing\n\n## Knots\n\nA reef knot ties two ends.\n"
    )
    edited = ingest(str(tmp_path / "docs" / "sail.md"), "-c", "kb", "--data-dir", str(data),
                    "--no-wait")  # fmt: skip
    assert edited.returncode == 0, edited.stderr
    assert "removed 3 sections no longer in their files" in edited.stdout, edited.stdout
    assert [i for i in stored(data, "kb", indexed=False) if "sail.md" in i] == ["sail.md"]
    # the template belongs to the collection: a different one is refused, naming the fix
    again = ingest(str(tmp_path / "docs" / "products.csv"), "-c", "kb", "--data-dir", str(data),
                   "--record-id", "title", "--record-text", "body", "--no-wait")  # fmt: skip
    assert again.returncode == 1 and "drop the --record-* options" in again.stderr


def test_record_template_validated_at_collection_creation(hashing_server: Server) -> None:
    with hashing_server.client() as c:
        bad = c.post("/v1/collections", json={"name": "r1", "record": {"id": "i", "text": []}})
        assert bad.status_code == 422 and "'text' must be a non-empty list" in bad.text
        twice = {"id": "i", "text": ["a", "a"]}
        assert c.post("/v1/collections", json={"name": "r2", "record": twice}).status_code == 422
        byo = {"name": "r3", "dim": 4, "metric": "ip", "record": {"id": "i", "text": ["t"]}}
        refused = c.post("/v1/collections", json=byo)
        assert refused.status_code == 422 and "needs a collection with a model" in refused.text
        good = {"name": "r4", "record": {"id": "i", "text": ["t"], "metadata": ["m"]}}
        made = c.post("/v1/collections", json=good)
        assert made.status_code == 201, made.text
        assert made.json()["record"]["metadata"] == ["m"]
        assert c.get("/v1/collections/r1").status_code == 404


@pytest.mark.slow
def test_rich_files_on_the_real_model(tmp_path: Path, make_server: Callable[..., Server]) -> None:
    env = server_env()  # the bundled all-MiniLM-L6-v2
    data = tmp_path / "data"
    out = ingest(str(sample_folder(tmp_path)), "-c", "kb", "--data-dir", str(data),
                 "--record-id", "sku", "--record-text", "title,body", env=env)  # fmt: skip
    assert "queued 14 documents" in out.stdout, out.stdout + out.stderr
    server = make_server(env, data=data)
    # paraphrases, not the indexed words: the model has to carry the meaning
    assert hits(server, "frozen ice moving down a valley")[0]["document_id"] == "geo.pdf#page=2"
    top = hits(server, "which tea is oxidised the most")[0]
    assert str(top["metadata"]["section"]).startswith("Tea > Black tea")  # type: ignore[index]
    assert hits(server, "a cup for drinking")[0]["document_id"] == "k3"
