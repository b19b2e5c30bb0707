"""The benchmarks' preflight (bench/common.py): a missing module or corpus stops a benchmark at
once with the command that fixes it, instead of after a 20-minute run (issue #18)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def common() -> Iterator[Any]:
    sys.path.insert(0, str(BENCH))
    try:
        import common as module

        yield module
    finally:
        sys.path.remove(str(BENCH))


def test_missing_module_names_the_extra(common: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # even when imported before
    with pytest.raises(SystemExit) as err:
        common.preflight(imports=("matplotlib.pyplot",))
    message = str(err.value)
    assert "matplotlib" in message and "pip install -e '.[bench]'" in message


def test_missing_corpus_names_the_package(common: Any, tmp_path: Path) -> None:
    gone = tmp_path / "gcide.index"
    corpora = {**common.CORPORA, "gcide": ((gone,), "dict-gcide")}
    with pytest.raises(SystemExit) as err:
        common.preflight(corpora=("gcide",), _corpora=corpora)
    message = str(err.value)
    assert str(gone) in message and "apt-get install -y dict-gcide" in message


def test_every_problem_is_listed_at_once(common: Any, tmp_path: Path) -> None:
    corpora = {"gcide": ((tmp_path / "a",), "dict-gcide")}
    with pytest.raises(SystemExit) as err:
        common.preflight(
            imports=("embedstack_no_such_module",),
            corpora=("gcide",),
            files=(tmp_path / "b.jsonl",),
            _corpora=corpora,
        )
    message = str(err.value)
    assert "embedstack_no_such_module" in message and "dict-gcide" in message
    assert "b.jsonl" in message


def test_passes_when_everything_is_there(common: Any, tmp_path: Path) -> None:
    present = tmp_path / "gcide.index"
    present.write_text("x\n")
    corpora = {"gcide": ((present,), "dict-gcide")}
    common.preflight(imports=("json",), corpora=("gcide",), files=(present,), _corpora=corpora)


def test_index_benchmark_stops_before_the_long_work() -> None:
    """bench/index.py without matplotlib exits within seconds naming the fix; it used to build
    every index (20 minutes) and die writing its plot."""
    code = (
        "import runpy, sys\n"
        "sys.modules['matplotlib'] = None\n"
        "sys.argv = ['index.py', '--n', '3000', '--no-peers']\n"
        f"runpy.run_path({str(BENCH / 'index.py')!r}, run_name='__main__')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=False,
    )
    assert done.returncode != 0
    assert "benchmark preflight failed" in done.stderr
    assert "pip install -e '.[bench]'" in done.stderr
    assert "ours:" not in done.stderr  # no index was built
