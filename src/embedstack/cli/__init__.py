"""The embedstack command line: one click group; build_cli() attaches every command.

One module per command family (serve, ingest, query, models, upgrade, tune, plan, backup,
eval, loadtest); cli/common.py holds the shared options and the error policy, cli/http.py the
client of the server-driving commands. Nothing registers itself on import: build_cli() is the
one list of commands, and main() is the one place that sets process environment.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

import click

from embedstack.cli.common import Group

HELP = """embedstack: a self-hosted embedding stack.

Start the server with `embedstack serve`, add documents over HTTP or with
`embedstack ingest`, and search with `embedstack query`. Settings come from
EMBEDSTACK_* environment variables, an optional --config TOML file, and flags.
"""


def build_cli() -> click.Group:
    """The `embedstack` group with every command attached."""
    from embedstack.cli.backup import backup, doctor, restore
    from embedstack.cli.cluster import cluster
    from embedstack.cli.eval import eval_command
    from embedstack.cli.ingest import ingest
    from embedstack.cli.keys import keys
    from embedstack.cli.loadtest import characterize, loadtest
    from embedstack.cli.models import models
    from embedstack.cli.plan import plan
    from embedstack.cli.query import query
    from embedstack.cli.serve import serve, worker
    from embedstack.cli.tune import tune
    from embedstack.cli.upgrade import retire, rollback, upgrade

    cli = Group("embedstack", help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
    for command in (serve, worker, ingest, query, models, upgrade, rollback, retire, tune, plan,
                    keys, backup, restore, doctor, eval_command, loadtest, characterize,
                    cluster):  # fmt: skip
        cli.add_command(command)
    return cli


def main(args: Sequence[str] | None = None, **extra: Any) -> Any:
    """The console script and `python -m embedstack` (extra: click's main() keywords, e.g.
    standalone_mode=False)."""
    # process environment belongs to the entry point: the bundled models need no hub access
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:  # (with standalone_mode=False click returns instead of raising SystemExit)
        return build_cli().main(args, prog_name="embedstack", **extra)
    except SystemExit as exc:
        _exit_past_gate_threads(exc.code)
        raise


def _exit_past_gate_threads(code: object) -> None:
    """End the process now if a background accuracy gate is still running.

    A model's engine is gated in a thread (minutes on a busy machine) that was asked to stop
    but may be inside ONNX Runtime or OpenVINO; letting the interpreter tear down around it
    aborts the process ("terminate called without an active exception") after the command has
    finished. Its results are written atomically, so nothing is lost by not waiting."""
    if "embedstack.inference.models.auto" not in sys.modules:
        return  # no model was loaded: nothing to wait for (and --help stays light)
    from embedstack.inference.models.auto import GATE_THREAD_PREFIX

    gating = (t for t in threading.enumerate() if t.name.startswith(GATE_THREAD_PREFIX))
    if not any(t.is_alive() for t in gating):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))
