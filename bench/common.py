"""Shared helpers for the benchmarks: a real `embedstack serve` subprocess, corpora, tables.

`python bench/common.py profile-serve OUT.prof -- serve --port P ...` runs the server with a
CPU-time cProfile in every thread (merged into OUT.prof at shutdown); bench/ingest.py --profile
uses it. Everything binds to 127.0.0.1 only.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
PYDOC_JSONL = ROOT / "tests" / "data" / "pydoc_sections.jsonl"
console = Console(highlight=False)


def load_note() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} cores"


def say(text: str) -> None:
    console.print(text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(**extra: str) -> dict[str, str]:
    """The caller's environment without EMBEDSTACK_* settings, offline, quiet, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDSTACK_")}
    env.update(HF_HUB_OFFLINE="1", EMBEDSTACK_LOG_LEVEL="warning")
    env.update(extra)
    return env


class Server:
    """`embedstack serve` on a free loopback port with its own data dir; a context manager."""

    def __init__(self, workdir: Path, env: dict[str, str], profile: Path | None = None) -> None:
        self.data_dir = workdir / "data"
        self.env = env
        self.profile = profile
        self.port = free_port()
        self.log = workdir / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        args = ["serve", "--host", "127.0.0.1", "--port", str(self.port)]
        args += ["--data-dir", str(self.data_dir)]
        if self.profile is None:
            cmd = [sys.executable, "-m", "embedstack", *args]
        else:
            cmd = [sys.executable, str(BENCH / "common.py"), "profile-serve", str(self.profile)]
            cmd += ["--", *args]
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"server not ready in 180 s; log: {self.log}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def client(self, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)


def post(client: httpx.Client, path: str, body: Any) -> dict[str, Any]:
    """POST JSON (already encoded bytes, or an object) and return the decoded 2xx answer."""
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    r = client.post(path, content=content, headers={"content-type": "application/json"})
    if r.status_code >= 300:
        raise RuntimeError(f"POST {path} -> {r.status_code}: {r.text[:500]}")
    out: dict[str, Any] = r.json()
    return out


def wait_jobs(
    client: httpx.Client, job_ids: Sequence[str], timeout: float = 900.0, poll: float = 0.05
) -> list[dict[str, Any]]:
    """Poll GET /v1/jobs/{id} until every job is done (in order); raise on failure or timeout."""
    done: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(done) < len(job_ids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(job_ids) - len(done)} jobs not done in {timeout:.0f} s")
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_ids[len(done)]}").json()
        if job["status"] == "failed":
            raise RuntimeError(f"job failed: {job}")
        if job["status"] == "done":
            done.append(job)
        else:
            time.sleep(poll)
    return done


def unique_gcide(n: int) -> list[tuple[str, str]]:
    """The first `n` GCIDE entries (headword, text) in dictionary order with distinct texts.

    GCIDE repeats one entry's text under each of its sub-headwords (203k entries, 126k texts);
    the duplicates would be chunk-hash hits that skip the model, so they are dropped.
    """
    sys.path.insert(0, str(BENCH))
    from corpora import gcide_entries

    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for word, text in gcide_entries():
        if text not in seen:
            seen.add(text)
            out.append((word, text))
            if len(out) >= n:
                break
    return out


def pydoc_docs(n: int) -> list[tuple[str, str]]:
    """Up to `n` (title, text) sections of the committed python3.11-doc corpus."""
    rows = [orjson.loads(line) for line in PYDOC_JSONL.read_bytes().splitlines() if line.strip()]
    return [(str(r["metadata"]["title"]), str(r["text"])) for r in rows[:n]]


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    t = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        t.add_column(c, justify="left" if i == 0 else "right")
    for row in rows:
        t.add_row(*(fmt(v) for v in row))
    console.print(t)


def fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def batched(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- profiling the server ------------------------------------------------------------------
def profiled_serve(out: Path, argv: list[str]) -> None:
    """Run the embedstack CLI with a CPU-time profiler in every thread; merge them into `out`."""
    profiles: list[cProfile.Profile] = []
    original = threading.Thread.run

    def run(self: threading.Thread) -> None:
        prof = cProfile.Profile(time.thread_time)
        profiles.append(prof)
        prof.enable()
        try:
            original(self)
        finally:
            prof.disable()

    threading.Thread.run = run  # type: ignore[method-assign]
    from embedstack.cli import main

    prof = cProfile.Profile(time.thread_time)
    profiles.append(prof)
    prof.enable()
    try:
        main(argv, standalone_mode=False)
    finally:
        prof.disable()
        stats = pstats.Stats(profiles[0])
        for p in profiles[1:]:
            with_calls = p.getstats()
            if with_calls:
                stats.add(p)
        stats.dump_stats(str(out))


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[1] != "profile-serve" or sys.argv[3] != "--":
        raise SystemExit("usage: common.py profile-serve OUT.prof -- serve [embedstack args]")
    profiled_serve(Path(sys.argv[2]), sys.argv[4:])
