"""Rich documents and structured records read from real files: sections, pages, templates,
and bad inputs that are rejected one by one while the rest is read."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedstack.errors import InvalidInput
from embedstack.ingest.extract import html_sections, markdown_sections, pdf_pages, rst_sections
from embedstack.ingest.records import Rejected, apply_template, parse_template
from embedstack.ingest.sources import read_documents
from embedstack.types import CollectionConfig, Document, IndexSpec, RecordTemplate
from tests.sample_files import HTML, MARKDOWN, RST, make_pdf

TEMPLATE = RecordTemplate("sku", ("title", "body"), ("price",))


def test_html_main_text_by_section_without_navigation_or_scripts() -> None:
    sections = html_sections(HTML.encode())
    assert [s.metadata["section"] for s in sections] == [
        "Tea", "Tea > Green tea", "Tea > Black tea", "Tea > Black tea > Assam",
    ]  # fmt: skip
    assert all(s.metadata["title"] == "Tea Guide" for s in sections)
    text = "\n".join(s.text for s in sections)
    for gone in ("Home", "Shop", "banner", "track(", "color: red", "Copyright"):
        assert gone not in text
    assert sections[1].text == (
        "Green tea\nGreen tea leaves are steamed or pan-fired to stop oxidation."
    )


def test_markdown_sections_follow_headings_but_not_code() -> None:
    sections = markdown_sections(MARKDOWN)
    assert [s.metadata["section"] for s in sections] == [
        "Sailing", "Sailing > Knots", "Sailing > Navigation",
    ]  # fmt: skip
    assert "# this line is code" in sections[1].text
    assert sections[2].text.startswith("## Navigation")


def test_rst_section_levels_follow_adornment_order() -> None:
    sections = rst_sections(RST)
    assert [s.metadata["section"] for s in sections] == [
        "Astronomy", "Astronomy > Planets", "Astronomy > Planets > Moons",
    ]  # fmt: skip
    assert sections[2].text.endswith("Europa is an icy moon of Jupiter.")


def test_pdf_text_per_page_and_corrupt_pdf_named() -> None:
    pages = pdf_pages(make_pdf(["Volcanoes erupt lava.", "", "Glaciers (ice) move slowly."]))
    assert [(s.metadata["page"], s.text) for s in pages] == [
        (1, "Volcanoes erupt lava."), (3, "Glaciers (ice) move slowly."),
    ]  # fmt: skip
    for broken in (b"%PDF-1.4 not a pdf at all", make_pdf(["cut short"])[:150], b""):
        with pytest.raises(InvalidInput, match="not a readable PDF"):
            pdf_pages(broken)


def test_folder_of_mixed_files_gives_documents_and_per_file_errors(tmp_path: Path) -> None:
    (tmp_path / "tea.html").write_text(HTML)
    (tmp_path / "sail.md").write_text(MARKDOWN)
    (tmp_path / "one.md").write_text("Just one paragraph without headings.")
    (tmp_path / "doc.pdf").write_bytes(make_pdf(["First page.", "Second page."]))
    (tmp_path / "bad.pdf").write_bytes(b"%PDF-1.7\n1 0 obj garbage")
    items = list(read_documents(tmp_path))
    rejected = [i for i in items if isinstance(i, Rejected)]
    docs = {d.id: d for d in items if isinstance(d, Document)}
    assert [r.where for r in rejected] == [str(tmp_path / "bad.pdf")]
    assert "not a readable PDF" in rejected[0].reason
    assert docs["doc.pdf#page=2"].metadata == {
        "source": str(tmp_path / "doc.pdf"), "page": 2, "pages": 2,
    }  # fmt: skip
    assert docs["tea.html#3"].metadata["section"] == "Tea > Black tea > Assam"
    assert "one.md" in docs and "section" not in docs["one.md"].metadata  # one section: plain id
    assert {i for i in docs if i.startswith("sail.md#")} == {"sail.md#0", "sail.md#1", "sail.md#2"}


def test_csv_broken_quote_and_missing_id_are_per_row_errors(tmp_path: Path) -> None:
    csv_file = tmp_path / "rows.csv"
    csv_file.write_text(
        "sku,title,body,price\n"
        '1,Kettle,"Boils water,\nfast",20\n'  # a quoted field over two lines is fine
        '2,"Broken quote,oops,3\n'  # never closed
        "3,Mug,Holds tea,5\n"
        ",Spoon,no id,1\n"
        "5,Plate\n"  # too few fields
        '6,Bowl,"say ""hi""",7\n'
    )
    items = list(read_documents(csv_file, TEMPLATE))
    docs = [i for i in items if isinstance(i, Document)]
    errors = {r.where.rsplit(":", 1)[1]: r.reason for r in items if isinstance(r, Rejected)}
    assert [d.id for d in docs] == ["1", "3", "6"]
    assert docs[0].text == "Kettle\nBoils water,\nfast" and docs[0].metadata == {"price": "20"}
    assert docs[2].text == 'Bowl\nsay "hi"'
    assert set(errors) == {"4", "6", "7"}
    assert "quote" in errors["4"]
    assert "no value for 'sku' (the template's id field)" in errors["6"]
    assert "2 fields, the header names 4" in errors["7"]


def test_jsonl_and_parquet_through_the_template(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"sku": 1, "title": "Kettle", "body": "Boils water", "price": 20.5},
        {"sku": 2, "title": None, "body": "No title", "price": 1.0},
        {"sku": 3, "title": "Mug", "body": "Holds tea", "price": None},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet", row_group_size=2)
    (tmp_path / "rows.jsonl").write_text(
        '{"sku": "a", "title": "T", "body": "B", "price": 1}\n[1, 2]\n{"title": "x", "body": "y"}\n'
    )
    items = list(read_documents(tmp_path, TEMPLATE))
    docs = [(d.id, d.text, d.metadata) for d in items if isinstance(d, Document)]
    errors = [str(r) for r in items if isinstance(r, Rejected)]
    assert docs == [
        ("a", "T\nB", {"price": 1}),
        ("1", "Kettle\nBoils water", {"price": 20.5}),
        ("3", "Mug\nHolds tea", {}),
    ]
    assert len(errors) == 3
    assert errors[0].endswith("rows.jsonl:2: a record must be a JSON object, got list")
    assert "rows.jsonl:3: record has no value for 'sku'" in errors[1]
    assert "rows.parquet:row 2: record has no value for 'title' (the template's text" in errors[2]


def test_rows_without_a_template_are_refused_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("a,b\n1,2\n")
    [item] = list(read_documents(tmp_path / "rows.csv"))
    assert isinstance(item, Rejected) and "--record-id and --record-text" in item.reason


@pytest.mark.parametrize(
    ("template", "said"),
    [
        ({"text": ["t"]}, "'id' must name the field"),
        ({"id": "i"}, "'text' must be a non-empty list"),
        ({"id": "i", "text": []}, "'text' must be a non-empty list"),
        ({"id": "i", "text": ["t"], "metadata": "m"}, "'metadata' must be a list"),
        ({"id": "i", "text": ["t", "t"]}, "names a field twice"),
        ({"id": "i", "text": ["t"], "fields": ["x"]}, "unknown record template field"),
    ],
)
def test_template_checked_at_creation(template: dict[str, object], said: str) -> None:
    with pytest.raises(InvalidInput, match=said):
        parse_template(template)


def test_template_values_and_stored_config_round_trip() -> None:
    template = parse_template({"id": "i", "text": "t", "metadata": ["m"]})
    assert template == RecordTemplate("i", ("t",), ("m",))
    with pytest.raises(InvalidInput, match="is dict"):
        apply_template(template, {"i": {"x": 1}, "t": "text"})
    with pytest.raises(InvalidInput, match="no value for 't'"):
        apply_template(template, {"i": 1, "t": "   "})
    config = CollectionConfig(4, "cosine", IndexSpec("flat"), record=template)
    assert CollectionConfig.from_json(config.to_json()) == config
    old = CollectionConfig(4, "cosine", IndexSpec("flat"))
    assert "record" not in old.to_json()  # stored JSON of collections without one is unchanged
    assert CollectionConfig.from_json(old.to_json()).record is None
