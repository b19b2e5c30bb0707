"""infinity-emb 0.0.78 (torch engine, CPU) as an embedding-server peer for bench/embed.py.

Unlike the other peers this module runs in the project venv: it only drives `infinity_emb v2`,
which lives in its own venv, ~/.cache/embedstack/peers/infinity-venv (infinity-emb pins older
numpy/transformers, so it must never go into the project venv). ensure_infinity() creates that
venv on first use: torch==2.13.0 first (the local CPU build; any other torch would pull a
multi-GB CUDA build), then infinity-emb[server,torch]==0.0.78 constrained to that torch.
InfinityServer serves a local sentence-transformers folder on a free loopback port, offline.

    .venv/bin/python bench/peers/infinity_peer.py [--texts 20]   # install + smoke test
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
from rich.markup import escape

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import say
from embedstack.testing import free_port, stop_process, wait_until

PEERS_HOME = Path.home() / ".cache" / "embedstack" / "peers"
VENV = PEERS_HOME / "infinity-venv"
INSTALL_LOG = PEERS_HOME / "infinity-venv.log"
TORCH = "torch==2.13.0"
INFINITY = "infinity-emb[server,torch]==0.0.78"
STEP_TIMEOUT_S = 1800  # per install step; pip from PyPI + the local torch wheel takes ~1 min
READY_TIMEOUT_S = 300.0

MANUAL_INSTALL = f"""to install it by hand:
    python3.11 -m venv {VENV}
    {VENV}/bin/pip install {TORCH}
    echo {TORCH} > /tmp/infinity-constraints.txt
    {VENV}/bin/pip install -c /tmp/infinity-constraints.txt '{INFINITY}'
    touch {VENV}/.installed"""


class InfinityUnavailable(RuntimeError):
    """The infinity venv is missing and could not be created."""


def ensure_infinity() -> Path:
    """The `infinity_emb` executable of ~/.cache/embedstack/peers/infinity-venv, creating the
    venv on first use (about a minute and 1.4 GB); raises InfinityUnavailable on failure."""
    exe = VENV / "bin" / "infinity_emb"
    marker = VENV / ".installed"
    if marker.exists() and exe.exists():
        return exe
    python = str(VENV / "bin" / "python")
    constraints = PEERS_HOME / "infinity-constraints.txt"  # keeps pip off any other torch
    check = "import infinity_emb, torch; assert torch.__version__.startswith('2.13.0')"
    steps = [
        ("create the venv (python3.11)", ["python3.11", "-m", "venv", str(VENV)]),
        (f"install {TORCH} (local CPU build)", [python, "-m", "pip", "install", TORCH]),
        (f"install {INFINITY}", [python, "-m", "pip", "install", "-c", str(constraints), INFINITY]),
        ("check the install", [python, "-c", check]),
    ]
    say(f"infinity-emb: creating its venv at {VENV} (first run only, takes a few minutes)")
    say(f"  pip output goes to {INSTALL_LOG} (tail -f it to follow)")
    PEERS_HOME.mkdir(parents=True, exist_ok=True)
    constraints.write_text(TORCH + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    with INSTALL_LOG.open("w") as log:
        for i, (what, cmd) in enumerate(steps, 1):
            say(escape(f"  step {i}/{len(steps)}: {what}"))  # "[server,torch]" is no markup
            started = time.monotonic()
            log.write(f"$ {' '.join(cmd)}\n")
            log.flush()
            try:
                done = subprocess.run(
                    cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=STEP_TIMEOUT_S
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise InfinityUnavailable(f"{what} failed: {exc}\n{MANUAL_INSTALL}") from exc
            if done.returncode != 0:
                raise InfinityUnavailable(
                    f"{what} failed (exit {done.returncode}); see {INSTALL_LOG}\n{MANUAL_INSTALL}"
                )
            say(f"    done in {time.monotonic() - started:.0f} s")
    if not exe.exists():
        raise InfinityUnavailable(f"no {exe} after the install\n{MANUAL_INSTALL}")
    marker.write_text(f"{TORCH}\n{INFINITY}\n")
    return exe


def server_env() -> dict[str, str]:
    """The caller's environment without INFINITY_* settings or the project's Python paths;
    offline, no telemetry."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFINITY_") and k not in drop}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        DO_NOT_TRACK="1",
        INFINITY_ANONYMOUS_USAGE_STATS="0",
    )
    return env


class InfinityServer:
    """`infinity_emb v2` serving `model_dir` (a sentence-transformers folder) on 127.0.0.1, torch
    engine on CPU, fp32, eager (no torch.compile, no BetterTransformer), no result cache; a
    context manager. POST {url}/embeddings with {"model": .model, "input": [...]}."""

    def __init__(
        self,
        model_dir: Path,
        port: int | None = None,
        *,
        served_model_name: str | None = None,
        batch_size: int = 64,
        log: Path | None = None,
        ready_timeout: float = READY_TIMEOUT_S,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.port = port if port is not None else free_port()
        self.model = served_model_name or str(self.model_dir)
        self.batch_size = batch_size
        self.log = log or PEERS_HOME / "infinity-server.log"
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, exe: Path) -> list[str]:
        return [
            str(exe), "v2",
            "--model-id", str(self.model_dir),
            "--served-model-name", self.model,
            "--engine", "torch",
            "--device", "cpu",
            "--dtype", "float32",
            "--batch-size", str(self.batch_size),
            "--no-compile",  # default on: torch.compile would take minutes on CPU
            "--no-bettertransformer",  # needs optimum<2, not installed
            "--no-vector-disk-cache",  # default on: it would answer repeats from a cache
            "--no-model-warmup",  # the caller warms up with its own texts
            "--no-trust-remote-code",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--log-level", "warning",
        ]  # fmt: skip

    def __enter__(self) -> InfinityServer:
        cmd = self.command(ensure_infinity())
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, env=server_env(), stdout=out, stderr=subprocess.STDOUT, cwd=PEERS_HOME
            )
        try:
            wait_until(self.proc, self._ready, self.ready_timeout, self.log, "infinity_emb", 0.5)
        except RuntimeError:
            self.__exit__()
            raise
        return self

    def _ready(self) -> bool:
        try:
            if httpx.get(f"{self.url}/health", timeout=2).status_code != 200:
                return False
            models = httpx.get(f"{self.url}/models", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return False
        return any(m.get("id") == self.model for m in models.get("data", []))

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


def smoke(n: int) -> None:
    """Serve the bundled all-MiniLM-L6-v2, embed `n` texts, compare with plain encode."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from embedstack.inference.models.bundled import L6

    topics = ["cats", "databases", "the weather", "python packaging", "rivers"]
    texts = [f"smoke test sentence number {i} about {topics[i % len(topics)]}" for i in range(n)]
    started = time.monotonic()
    with InfinityServer(L6.folder(), served_model_name=L6.name) as server:
        say(f"infinity_emb ready at {server.url} in {time.monotonic() - started:.1f} s")
        say("  " + " ".join(server.command(ensure_infinity())))
        r = httpx.post(
            f"{server.url}/embeddings", json={"model": server.model, "input": texts}, timeout=120
        )
        r.raise_for_status()
        got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    st = SentenceTransformer(str(L6.folder()), device="cpu")
    st.max_seq_length = 256
    want = st.encode(texts, normalize_embeddings=True)
    cos = np.sum(got * want, axis=1) / np.linalg.norm(got, axis=1)
    say(
        f"{len(texts)} texts, dim {got.shape[1]}: cosine vs sentence-transformers encode "
        f"mean {cos.mean():.6f} min {cos.min():.6f}"
    )


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--texts", type=int, default=20)
    ap.add_argument("--reinstall", action="store_true", help="delete the venv first")
    args = ap.parse_args()
    if args.reinstall and VENV.exists():
        shutil.rmtree(VENV)
    smoke(args.texts)
