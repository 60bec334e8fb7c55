"""Controller-specific errors; all are ``ControllerError`` (or ``AllocationError``) subclasses.

Stdlib-only: the guest client and oriond import this module.
"""

from __future__ import annotations

from ..errors import AllocationError, ControllerError

__all__ = [
    "AllocationError", "BadRequest", "ControllerError", "ControllerUnreachable", "NotFound",
    "StoreError", "TokenError", "TokenExpired", "Unauthorized", "Forbidden", "Conflict",
]


class ControllerUnreachable(ControllerError):
    """No HTTP exchange with the controller was possible (refused, timeout, DNS, reset)."""


class BadRequest(ControllerError):
    """A request field is missing or malformed; ``field`` names it (may be empty for bad JSON)."""

    exit_code = 2

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class NotFound(ControllerError):
    """The node or allocation named does not exist (or its lease already expired)."""


class TokenError(ControllerError):
    """A token is malformed, signed with another key, or for another node."""


class TokenExpired(TokenError):
    """A token was valid but its expiry has passed."""


class StoreError(ControllerError):
    """The backing store (SQLite file, etcd) failed or could not be reached."""


class Unauthorized(ControllerError):
    """The request needs a signature (API or client key) it does not carry, or carries a bad one."""


class Forbidden(ControllerError):
    """Signed, but not allowed: another tenant's allocation, another node's secret."""


class Conflict(ControllerError):
    """The change would take something another party holds (a registered node's address)."""
