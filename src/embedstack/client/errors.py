"""What the client raises: the server's `{"error": {"type", "message"}}` as typed exceptions.

Every API error carries the HTTP status, the server's error kind (`type`), its message (which
says what to fix), and the method and URL it answered; `str(exc)` is one line with all of them.
"""

from __future__ import annotations

from typing import Any

import httpx


class EmbedStackClientError(Exception):
    """Base of everything the client raises."""


class ConnectError(EmbedStackClientError):
    """The server could not be reached (refused, DNS, TLS), or the connection broke."""

    def __init__(self, method: str, url: str, cause: Exception) -> None:
        self.method = method
        self.url = url
        super().__init__(f"cannot reach {url} ({type(cause).__name__}: {cause or 'no detail'})")


class RequestTimeout(ConnectError):
    """The server took the request but did not answer within the client's timeout; the work
    may still happen (ingest is idempotent: sending the same documents again is safe)."""

    def __init__(self, method: str, url: str, cause: Exception) -> None:
        super().__init__(method, url, cause)
        self.args = (f"{method} {url} did not answer in time ({type(cause).__name__}); "
                     "raise the client's timeout",)  # fmt: skip


class APIError(EmbedStackClientError):
    """The server answered with an error status."""

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        method: str,
        url: str,
        headers: httpx.Headers | None = None,
    ) -> None:
        self.status = status
        self.type = type
        self.message = message
        self.method = method
        self.url = url
        self.headers = headers or httpx.Headers()
        super().__init__(f"{method} {url} answered {status} {type}: {message}")


class InvalidInputError(APIError):
    """422 / 400: the request's content is not acceptable; the message says what to fix."""


class PayloadTooLargeError(InvalidInputError):
    """413: a request body or one input is over a server limit."""


class AuthenticationError(APIError):
    """401 / 403: missing, wrong or insufficient API key."""


class NotFoundError(APIError):
    """404: unknown collection, alias, document, job, model or route."""


class ConflictError(APIError):
    """409: the request conflicts with the current state."""


class SpaceMismatchError(ConflictError):
    """409 SpaceMismatch: a vector or model from another embedding space."""


class OverloadedError(APIError):
    """429: the server refused work it could not take now; `retry_after` seconds to wait."""

    @property
    def retry_after(self) -> float | None:
        return retry_after(self.headers)


class UnavailableError(APIError):
    """503: not ready yet (starting, loading a model) or shutting down."""


class ServerError(APIError):
    """Any other 5xx: a bug on the server (see its log)."""


class JobFailedError(EmbedStackClientError):
    """An ingest job finished `failed`; `jobs` holds every job of the call (typed JobOut)."""

    def __init__(self, message: str, jobs: list[Any]) -> None:
        self.jobs = jobs
        super().__init__(message)


class WaitTimeout(EmbedStackClientError, TimeoutError):
    """A wait (for a job, an upgrade) ran out of time; the work itself goes on server-side."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidInputError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: InvalidInputError,
    429: OverloadedError,
    503: UnavailableError,
}


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds form), if any."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: unused by embedstack; fall back to backoff


def error_from_response(response: httpx.Response) -> APIError:
    """The typed exception for an error answer, with the server's kind and message."""
    kind, message = f"HTTP{response.status_code}", response.text[:500]
    try:
        body = response.json()
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            kind = str(err.get("type", kind))
            message = str(err.get("message", message))
    except ValueError:
        pass
    status = response.status_code
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else APIError)
    if status == 409 and kind == "SpaceMismatch":
        cls = SpaceMismatchError
    message = " ".join(message.split())  # one line
    request = response.request
    return cls(status, kind, message, request.method, str(request.url), response.headers)
