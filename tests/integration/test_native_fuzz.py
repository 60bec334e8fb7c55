"""The native client (build/native/libcuda.so.1) against a hostile oriond: replies generated from the
call spec by hypothesis never crash or hang it.

tests/native/fuzz/every_call.c calls every function of the spec (orion_virt/wire/spec.py CALLS)
after cuInit, prints each status and exits 0. It runs against a fake oriond on loopback TCP that
completes HELLO/WELCOME and answers each CALL that waits with a reply made from the call's reply
layout (orion_virt/wire/calls.py): structurally valid replies with random fields, statuses and
blobs, and hostile ones (lengths that lie: blobs longer than the caller's buffer, length fields
that disagree, huge declared lengths, bodies shorter than the layout; wrong kind, flags, code or
seq; flipped, inserted and cut bytes; ERROR frames; garbage; a second WELCOME; a close; silence
past ORION_CONNECT_TIMEOUT, which bounds only the connect and the wait for WELCOME: the client has
no call timeout).

The fake server carries a model of the client's reader (docs/protocol.md, "Framing" and
"Session" 6): for the bytes it has sent, what the client must make of them, call by call: a reply,
a protocol error (CUDA_ERROR_UNKNOWN), an ERROR frame (its status), or a wait for bytes that are
not coming, which the server ends by closing (CUDA_ERROR_DEVICE_UNAVAILABLE). Every example
asserts: the program exits by itself, with 0, within BOUND seconds; every CALL it sent fits the
spec; and the session ends exactly as the model says: one line on stderr saying why, no CALL
after it, and the calls made afterwards return that status. A session the model says survives
ends with BYE and nothing on stderr.

The library and the program are built once more with -fsanitize=address,undefined and run on
fewer examples, asserting no sanitizer report.

ORION_FUZZ_EXAMPLES (default 300, about 10 s) sets the examples of the main run; the sanitizer run
gets a third of it, the handshake run a tenth (the whole file takes about 40 s on two cores).
`pytest -m long` runs ORION_FUZZ_LONG_EXAMPLES (default 3000) more.

Found and fixed: a hostile parameter layout made cuLaunchKernel read past the caller's
arguments (the client now checks a layout against the module's PTX); a device name that filled
the caller's buffer was left unterminated.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from orion_virt.errors import ProtocolError
from orion_virt.wire import spec as wire_spec
from orion_virt.wire.calls import BY_NAME, SPECS
from orion_virt.wire.frames import HEADER, MAX_CONTROL_BODY, Flag, Hello, Kind, Welcome
from tests.integration.test_native_client import cuda_include
from tests.oriond_fixture import ROOT, Oriond

pytestmark = pytest.mark.integration

BUILD = ROOT / "build" / "native"
NATIVE = ROOT / "orion_virt" / "client" / "native"
SOURCE = ROOT / "tests" / "native" / "fuzz" / "every_call.c"

EXAMPLES = int(os.environ.get("ORION_FUZZ_EXAMPLES", "300"))
ASAN_EXAMPLES = max(5, EXAMPLES // 3)
HANDSHAKE_EXAMPLES = max(5, EXAMPLES // 10)
LONG_EXAMPLES = int(os.environ.get("ORION_FUZZ_LONG_EXAMPLES", "3000"))
BOUND = 10.0
"""Seconds one run of every_call may take (it takes well under one)."""
CONNECT_TIMEOUT = 1.0
SANITIZE = "-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
SANITIZE_LIBRARY = (SANITIZE + " -Wno-error=format-truncation -Wno-error=maybe-uninitialized"
                    " -Wno-error=stringop-truncation")
"""The library's build adds -Werror; warnings that only -O1's flow analysis finds stay warnings here."""

SUCCESS, NOT_INITIALIZED, DEVICE_UNAVAILABLE, NO_DEVICE, UNKNOWN = 0, 3, 46, 100, 999
PARAMS_CAP = 8 * wire_spec.MAX_PARAMS
"""cuModuleGetFunction's reply blob (the parameter layout): the client's buffer holds MAX_PARAMS pairs."""
MODULE_GET_FUNCTION = BY_NAME["cuModuleGetFunction"].fn.code
MODULE_LOAD_DATA = BY_NAME["cuModuleLoadData"].fn.code
WAITING_CALLS = sum(not s.async_ for s in SPECS.values())

FAILURE_LINES = {
    "invalid": "oriond sent an invalid reply, the session is closed",
    "error": "oriond ended the session: ",
    "lost": "lost the connection to oriond",
}
SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer", "runtime error:")


# -- builds ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Build:
    exe: Path
    lib: Path
    env: dict[str, str]


def compile_every_call(out: Path, lib: Path, cflags: list[str]) -> Path:
    inc = cuda_include()
    assert inc is not None, "cuda.h not found after make native (pip install nvidia-cuda-runtime)"
    exe = out / "every_call"
    c = subprocess.run(["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-pthread", *cflags, f"-I{inc}",
                        str(SOURCE), f"-L{lib}", "-lcuda", "-o", str(exe)], capture_output=True, text=True, timeout=120)
    assert c.returncode == 0, c.stderr
    return exe


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Build:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the native client (make test-deps installs it)")
    b = subprocess.run(["make", "-C", str(ROOT), "native"], capture_output=True, text=True, timeout=300)
    assert b.returncode == 0, b.stdout + b.stderr
    exe = compile_every_call(tmp_path_factory.mktemp("fuzz"), BUILD, ["-O1"])
    return Build(exe, BUILD, {})


@pytest.fixture(scope="module")
def sanitized(plain: Build, tmp_path_factory: pytest.TempPathFactory) -> Build:
    """The library and every_call with ASan (and LeakSanitizer where it works) and UBSan (gcc), in a
    build directory of their own.
    CFLAGS goes in the environment: the Makefile appends its own flags to it (-fPIC, -std=c11,
    visibility), which a CFLAGS on make's command line would replace."""
    out = tmp_path_factory.mktemp("fuzz-asan")
    probe_src = out / "probe.c"
    probe_src.write_text("int main(void) { return 0; }\n")
    probe = subprocess.run(["gcc", *SANITIZE.split(), str(probe_src), "-o", str(out / "probe")], capture_output=True,
                           text=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"gcc cannot build with -fsanitize=address,undefined here (libasan/libubsan missing?): "
                    f"{probe.stderr[-600:]}")
    ran = subprocess.run([str(out / "probe")], env=dict(os.environ, ASAN_OPTIONS="detect_leaks=0"),
                         capture_output=True, text=True, timeout=60)
    if ran.returncode != 0:
        pytest.skip(f"programs built with -fsanitize=address do not run here (exit {ran.returncode}; ASan needs its "
                    f"shadow memory mapped, which some sandboxes refuse): {ran.stderr[-600:]}")
    lsan = subprocess.run([str(out / "probe")], env=dict(os.environ, ASAN_OPTIONS="detect_leaks=1"),
                          capture_output=True, text=True, timeout=60)
    leaks = int(lsan.returncode == 0 and not lsan.stderr)  # LeakSanitizer stops the world with ptrace: not everywhere
    b = subprocess.run(["make", "-C", str(NATIVE), f"OUT={out}"], env=dict(os.environ, CFLAGS=SANITIZE_LIBRARY),
                       capture_output=True, text=True, timeout=600)
    assert b.returncode == 0, b.stdout + b.stderr
    exe = compile_every_call(out, out, SANITIZE.split())
    env = {"ASAN_OPTIONS": f"detect_leaks={leaks}:abort_on_error=0:exitcode=86",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    return Build(exe, out, env)


# -- what the fake server sends ----------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """A CALL the fake server received."""

    code: int
    seq: int
    flags: int
    cap: int
    """The caller's buffer for the reply blob: what the request says it holds."""
    req: tuple = ()
    """The request's fixed fields."""

    @property
    def name(self) -> str:
        return SPECS[self.code].fn.name


@dataclass(frozen=True)
class Valid:
    """A reply that fits the call: its fixed fields (cut or zero-padded to the layout), a status,
    and for a call with a reply blob, up to `blob` bytes (as many as the caller's buffer holds)
    with the length field telling the truth. For cuModuleGetFunction, `layout` is the blob."""

    status: int = 0
    fields: bytes = b""
    blob: int = 0
    seed: int = 0
    layout: tuple[tuple[int, int], ...] | None = None


@dataclass(frozen=True)
class Lengths:
    """`base` with lengths that lie: a blob of `n` bytes ("blob": n; "cap": the caller's buffer + n;
    "huge": 2**32 - 1 - n bytes of body; "short": the layout - n), its length field saying
    n + `declared_delta`; `send`: the bytes the header promises are sent (else only the fixed fields)."""

    base: Valid
    mode: str
    n: int
    declared_delta: int = 0
    send: bool = True


@dataclass(frozen=True)
class BadHeader:
    """`base` with one header field (kind, flags, code, seq, length) set to `value`."""

    base: Valid
    field: str
    value: int


@dataclass(frozen=True)
class Mutate:
    """The bytes of `base` with byte flips (pos, xor), cuts (pos) and insertions (pos, bytes)."""

    base: Valid
    ops: tuple[tuple, ...]
    close: bool = False


@dataclass(frozen=True)
class Truncate:
    """The first `keep` bytes (modulo its length) of `base`, then a close."""

    base: Valid
    keep: int


@dataclass(frozen=True)
class ErrorFrame:
    status: int
    reason: bytes
    pad: int = 0
    """Reason bytes added (up to and past the 64 KiB bound)."""
    code: int = 0
    flags: int = 0
    length_delta: int = 0


@dataclass(frozen=True)
class Garbage:
    data: bytes
    close: bool = False


@dataclass(frozen=True)
class SecondWelcome:
    session_id: int = 7
    backend: str = "fake"


@dataclass(frozen=True)
class Close:
    pass


@dataclass(frozen=True)
class Silence:
    """Nothing for `seconds`, then `base` (or a close)."""

    seconds: float
    base: Valid
    close: bool = False


PTX_PARAM_SIZES = (8, 4, 4)
"""What the PTX of tests/native/fuzz/every_call.c declares for fill_u32: the native client
refuses a cuModuleGetFunction layout of other sizes."""
GOOD = Valid(fields=b"\x01" * 8, layout=((0, 8), (8, 4), (12, 4)))
"""Succeeds for every call: non-zero handles, cuModuleGetFunction the kernel's own layout."""

Action = Valid | Lengths | BadHeader | Mutate | Truncate | ErrorFrame | Garbage | SecondWelcome | Close | Silence


@dataclass(frozen=True)
class Handshake:
    """The answer to HELLO: `frame` after `ops` (as Mutate's), after `delay` seconds; `close` after it."""

    frame: bytes = Welcome(7, "fake").encode()
    ops: tuple[tuple, ...] = ()
    delay: float = 0.0
    close: bool = False


@dataclass(frozen=True)
class Plan:
    valid: tuple[Valid, ...]
    """Cycled over the calls that wait, except those `hostile` names (by their index)."""
    hostile: tuple[tuple[int, Action], ...] = ()
    handshake: Handshake = Handshake()
    tight: bool = False
    """every_call's launch passes only the kernel's real arguments."""
    connect_timeout: float = CONNECT_TIMEOUT
    """ORION_CONNECT_TIMEOUT of the run."""

    def action(self, index: int) -> Action:
        for i, a in self.hostile:
            if i == index:
                return a
        return self.valid[index % len(self.valid)]


def blob_field_offset(code: int) -> int:
    """Offset in the fixed reply fields of the u64 reply-blob length, -1: none."""
    off = 0
    for f in SPECS[code].resp_fields:
        if f.length_of:
            return off
        off += struct.calcsize("<" + f.fmt)
    return -1


def frame(length: int, kind: int, flags: int, code: int, seq: int, status: int) -> bytes:
    return HEADER.pack(min(max(length, 0), 0xFFFFFFFF), kind & 0xFF, flags & 0xFF, code & 0xFFFF,
                       seq & 0xFFFFFFFF, status)


def fixed_fields(v: Valid, code: int) -> bytearray:
    size = SPECS[code].resp.size
    return bytearray(v.fields[:size].ljust(size, b"\0"))


def valid_blob(v: Valid, call: Call) -> bytes:
    if SPECS[call.code].resp_blob is None or v.status:
        return b""
    if call.code == MODULE_GET_FUNCTION and v.layout is not None:
        blob = b"".join(struct.pack("<II", o & 0xFFFFFFFF, s & 0xFFFFFFFF) for o, s in v.layout)
        return blob[:call.cap - call.cap % 8]
    return random.Random(v.seed).randbytes(min(v.blob, call.cap))


def render_valid(v: Valid, call: Call) -> bytes:
    fields = fixed_fields(v, call.code)
    blob = valid_blob(v, call)
    off = blob_field_offset(call.code)
    if off >= 0 and not v.status:
        struct.pack_into("<Q", fields, off, len(blob))
    return frame(len(fields) + len(blob), Kind.REPLY, 0, call.code, call.seq, v.status) + fields + blob


def render_lengths(a: Lengths, call: Call) -> bytes:
    fields = fixed_fields(a.base, call.code)
    size = len(fields)
    if a.mode == "short":
        length = max(size - a.n, 0)
    elif a.mode == "cap":
        length = size + call.cap + a.n
    elif a.mode == "huge":
        length = 0xFFFFFFFF - a.n
    else:
        length = size + a.n
    length = min(max(length, 0), 0xFFFFFFFF)
    n = max(length - size, 0)
    off = blob_field_offset(call.code)
    if off >= 0:
        struct.pack_into("<Q", fields, off, (n + a.declared_delta) % (1 << 64))
    body = bytes(fields[:length])
    if a.send and n <= 2 * PARAMS_CAP:
        body += random.Random(a.base.seed).randbytes(n)
    return frame(length, Kind.REPLY, 0, call.code, call.seq, a.base.status) + body


def mutate(data: bytes, ops: tuple[tuple, ...]) -> bytes:
    b = bytearray(data)
    for op in ops:
        if op[0] == "flip" and b:
            b[op[1] % len(b)] ^= op[2] or 1
        elif op[0] == "cut":
            del b[op[1] % (len(b) + 1):]
        elif op[0] == "insert":
            pos = op[1] % (len(b) + 1)
            b[pos:pos] = op[2]
    return bytes(b)


def render_error(a: ErrorFrame) -> bytes:
    reason = a.reason + b"x" * a.pad
    return frame(len(reason) + a.length_delta, Kind.ERROR, a.flags, a.code, 0, a.status) + reason


# -- the model of the client's reader ----------------------------------------------------------


class Need(Exception):
    """The client waits for bytes that were not sent."""


@dataclass
class Stream:
    """What the server sent, and how far the client has read it."""

    data: bytearray = field(default_factory=bytearray)
    pos: int = 0
    eof: bool = False
    ptx_module: bool = False
    """the last cuModuleLoadData succeeded with a module handle: the client checks the layouts of
    its kernels against the PTX it sent"""

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise Need
        b = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return b


def read_reply(s: Stream, call: Call) -> tuple[str, int]:
    """What the client makes of the next bytes as the reply to `call` (docs/protocol.md, Session 6):
    ("ok", its status), ("invalid", CUDA_ERROR_UNKNOWN) or ("error", the ERROR frame's status).
    Every check is made on what was read before a byte more is read. Raises Need."""
    length, kind, flags, code, seq, status = HEADER.unpack(s.take(HEADER.size))
    if kind == Kind.ERROR:
        if code or flags or length > MAX_CONTROL_BODY:
            return "invalid", UNKNOWN
        s.take(length)
        return "error", status or UNKNOWN
    if kind != Kind.REPLY or code != call.code or seq != call.seq or flags:
        return "invalid", UNKNOWN
    spec = SPECS[call.code]
    size = spec.resp.size
    n = 0
    if length != size:
        if spec.resp_blob is None or length < size or status or length - size > call.cap:
            return "invalid", UNKNOWN
        n = length - size
    fields = s.take(size)
    blob = b""
    if spec.resp_blob is not None and not status:
        if struct.unpack_from("<Q", fields, blob_field_offset(call.code))[0] != n:
            return "invalid", UNKNOWN
        blob = s.take(n)
    if call.code == MODULE_LOAD_DATA and not status:
        s.ptx_module = struct.unpack_from("<Q", fields, 0)[0] != 0
    if call.code == MODULE_GET_FUNCTION and not status:
        # the client checks the parameter layout: u32 offset, u32 size pairs inside MAX_PARAMS
        handle = struct.unpack_from("<Q", fields, 0)[0]
        pairs = [struct.unpack_from("<II", blob, i) for i in range(0, len(blob) - len(blob) % 8, 8)]
        if len(blob) % 8 or not handle or any(o + z > wire_spec.MAX_PARAMS for o, z in pairs):
            return "invalid", UNKNOWN
        # and against what the module's PTX declares (every_call.c loads PTX text)
        if s.ptx_module and tuple(z for _o, z in pairs) != PTX_PARAM_SIZES:
            return "invalid", UNKNOWN
    return "ok", status


def read_welcome(s: Stream) -> int:
    """cuInit's status for the answer to HELLO: 0 (a WELCOME it can use), the ERROR frame's status,
    or CUDA_ERROR_NO_DEVICE. Raises Need."""
    length, kind, flags, code, _seq, status = HEADER.unpack(s.take(HEADER.size))
    if kind not in (Kind.WELCOME, Kind.ERROR) or code or flags or length > MAX_CONTROL_BODY:
        return NO_DEVICE
    body = s.take(length)
    if kind == Kind.ERROR:
        return status or UNKNOWN
    if length < 14 or 14 + struct.unpack_from("<H", body, 12)[0] != length or struct.unpack_from("<H", body)[0] != 1:
        return NO_DEVICE
    return SUCCESS


# -- the fake oriond ---------------------------------------------------------------------------


def recv_exact(conn: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = conn.recv(min(n - len(data), 1 << 20))
        if not chunk:
            raise EOFError
        data += chunk
    return bytes(data)


class FuzzServer:
    """One session of a fake oriond that answers as `plan` says, keeping the model of the client."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.addr = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.stream = Stream()
        self.calls: list[Call] = []
        self.waiting: list[Call] = []
        self.end: tuple[str, int, int] | None = None
        """How the model says the session ended: (verdict, status, index of the waiting call)."""
        self.after_end: list[Call] = []
        self.problems: list[str] = []
        self.bye = False
        self.applied: list[str] = []
        """The hostile actions sent (their kinds)."""
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.sock.settimeout(BOUND + 5)
        try:
            conn, _ = self.sock.accept()
        except OSError as e:
            self.problems.append(f"no connection: {e!r}")
            return
        with conn:
            conn.settimeout(BOUND + 5)
            try:
                self._serve(conn)
            except (OSError, EOFError) as e:
                if not isinstance(e, EOFError) and not self.done.is_set():
                    self.problems.append(f"server: {e!r}")

    def close(self) -> None:
        self.done.set()
        self.sock.close()
        self.thread.join(BOUND + 10)

    def _send(self, conn: socket.socket, data: bytes) -> None:
        if data and not self.stream.eof:
            self.stream.data += data
            try:
                conn.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up on the reply before it was all sent: what it made of it is checked

    def _shut(self, conn: socket.socket) -> None:
        if not self.stream.eof:
            self.stream.eof = True
            try:
                conn.shutdown(socket.SHUT_WR)  # the client reads what was sent, then the end; we read on
            except OSError:
                pass  # the client is gone already

    def _recv(self, conn: socket.socket) -> tuple[tuple, bytes]:
        h = HEADER.unpack(recv_exact(conn, HEADER.size))
        if h[0] > (64 << 20) + 4096:
            raise OSError(f"the client announced a body of {h[0]} bytes")
        return h, recv_exact(conn, h[0])

    def _serve(self, conn: socket.socket) -> None:
        h, body = self._recv(conn)
        try:
            hello = Hello.decode(body)
            if h[1] != Kind.HELLO or hello.vgpu_count != 2:
                self.problems.append(f"a first message {h} {hello}")
        except ProtocolError as e:
            self.problems.append(f"HELLO: {e}")
        hs = self.plan.handshake
        if hs.delay >= self.plan.connect_timeout:
            self.end = ("init", NO_DEVICE, -1)  # the client gives up before the answer comes
        if hs.delay:
            self.done.wait(hs.delay)
        self._send(conn, mutate(hs.frame, hs.ops))
        if hs.close:
            self._shut(conn)
        try:
            status = read_welcome(self.stream)
        except Need:
            status = NO_DEVICE  # the client gives up at its connect timeout, or at the close
        if status != SUCCESS and self.end is None:
            self.end = ("init", status, -1)
        while True:
            try:
                h, body = self._recv(conn)
            except EOFError:
                return
            if h[1] == Kind.BYE and not h[0]:
                self.bye = True
                continue
            call = self._check(h, body)
            if call is None:
                return
            self.calls.append(call)
            if self.end is not None:
                self.after_end.append(call)
                continue
            if call.flags & Flag.NO_REPLY:
                continue
            index = len(self.waiting)
            self.waiting.append(call)
            if not self.stream.eof:
                action = self.plan.action(index)
                if any(i == index for i, _ in self.plan.hostile):
                    self.applied.append(type(action).__name__)
                self._act(conn, action, call)
            try:
                verdict = read_reply(self.stream, call)
            except Need:
                self._shut(conn)
                verdict = ("lost", DEVICE_UNAVAILABLE)
            if verdict[0] != "ok":
                self.end = (verdict[0], verdict[1], index)

    def _check(self, h: tuple, body: bytes) -> Call | None:
        """The CALL as the spec lays it out, or None (a problem) for anything else."""
        length, kind, flags, code, seq, _status = h
        spec = SPECS.get(code)
        if kind != Kind.CALL or spec is None:
            self.problems.append(f"the client sent kind {kind} code {code}")
            return None
        if flags != (Flag.NO_REPLY if spec.async_ else 0):
            self.problems.append(f"{spec.fn.name}: flags {flags}")
        if seq != len(self.calls) + 1:
            self.problems.append(f"{spec.fn.name}: seq {seq} after {len(self.calls)} calls")
        req = dict(zip(spec.req_names, spec.req.unpack_from(body))) if length >= spec.req.size else {}
        blob = int(req.get(spec.req_blob, 0)) if spec.req_blob else 0
        if length != spec.req.size + blob:
            self.problems.append(f"{spec.fn.name}: a body of {length} bytes, the layout says {spec.req.size} + {blob}")
        cap = 0
        for a in spec.fn.args:
            if a.role is wire_spec.Role.HOST_OUT:
                cap = max(int(req.get(a.length, 0)), 0) if a.length else PARAMS_CAP
        return Call(code, seq, flags, cap, tuple(req.values()))

    def _act(self, conn: socket.socket, a: Action, call: Call) -> None:
        if isinstance(a, Valid):
            self._send(conn, render_valid(a, call))
        elif isinstance(a, Lengths):
            self._send(conn, render_lengths(a, call))
        elif isinstance(a, BadHeader):
            data = bytearray(render_valid(a.base, call))
            at = {"length": (0, "<I"), "kind": (4, "<B"), "flags": (5, "<B"), "code": (6, "<H"), "seq": (8, "<I")}
            pos, fmt = at[a.field]
            struct.pack_into(fmt, data, pos, a.value % (1 << (8 * struct.calcsize(fmt))))
            self._send(conn, bytes(data))
        elif isinstance(a, Mutate):
            self._send(conn, mutate(render_valid(a.base, call), a.ops))
            if a.close:
                self._shut(conn)
        elif isinstance(a, Truncate):
            whole = render_valid(a.base, call)
            self._send(conn, whole[:a.keep % len(whole)])
            self._shut(conn)
        elif isinstance(a, ErrorFrame):
            self._send(conn, render_error(a))
        elif isinstance(a, Garbage):
            self._send(conn, a.data)
            if a.close:
                self._shut(conn)
        elif isinstance(a, SecondWelcome):
            self._send(conn, Welcome(a.session_id, a.backend).encode())
        elif isinstance(a, Close):
            self._shut(conn)
        elif isinstance(a, Silence):
            self.done.wait(a.seconds)
            if a.close:
                self._shut(conn)
            else:
                self._send(conn, render_valid(a.base, call))
        else:  # pragma: no cover
            raise AssertionError(a)

    def summary(self) -> str:
        calls = " ".join(f"{c.name}#{c.seq}" for c in self.calls[-8:])
        return (f"calls received: {len(self.calls)} (last: {calls}); waiting calls answered: {len(self.waiting)}; "
                f"end: {self.end}; bye: {self.bye}; after the end: {[c.name for c in self.after_end]}; "
                f"problems: {self.problems}")


# -- running and checking ----------------------------------------------------------------------


@dataclass
class Run:
    returncode: int | None
    stdout: str
    stderr: str
    took: float


def run_every_call(b: Build, plan: Plan, srv: FuzzServer, exe: Path | None = None) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORION_")}
    env.update(b.env, ORION_ENABLE_NET="1", ORION_SERVER=srv.addr, ORION_VGPU="2", ORION_GMEM="4096",
               ORION_CONNECT_TIMEOUT=str(plan.connect_timeout), LD_LIBRARY_PATH=str(b.lib))
    t0 = time.monotonic()
    try:
        p = subprocess.run([str(exe or b.exe), *(["tight"] if plan.tight else [])], env=env, capture_output=True,
                           timeout=BOUND)
        code: int | None = p.returncode
        out, err = p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        code, out, err = None, e.stdout or b"", e.stderr or b""
    return Run(code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), time.monotonic() - t0)


def is_after_call(c: Call) -> bool:
    """One of every_call's last three calls: cuDeviceGetAttribute of attribute 1, 2 or 3."""
    return c.code == BY_NAME["cuDeviceGetAttribute"].fn.code and c.req[:1] in ((1,), (2,), (3,))


def statuses(stdout: str) -> list[tuple[str, int]]:
    out = []
    for line in stdout.splitlines():
        name, _, st = line.rpartition(" ")
        if name and st.lstrip("-").isdigit():
            out.append((name, int(st)))
    return out


def fuzz_once(b: Build, plan: Plan) -> tuple[FuzzServer, Run]:
    srv = FuzzServer(plan)
    try:
        r = run_every_call(b, plan, srv)
    finally:
        srv.close()
    where = (f"\n{plan!r}\nserver: {srv.summary()}\nexit {r.returncode} after {r.took:.1f} s\n"
             f"stdout (tail):\n{r.stdout[-1500:]}\nstderr:\n{r.stderr[-3000:]}")
    assert r.returncode is not None, f"every_call did not finish within {BOUND} s (a hang){where}"
    assert r.returncode >= 0, f"every_call was killed by signal {-r.returncode}{where}"
    marks = [m for m in SANITIZER_MARKS if m in r.stderr]
    assert not marks, f"a sanitizer report ({marks}){where}"
    assert r.returncode == 0, f"every_call exited {r.returncode}{where}"
    assert "every_call: done" in r.stdout, where
    assert not srv.problems, where
    said = [ln for ln in r.stderr.splitlines() if any(m in ln for m in FAILURE_LINES.values())]
    after = [st for name, st in statuses(r.stdout) if name.startswith("after ")]
    assert len(after) == 3, where
    if srv.end is None:
        assert not said, f"the model says the session survives{where}"
        assert srv.bye, f"no BYE at exit{where}"
        assert "Client exits with allocation ID" in r.stderr, where
    elif srv.end[0] == "init":
        status = srv.end[1]
        assert statuses(r.stdout)[0] == ("cuInit", status), f"cuInit should return {status}{where}"
        assert after == [NOT_INITIALIZED] * 3, where
        assert not srv.calls, f"calls after a failed cuInit{where}"
        assert "Client exits without allocation ID" in r.stderr, where
    else:
        verdict, status, index = srv.end
        assert len(said) == 1 and FAILURE_LINES[verdict] in said[0], \
            f"expected one line {FAILURE_LINES[verdict]!r} on stderr{where}"
        before = sum(is_after_call(c) for c in srv.waiting[:index])  # those answered before the end
        assert after[before:] == [status] * (3 - before), f"later calls should return {status}{where}"
        assert not srv.after_end, f"the client kept calling after the session ended{where}"
        assert not srv.bye, where
    return srv, r


# -- strategies --------------------------------------------------------------------------------

STATUSES = st.one_of(st.just(0), st.sampled_from([1, 2, 3, 100, 101, 200, 201, 400, 500, 700, 801, 999]),
                     st.integers(-(2**31), 2**31 - 1))
SMALL_LAYOUT = st.lists(st.tuples(st.integers(0, 16382), st.integers(0, 16382)), max_size=6).map(tuple)
ANY_LAYOUT = st.one_of(
    SMALL_LAYOUT,
    st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), max_size=4).map(tuple),
    st.sampled_from([wire_spec.MAX_PARAMS - 1, wire_spec.MAX_PARAMS, wire_spec.MAX_PARAMS + 1])
      .map(lambda k: ((0, 1),) * k),
    st.just(((0, wire_spec.MAX_PARAMS),)), st.just(((wire_spec.MAX_PARAMS, 1),)),
)


def valid_replies(layouts: st.SearchStrategy = SMALL_LAYOUT,
                  statuses: st.SearchStrategy = STATUSES) -> st.SearchStrategy:
    return st.builds(Valid, status=statuses, fields=st.binary(min_size=0, max_size=24),
                     blob=st.one_of(st.integers(0, 64), st.integers(0, PARAMS_CAP)), seed=st.integers(0, 2**32),
                     layout=st.one_of(st.none(), layouts))


SUCCEEDING = valid_replies(statuses=st.just(0))
OPS = st.lists(st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**16), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.integers(0, 2**16)),
    st.tuples(st.just("insert"), st.integers(0, 2**16), st.binary(min_size=1, max_size=24)),
), min_size=1, max_size=3).map(tuple)

HOSTILE = st.one_of(
    valid_replies(ANY_LAYOUT),
    st.builds(Lengths, base=valid_replies(statuses=st.one_of(st.just(0), STATUSES)),
              mode=st.sampled_from(["blob", "cap", "huge", "short"]),
              n=st.one_of(st.integers(0, 16), st.integers(0, 2**32 - 1)),
              declared_delta=st.one_of(st.just(0), st.integers(-3, 3), st.integers(-(2**63), 2**63)),
              send=st.booleans()),
    st.builds(BadHeader, base=SUCCEEDING, field=st.sampled_from(["kind", "flags", "code", "seq", "length"]),
              value=st.integers(0, 2**32 - 1)),
    st.builds(Mutate, base=SUCCEEDING, ops=OPS, close=st.booleans()),
    st.builds(Truncate, base=SUCCEEDING, keep=st.integers(0, 2**16)),
    st.builds(ErrorFrame, status=STATUSES, reason=st.binary(max_size=300),
              pad=st.one_of(st.just(0), st.integers(MAX_CONTROL_BODY - 320, MAX_CONTROL_BODY + 16)),
              code=st.one_of(st.just(0), st.integers(0, 2**16 - 1)), flags=st.one_of(st.just(0), st.integers(0, 255)),
              length_delta=st.one_of(st.just(0), st.integers(-8, 8), st.integers(0, 2**32))),
    st.builds(Garbage, data=st.binary(min_size=1, max_size=64), close=st.booleans()),
    st.builds(SecondWelcome, session_id=st.integers(0, 2**64 - 1), backend=st.text(max_size=20)),
    st.just(Close()),
    st.builds(Silence, seconds=st.sampled_from([0.05, 0.3, CONNECT_TIMEOUT + 0.3]), base=SUCCEEDING,
              close=st.booleans()),
)

PLANS = st.builds(
    Plan,
    valid=st.lists(valid_replies(), min_size=1, max_size=6).map(tuple),
    hostile=st.lists(st.tuples(st.integers(0, WAITING_CALLS + 4), HOSTILE), max_size=3).map(tuple),
    tight=st.just(False),
)

HANDSHAKES = st.builds(
    Handshake,
    frame=st.one_of(
        st.just(Welcome(7, "fake").encode()),
        st.builds(lambda sid, name, major, minor: Welcome(sid, name, major, minor).encode(), st.integers(0, 2**64 - 1),
                  st.text(max_size=40), st.one_of(st.just(1), st.integers(0, 2**16 - 1)), st.integers(0, 2**16 - 1)),
        st.builds(lambda a: render_error(a), st.builds(
            ErrorFrame, status=STATUSES, reason=st.binary(max_size=200),
            pad=st.one_of(st.just(0), st.just(MAX_CONTROL_BODY + 1)), length_delta=st.integers(-4, 4))),
        st.binary(max_size=40),
    ),
    ops=st.one_of(st.just(()), OPS),
    delay=st.sampled_from([0.0] * 7 + [CONNECT_TIMEOUT + 0.3]),
    close=st.sampled_from([True, True, True, False]),  # else the client waits out its connect timeout
)

FUZZ = settings(max_examples=EXAMPLES, deadline=None, print_blob=True,
                phases=[p for p in Phase if p is not Phase.explain],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
"""No explain phase: it reruns a failing example a hundred times (a second each for a silent server)."""


# -- tests -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oriond(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Oriond]:
    o = Oriond(tmp_path_factory.mktemp("oriond")).start()
    yield o
    o.stop()


def test_every_call_calls_every_function_of_the_spec(plain: Build, oriond: Oriond) -> None:
    """Against the real oriond (sim): its arguments are plausible, every call succeeds but those
    the sim backend cannot answer (no module globals) or a 32-bit spelling cannot hold."""
    env = oriond.env(tcp=True, LD_LIBRARY_PATH=str(plain.lib))
    r = subprocess.run([str(plain.exe)], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    said = statuses(r.stdout)
    via = {"cuStreamBeginCapture": "cuStreamBeginCapture_v2", "cuGraphGetNodes": "cuGraphGetNodeCount",
           "cuGraphInstantiate": "cuGraphInstantiateWithFlags"}  # cuda.h's names of those calls
    names = {n.removeprefix("after ").removeprefix("v1_") for n, _ in said}
    names |= {via[n] for n in names if n in via}
    spec = {fn.name for fn in wire_spec.CALLS} - NOT_IN_EVERY_CALL
    assert spec <= names, sorted(spec - names)
    allowed = {("v1_cuMemAlloc", 2), ("cuModuleGetGlobal", 500),  # OUT_OF_MEMORY (above 4 GiB), NOT_FOUND
               ("cuCtxEnablePeerAccess", 101), ("cuCtxDisablePeerAccess", 705)}  # its own device: refused
    failed = [(n, s) for n, s in said if s != SUCCESS and (n, s) not in allowed]
    assert not failed, r.stdout
    assert "every_call: done" in r.stdout


# Calls every_call.c does not send, tested in test_native_client.py: those only a shared-memory
# session sends (page-locked memory shared with oriond; every_call runs over TCP), and those
# behind cuLaunchKernelEx, cuGetExportTable's module table and cuPointerGetAttributes.
NOT_IN_EVERY_CALL = frozenset({
    "orionHostShare", "orionHostUnshare", "orionMemcpyHtoDShared", "orionMemcpyDtoHShared",
    "orionMemcpyHtoDSharedAsync", "orionMemcpyDtoHSharedAsync", "orionHostDevicePointer",
    "orionModuleFunctionNames", "orionPointerKinds", "orionLaunchKernelEx"})


@pytest.fixture(scope="module")
def waiting_calls(plain: Build) -> list[Call]:
    """The calls of every_call that wait for a reply, in order, when every reply is all right."""
    srv, r = fuzz_once(plain, Plan(valid=(Valid(fields=b"\x01" * 8, layout=((0, 8), (8, 4), (12, 4))),)))
    assert srv.end is None
    assert all(st == SUCCESS for name, st in statuses(r.stdout) if name != "v1_cuMemAlloc"), r.stdout
    answered_here = {"cuDriverGetVersion"}  # the library answers it (the version of its cuda.h)
    assert {c.name for c in srv.waiting} == {s.fn.name for s in SPECS.values()
                                             if not s.async_ and s.fn.name not in NOT_IN_EVERY_CALL} - answered_here
    return srv.waiting


@pytest.mark.parametrize("action", [
    Lengths(Valid(), "cap", 1), Lengths(Valid(), "huge", 0, send=False), Lengths(Valid(), "blob", 8, 1),
    Lengths(Valid(), "short", 1), BadHeader(Valid(), "seq", 12345), BadHeader(Valid(), "flags", 1),
    ErrorFrame(800, b"allocation a1 expired"), ErrorFrame(0, b"", pad=MAX_CONTROL_BODY + 1),
    Garbage(b"\xff" * 40), SecondWelcome(), Close(), Truncate(Valid(), 20),
], ids=repr)
def test_a_hostile_reply_ends_the_session_wherever_it_comes(plain: Build, waiting_calls: list[Call],
                                                            action: Action) -> None:
    """One hostile reply: to cuInit, to each call with a reply blob, and to the last call."""
    names = [c.name for c in waiting_calls]
    targets = [0, *(i for i, c in enumerate(waiting_calls) if SPECS[c.code].resp_blob), len(names) - 1]
    for index in targets:
        if isinstance(action, Lengths) and action.mode == "short" and not SPECS[waiting_calls[index].code].resp.size:
            continue  # nothing to cut short
        srv, _ = fuzz_once(plain, Plan(valid=(GOOD,), hostile=((index, action),)))
        assert srv.end is not None and srv.end[2] == index, (names[index], srv.summary())


def test_a_silent_server_holds_a_call_past_the_connect_timeout(plain: Build) -> None:
    """ORION_CONNECT_TIMEOUT bounds the connect and the wait for WELCOME only: a call waits for its
    reply as long as the connection lives (a long kernel may be behind it); there is no call
    timeout. A slow reply is taken; a close ends the session with CUDA_ERROR_DEVICE_UNAVAILABLE."""
    wait = CONNECT_TIMEOUT + 1.0
    srv, r = fuzz_once(plain, Plan(valid=(GOOD,), hostile=((2, Silence(wait, GOOD)),)))
    assert srv.end is None and r.took >= wait
    srv, r = fuzz_once(plain, Plan(valid=(GOOD,), hostile=((2, Silence(wait, GOOD, close=True)),)))
    assert srv.end == ("lost", DEVICE_UNAVAILABLE, 2) and r.took >= wait


def fuzz_example(b: Build, plan: Plan) -> None:
    srv, _ = fuzz_once(b, plan)
    end = srv.end or ("survived", 0, len(srv.waiting))
    event(f"session: {end[0]}")
    if end[0] != "init":
        event(f"ended at waiting call {min(end[2] // 10 * 10, 50)}+")
    for kind in set(srv.applied):
        event(f"sent: {kind}")


@FUZZ
@given(plan=PLANS)
def test_fuzzed_replies_never_crash_or_hang_the_client(plain: Build, plan: Plan) -> None:
    fuzz_example(plain, plan)


@settings(FUZZ, max_examples=HANDSHAKE_EXAMPLES)
@given(handshake=HANDSHAKES, valid=st.lists(valid_replies(), min_size=1, max_size=3).map(tuple))
def test_a_fuzzed_answer_to_hello_never_crashes_or_hangs_the_client(plain: Build, handshake: Handshake,
                                                                     valid: tuple[Valid, ...]) -> None:
    fuzz_example(plain, Plan(valid=valid, handshake=handshake))


@settings(FUZZ, max_examples=ASAN_EXAMPLES)
@given(plan=PLANS)
def test_fuzzed_replies_under_address_and_undefined_behaviour_sanitizers(sanitized: Build, plan: Plan) -> None:
    fuzz_example(sanitized, plan)


def test_a_hostile_parameter_layout_does_not_read_past_the_callers_arguments(sanitized: Build) -> None:
    """oriond says 1 parameter of 4096 bytes where the module's PTX declares 3 of 16 in all: the
    client refuses the layout at cuModuleGetFunction (the session ends), so no launch copies
    past the caller's arguments (the sanitizers would say so)."""
    fuzz_once(sanitized, Plan(valid=(Valid(fields=b"\x01" * 8, layout=((0, 4096),)),), tight=True))


NAME_PROGRAM = r"""
#include <cuda.h>
#include <stdio.h>
#include <string.h>
int main(void)
{
    char name[9];
    memset(name, '?', sizeof name);  /* name[8]: what a program may find past its buffer */
    CUresult st = cuInit(0);
    printf("cuInit %d\n", (int)st);
    st = cuDeviceGetName(name, 8, 0);
    printf("cuDeviceGetName %d\n", (int)st);
    printf("terminated: %s\n", memchr(name, 0, 8) ? "yes" : "no");
    return 0;
}
"""


def test_a_device_name_that_fills_the_buffer_is_still_terminated(plain: Build, tmp_path: Path) -> None:
    src = tmp_path / "name.c"
    src.write_text(NAME_PROGRAM)
    exe = tmp_path / "name"
    subprocess.run(["gcc", "-std=c11", f"-I{cuda_include()}", str(src), f"-L{plain.lib}", "-lcuda", "-o", str(exe)],
                   check=True, timeout=120)
    seed = next(i for i in range(1000) if 0 not in random.Random(i).randbytes(8))
    plan = Plan(valid=(GOOD,), hostile=((1, Valid(blob=8, seed=seed)),))  # 8 bytes, none of them 0
    srv = FuzzServer(plan)
    try:
        r = run_every_call(plain, plan, srv, exe)
    finally:
        srv.close()
    assert r.returncode == 0 and "cuDeviceGetName 0" in r.stdout, r.stdout + r.stderr
    assert "terminated: yes" in r.stdout, r.stdout + r.stderr


@pytest.mark.long
@settings(FUZZ, max_examples=LONG_EXAMPLES)
@given(plan=PLANS)
def test_fuzzed_replies_long(plain: Build, plan: Plan) -> None:
    fuzz_example(plain, plan)
