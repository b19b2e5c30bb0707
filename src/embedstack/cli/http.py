"""The CLI's access to a running server: `embedstack.client`, with its errors turned into
one-line ClickExceptions that name the URL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

from embedstack.client import APIError, Client, ConnectError, RequestTimeout

TIMEOUT_S = 600.0  # upgrades and cutovers can take minutes on a big collection


@contextmanager
def server(url: str, api_key: str | None = None) -> Iterator[Client]:
    """The typed client of the server at `url` for one command (the key: `api_key`, else
    $EMBEDSTACK_API_KEY)."""
    try:
        with Client(url, api_key=api_key, timeout=TIMEOUT_S) as client:
            yield client
    except RequestTimeout as exc:
        raise click.ClickException(
            f"{exc.url} did not answer in {TIMEOUT_S:.0f} s: the server may still be working"
        ) from exc
    except ConnectError as exc:
        cause = exc.__cause__
        reason = " ".join(str(cause).split()) or type(cause).__name__
        raise click.ClickException(
            f"cannot reach {exc.url} ({reason}): is `embedstack serve` running there? (--url)"
        ) from exc
    except APIError as exc:
        raise click.ClickException(
            f"{exc.message} ({exc.method} {exc.url} answered {exc.status})"
        ) from exc
