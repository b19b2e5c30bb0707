"""Offline retrieval evaluation: recall@k, MRR and nDCG of each query mode and document scoring,
side by side, on a labeled set.

Labels are JSONL lines `{"query": "...", "relevant": ["doc id", ...]}`. A `Searcher` answers one
query in one `Setting` with document ids best first; `http_searcher` does it through the query
endpoint (`group_by: "document"`), so `embedstack eval` measures the server as it serves. Settings
are interleaved query by query, so load on a shared machine hits every setting alike.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from embedstack.errors import InvalidInput
from embedstack.registry.fusion import FUSIONS
from embedstack.registry.scoring import DOC_SCORINGS


@dataclass(frozen=True)
class Label:
    query: str
    relevant: frozenset[str]


@dataclass(frozen=True)
class Setting:
    mode: str
    fusion: str | None = None
    alpha: float | None = None
    doc_scoring: str = "max"

    @property
    def name(self) -> str:
        parts = [self.mode]
        if self.mode == "hybrid":
            parts.append(self.fusion or "rrf")
            if self.alpha is not None:
                parts.append(f"a{self.alpha:g}")
        return "-".join(parts) + f" / {self.doc_scoring}"

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode, "doc_scoring": self.doc_scoring}
        if self.mode == "hybrid":
            out["fusion"] = self.fusion or "rrf"
            if self.alpha is not None:
                out["alpha"] = self.alpha
        return out


@dataclass
class Result:
    setting: Setting
    recall: float = 0.0
    mrr: float = 0.0
    ndcg: float = 0.0
    queries: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def row(self) -> dict[str, Any]:
        return {
            "setting": self.setting.name,
            **self.setting.body(),
            "queries": self.queries,
            "recall": round(self.recall, 4),
            "mrr": round(self.mrr, 4),
            "ndcg": round(self.ndcg, 4),
            "p50_ms": round(self.percentile(0.5), 2),
            "p99_ms": round(self.percentile(0.99), 2),
        }


Searcher = Callable[[str, Setting, int], list[str]]
RETRIES = 10  # 429s (overload, latency budget) an evaluation query waits out


def load_labels(path: Path) -> list[Label]:
    """Labels from a JSONL file; InvalidInput names the bad line."""
    out: list[Label] = []
    for number, line in enumerate(Path(path).read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
            query, relevant = row["query"], row["relevant"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise InvalidInput(
                f"{path}:{number}: want {{'query': ..., 'relevant': [...]}}"
            ) from exc
        if not isinstance(query, str) or not query.strip():
            raise InvalidInput(f"{path}:{number}: 'query' must be a non-empty string")
        if not isinstance(relevant, list) or not relevant:
            raise InvalidInput(f"{path}:{number}: 'relevant' must be a non-empty list of ids")
        out.append(Label(query, frozenset(str(r) for r in relevant)))
    if not out:
        raise InvalidInput(f"{path} holds no labels")
    return out


def recall_at(found: Sequence[str], relevant: frozenset[str], k: int) -> float:
    return len(relevant.intersection(found[:k])) / len(relevant)


def reciprocal_rank(found: Sequence[str], relevant: frozenset[str], k: int) -> float:
    for rank, doc in enumerate(found[:k], start=1):
        if doc in relevant:
            return 1.0 / rank
    return 0.0


def ndcg_at(found: Sequence[str], relevant: frozenset[str], k: int) -> float:
    """Binary-relevance nDCG@k."""
    dcg = sum(1 / math.log2(r + 2) for r, doc in enumerate(found[:k]) if doc in relevant)
    ideal = sum(1 / math.log2(r + 2) for r in range(min(k, len(relevant))))
    return dcg / ideal if ideal else 0.0


def default_settings(modes: Iterable[str] = ("dense", "lexical", "hybrid")) -> list[Setting]:
    """Every mode x document scoring; hybrid with each fusion at alpha 0.5."""
    out: list[Setting] = []
    for mode in modes:
        fusions: Sequence[str | None] = FUSIONS if mode == "hybrid" else (None,)
        for fusion in fusions:
            for scoring in DOC_SCORINGS:
                out.append(Setting(mode, fusion, None, scoring))
    return out


def evaluate(
    search: Searcher, labels: Sequence[Label], settings: Sequence[Setting], k: int = 10
) -> list[Result]:
    """Each label's query in every setting (interleaved), averaged per setting."""
    results = [Result(s) for s in settings]
    for label in labels:
        for result in results:
            started = time.perf_counter()
            found = search(label.query, result.setting, k)
            result.latencies_ms.append((time.perf_counter() - started) * 1000)
            result.recall += recall_at(found, label.relevant, k)
            result.mrr += reciprocal_rank(found, label.relevant, k)
            result.ndcg += ndcg_at(found, label.relevant, k)
            result.queries += 1
    for result in results:
        n = max(1, result.queries)
        result.recall, result.mrr, result.ndcg = result.recall / n, result.mrr / n, result.ndcg / n
    return results


EVAL_BUDGET_MS = 60_000  # the server's default max_query_budget_ms


def http_searcher(client: Any, collection: str) -> Searcher:
    """Searches through POST /v1/collections/{collection}/query on an httpx-like client."""

    def search(query: str, setting: Setting, k: int) -> list[str]:
        # an offline evaluation has no deadline: the longest budget, so a loaded server answers
        body = {"text": query, "k": k, "group_by": "document", "budget_ms": EVAL_BUDGET_MS,
                **setting.body()}  # fmt: skip
        for attempt in range(RETRIES + 1):
            r = client.post(f"/v1/collections/{collection}/query", json=body)
            if r.status_code != 429 or attempt == RETRIES:
                break
            # an offline evaluation has no deadline: wait out the server's admission control
            time.sleep(min(5.0, float(r.headers.get("retry-after") or 1)))
        if r.status_code != 200:
            raise RuntimeError(f"query failed: {r.status_code} {r.text[:300]}")
        return [hit["document_id"] for hit in r.json()["hits"]]

    return search


def format_table(results: Sequence[Result], k: int) -> str:
    """A plain-text table, one row per setting."""
    head = f"{'setting':<34} {'recall@' + str(k):>9} {'MRR':>7} {'nDCG@' + str(k):>8}"
    head += f" {'p50 ms':>8} {'p99 ms':>8}"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.setting.name:<34} {r.recall:>9.3f} {r.mrr:>7.3f} {r.ndcg:>8.3f}"
            f" {r.percentile(0.5):>8.1f} {r.percentile(0.99):>8.1f}"
        )
    return "\n".join(lines)
