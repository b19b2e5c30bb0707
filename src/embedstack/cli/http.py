"""The CLI's HTTP client for commands that drive a running server."""

from __future__ import annotations

from typing import Any

import click
import httpx


def call(method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """JSON request; a connection failure or an error answer becomes a one-line ClickException
    that names the URL."""
    try:
        r = httpx.request(method, url, json=body, timeout=600)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise click.ClickException(
            f"cannot reach {url} ({reason}): is `embedstack serve` running there? (--url)"
        ) from exc
    try:
        data: dict[str, Any] = r.json()
    except ValueError as exc:
        raise click.ClickException(f"{url} answered {r.status_code}: {r.text[:200]}") from exc
    if r.status_code >= 400:
        raise click.ClickException(data.get("error", {}).get("message", r.text))
    return data
