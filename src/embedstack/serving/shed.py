"""QueryShedder: refuse a query that would miss its latency budget before FastAPI touches it.

Refusing inside the route is correct but dear: routing, dependencies, JSON parsing, validation
and the exception handler cost a 429 most of what an admitted query costs on the event loop
(py-spy: ~80% of the loop's time under 4x overload went to refusals), so past the throughput
ceiling refusals starve the answers. This pure ASGI middleware sees POST
/v1/collections/{name}/query and POST /v1/embeddings first. It reads the (small) body once with
orjson -- the budget may be in it -- and asks the same admission the route would:

- every query: the search gate's in-flight bound, and, for a query that skips the model (a vector,
  or lexical), the gate's estimate against the deadline;
- a text the model embeds: the batcher's estimate for a short text behind its queue, leaving the
  search its share (the model of the collection's last text query; of the request for
  /v1/embeddings, which has a deadline only when it sends X-Request-Budget-Ms).

The deadline it checks against is shortened by the measured `Overhead`: the part of admitted
queries' server latency that the model and search estimates do not predict (thread hops, the
event loop's backlog, a process starved of CPU on a loaded machine), so that what it admits still
fits once those are paid -- while anything is queued or running: on an idle server a refusal
would spare no one, so the plain deadline (and the idle rules of the gate and the batcher) hold.

Before those estimates, an AdaptiveLimit (serving/concurrency.py) bounds the admitted queries in
flight per model, the bound following their measured latency against their budget: predictions
alone err on open-loop bursts, a measured bound does not.

Refused: a 429 + Retry-After answered straight to ASGI, in the error shape and status of the one
ERROR_STATUS table (handed in by create_app). Anything it cannot judge cheaply -- a body that is
not small JSON, an out-of-range budget, a server not ready -- passes through to the route, which
answers it as before. Admitted: the body is replayed to the app, which checks again with the real
text (these checks are lower bounds: they only refuse what the route would refuse); an admitted
query whose body parsed goes to `direct` (the route's own answer without FastAPI's routing,
dependency solving and second parse), which hands it back to the app when it does not validate.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedstack.config import Settings
from embedstack.errors import NotFound, Overloaded
from embedstack.inference.batching.batcher import Batcher
from embedstack.serving.concurrency import Limits
from embedstack.serving.search_gate import SearchGate
from embedstack.serving.services import Services

QUERY_PREFIX = "/v1/collections/"
QUERY_SUFFIX = "/query"
EMBEDDINGS_PATH = "/v1/embeddings"
BUDGET_HEADER = b"x-request-budget-ms"
MAX_PEEK_BYTES = 64 * 1024  # larger bodies pass through unjudged (a vector of 384 is ~8 KB)
JSON_TYPE = b"application/json"
SHORT_QUERY = (8,)  # token counts of a short query: no real text is cheaper to embed


@dataclass(frozen=True)
class RouteTemplate:
    """What a shed request's scope["route"] is: the metrics middleware labels it by `path`."""

    path: str


QUERY_ROUTE = RouteTemplate("/v1/collections/{name}/query")
EMBEDDINGS_ROUTE = RouteTemplate(EMBEDDINGS_PATH)


@dataclass(frozen=True)
class Ask:
    """What admission needs to know of a request: its deadline, and which lanes it will use."""

    deadline: float  # time.monotonic()
    collection: str | None  # stored name of a query's collection; None for /v1/embeddings
    model: str | None  # the model that will embed its text; None when it skips the model


def embeds_text(text: object, vector: object, mode: object) -> bool:
    """Whether a query's text goes through the model (a text, not a vector or lexical query)."""
    return isinstance(text, str) and vector is None and mode != "lexical"


def query_ask(query_models: Mapping[str, str], stored: str, deadline: float, embeds: bool) -> Ask:
    """The Ask of a query of collection `stored`: its text (if `embeds`) goes to the model that
    collection's text queries went to last (none yet: admission judges the search alone)."""
    return Ask(deadline, stored, query_models.get(stored) if embeds else None)


def refusal(gate: SearchGate, batchers: Mapping[str, Batcher], ask: Ask) -> Overloaded | None:
    """The Overloaded that admission would answer this request now, or None. The one owner of
    query admission before the real work: QueryShedder asks it before FastAPI reads a request,
    and the query route again before any thread hop (the real checks follow with the real text).

    The search gate first (every query searches); then the model, with a short text (a lower
    bound of the real one), its deadline shortened by the search's estimate."""
    batcher = batchers.get(ask.model) if ask.model is not None else None
    try:
        if ask.collection is not None:
            gate.check(ask.deadline if batcher is None else None)
        if batcher is not None:
            search = (gate.estimate() or 0.0) if ask.collection is not None else 0.0
            batcher.check_deadline(SHORT_QUERY, ask.deadline - search)
    except Overloaded as exc:
        return exc
    return None


def predicted_wait(gate: SearchGate, batchers: Mapping[str, Batcher], ask: Ask) -> float:
    """Seconds admission expects a short query of `ask` to wait: the model's queue (and its own
    batch) and the search."""
    batcher = batchers.get(ask.model) if ask.model is not None else None
    model = (batcher.estimate_wait(SHORT_QUERY) or 0.0) if batcher is not None else 0.0
    return model + (gate.estimate() or 0.0)


def _busy(gate: SearchGate, batchers: Mapping[str, Batcher], ask: Ask) -> bool:
    """Whether anything this request would wait behind is queued or running."""
    if gate.inflight:
        return True
    batcher = batchers.get(ask.model) if ask.model is not None else None
    return batcher is not None and any(batcher.pending().values())


class Overhead:
    """What the estimates leave out: the time an admitted query spends outside the model's queue
    and the search (thread hops, the event loop's backlog, a process starved of CPU), as an EWMA
    of (server latency - predicted wait) over answered queries. The middleware takes it off the
    deadline before it asks admission. Not refreshed for `stale_s` (nothing was admitted), it
    counts as 0: an inflated value cannot refuse every query forever."""

    def __init__(self, alpha: float = 0.1, stale_s: float = 1.0) -> None:
        self._alpha = alpha
        self._stale_s = stale_s
        self._seconds = 0.0
        self._measured = -stale_s

    def seconds(self, now: float) -> float:
        return self._seconds if now - self._measured <= self._stale_s else 0.0

    def observe(self, residual: float, now: float) -> None:
        residual = max(0.0, residual)
        fresh = now - self._measured > self._stale_s
        self._seconds = (
            residual if fresh else self._seconds + self._alpha * (residual - self._seconds)
        )
        self._measured = now


def _header(scope: Scope, name: bytes) -> bytes | None:
    found: bytes | None = next((v for k, v in scope["headers"] if k == name), None)
    return found


def _budget_ms(value: object, settings: Settings) -> float | None:
    """A requested budget in ms if it is one the route accepts, else None."""
    if isinstance(value, bytes):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not 0 < value <= settings.max_query_budget_ms:  # NaN fails this too
        return None
    return float(value)


def ask_of(
    settings: Settings, query_models: Mapping[str, str], scope: Scope, body: dict[str, Any],
    arrived: float,
) -> Ask | None:  # fmt: skip
    """The Ask of a query or embeddings request (`body` parsed), or None when the route must
    judge it: a bad budget or name (the route answers 4xx), an embeddings request without a
    budget. `query_models`: the model each collection's text queries went to last."""
    embeddings = scope["path"] == EMBEDDINGS_PATH
    raw = body.get("budget_ms") if not embeddings else None
    if raw is None:
        raw = _header(scope, BUDGET_HEADER)
    requested = _budget_ms(raw, settings) if raw is not None else None
    if raw is not None and requested is None:
        return None
    if embeddings:
        model = body.get("model") or settings.default_model
        if requested is None or not isinstance(model, str):  # no budget: no deadline to miss
            return None
        return Ask(arrived + requested / 1000.0, None, model)
    if requested is None:
        requested = settings.query_budget_ms
    principal = scope.get("state", {}).get("principal")
    if principal is None:
        return None
    try:
        stored = principal.qualify(scope["path"][len(QUERY_PREFIX) : -len(QUERY_SUFFIX)])
    except NotFound:  # not a name of this tenant's: the route answers 404
        return None
    embeds = embeds_text(body.get("text"), body.get("vector"), body.get("mode"))
    return query_ask(query_models, stored, arrived + requested / 1000.0, embeds)


def route_of(scope: Scope) -> RouteTemplate | None:
    """The query or embeddings route this request is for, if any."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    path: str = scope["path"]
    if path == EMBEDDINGS_PATH:
        return EMBEDDINGS_ROUTE
    if path.startswith(QUERY_PREFIX) and path.endswith(QUERY_SUFFIX):
        name = path[len(QUERY_PREFIX) : -len(QUERY_SUFFIX)]
        if name and "/" not in name:
            return QUERY_ROUTE
    return None


# answers an admitted query itself (True), or leaves it to the app having sent nothing (False):
# routes/query.py direct_query, handed in by create_app (this module cannot import routes)
Direct = Callable[[Scope, Receive, Send, bytes], Awaitable[bool]]


class QueryShedder:
    """Pure ASGI middleware (inside AccessGate and MetricsAndLimits): early 429s for queries.

    `status` and `body_of(kind, message)` are the error table's status of Overloaded and its
    error body, so a refusal here looks exactly like one from the route."""

    def __init__(
        self, app: ASGIApp, services: Services, status: int,
        body_of: Callable[[str, str], dict[str, Any]], direct: Direct | None = None,
    ) -> None:  # fmt: skip
        self.app = app
        self.direct = direct
        self.services = services
        self.status = status
        self.body_of = body_of
        self.overhead = Overhead()
        gauge = services.metrics.query_concurrency_limit
        self.limits = Limits(on_change=lambda model, n: gauge.labels(model or "").set(n))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = route_of(scope)
        services = self.services
        if route is None or not services.ready or services.draining:
            await self.app(scope, receive, send)
            return
        messages, body = await _read_small_body(scope, receive)
        ask = None
        arrived = scope.get("state", {}).get("arrived") or time.monotonic()
        if body is not None:
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                parsed = None
            if isinstance(parsed, dict):
                ask = ask_of(services.settings, services.query_models, scope, parsed, arrived)
        if ask is None:
            await self.app(scope, _replay(messages, receive), send)
            return
        gate, batchers = services.search_gate, services.batchers
        limit = self.limits.get(ask.model) if services.settings.adaptive_concurrency else None
        refused: Overloaded | None = None
        if limit is not None and not await limit.acquire_by(ask.deadline):
            services.metrics.shed.labels(stage="query", reason="concurrency").inc()
            refused = Overloaded(
                f"{limit.inflight} queries are in flight, the most this server answers within "
                "their latency budget now; retry after 1s, lower client concurrency or send a "
                "larger budget",
                retry_after=1.0,
            )
        else:
            reserve = self.overhead.seconds(time.monotonic()) if _busy(gate, batchers, ask) else 0.0
            refused = refusal(gate, batchers, replace(ask, deadline=ask.deadline - reserve))
            if refused is not None and limit is not None:
                limit.release()
        if refused is not None:
            scope["route"] = route  # labels the request's latency metric
            services.metrics.shed_early.labels(route.path).inc()
            principal = scope.get("state", {}).get("principal")
            message = principal.scrub(refused.message) if principal is not None else refused.message
            await self._refuse(send, message, refused.retry_after)
            return
        predicted = predicted_wait(gate, batchers, ask) if route is QUERY_ROUTE else None
        answered: list[float] = []
        send = self._timed(send, arrived, predicted, answered)
        try:
            replayed = _replay(messages, receive)
            direct = self.direct if route is QUERY_ROUTE and body is not None else None
            if direct is not None:
                scope["route"] = route  # labels the latency metric as FastAPI's route would
            if direct is None or not await direct(scope, replayed, send, body or b""):
                await self.app(scope, replayed, send)
        finally:
            if limit is not None:
                latency = answered[0] if answered else None
                limit.release(latency, ask.deadline - arrived)

    def _timed(
        self, send: Send, arrived: float, predicted: float | None, answered: list[float]
    ) -> Send:
        """`send`, noting an answered (200) query's latency in `answered` and, for a query
        (`predicted` given), teaching the Overhead what the estimates missed."""

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 200:
                now = time.monotonic()
                answered.append(now - arrived)
                if predicted is not None:
                    self.overhead.observe(now - arrived - predicted, now)
            await send(message)

        return timed

    async def _refuse(self, send: Send, message: str, retry_after: float) -> None:
        body = orjson.dumps(self.body_of(Overloaded.__name__, message))
        retry = str(max(1, round(retry_after))).encode()
        length = str(len(body)).encode()
        headers = [
            (b"content-type", JSON_TYPE),
            (b"content-length", length),
            (b"retry-after", retry),
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _read_small_body(scope: Scope, receive: Receive) -> tuple[list[Message], bytes | None]:
    """The messages read, and the whole body when Content-Length says it is small (else None,
    having read nothing)."""
    length = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = int(value) if value.isdigit() else None
            break
    if length is None or length > MAX_PEEK_BYTES:
        return [], None
    messages: list[Message] = []
    chunks: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":  # the client went away: let the app see it
            return messages, None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return messages, b"".join(chunks)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that answers `messages` first, then the real receive (disconnects)."""
    if not messages:
        return receive
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
