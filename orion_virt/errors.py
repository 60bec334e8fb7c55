"""The one exception tree of orion_virt. Its types say whose fault an error is.

* ``UsageError`` — the local side misused an API (our code, or the caller's): a bug to fix here.
* ``PeerError`` — the other end broke the rules: ``ProtocolError`` for bytes that do not form a
  valid message. The connection that produced them is closed.
* ``Refused`` — a peer that works correctly said no: oriond or the controller, with its reason
  and a status code (a CUresult for oriond, so the application sees the matching CUDA error).
* ``TransportError`` — the byte carrier: ``StreamClosed`` when *we* closed it and used it again
  (our misuse), ``StreamBroken`` when the peer closed it, died or the device went away,
  ``TransportTimeout`` when a bounded wait ran out.
* ``ConfigError``, ``ControllerError``, ``HostError``, ``BackendError`` — their subsystems.

Entry points (click commands, the libvirt hook, oriond) catch ``OrionError`` and turn it into a
message and an exit code; library code raises the most specific subclass and never prints.
"""

from __future__ import annotations


class OrionError(Exception):
    """Base of every error orion_virt raises on purpose. ``str(e)`` is a user-facing message."""

    exit_code: int = 1


class ConfigError(OrionError):
    """A config file, environment variable or flag is malformed; the message names file, section and key."""

    exit_code = 2


class UsageError(OrionError):
    """The local side misused an API (a call in the wrong state, an argument out of range)."""


class PeerError(OrionError):
    """The peer did something the protocol does not allow."""


class ProtocolError(PeerError):
    """Bytes from a peer do not form a valid message. The connection that produced them must be closed."""


class Refused(OrionError):
    """A peer refused a request and said why. ``status`` is the code it gave (a CUresult from
    oriond, 0 when it gave none); ``by`` names who refused ("oriond", "Orion Controller")."""

    def __init__(self, reason: str, status: int = 0, by: str = "") -> None:
        super().__init__(f"{by} refused: {reason}" if by else reason)
        self.reason = reason
        self.status = status
        self.by = by


class TransportError(OrionError):
    """A byte carrier failed (peer gone, device removed, wrong layout)."""


class StreamClosed(TransportError, UsageError):
    """The stream was used after this side closed it."""


class StreamBroken(TransportError):
    """The peer closed the stream or died, or its device went away."""


class TransportTimeout(TransportError):
    """A wait on the transport ran past its deadline."""


class DeviceError(TransportError):
    """A shared-memory device is missing, of the wrong size or layout, in use, or not served."""


class ControllerError(OrionError):
    """The controller could not be reached or refused a request."""


class AllocationError(ControllerError, Refused):
    """The pool cannot satisfy a request; the message says why (memory, node capacity, exhausted)."""

    def __init__(self, reason: str, status: int = 0, by: str = "") -> None:
        Refused.__init__(self, reason, status, by)


class HostError(OrionError):
    """A host-side operation (libvirt, netlink, shm files) failed."""


class BackendError(OrionError):
    """A server backend could not be started (no driver, no GPU, bad kernel table)."""
