"""Data residency of a federated collection: which regions its documents live in, which field of
a document names its region, and what of a hit may cross a border.

A document's text, chunks and vectors stay in its region (its shards are placed on that region's
nodes only and its log partition lives on that region's broker: see federation.py). A query
from another region gets back only the policy's `crossing` kinds of each hit: always ids and
scores (so results can be merged), optionally the chunk text and the metadata; never vectors.

What a query itself carries into another region is the policy's `query` kinds: its text by
default (each region embeds it with its own model, parity checked against the collection's
space), a caller's query vector only where the policy lists "vector".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from embedstack.errors import ConfigError, InvalidInput

REGION_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
REQUIRED_KINDS = ("ids", "scores")  # what a merge across regions needs
OPTIONAL_KINDS = ("text", "metadata")
KINDS = REQUIRED_KINDS + OPTIONAL_KINDS
FIELDS = {"ids": ("document_id", "chunk_id"), "scores": ("score",), "text": ("text",),
          "metadata": ("metadata",)}  # fmt: skip
QUERY_KINDS = ("text", "vector")  # what a query may carry into another region
QUERY_TEXT_KIND = "query_text"  # a query's text sent to a data region (byte counter kind)
QUERY_VECTOR_KIND = "query_vector"  # a caller's query vector sent to a data region
IDS_KIND = "ids"
DOCUMENTS_KIND = "documents"  # documents sent by an API node to their region's log


def check_region(region: str, what: str = "region") -> str:
    if not isinstance(region, str) or not REGION_RE.match(region):
        raise InvalidInput(
            f"{what} {region!r} is not a region name: use 1-32 lowercase letters, digits or "
            "'-', starting with a letter (e.g. 'eu', 'us-east')"
        )
    return region


@dataclass(frozen=True)
class ResidencyPolicy:
    """`regions`: where documents of the collection may live; `field`: the metadata key naming
    a document's region; `crossing`: the kinds of a hit that may leave its region; `query`:
    what a query may carry into another region than its caller's (its text; a query vector
    only when listed)."""

    regions: tuple[str, ...]
    field: str = "region"
    crossing: tuple[str, ...] = REQUIRED_KINDS
    query: tuple[str, ...] = ("text",)

    @classmethod
    def parse(cls, data: Mapping[str, Any], known: Iterable[str]) -> ResidencyPolicy:
        """A policy from a request body, checked against the federation's regions (4xx naming
        the fix otherwise)."""
        known = sorted(known)
        regions = data.get("regions")
        if not isinstance(regions, list) or not regions:
            raise InvalidInput(
                f"'residency.regions' must list the regions documents may live in, some of "
                f"{', '.join(known)}"
            )
        for r in regions:
            check_region(r, "'residency.regions' entry")
            if r not in known:
                raise InvalidInput(
                    f"region {r!r} is not a region of this federation; its regions are "
                    f"{', '.join(known)}"
                )
        field = data.get("field", "region")
        if not isinstance(field, str) or not field:
            raise InvalidInput("'residency.field' must name the metadata key holding the region")
        crossing = data.get("crossing", list(REQUIRED_KINDS))
        if not isinstance(crossing, list):
            raise InvalidInput(f"'residency.crossing' must be a list of {', '.join(KINDS)}")
        for kind in crossing:
            if kind == "vectors":
                raise InvalidInput(
                    "'residency.crossing' may not include 'vectors': vectors never leave their "
                    f"region; choose from {', '.join(KINDS)}"
                )
            if kind not in KINDS:
                raise InvalidInput(
                    f"'residency.crossing' kind {kind!r} is unknown; choose from {', '.join(KINDS)}"
                )
        kinds = tuple(k for k in KINDS if k in set(crossing) | set(REQUIRED_KINDS))
        query = data.get("query", ["text"])
        if not isinstance(query, list) or not set(query) <= set(QUERY_KINDS):
            raise InvalidInput(
                f"'residency.query' lists what a query may carry into another region: some of "
                f"{', '.join(QUERY_KINDS)} (default ['text'])"
            )
        query_kinds = tuple(k for k in QUERY_KINDS if k in query)
        return cls(tuple(dict.fromkeys(regions)), field, kinds, query_kinds)

    def to_json(self) -> dict[str, Any]:
        return {"regions": list(self.regions), "field": self.field,
                "crossing": list(self.crossing), "query": list(self.query)}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ResidencyPolicy:
        query = tuple(data.get("query", ("text",)))  # entries written before it existed
        return cls(tuple(data["regions"]), str(data["field"]), tuple(data["crossing"]), query)

    def region_of(self, document_id: str, metadata: Mapping[str, Any]) -> str:
        """The region a document names in its `field`; InvalidInput (naming the allowed
        regions) when it names none or one the collection does not allow."""
        allowed = ", ".join(self.regions)
        if self.field not in metadata:
            raise InvalidInput(
                f"document {document_id!r} has no metadata {self.field!r}: every document of "
                f"this collection must name its region, one of {allowed}"
            )
        region = metadata[self.field]
        if region not in self.regions:
            raise InvalidInput(
                f"document {document_id!r} names region {region!r} in {self.field!r}, not an "
                f"allowed region of this collection: use one of {allowed}"
            )
        return str(region)

    def targets(self, regions: Sequence[str] | None) -> list[str]:
        """The regions a query reads: the ones it names (each one of the policy's), else all."""
        if regions is None:
            return list(self.regions)
        if not regions:
            raise InvalidInput(f"'regions' is empty: name some of {', '.join(self.regions)}")
        for r in regions:
            if r not in self.regions:
                raise InvalidInput(
                    f"region {r!r} holds no data of this collection; its regions are "
                    f"{', '.join(self.regions)}"
                )
        return list(dict.fromkeys(regions))


def strip(hits: Sequence[Mapping[str, Any]], kinds: Sequence[str]) -> list[dict[str, Any]]:
    """Hits with only the fields of `kinds` (what may cross a border)."""
    keep = [f for kind in kinds for f in FIELDS[kind]]
    return [{f: h[f] for f in keep if f in h} for h in hits]


def payload_bytes(hits: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Bytes of each kind in `hits` (as JSON): what the router counts per region pair. A field
    of no known kind counts as its own name (so a `vector` that slipped through would show)."""
    out: dict[str, int] = {}
    kind_of = {f: kind for kind, fields in FIELDS.items() for f in fields}
    for h in hits:
        for f, value in h.items():
            kind = kind_of.get(f, f)
            out[kind] = out.get(kind, 0) + len(orjson.dumps(value))
    return out


def parse_brokers(spec: str) -> dict[str, str]:
    """{region: kafka URL} from "eu=kafka://HOST:PORT,us=kafka://HOST:PORT"."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        region, sep, url = part.partition("=")
        if not sep or not url.startswith("kafka://"):
            raise ConfigError(
                f"{part!r} is not REGION=kafka://HOST:PORT: write e.g. "
                "eu=kafka://10.0.0.1:9092,us=kafka://10.1.0.1:9092"
            )
        try:
            check_region(region.strip())
        except InvalidInput as exc:
            raise ConfigError(exc.message) from None
        out[region.strip()] = url
    if not out:
        raise ConfigError("no region brokers given: write eu=kafka://HOST:PORT,...")
    return out


def parse_layout(spec: str) -> dict[str, int]:
    """{region: node count} from "eu:2,us:2" (`cluster up --regions`)."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        region, sep, count = part.partition(":")
        if not sep or not count.isdigit() or not 1 <= int(count) <= 16:
            raise ConfigError(f"{part!r} is not REGION:NODES (1-16 nodes): write e.g. eu:2,us:2")
        try:
            check_region(region)
        except InvalidInput as exc:
            raise ConfigError(exc.message) from None
        out[region] = int(count)
    if not out:
        raise ConfigError("no regions given: write e.g. eu:2,us:2")
    return out
