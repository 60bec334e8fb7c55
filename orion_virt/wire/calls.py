"""The call table: every remoted driver-API call, its code and its argument layouts.

Each call has a fixed little-endian request struct and reply struct (Python ``struct`` notation,
documented in docs/protocol.md so a C client can speak it), plus optional variable-length blobs:

* ``req_blob``: name of the request field that holds the byte length of the blob that follows the
  fixed arguments (the blob *is* the rest of the body), or ``None``;
* ``resp_blob``: likewise for the reply.

``async_`` calls are sent with the NO_REPLY flag: the client does not wait, and an error they cause
is reported by the server as the status of the next synchronising call.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum


class Call(IntEnum):
    cuInit = 1
    cuDriverGetVersion = 2
    cuDeviceGetCount = 3
    cuDeviceGet = 4
    cuDeviceGetName = 5
    cuDeviceTotalMem = 6
    cuDeviceGetAttribute = 7
    cuDeviceGetUuid = 8
    cuDevicePrimaryCtxRetain = 9
    cuDevicePrimaryCtxRelease = 10
    cuCtxCreate = 11
    cuCtxDestroy = 12
    cuCtxSetCurrent = 13
    cuCtxSynchronize = 15
    cuMemAlloc = 16
    cuMemFree = 17
    cuMemGetInfo = 18
    cuMemcpyHtoD = 19
    cuMemcpyDtoH = 20
    cuMemcpyDtoD = 21
    cuMemcpyHtoDAsync = 22
    cuMemcpyDtoHAsync = 23
    cuMemcpyDtoDAsync = 24
    cuMemsetD8 = 25
    cuMemsetD32 = 26
    cuMemsetD8Async = 27
    cuMemsetD32Async = 28
    cuStreamCreate = 29
    cuStreamSynchronize = 30
    cuStreamDestroy = 31
    cuStreamQuery = 32
    cuEventCreate = 33
    cuEventRecord = 34
    cuEventSynchronize = 35
    cuEventElapsedTime = 36
    cuEventDestroy = 37
    cuEventQuery = 38
    cuModuleLoadData = 39
    cuModuleGetFunction = 40
    cuModuleUnload = 41
    cuLaunchKernel = 42


@dataclass(frozen=True)
class CallSpec:
    call: Call
    req: struct.Struct
    req_names: tuple[str, ...]
    resp: struct.Struct
    resp_names: tuple[str, ...]
    req_blob: str | None = None
    resp_blob: str | None = None
    async_: bool = False
    synchronizing: bool = False
    max_req_blob: int = 0


def _spec(call: Call, req: str, req_names: str, resp: str = "", resp_names: str = "", **kw: object) -> CallSpec:
    return CallSpec(
        call, struct.Struct("<" + req), tuple(req_names.split()), struct.Struct("<" + resp),
        tuple(resp_names.split()), **kw,  # type: ignore[arg-type]
    )


MAX_NAME = 4096
MAX_IMAGE = 64 << 20
MAX_PARAMS = 32764
MAX_COPY = 1 << 40
"""Copies are streamed: a blob's length is bounded by what the session owns, checked before reading."""

C = Call
SPECS: dict[int, CallSpec] = {s.call: s for s in [
    _spec(C.cuInit, "I", "flags"),
    _spec(C.cuDriverGetVersion, "", "", "i", "version"),
    _spec(C.cuDeviceGetCount, "", "", "i", "count"),
    _spec(C.cuDeviceGet, "i", "ordinal", "i", "device"),
    _spec(C.cuDeviceGetName, "ii", "length device", "I", "name_len", resp_blob="name_len"),
    _spec(C.cuDeviceTotalMem, "i", "device", "Q", "bytes"),
    _spec(C.cuDeviceGetAttribute, "ii", "attrib device", "i", "value"),
    _spec(C.cuDeviceGetUuid, "i", "device", "16s", "uuid"),
    _spec(C.cuDevicePrimaryCtxRetain, "i", "device", "Q", "ctx"),
    _spec(C.cuDevicePrimaryCtxRelease, "i", "device"),
    _spec(C.cuCtxCreate, "Ii", "flags device", "Q", "ctx"),
    _spec(C.cuCtxDestroy, "Q", "ctx"),
    _spec(C.cuCtxSetCurrent, "Q", "ctx", async_=True),
    _spec(C.cuCtxSynchronize, "", "", synchronizing=True),
    _spec(C.cuMemAlloc, "Q", "size", "Q", "dptr"),
    _spec(C.cuMemFree, "Q", "dptr", async_=True),
    _spec(C.cuMemGetInfo, "", "", "QQ", "free total"),
    _spec(C.cuMemcpyHtoD, "QQ", "dst size", req_blob="size", synchronizing=True, max_req_blob=MAX_COPY),
    _spec(C.cuMemcpyDtoH, "QQ", "src size", "Q", "size", resp_blob="size", synchronizing=True),
    _spec(C.cuMemcpyDtoD, "QQQ", "dst src size", synchronizing=True),
    _spec(C.cuMemcpyHtoDAsync, "QQQ", "dst size stream", req_blob="size", async_=True, max_req_blob=MAX_COPY),
    _spec(C.cuMemcpyDtoHAsync, "QQQ", "src size stream", "Q", "size", resp_blob="size", synchronizing=True),
    _spec(C.cuMemcpyDtoDAsync, "QQQQ", "dst src size stream", async_=True),
    _spec(C.cuMemsetD8, "QIQ", "dst value count"),
    _spec(C.cuMemsetD32, "QIQ", "dst value count"),
    _spec(C.cuMemsetD8Async, "QIQQ", "dst value count stream", async_=True),
    _spec(C.cuMemsetD32Async, "QIQQ", "dst value count stream", async_=True),
    _spec(C.cuStreamCreate, "I", "flags", "Q", "stream"),
    _spec(C.cuStreamSynchronize, "Q", "stream", synchronizing=True),
    _spec(C.cuStreamDestroy, "Q", "stream", async_=True),
    _spec(C.cuStreamQuery, "Q", "stream"),
    _spec(C.cuEventCreate, "I", "flags", "Q", "event"),
    _spec(C.cuEventRecord, "QQ", "event stream", async_=True),
    _spec(C.cuEventSynchronize, "Q", "event", synchronizing=True),
    _spec(C.cuEventElapsedTime, "QQ", "start end", "f", "ms"),
    _spec(C.cuEventDestroy, "Q", "event", async_=True),
    _spec(C.cuEventQuery, "Q", "event"),
    _spec(C.cuModuleLoadData, "I", "image_len", "Q", "module", req_blob="image_len", max_req_blob=MAX_IMAGE),
    _spec(C.cuModuleGetFunction, "QI", "module name_len", "QI", "function params_len",
          req_blob="name_len", resp_blob="params_len", max_req_blob=MAX_NAME),
    _spec(C.cuModuleUnload, "Q", "module", async_=True),
    _spec(C.cuLaunchKernel, "QIIIIIIIQI",
          "function grid_x grid_y grid_z block_x block_y block_z shared_mem stream params_len",
          req_blob="params_len", async_=True, max_req_blob=MAX_PARAMS),
]}


def blob_len(spec: CallSpec, args: tuple, names: tuple[str, ...], field: str | None) -> int:
    return 0 if field is None else int(args[names.index(field)])
