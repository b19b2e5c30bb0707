"""Shared helpers for the benchmarks: a real `embedstack serve` subprocess, corpora, tables.

`python bench/common.py profile-serve OUT.prof -- serve --port P ...` runs the server with a
CPU-time cProfile of its event loop and thread-pool work between SIGUSR1 and SIGUSR2, written to
OUT.prof at shutdown; bench/ingest.py --profile uses it. Everything binds to 127.0.0.1 only.
"""

from __future__ import annotations

import cProfile
import importlib
import os
import pstats
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.table import Table

from embedstack.testing import EMBEDSTACK, ServerProcess

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bundled model needs no hub
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no weight-loading bars in tables

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
PYDOC_JSONL = ROOT / "tests" / "data" / "pydoc_sections.jsonl"
# Debian corpora the benchmarks read (bench/corpora.py), and the package that installs each
CORPORA: dict[str, tuple[tuple[Path, ...], str]] = {
    "gcide": (
        (Path("/usr/share/dictd/gcide.index"), Path("/usr/share/dictd/gcide.dict.dz")),
        "dict-gcide",
    ),
    "pydoc": ((Path("/usr/share/doc/python3.11/html/_sources/tutorial"),), "python3.11-doc"),
}
# modules outside the core dependencies, and how to get them
EXTRAS = {"matplotlib": "bench", "scann": "scann"}


def preflight(
    imports: Iterable[str] = (),
    corpora: Iterable[str] = (),
    files: Iterable[Path] = (),
    _corpora: dict[str, tuple[tuple[Path, ...], str]] | None = None,
) -> None:
    """Fail now, naming the fix, if a module, corpus or file a benchmark needs later is missing:
    a benchmark must not run 20 minutes and then die writing its plot. Raises SystemExit with
    every problem listed. `corpora` are keys of CORPORA (`_corpora` replaces it in tests)."""
    known = CORPORA if _corpora is None else _corpora
    problems = []
    for name in imports:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            extra = EXTRAS.get(name.split(".")[0])
            fix = f"pip install -e '.[{extra}]'" if extra else "pip install -e ."
            problems.append(f"python module {name} is missing ({exc}): {fix} (or: make bench-deps)")
    for corpus in corpora:
        paths, package = known[corpus]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            problems.append(
                f"corpus {corpus} is missing ({', '.join(missing)}): apt-get install -y "
                f"{package} (or: make bench-corpora)"
            )
    problems += [f"file {f} is missing" for f in files if not Path(f).exists()]
    if problems:
        raise SystemExit("benchmark preflight failed:\n  " + "\n  ".join(problems))


# wide enough for the tables when the output goes to a file or a pipe
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)


def load_note() -> str:
    one, five, fifteen = os.getloadavg()
    cores = os.cpu_count()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min), {cores} cores"


# the CPU features that decide SIMD kernels (faiss distance code, BLAS, onnxruntime)
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
              "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")  # fmt: skip


def machine_note() -> str:
    """CPU model, cores, the SIMD flags present and which faiss build runs (its compile
    options name the SIMD level it dispatches to), for a benchmark's header."""
    from embedstack.inference.engines.torch import cpu_flags

    flags = cpu_flags()
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")),
                         model)  # fmt: skip
    except OSError:
        pass
    present = [f for f in SIMD_FLAGS if f in flags]
    try:
        import faiss

        build = f"faiss {faiss.__version__} ({faiss.get_compile_options().strip()})"
    except ImportError:
        build = "faiss not installed"
    return f"CPU: {model}, {os.cpu_count()} cores; flags: {' '.join(present) or 'none'}; {build}"


def say(text: str) -> None:
    console.print(text)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_env(**extra: str) -> dict[str, str]:
    """The caller's environment without EMBEDSTACK_* settings, offline, quiet, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDSTACK_")}
    env.update(HF_HUB_OFFLINE="1", EMBEDSTACK_LOG_LEVEL="warning")
    env.update(extra)
    return env


def use_torch_threads(n: int) -> dict[str, str]:
    """Give the in-process baseline `n` torch threads (0: torch's default) and return the
    server settings that do the same, so both sides run the model alike."""
    if n <= 0:
        return {}
    import torch

    torch.set_num_threads(n)
    return {"EMBEDSTACK_TORCH_THREADS": str(n)}


THREADS_HELP = (
    "torch intra-op threads for the baseline and the server alike (default 0: torch's default, "
    "one per core); 1 is far steadier on a machine loaded by other jobs"
)


class Server(ServerProcess):
    """`embedstack serve` on a free loopback port with data and log in `workdir`; a context
    manager (see embedstack.testing). With `profile`, the server runs under the CPU profiler of
    `profile-serve` below."""

    def __init__(self, workdir: Path, env: dict[str, str], profile: Path | None = None) -> None:
        command = EMBEDSTACK
        if profile is not None:
            command = [
                sys.executable,
                str(BENCH / "common.py"),
                "profile-serve",
                str(profile),
                "--",
            ]
        super().__init__(workdir / "data", env, command=command, log_dir=workdir)

    def __enter__(self) -> Server:
        self.start(timeout=600)  # a first start on a new machine may gate backends
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(grace=60)  # a profiled server writes its profile on the way out

    def client(self, timeout: float = 120.0) -> httpx.Client:
        return super().client(timeout)


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
_profiling = threading.Event()
_profiles: dict[int, cProfile.Profile] = {}


def _thread_profile() -> cProfile.Profile:
    """This thread's profiler, measuring CPU time (waiting threads cost nothing)."""
    return _profiles.setdefault(threading.get_ident(), cProfile.Profile(time.thread_time))


def profiled_serve(out: Path, argv: list[str]) -> None:
    """Run the embedstack CLI; profile between SIGUSR1 and SIGUSR2; write `out` at exit.

    Covered: the event loop thread and every thread-pool work item (asyncio.to_thread,
    run_in_executor: SQLite, chunking, index adds, searches). Not covered: dedicated threads
    such as the batcher's model runner (see the inference metrics) and OpenMP threads.
    """
    from concurrent.futures import thread

    original = thread._WorkItem.run

    def run_item(self: Any) -> None:
        if not _profiling.is_set():
            return original(self)
        prof = _thread_profile()
        prof.enable()
        try:
            return original(self)
        finally:
            prof.disable()

    def toggle(signum: int, _: object) -> None:  # signal handlers run on the main thread
        if signum == signal.SIGUSR1:
            _profiling.set()
            _thread_profile().enable()
        else:
            _profiling.clear()
            _thread_profile().disable()

    thread._WorkItem.run = run_item  # type: ignore[method-assign]
    signal.signal(signal.SIGUSR1, toggle)
    signal.signal(signal.SIGUSR2, toggle)
    # uvicorn re-raises the SIGTERM it handled once it has shut down: ignore that one, to dump
    signal.signal(signal.SIGTERM, lambda *_: None)
    from embedstack.cli import main

    try:
        main(argv, standalone_mode=False)
    finally:
        used = [p for p in _profiles.values() if p.getstats()]
        if used:
            stats = pstats.Stats(used[0])
            for p in used[1:]:
                stats.add(p)
            stats.dump_stats(str(out))


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[1] != "profile-serve" or sys.argv[3] != "--":
        raise SystemExit("usage: common.py profile-serve OUT.prof -- serve [embedstack args]")
    profiled_serve(Path(sys.argv[2]), sys.argv[4:])
