"""The error kinds domain code raises. serving/app.py maps each kind to one HTTP status."""

from __future__ import annotations


class EmbedStackError(Exception):
    """Base class. The message must say what to fix."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(EmbedStackError):
    """A setting (environment, TOML file, flag) or a model/backend choice in settings that this
    machine cannot honour. Raised at startup, so the process stops with one line saying which."""


class InvalidInput(EmbedStackError):
    """The request is well-formed JSON but its content is not acceptable."""


class PayloadTooLarge(InvalidInput):
    """A single input is over a configured size limit."""


class NotFound(EmbedStackError):
    pass


class Conflict(EmbedStackError):
    pass


class SpaceMismatch(Conflict):
    """A vector or model from one embedding space was offered to another."""


class NotSupported(EmbedStackError):
    """A route this kind of server does not serve (e.g. a single-node-only feature asked of a
    cluster API node); the message names what to do instead."""


class Overloaded(EmbedStackError):
    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(EmbedStackError):
    pass


class Unauthorized(EmbedStackError):
    """No API key, or one that is unknown, revoked or expired."""


class Forbidden(EmbedStackError):
    """A valid API key without the scope or grant the request needs."""


class InsufficientStorage(Unavailable):
    """The disk (or a file-size limit) is full: the write was not made and nothing acknowledged
    was lost; reads keep working. Free space, then retry."""
