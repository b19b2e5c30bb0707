"""A typed Python client for the embedstack HTTP API: `Client` (blocking) and `AsyncClient`.

    from embedstack.client import Client

    with Client("http://127.0.0.1:8080") as es:
        es.create_collection("docs")
        es.add_documents("docs", [{"id": "py", "text": "Python is a language."}])  # waits
        hits = es.query("docs", "which language?", k=3, filter={"lang": "en"}).hits

Results are the server's own response models (`embedstack.serving.responses`); errors are the
exceptions of `embedstack.client.errors`. Importing this package loads httpx and pydantic, not
the server (no FastAPI, no torch).
"""

from embedstack.client._core import IngestResult, Progress, RetryPolicy
from embedstack.client.aio import AsyncClient
from embedstack.client.errors import (
    APIError,
    AuthenticationError,
    ConflictError,
    ConnectError,
    EmbedStackClientError,
    InvalidInputError,
    JobFailedError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    RequestTimeout,
    ServerError,
    SpaceMismatchError,
    UnavailableError,
    WaitTimeout,
)
from embedstack.client.sync import Client

__all__ = [
    "APIError",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ConflictError",
    "ConnectError",
    "EmbedStackClientError",
    "IngestResult",
    "InvalidInputError",
    "JobFailedError",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "Progress",
    "RequestTimeout",
    "RetryPolicy",
    "ServerError",
    "SpaceMismatchError",
    "UnavailableError",
    "WaitTimeout",
]
