"""`embedstack backup | restore | doctor`: online backups of a data directory, their restore
on a fresh one, and a diagnosis with a verdict. All work on the data directory itself and are
safe while a server uses it (SQLite's online backup API; read-only checks)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import orjson

from embedstack.cli.common import Command, config_option, data_dir_option, load_settings

_dir = click.Path(path_type=Path, file_okay=False)


@click.command(cls=Command)
@data_dir_option
@click.option("--to", "target", type=_dir, required=True, help="New directory for the backup.")
@config_option
def backup(data_dir: Path | None, target: Path, config: Path | None) -> None:
    """Copy a data directory (in use or not) into a new directory, consistently.

    Index snapshots first, then the store and the queue through SQLite's online backup API;
    writes may continue meanwhile. Restore it with `embedstack restore`.
    """
    from embedstack.storage.backup import backup as run_backup

    settings = load_settings(config, data_dir=data_dir)
    manifest = run_backup(settings.data_dir, target)
    took = manifest["finished_at"] - manifest["started_at"]
    size = sum(f["size"] for f in manifest["files"].values())
    click.echo(f"backed up {settings.data_dir} to {target}: {len(manifest['files'])} files, "
               f"{size / 1e6:.1f} MB in {took:.1f} s")  # fmt: skip
    for rel in manifest["snapshots_skipped"]:
        click.echo(f"  snapshot of {rel} kept changing: left out, rebuilt from the store at load")


@click.command(cls=Command)
@click.option("--from", "source", type=click.Path(path_type=Path, file_okay=False, exists=True),
              required=True, help="A directory written by `embedstack backup`.")  # fmt: skip
@click.option("--data-dir", type=_dir, required=True, help="New (empty) data directory.")
def restore(source: Path, data_dir: Path) -> None:
    """Check a backup's checksums and bring it up as a fresh data directory.

    Start a server on it with `embedstack serve --data-dir DIR`: indexes load from the copied
    snapshots and replay the store's later changes; leased jobs go back to the queue.
    """
    from embedstack.storage.backup import restore as run_restore

    manifest = run_restore(source, data_dir)
    click.echo(f"restored {source} into {data_dir}: {len(manifest['files'])} files checked, "
               f"{manifest['leases_released']} leased jobs requeued")  # fmt: skip


@click.command(cls=Command)
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the diagnosis as JSON.")
@config_option
def doctor(data_dir: Path | None, as_json: bool, config: Path | None) -> None:
    """Check a data directory: SQLite integrity (store, queue), snapshot checksums, and every
    index against the store. Prints a verdict: ok, warn (repaired at the next start) or fail;
    exits 1 on fail."""
    from embedstack.registry.doctor import diagnose

    settings = load_settings(config, data_dir=data_dir)
    result = diagnose(settings.data_dir)
    if as_json:
        click.echo(orjson.dumps(result.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        for f in result.findings:
            click.echo(f"{f.level.upper():4}  {f.what}: {f.detail}")
        click.echo(f"verdict: {result.verdict}")
    if result.verdict == "fail":
        sys.exit(1)
