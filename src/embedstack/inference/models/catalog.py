"""The model catalog: every model x backend this machine can run, gated against fp32.

Names: "<model>" is the collection-facing model; it keeps the fp32 space id and is served by the
fastest backend that passed the accuracy gate on this machine (`auto`). "<model>@<backend>" picks
a backend explicitly; its spec is honest about precision ("int8-dynamic", "bf16", ...), so a
reduced-precision variant is a space of its own, while fp32 backends share the fp32 space.
Every backend but the reference itself must pass the gate before it is handed out; one that fails
is refused (Unavailable) with the measured numbers. Passing includes batch invariance (a text
alone and in other batches gets the same vector, `inference/models/invariance.py`), so `auto` never
serves a batch-dependent engine. Gate reports are cached in
`<cache_dir>/gate.json` by (weights fingerprint, backend, machine).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from embedstack.errors import ConfigError, NotFound, Unavailable
from embedstack.inference.backend import Embedder, ModelEntry
from embedstack.inference.batching.packed import PackedEmbedder
from embedstack.inference.engines.onnx import OnnxOptions
from embedstack.inference.engines.openvino import OvOptions
from embedstack.inference.engines.remote import RemoteConfig, remote_spec
from embedstack.inference.models.auto import AutoEmbedder
from embedstack.inference.models.bundled import (
    BUNDLED,
    L6,
    bundled_model,
    bundled_spec,
    with_precision,
)
from embedstack.inference.models.export import default_cache_dir
from embedstack.inference.models.gate import (
    GateCache,
    GateReport,
    GateSample,
    compare,
    load_sample,
    run_gate,
)
from embedstack.inference.models.gate import timed_embed as _timed
from embedstack.inference.models.invariance import check_invariance
from embedstack.inference.models.quantize import Int8Config
from embedstack.inference.models.race import IDLE_WAIT_S, RaceLoad, RaceStopped, race_repeated
from embedstack.inference.models.variants import BundledVariants, Variant
from embedstack.types import ModelSpec

log = logging.getLogger(__name__)

RACE_TEXTS = 192  # sample texts each passing backend embeds per round of the speed race


@dataclass(frozen=True)
class Listing:
    """One row of `embedstack models list`."""

    name: str
    model: str
    backend: str
    spec: ModelSpec
    report: GateReport | None
    raced: float | None = None  # texts/s in the cached speed race (comparable across rows)
    space: str | None = None  # the space id when the spec cannot tell it before loading

    @property
    def space_id(self) -> str:
        return self.space or self.spec.space_id

    @property
    def speed(self) -> float | None:
        """The race speed, else the speed measured alone when the backend was gated."""
        if self.raced is not None:
            return self.raced
        return None if self.report is None else self.report.texts_per_s


class Catalog:
    """Builds variants, runs and caches the gate, picks the auto backend. No global state."""

    def __init__(
        self,
        cache_dir: Path | None = None,
        onnx: OnnxOptions = OnnxOptions(),
        int8: Int8Config = Int8Config(),
        ov: OvOptions = OvOptions(),
        sample: GateSample | None = None,
        remotes: Sequence[RemoteConfig] = (),
        background: bool = True,
        candidates: Sequence[str] | None = None,
        race_texts: int = RACE_TEXTS,
        pins: Mapping[str, str] | None = None,
        race_wait_s: float = IDLE_WAIT_S,
    ) -> None:
        self.cache_dir = default_cache_dir() if cache_dir is None else cache_dir
        self._onnx = onnx
        self._int8 = int8
        self._sample = sample
        self._remotes = list(remotes)
        self._background = background
        self._candidates = None if candidates is None else set(candidates)
        self._race_texts = race_texts
        self._race_wait_s = race_wait_s
        self._pins = dict(pins or {})
        self._builders = BundledVariants(self.cache_dir, onnx, int8, ov, self.spec)
        self.gate_cache = GateCache(self.cache_dir / "gate.json")
        self._refs: dict[str, tuple[np.ndarray, float]] = {}
        self._ref_engines: dict[str, Embedder] = {}
        self._specs: dict[str, ModelSpec] = {}
        self._variants: dict[str, list[Variant]] = {}
        self._lock = threading.Lock()

    # models and their variants

    def models(self) -> list[str]:
        return [m.name for m in BUNDLED]

    def spec(self, model: str) -> ModelSpec:
        """The model's fp32 spec (fingerprinting the weights once per catalog)."""
        if model not in self._specs:
            self._specs[model] = bundled_spec(bundled_model(model))
        return self._specs[model]

    def variants(self, model: str) -> list[Variant]:
        """The backends of `model` this machine can run (probed once per catalog)."""
        if model not in self._variants:
            self._variants[model] = self._builders.of(bundled_model(model))
        return self._variants[model]

    def reference(self, model: str) -> Variant:
        return next(v for v in self.variants(model) if v.reference)

    def variant(self, model: str, backend: str) -> Variant:
        for v in self.variants(model):
            if v.backend == backend:
                return v
        names = ", ".join(v.backend for v in self.variants(model))
        raise NotFound(f"model {model!r} has no backend {backend!r} here; it has: {names}")

    # the gate

    def sample(self) -> GateSample:
        if self._sample is None:
            self._sample = load_sample()
        return self._sample

    def reference_vectors(self, model: str) -> tuple[np.ndarray, float]:
        with self._lock:
            if model not in self._refs:
                ref = self.reference(model).build()
                self._refs[model] = _timed(ref, self.sample().texts)
                self._ref_engines[model] = ref
            return self._refs[model]

    def check(
        self, model: str, backend: str, force: bool = False, embedder: Embedder | None = None
    ) -> GateReport:
        """The gate report of `backend` for `model` (cached unless `force`)."""
        key = self._key(self.spec(model), backend)
        found = None if force else self.gate_cache.get(key)
        if found is not None:
            return found
        ref = self.reference_vectors(model)
        if backend == self.reference(model).backend:
            report = GateReport(
                model, backend, True, 1.0, 1.0, 0.0, 0.0, len(ref[0]), ref[1], ref[1]
            )
            report = self._with_recall(report, ref[0])
            inv = check_invariance(self._ref_engines[model], self.sample().texts, ref[0])
            report = replace(
                report, batch_min_cosine=inv.min_cosine, deterministic=inv.deterministic
            )
        else:
            candidate = embedder or self.variant(model, backend).build()
            report = run_gate(model, backend, ref, candidate, self.sample())
        log.info("accuracy gate: %s", report.summary())
        self.gate_cache.put(key, report)
        return report

    def _with_recall(self, report: GateReport, vectors: np.ndarray) -> GateReport:
        _, _, r, _, _ = compare(vectors, vectors, self.sample())
        return replace(report, recall_reference=r, recall_candidate=r)

    def gated(self, model: str, backend: str) -> Embedder:
        """The backend's embedder, or Unavailable with the numbers if it fails the gate."""
        if backend == self.reference(model).backend:
            return self.variant(model, backend).build()
        embedder = self.variant(model, backend).build()
        report = self.check(model, backend, embedder=embedder)
        if not report.passed:
            raise Unavailable(f"backend refused by the accuracy gate: {report.summary()}")
        return embedder

    def gated_as(self, model: str, backend: str) -> Embedder:
        """`backend` answering in the model's fp32 space, if it passes the gate (else
        Unavailable with the measured numbers)."""
        return self._in_fp32_space(model, backend, self.gated(model, backend))

    def check_pins(self) -> None:
        """Refuse (ConfigError, naming what exists) a pinned model or backend that is not here."""
        for model, backend in self._pins.items():
            if model not in self.models():
                raise ConfigError(
                    f"model_backends names unknown model {model!r}; "
                    f"bundled models: {', '.join(self.models())}"
                )
            if backend != "auto" and backend not in {v.backend for v in self.variants(model)}:
                names = ", ".join(["auto", *(v.backend for v in self.variants(model))])
                raise ConfigError(
                    f"model_backends pins {model!r} to {backend!r}, which this machine cannot "
                    f"run; choose one of: {names}"
                )

    def auto_reports(self, model: str) -> list[GateReport]:
        """Gate every auto candidate (cached reports reused); unloadable ones are skipped."""
        reports = []
        for v in self.variants(model):
            if self._is_candidate(v):
                try:
                    reports.append(self.check(model, v.backend))
                except Exception as exc:  # a backend that cannot even load is no candidate
                    log.warning("backend %s of %s unavailable: %s", v.backend, model, exc)
        return reports

    def _cached_passing(self, model: str) -> list[str] | None:
        """The auto candidates that passed, if every candidate's gate report is cached."""
        spec = self.spec(model)
        reports = [
            self.gate_cache.get(self._key(spec, v.backend))
            for v in self.variants(model)
            if self._is_candidate(v)
        ]
        if any(r is None for r in reports):
            return None
        ok = [r.backend for r in reports if r is not None and r.passed and r.batch_invariant]
        return sorted(ok)

    def cached_auto_choice(self, model: str) -> str | None:
        """The auto backend if the gate reports and the speed race are cached, else None."""
        passing = self._cached_passing(model)
        if passing is None:
            return None
        if len(passing) < 2:
            return passing[0] if passing else self.reference(model).backend
        return self.gate_cache.get_choice(self._race_key(self.spec(model), passing))

    def race_speeds(self, model: str) -> dict[str, float]:
        """texts/s of the passing backends in their cached speed race ({} before one ran)."""
        passing = self._cached_passing(model)
        if not passing or len(passing) < 2:
            return {}
        return self.gate_cache.get_speeds(self._race_key(self.spec(model), passing)) or {}

    def choose(
        self, model: str, force_race: bool = False, stop: threading.Event | None = None
    ) -> str:
        """The fastest backend that passes the gate on this machine (gating as needed).

        Speeds from gate runs at different moments are not comparable on a shared machine, so
        the passing backends race on the same texts, interleaved, at an idle moment (waiting
        at most `race_wait_s`), three times, keeping each one's median; the winner and the
        load it was measured under are cached. `force_race` races again despite the cache.
        """
        if stop is not None and stop.is_set():
            raise RaceStopped("the auto choice was stopped before it started")
        # never a batch-dependent engine (the gate refuses one; checked again for old reports)
        reports = self.auto_reports(model)
        passing = sorted(r.backend for r in reports if r.passed and r.batch_invariant)
        if len(passing) < 2:
            best = passing[0] if passing else self.reference(model).backend
        else:
            key = self._race_key(self.spec(model), passing)
            found = None if force_race else self.gate_cache.get_choice(key)
            if found is None:
                texts = self.sample().texts[: self._race_texts]
                engines = {b: self.variant(model, b).build() for b in passing}
                speeds, load = race_repeated(engines, texts, max_wait_s=self._race_wait_s,
                                             stop=stop)  # fmt: skip
                found = max(speeds, key=lambda b: speeds[b])
                log.info("model %s: speed race on %d texts at %s: %s", model, len(texts),
                         load.describe(), speeds)  # fmt: skip
                self.gate_cache.put_choice(key, found, speeds, load.as_dict())
            best = found
        log.info("model %s: auto-selected backend %s", model, best)
        return best

    def race_load(self, model: str) -> RaceLoad | None:
        """The load the cached speed race of `model` ran under (None before one ran)."""
        passing = self._cached_passing(model)
        if not passing or len(passing) < 2:
            return None
        raw = self.gate_cache.get_race_load(self._race_key(self.spec(model), passing))
        if raw is None:
            return None
        return RaceLoad(raw["before"], raw["after"], int(raw["cpus"]), raw.get("waited_s", 0.0))

    def _race_key(self, spec: ModelSpec, backends: Sequence[str]) -> str:
        return self.gate_cache.key(spec.fingerprint, "race:" + ",".join(backends))

    def build_as(self, model: str, backend: str) -> Embedder:
        """`backend`'s embedder answering in the model's fp32 space (it passed the gate)."""
        return self._in_fp32_space(model, backend, self.variant(model, backend).build())

    def _in_fp32_space(self, model: str, backend: str, embedder: Embedder) -> Embedder:
        if isinstance(embedder, PackedEmbedder):
            return embedder.with_spec(self.spec(model), backend)
        return embedder

    def auto(self, model: str, background: bool | None = None) -> AutoEmbedder:
        """The model in its fp32 space on its pinned or fastest gated backend (AutoEmbedder)."""
        pinned = self._pins.get(model)
        return AutoEmbedder(
            self,
            model,
            self._background if background is None else background,
            pinned=None if pinned in (None, "auto") else pinned,
        )

    def _is_candidate(self, v: Variant) -> bool:
        """Whether `v` competes for the auto choice (all `auto` variants unless restricted)."""
        if self._candidates is not None:
            return v.reference or v.backend in self._candidates
        return v.auto

    def _key(self, spec: ModelSpec, backend: str) -> str:
        tag = next((v.tag for v in self.variants(spec.name) if v.backend == backend), "")
        name = f"{backend}+{tag}" if tag else backend
        return self.gate_cache.key(spec.fingerprint, f"{name}|{len(self.sample().texts)}")

    # registry entries

    def listing(self) -> list[Listing]:
        rows = []
        for model in self.models():
            spec = self.spec(model)
            pinned = self._pins.get(model, "auto")
            choice = self.cached_auto_choice(model) if pinned == "auto" else pinned
            mode = "auto" if pinned == "auto" else "pinned"
            best = self.gate_cache.get(self._key(spec, choice)) if choice else None
            raced = self.race_speeds(model)
            label = f"{mode}:{choice}" if choice else mode
            rows.append(Listing(model, model, label, spec, best, raced.get(choice or "")))
            for v in self.variants(model):
                s = with_precision(spec, v.precision)
                report = self.gate_cache.get(self._key(spec, v.backend))
                rows.append(Listing(v.name, model, v.backend, s, report, raced.get(v.backend)))
        return rows + self.remote_listing()

    def entries(self) -> list[ModelEntry]:
        out = []
        for model in self.models():
            out.append(
                ModelEntry(
                    model, f"{model}: fastest gated backend, fp32 space", self._auto_factory(model)
                )
            )
            for v in self.variants(model):
                out.append(
                    ModelEntry(
                        v.name,
                        f"{model} on {v.backend} ({v.precision})",
                        self._gated_factory(model, v.backend),
                    )
                )
        for cfg in self._remotes:
            out.append(
                ModelEntry(cfg.name, f"remote {cfg.model} at {cfg.host}", _remote_factory(cfg))
            )
        return out

    def remote_listing(self) -> list[Listing]:
        """Rows for the remote models: their space is known once loaded (probe vectors)."""
        rows = []
        for cfg in self._remotes:
            backend = f"remote:{cfg.host}"
            spec = remote_spec(cfg)
            rows.append(Listing(cfg.name, cfg.model, backend, spec, None, None, "at load"))
        return rows

    def check_names(self) -> None:
        """Refuse (ValueError) a remote model whose name another model already has."""
        taken = {*self.models(), *(v.name for m in self.models() for v in self.variants(m))}
        seen: set[str] = set()
        for cfg in self._remotes:
            if cfg.name in taken or cfg.name in seen:
                raise ConfigError(f"remote model name {cfg.name!r} is already taken: rename it")
            seen.add(cfg.name)

    def _auto_factory(self, model: str) -> Callable[[], Embedder]:
        return lambda: self.auto(model)

    def _gated_factory(self, model: str, backend: str) -> Callable[[], Embedder]:
        return lambda: self.gated(model, backend)


def _remote_factory(cfg: RemoteConfig) -> Callable[[], Embedder]:
    def build() -> Embedder:
        from embedstack.inference.engines.hf_tokenizer import HFTokenizer
        from embedstack.inference.engines.remote import RemoteEmbedder

        return RemoteEmbedder(cfg, HFTokenizer(L6.tokenizer_json(), cfg.max_tokens))

    return build


def available_models(
    cache_dir: Path | None = None,
    remotes: Sequence[RemoteConfig] = (),
    onnx: OnnxOptions = OnnxOptions(),
    pins: Mapping[str, str] | None = None,
    gate_queries: int | None = None,
) -> list[ModelEntry]:
    """Registry entries for every model and backend here (see the module docstring), and the
    remote models; `pins` (model -> backend) replace the auto choice; `gate_queries` gates on
    the first N sample queries only. Pins and names are checked here, at startup
    (ConfigError)."""
    sample = load_sample().head(gate_queries) if gate_queries else None
    catalog = Catalog(cache_dir, onnx=onnx, remotes=remotes, pins=pins, sample=sample)
    catalog.check_pins()
    catalog.check_names()
    return catalog.entries()
