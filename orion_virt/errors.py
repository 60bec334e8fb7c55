"""The one exception tree of orion_virt.

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


class ProtocolError(OrionError):
    """Bytes from a peer do not form a valid message. The connection that produced them must be closed."""


class TransportError(OrionError):
    """A byte carrier failed (peer gone, device removed, wrong layout)."""


class TransportClosed(TransportError):
    """The peer closed the transport or died."""


class TransportTimeout(TransportError):
    """A wait on the transport ran past its deadline."""


class DeviceError(TransportError):
    """A shared-memory device is missing, of the wrong size or layout, in use, or not served."""


class ControllerError(OrionError):
    """The controller could not be reached or refused a request."""


class AllocationError(ControllerError):
    """The pool cannot satisfy a request; the message says why (memory, node capacity, exhausted)."""


class HostError(OrionError):
    """A host-side operation (libvirt, netlink, shm files) failed."""


class BackendError(OrionError):
    """A server backend could not be started (no driver, no GPU, bad kernel table)."""
