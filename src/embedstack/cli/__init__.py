"""The embedstack command line: one click group; build_cli() attaches every command.

One module per command family (serve, ingest, query, models, upgrade, tune, plan, eval);
cli/common.py holds the shared options and the error policy, cli/http.py the client of the
server-driving commands. Nothing registers itself on import: build_cli() is the one list of
commands, and main() is the one place that sets process environment.
"""

from __future__ import annotations

import os
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
    from embedstack.cli.eval import eval_command
    from embedstack.cli.ingest import ingest
    from embedstack.cli.models import models
    from embedstack.cli.plan import plan
    from embedstack.cli.query import query
    from embedstack.cli.serve import serve, worker
    from embedstack.cli.tune import tune
    from embedstack.cli.upgrade import retire, rollback, upgrade

    cli = Group("embedstack", help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
    for command in (
        serve, worker, ingest, query, models, upgrade, rollback, retire, tune, plan, eval_command,
    ):  # fmt: skip
        cli.add_command(command)
    return cli


def main(args: Sequence[str] | None = None, **extra: Any) -> Any:
    """The console script and `python -m embedstack` (extra: click's main() keywords, e.g.
    standalone_mode=False)."""
    # process environment belongs to the entry point: the bundled models need no hub access
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return build_cli().main(args, prog_name="embedstack", **extra)
