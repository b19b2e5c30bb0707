"""The dashboard page and the metrics history it plots.

GET /dashboard is a static page (no data in it, no external scripts: it draws its own SVG), so it
is open like /docs; the data comes from GET /v1/metrics/history, which carries every tenant's
collection names in its series (like /metrics) and so needs the `metrics` scope. With
authentication on, the page asks for a key (or takes one from the URL fragment, `#key=es_...`,
which browsers never send to the server) and sends it as a Bearer header.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import HTMLResponse, Response

from embedstack.obs.history import History
from embedstack.serving.auth import Access, scraping
from embedstack.serving.http import JSON
from embedstack.serving.responses import HistoryOut

router = APIRouter()

# the page runs only its own inline code and talks only to this server
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


@router.get("/dashboard", include_in_schema=False)
async def dashboard_page() -> Response:
    page = resources.files("embedstack.serving").joinpath("static/dashboard.html").read_text()
    return HTMLResponse(page, headers=PAGE_HEADERS)


@router.get("/v1/metrics/history", response_model=HistoryOut)
async def metrics_history(
    request: Request,
    since: float | None = Query(None, description="only samples after this unix time"),
    _: Access = Depends(scraping),
) -> Response:
    return JSON(history_body(request.app.state.history, since))


def history_body(history: History, since: float | None) -> dict[str, Any]:
    """HistoryOut of the samples after `since` (all when None)."""
    samples = [{"t": s.t, "values": s.values} for s in history.since(since)]
    return {"interval_s": history.interval_s, "window_s": history.window_s, "samples": samples}
