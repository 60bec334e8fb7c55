"""Blobs of a call as its execution sees them: the request blob still on the stream, and a
reply blob that is written straight into the stream (no copy of a large transfer in between)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

from ..transport.base import Stream


@dataclass
class Blob:
    """The request blob: ``remaining`` bytes on ``stream``, already bounded by the protocol.
    Whatever the execution leaves unread is discarded before the next call is read."""

    stream: Stream
    remaining: int

    def read_all(self) -> bytes:
        n, self.remaining = self.remaining, 0
        return self.stream.recv_exact(n)

    def chunks(self) -> Iterator[memoryview]:
        n, self.remaining = self.remaining, 0
        return self.stream.recv_chunks(n)


@dataclass(frozen=True)
class Fill:
    """A reply blob of ``size`` bytes; ``write`` fills the writable views it is given, in order."""

    size: int
    write: Callable[[Iterator[memoryview]], None]

    @classmethod
    def of(cls, data: bytes) -> Fill:
        def write(sinks: Iterator[memoryview]) -> None:
            pos = 0
            for s in sinks:
                s[:] = data[pos:pos + len(s)]
                pos += len(s)

        return cls(len(data), write)


@dataclass(frozen=True)
class BlobOut:
    """Reply values (the blob's length among them) and the blob."""

    values: tuple
    fill: Fill
