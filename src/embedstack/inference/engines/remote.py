"""A backend for any OpenAI-compatible embeddings endpoint (POST {base_url}/embeddings).

Texts are sent in requests of at most `batch_size` inputs; each request has a timeout and is
retried with exponential backoff (honouring Retry-After) on timeouts, connection errors, 429 and
5xx. Counting tokens and cutting chunks use a local tokenizer that matches the remote model.
The space is the remote model's own: the upstream model name, a fingerprint of the vectors of a
few fixed probe texts, precision "remote". The base URL (it may carry credentials) never appears
in `backend` or in error messages: only its host does.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx
import numpy as np

from embedstack.errors import InvalidInput, Unavailable
from embedstack.inference.batching.tokens import Packed
from embedstack.inference.engines.hf_tokenizer import HFTokenizer
from embedstack.inference.vectors import normalize_rows
from embedstack.types import Metric, ModelSpec

_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_MAX_RETRY_AFTER = 30.0
TOKENIZER = "bert-base-uncased-wordpiece"  # the local tokenizer that counts and cuts chunks
# embedded once at load: their vectors fingerprint the upstream model (and give its dimension)
PROBE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "A vector index answers nearest-neighbour queries.",
    "Paris is the capital of France.",
)


@dataclass(frozen=True)
class RemoteConfig:
    name: str  # the name embedstack serves it under
    base_url: str  # e.g. http://127.0.0.1:7997/v1 (may carry credentials: never shown)
    model: str  # the model name the endpoint expects
    dim: int | None = None  # None: whatever the probe vectors have
    metric: Metric = "cosine"
    max_tokens: int = 256
    normalize: bool = True
    api_key: str | None = field(default=None, repr=False)  # sent as "Authorization: Bearer"
    batch_size: int = 64
    timeout_s: float = 30.0
    max_retries: int = 4
    backoff_s: float = 0.25
    revision: str = "1"

    @property
    def host(self) -> str:
        """Where the endpoint is, without credentials, path or query: safe to show."""
        return redacted_host(self.base_url)


def redacted_host(url: str) -> str:
    """The host (and port) of `url`; never its user, password, path or query."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<invalid url>"
    if not parsed.host:
        return "<invalid url>"
    return parsed.host if parsed.port is None else f"{parsed.host}:{parsed.port}"


def remote_spec(config: RemoteConfig, fingerprint: str = "", dim: int | None = None) -> ModelSpec:
    """The space of a remote model: the upstream model name and the fingerprint of its probe
    vectors (without one, before loading, only a description: dim 0 when not configured)."""
    return ModelSpec(
        name=config.model,
        revision=config.revision,
        fingerprint=fingerprint,
        dim=dim or config.dim or 0,
        metric=config.metric,
        max_tokens=config.max_tokens,
        pooling="remote",
        normalize=config.normalize,
        tokenizer=TOKENIZER,
        precision="remote",
    )


def probe_fingerprint(vectors: np.ndarray) -> str:
    """sha256 over the probe vectors rounded to 2 decimals (their shape included): the same
    upstream model gives the same digest, another model (or other weights) another one. The
    probes go as one fixed request, so a deterministic server answers them bit for bit; one whose
    numbers wobble across a rounding edge between loads would load as another space: refused
    (409) by the parity check, never mixed."""
    rounded = np.rint(np.asarray(vectors, dtype=np.float64) * 100).astype(np.int64)
    digest = hashlib.sha256(f"{rounded.shape}".encode())
    digest.update(rounded.tobytes())
    return digest.hexdigest()


class RemoteEmbedder:
    """An OpenAI-compatible endpoint as an Embedder. Loading it embeds PROBE_TEXTS (one request):
    the space is the upstream model name plus a fingerprint of those vectors, so a changed
    upstream model loads as another space and the collection's parity check refuses it."""

    def __init__(
        self,
        config: RemoteConfig,
        tokenizer: HFTokenizer,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if config.batch_size < 1 or config.max_retries < 0:
            raise ValueError("batch_size must be >= 1 and max_retries >= 0")
        self._config = config
        self._tokenizer = tokenizer
        self._sleep = sleep
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._client = httpx.Client(
            base_url=config.base_url.rstrip("/"), headers=headers,
            timeout=config.timeout_s, transport=transport,
        )  # fmt: skip
        try:
            probes = self._vectors(self._request(list(PROBE_TEXTS)))
        except Exception:
            self._client.close()
            raise
        if config.dim is not None and probes.shape[1] != config.dim:
            raise Unavailable(
                f"remote model {config.name!r} sent {probes.shape[1]}-d vectors, "
                f"configured {config.dim}"
            )
        self._spec = remote_spec(config, probe_fingerprint(probes), probes.shape[1])

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    @property
    def tokenizer(self) -> HFTokenizer:
        return self._tokenizer

    @property
    def backend(self) -> str:
        return f"remote:{self._config.host}"

    def close(self) -> None:
        self._client.close()

    def embed_batch(self, texts: Sequence[str], encoded: Packed | None = None) -> np.ndarray:
        size = self._config.batch_size
        out = np.empty((len(texts), self._spec.dim), dtype=np.float32)
        for start in range(0, len(texts), size):
            rows = self._request(list(texts[start : start + size]))
            if rows and len(rows[0]) != self._spec.dim:
                raise Unavailable(
                    f"remote model {self._config.name!r} sent {len(rows[0])}-d vectors, "
                    f"its space has {self._spec.dim}"
                )
            out[start : start + len(rows)] = np.asarray(rows, dtype=np.float32)
        return self._vectors(out)

    def _vectors(self, rows: np.ndarray | list[list[float]]) -> np.ndarray:
        out = np.asarray(rows, dtype=np.float32)
        return normalize_rows(out, out=out) if self._config.normalize and len(out) else out

    def _request(self, texts: list[str]) -> list[list[float]]:
        cfg = self._config
        body = {"model": cfg.model, "input": texts, "encoding_format": "float"}
        last = "no attempt"
        for attempt in range(cfg.max_retries + 1):
            delay = cfg.backoff_s * (2**attempt) * (0.5 + random.random())
            try:
                r = self._client.post("/embeddings", json=body)
            except httpx.TimeoutException as exc:
                last = f"timed out after {cfg.timeout_s}s ({type(exc).__name__})"
            except httpx.TransportError as exc:
                last = f"connection failed ({type(exc).__name__}: {self._scrub(str(exc))})"
            else:
                if r.status_code == 200:
                    return self._parse(r, len(texts))
                last = f"HTTP {r.status_code}: {self._scrub(r.text[:200])}"
                if r.status_code not in _RETRY_STATUS:
                    if 400 <= r.status_code < 500 and r.status_code not in (401, 403, 404):
                        raise InvalidInput(f"remote model {cfg.name!r} refused the input: {last}")
                    raise Unavailable(f"remote model {cfg.name!r} at {cfg.host}: {last}")
                delay = max(delay, _retry_after(r))
            if attempt < cfg.max_retries:
                self._sleep(delay)
        raise Unavailable(
            f"remote model {cfg.name!r} at {cfg.host} failed {cfg.max_retries + 1} times: {last}"
        )

    def _parse(self, r: httpx.Response, n: int) -> list[list[float]]:
        try:
            data = sorted(r.json()["data"], key=lambda d: int(d["index"]))
            rows = [list(map(float, d["embedding"])) for d in data]
        except (ValueError, KeyError, TypeError) as exc:
            raise Unavailable(
                f"remote model {self._config.name!r} sent a bad reply: {exc}"
            ) from exc
        if len(rows) != n or any(len(row) != len(rows[0]) for row in rows):
            raise Unavailable(
                f"remote model {self._config.name!r} sent {len(rows)} vectors for {n}"
            )
        return rows

    def _scrub(self, text: str) -> str:
        """`text` without the base URL or its credentials (an upstream may echo them)."""
        url = self._config.base_url
        secrets = [url, url.rstrip("/"), self._config.api_key or ""]
        try:
            parsed = httpx.URL(url)
            secrets += [parsed.username, parsed.password, parsed.query.decode()]
        except (httpx.InvalidURL, TypeError):
            pass
        for secret in sorted(filter(None, secrets), key=len, reverse=True):
            text = text.replace(secret, "<redacted>")
        return text


def _retry_after(r: httpx.Response) -> float:
    try:
        return min(float(r.headers.get("retry-after", 0.0)), _MAX_RETRY_AFTER)
    except ValueError:
        return 0.0
