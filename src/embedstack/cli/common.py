"""What every command shares: loading Settings, the common options, one error policy.

Errors: a command that meets a ConfigError (a setting or a model/backend choice this machine
cannot honour) prints one line and exits 2; any other EmbedStackError prints its one-line message
and exits 1. Every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import orjson

from embedstack.config import ENV_PREFIX, Settings
from embedstack.errors import ConfigError, EmbedStackError

URL_ENV = f"{ENV_PREFIX}URL"
CONFIG_EXIT = 2


def setting_default(name: str) -> Any:
    """A setting's built-in default (what applies when neither env, file nor flag sets it)."""
    return Settings.model_fields[name].default


def key_values(items: tuple[str, ...], option: str) -> dict[str, Any]:
    """KEY=VALUE options as a dict: a value that is JSON (64, 0.5, true) is parsed, any other
    is kept as a string (the server or the checker it meets says what it expects)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r}: write KEY=VALUE", param_hint=option)
        try:
            out[key.strip()] = orjson.loads(value)
        except orjson.JSONDecodeError:
            out[key.strip()] = value
    return out


def load_settings(config: Path | None, **overrides: Any) -> Settings:
    """Settings from the file, the environment and flags; logging and torch threads set up."""
    settings = Settings.load(config, **overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    return settings


class ConfigProblem(click.ClickException):
    """A ConfigError on the command line: one line, exit 2."""

    exit_code = CONFIG_EXIT

    def __init__(self, message: str) -> None:
        super().__init__(f"configuration: {message}")


@contextmanager
def reported() -> Iterator[None]:
    """Turn the domain's error kinds into one-line click errors; let everything else raise."""
    try:
        yield
    except ConfigError as exc:
        raise ConfigProblem(exc.message) from exc
    except EmbedStackError as exc:
        raise click.ClickException(exc.message) from exc


class Command(click.Command):
    def invoke(self, ctx: click.Context) -> Any:
        with reported():
            return super().invoke(ctx)


class Group(click.Group):
    """Its commands and subgroups report domain errors the same way (including while their
    options are resolved, e.g. the --url default read from settings)."""

    command_class = Command
    group_class = type  # subgroups are Groups too

    def invoke(self, ctx: click.Context) -> Any:
        with reported():
            return super().invoke(ctx)


EXAMPLE_URL = f"http://{setting_default('host')}:{setting_default('port')}"


def default_url() -> str:
    """http://HOST:PORT of the server these settings describe (a wildcard host -> loopback)."""
    settings = Settings.load(None)
    host = "127.0.0.1" if settings.host in ("", "0.0.0.0", "::") else settings.host
    return f"http://[{host}]:{settings.port}" if ":" in host else f"http://{host}:{settings.port}"


def _check_url(_: click.Context, __: click.Parameter, value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise click.BadParameter(f"{value!r}: write http://HOST:PORT, e.g. {EXAMPLE_URL}")
    return value.rstrip("/")


url_option = click.option(
    "--url", envvar=URL_ENV, default=default_url, callback=_check_url,
    help=f"Server to talk to (a running `embedstack serve`). Default: ${URL_ENV}, else "
    f"http://{ENV_PREFIX}HOST:{ENV_PREFIX}PORT from settings "
    f"({EXAMPLE_URL}).",
)  # fmt: skip
config_option = click.option(
    "--config", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
    help=f"TOML file with settings ({ENV_PREFIX}* environment variables and flags override it).",
)  # fmt: skip
data_dir_option = click.option(
    "--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
    help="Data folder: the store, queue and index snapshots; a server and the commands that "
    f"share its data use the same one (default: {ENV_PREFIX}DATA_DIR, else "
    f"{setting_default('data_dir')}).",
)  # fmt: skip
