"""Residency policies, document regions, what of a hit may cross, byte counts by kind, the
region/broker specs of the CLI, and the node -> region map read from Ray's node resources."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedstack.cluster.ray.regions import REGION_LABEL, RegionMap, node_regions
from embedstack.cluster.residency import (
    ResidencyPolicy,
    parse_brokers,
    parse_layout,
    payload_bytes,
    strip,
)
from embedstack.errors import ConfigError, InvalidInput
from tests.conftest import undeclared_routes

KNOWN = ["eu", "us"]
HIT = {"document_id": "d1", "chunk_id": "d1#0", "score": 0.5, "text": "secret",
       "metadata": {"region": "eu", "owner": "x"}}  # fmt: skip


def test_policy_defaults_and_round_trip() -> None:
    p = ResidencyPolicy.parse({"regions": ["eu", "us", "eu"]}, KNOWN)
    assert p.regions == ("eu", "us") and p.field == "region" and p.crossing == ("ids", "scores")
    q = ResidencyPolicy.parse({"regions": ["eu"], "field": "loc", "crossing": ["text"]}, KNOWN)
    assert q.crossing == ("ids", "scores", "text")  # ids and scores always: results must merge
    assert ResidencyPolicy.from_json(q.to_json()) == q
    assert p.query == ("text",)  # a query crosses as its text, never as a vector by default
    v = ResidencyPolicy.parse({"regions": ["eu"], "query": ["vector", "text"]}, KNOWN)
    assert v.query == ("text", "vector") and ResidencyPolicy.from_json(v.to_json()) == v
    old = {"regions": ["eu"], "field": "region", "crossing": ["ids", "scores"]}
    assert ResidencyPolicy.from_json(old).query == ("text",)  # an entry from before 'query'


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({}, "must list the regions"),
        ({"regions": []}, "must list the regions"),
        ({"regions": ["ap"]}, "its regions are eu, us"),
        ({"regions": ["EU"]}, "is not a region name"),
        ({"regions": ["eu"], "crossing": ["vectors"]}, "vectors never leave"),
        ({"regions": ["eu"], "crossing": ["chunks"]}, "choose from ids, scores, text, metadata"),
        ({"regions": ["eu"], "field": ""}, "metadata key"),
        ({"regions": ["eu"], "query": ["vectors"]}, "some of text, vector"),
    ],
)
def test_bad_policies_name_the_fix(body: dict[str, object], says: str) -> None:
    with pytest.raises(InvalidInput, match=says):
        ResidencyPolicy.parse(body, KNOWN)


def test_document_region_is_validated() -> None:
    p = ResidencyPolicy(("eu", "us"))
    assert p.region_of("d", {"region": "us"}) == "us"
    with pytest.raises(InvalidInput, match=r"has no metadata 'region'.*one of eu, us"):
        p.region_of("d", {"other": 1})
    with pytest.raises(InvalidInput, match=r"names region 'ap'.*use one of eu, us"):
        p.region_of("d", {"region": "ap"})
    with pytest.raises(InvalidInput, match="names region 3"):
        p.region_of("d", {"region": 3})


def test_query_targets() -> None:
    p = ResidencyPolicy(("eu", "us"))
    assert p.targets(None) == ["eu", "us"]
    assert p.targets(["us", "us"]) == ["us"]
    with pytest.raises(InvalidInput, match="holds no data of this collection"):
        p.targets(["ap"])
    with pytest.raises(InvalidInput, match="is empty"):
        p.targets([])


def test_strip_keeps_only_crossing_kinds_and_bytes_count_by_kind() -> None:
    assert strip([HIT], ["ids", "scores"]) == [
        {"document_id": "d1", "chunk_id": "d1#0", "score": 0.5}
    ]
    assert strip([HIT], ["ids", "scores", "text"])[0]["text"] == "secret"
    counts = payload_bytes(strip([HIT], ["ids", "scores"]))
    assert counts == {"ids": len(b'"d1"') + len(b'"d1#0"'), "scores": len(b"0.5")}
    full = payload_bytes([{**HIT, "vector": [0.1, 0.2]}])
    assert set(full) == {"ids", "scores", "text", "metadata", "vector"}  # a vector would show
    assert full["text"] == len(b'"secret"')


def test_cli_specs() -> None:
    assert parse_layout("eu:2, us:1") == {"eu": 2, "us": 1}
    assert parse_brokers("eu=kafka://h:1,us=kafka://h:2") == {
        "eu": "kafka://h:1",
        "us": "kafka://h:2",
    }
    for bad in ("eu", "eu:0", "eu:x", "EU:2", ""):
        with pytest.raises(ConfigError):
            parse_layout(bad)
    for bad in ("eu=redis://h:1", "eu", "", "Eu=kafka://h:1"):
        with pytest.raises(ConfigError):
            parse_brokers(bad)


def test_region_map_remembers_dead_nodes() -> None:
    rows = [[("eu0", "eu", True), ("us0", "us", True)], [("eu0", "eu", True)]]
    reads = []

    def read() -> list[tuple[str, str, bool]]:
        reads.append(1)
        return rows[min(len(reads), 2) - 1]

    m = RegionMap(read)
    assert m.region_of("us0") == "us" and m.live_regions() == {"eu", "us"}
    assert len(reads) == 1  # cached for a second
    m._at = 0.0  # the cache expired: us0 has gone from Ray's node list
    assert m.live_regions() == {"eu"}
    assert m.region_of("us0") == "us"  # a dead node keeps its region
    assert m.region_of("ap0") is None


def test_a_nodes_region_is_its_label_else_its_resource() -> None:
    def info(name: str, alive: bool = True, labels: dict[str, str] | None = None,
             regions: tuple[str, ...] = ()) -> dict[str, object]:  # fmt: skip
        res = {f"es_node_{name}": 1.0, "CPU": 1.0, **{f"es_region_{r}": 1.0 for r in regions}}
        return {"Resources": res, "Labels": labels or {}, "Alive": alive}

    rows = node_regions([
        info("a", labels={REGION_LABEL: "eu"}),  # labelled (ray start --labels)
        info("b", alive=False, regions=("us",)),  # the resource, for nodes without labels
        info("c", labels={REGION_LABEL: "eu"}, regions=("us",)),  # the label wins
        info("d", regions=("eu", "us")),  # two region resources: no region
        info("e"),  # none
        {"Resources": {"CPU": 1.0}, "Labels": {REGION_LABEL: "eu"}, "Alive": True},  # no node
    ])  # fmt: skip
    assert rows == [("a", "eu", True, True), ("b", "us", False, False), ("c", "eu", True, True)]


def test_cluster_up_regions_cli(tmp_path: Path) -> None:
    """`cluster up --help` explains --regions; a bad spec is one configuration line (exit 2)
    before anything starts."""
    from click.testing import CliRunner

    from embedstack.cli import build_cli
    from embedstack.cli.common import CONFIG_EXIT

    shown = CliRunner().invoke(build_cli(), ["cluster", "up", "--help"])
    assert shown.exit_code == 0 and "--regions" in shown.output and "eu:2,us:2" in shown.output
    bad = CliRunner().invoke(
        build_cli(), ["cluster", "up", "--regions", "eu", "--data-dir", str(tmp_path)]
    )
    assert bad.exit_code == CONFIG_EXIT, bad.output
    assert "REGION:NODES" in bad.output and not (tmp_path / "cluster").exists()


def test_every_federated_route_declares_a_response_model(tmp_path: Path) -> None:
    """The federated API node's OpenAPI: a model for every route's success answer, the single
    node's routes it does not serve answer 501 (never 404)."""
    from embedstack.cluster.federation import FederatedRouter
    from embedstack.config import Settings
    from embedstack.obs.metrics import Metrics
    from embedstack.serving.federation_app import create_federation_app
    from embedstack.serving.services import build_models

    settings = Settings(enable_test_models=True, default_model="hashing-test", data_dir=tmp_path)
    router = FederatedRouter(
        None, {"eu": None, "us": None}, set, build_models(settings, {}), "hashing-test", Metrics()
    )
    openapi = create_federation_app(router, settings).openapi()
    missing = undeclared_routes(openapi)
    assert not missing, missing
    query = openapi["paths"]["/v1/collections/{name}/query"]["post"]
    assert query["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/FederatedQueryOut"
    )
    assert "single node only" in openapi["paths"]["/v1/embeddings"]["post"]["summary"]


def test_regional_nodes_see_only_their_regions_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a region's router places shards on: its own nodes; never another region's, nor a
    node whose region is unknown."""
    from embedstack.cluster.ray.nodes import RayNodes
    from embedstack.cluster.ray.regions import RegionalNodes

    everyone = {"eu0": "h0", "eu1": "h1", "us0": "h2", "odd": "h3"}
    monkeypatch.setattr(RayNodes, "handles", lambda self: dict(everyone))
    regions = RegionMap(lambda: [("eu0", "eu", True), ("eu1", "eu", False), ("us0", "us", True)])
    assert RegionalNodes("eu", regions).handles() == {"eu0": "h0", "eu1": "h1"}
    assert RegionalNodes("us", regions).handles() == {"us0": "h2"}
    assert RegionalNodes("ap", regions).handles() == {}
