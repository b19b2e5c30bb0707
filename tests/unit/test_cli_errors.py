"""The CLI's shape and error policy, in process: every command attached by build_cli(), one
--url option, ConfigError -> one line + exit 2, domain errors -> one line + exit 1, and any
other exception (a bug) is not swallowed."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

import embedstack.cli as cli_package
from embedstack.cli import build_cli, main
from embedstack.cli.common import CONFIG_EXIT, URL_ENV
from embedstack.cli.upgrade import GATE_DEFAULTS
from embedstack.errors import ConfigError, NotFound
from embedstack.registry.upgrade import Gate
from embedstack.testing import free_port

LABELS = Path(__file__).resolve().parents[1] / "data" / "pydoc_title_labels.jsonl"
COMMANDS = {"serve", "worker", "ingest", "query", "models", "upgrade", "rollback", "retire",
            "tune", "plan", "keys", "backup", "restore", "doctor", "eval", "cluster", "loadtest",
            "characterize"}  # fmt: skip
SERVER_TALKING = {"query", "upgrade", "rollback", "retire", "tune", "eval", "loadtest",
                  "characterize"}  # fmt: skip
# arguments that reach the server on a closed port (tune reads a store first: see its own test)
REACHING = {
    "query": ["hello", "-c", "kb"],
    "upgrade": ["-c", "kb", "--model", "hashing-test-b"],
    "rollback": ["-c", "kb"],
    "retire": ["-c", "kb"],
    "eval": ["-c", "kb", "--labels", str(LABELS)],
}


def _invoke(args: list[str], env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(build_cli(), args, env=env)


def _one_line_error(result: Result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_build_cli_attaches_every_command_and_help_lists_them() -> None:
    cli = build_cli()
    assert set(cli.commands) == COMMANDS
    out = _invoke(["--help"])
    assert out.exit_code == 0
    listed = {line.split()[0] for line in out.output.split("Commands:")[1].splitlines() if line}
    assert listed == COMMANDS
    for name in COMMANDS:
        sub = _invoke([name, "--help"])
        assert sub.exit_code == 0 and len(sub.output.splitlines()) > 5, (name, sub.output)


def test_nothing_registers_on_import() -> None:
    # the group exists only when built: no module-level group to which imports add commands
    assert not any(isinstance(v, click.Group) for v in vars(cli_package).values())
    first, second = build_cli(), build_cli()
    assert first is not second and set(first.commands) == set(second.commands)


def test_one_url_option_on_every_server_talking_command() -> None:
    cli = build_cli()
    urls = {}
    for name, command in cli.commands.items():
        for param in command.params:
            if param.name == "url":
                urls[name] = param
    assert set(urls) == SERVER_TALKING
    helps = {(p.help, p.envvar, p.default) for p in urls.values()}  # type: ignore[attr-defined]
    assert len(helps) == 1, helps


@pytest.mark.parametrize("command", sorted(REACHING))
def test_closed_port_is_one_line_naming_the_url(command: str) -> None:
    port = free_port()
    out = _invoke([command, *REACHING[command], "--url", f"http://127.0.0.1:{port}"])
    assert out.exit_code == 1
    assert f"cannot reach http://127.0.0.1:{port}/" in _one_line_error(out)


def test_url_default_comes_from_env_then_settings() -> None:
    port = free_port()
    via_env = _invoke(["rollback", "-c", "kb"], env={URL_ENV: f"http://127.0.0.1:{port}/"})
    assert f"cannot reach http://127.0.0.1:{port}/v1/" in _one_line_error(via_env)
    other = free_port()
    via_settings = _invoke(["rollback", "-c", "kb"], env={"EMBEDSTACK_PORT": str(other)})
    assert f"cannot reach http://127.0.0.1:{other}/v1/" in _one_line_error(via_settings)
    bad = _invoke(["rollback", "-c", "kb", "--url", "localhost:8080"])
    assert bad.exit_code == 2 and "http://HOST:PORT" in bad.output


def test_bad_settings_are_one_line_and_exit_2(tmp_path: os.PathLike[str]) -> None:
    env = {"EMBEDSTACK_MODEL_BACKENDS": "{not json"}
    out = _invoke(["serve", "--data-dir", str(tmp_path)], env=env)
    assert out.exit_code == CONFIG_EXIT
    assert "EMBEDSTACK_MODEL_BACKENDS does not parse" in _one_line_error(out)
    # while the --url default is read from settings, too
    port = _invoke(["query", "x", "-c", "kb"], env={"EMBEDSTACK_PORT": "99999"})
    assert port.exit_code == CONFIG_EXIT and "EMBEDSTACK_PORT" in _one_line_error(port)


def _failing_build(monkeypatch: pytest.MonkeyPatch, exc: Exception) -> None:
    """Services.build (what serve and worker call first) raises `exc`."""
    from embedstack.serving.services import Services

    def build(settings: object) -> None:
        raise exc

    monkeypatch.setattr(Services, "build", staticmethod(build))


def test_config_error_at_startup_is_one_line_exit_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]
) -> None:
    _failing_build(monkeypatch, ConfigError("model_backends pins 'm' to 'x'; choose one of: auto"))
    out = _invoke(["worker", "--data-dir", str(tmp_path)])
    assert out.exit_code == CONFIG_EXIT
    assert _one_line_error(out) == (
        "Error: configuration: model_backends pins 'm' to 'x'; choose one of: auto"
    )


def test_domain_error_is_one_line_exit_1(
    monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]
) -> None:
    _failing_build(monkeypatch, NotFound("collection 'kb' does not exist"))
    out = _invoke(["worker", "--data-dir", str(tmp_path)])
    assert out.exit_code == 1 and _one_line_error(out) == "Error: collection 'kb' does not exist"


def test_an_unrelated_value_error_is_not_swallowed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]
) -> None:
    _failing_build(monkeypatch, ValueError("a bug"))
    out = _invoke(["serve", "--data-dir", str(tmp_path)])
    assert isinstance(out.exception, ValueError) and "Error: a bug" not in out.output


def test_main_sets_hf_hub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0 and os.environ["HF_HUB_OFFLINE"] == "1"


def test_upgrade_gate_defaults_are_the_servers() -> None:
    assert dataclasses.asdict(Gate()) == GATE_DEFAULTS  # restated in cli/upgrade.py
