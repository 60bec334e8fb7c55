"""The Orion shared-memory device: one file (``<shm_path_base>/orionsock<N>``), or the same bytes
seen through an ivshmem-plain PCI BAR inside a VM. Layout: ivshmem/LAYOUT.md.

Page 0 is the device header; then ``nchannels`` channels, each a 4 KiB control page followed by a
request ring and a response ring. Applications claim a channel each (an fcntl lock on one byte of
the file, or of a guest-local lock file for a PCI BAR), so a crashed owner's claim is released by
the kernel and reclaimed by the next client. Every check here is against the bytes of the device;
nothing from a peer is trusted beyond its own channel.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import secrets
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import DeviceError, StreamBroken
from . import futex
from .ring import Bell, Ring, RingStream

MAGIC = b"ORIONSHM"
LAYOUT_VERSION = 1
PAGE = 4096
MIN_SIZE = 1 << 20

# header u64 slots (byte offset = 8 * slot)
H_SIZE = 2
H_NCH_FLAGS = 3
H_STRIDE = 4
H_RING = 5
H_DEVICE_ID = 6
H_SERVER_EPOCH = 7
H_SERVER_BEAT = 8
H_SERVER_PID = 9
H_CLAIM_BELL = 10  # bumped (and its futex woken) by a client after it claims a channel
H_DB_VECTORS = 11  # doorbell devices: the MSI-X vectors of the domain's device (written by the hook)
H_DB_LISTENING = 12  # doorbell devices: oriond's pid while its ivshmem server listens for QEMU
CONFIG_OFF = 256
CONFIG_LEN = 1024
HOSTPATH_OFF = 1280
HOSTPATH_LEN = 256
FLAG_VM = 1
FLAG_DOORBELL = 2  # a VM device attached as ivshmem-doorbell (oriond runs its ivshmem server)

# channel control page u64 slots
C_STATE = 0
C_GEN = 1
C_SERVED_GEN = 2
C_CLIENT_BEAT = 3
C_OWNER_PID = 4
C_OWNER_NONCE = 5
C_OWNER_NS = 6
C_WORKER_BEAT = 7
C_REQ_HEAD = 16
C_REQ_TAIL = 24
C_RESP_HEAD = 32
C_RESP_TAIL = 40
C_REASON = 48  # 8 slots: a short ASCII reason for DEAD
C_REQ_WAIT = 56  # non-zero while oriond sleeps on the request ring's head (futex)
C_RESP_WAIT = 64  # non-zero while the client sleeps on the response ring's head
C_DB_PEER = 72  # doorbell devices: the client's ivshmem peer id + 1 (0: it does not ring oriond)
C_DB_SERVER = 73  # doorbell devices: 1 while the worker sleeps on / rings the doorbell (else it polls)

FREE, CLAIMED, SERVING, CLOSED, DEAD = 0, 1, 2, 3, 4
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux >= 5.14
STATE_NAMES = {FREE: "free", CLAIMED: "claimed", SERVING: "serving", CLOSED: "closed", DEAD: "dead"}


@dataclass(frozen=True)
class Layout:
    size: int
    nchannels: int
    ring_size: int

    @property
    def stride(self) -> int:
        return PAGE + 2 * self.ring_size

    def channel_offset(self, i: int) -> int:
        return PAGE + i * self.stride


def plan_layout(size: int) -> Layout:
    """Channels and ring size for a device of ``size`` bytes: up to 8 channels, rings a power of two."""
    if size < MIN_SIZE or size % PAGE:
        raise DeviceError(f"device size {size} must be a multiple of 4096 and at least 1 MiB")
    nch = max(1, min(8, size // (4 << 20)))
    per_ring = (size - PAGE - nch * PAGE) // (2 * nch)
    ring = 1 << (per_ring.bit_length() - 1)
    return Layout(size, nch, ring)


def parse_config(raw: bytes) -> dict[str, str]:
    text = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    out: dict[str, str] = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep and k.strip():
            out[k.strip()] = v.strip()
    return out


def _encode_config(config: dict[str, str]) -> bytes:
    text = "".join(f"{k}={v}\n" for k, v in config.items() if "\n" not in k + v and "=" not in k)
    raw = text.encode()
    if len(raw) >= CONFIG_LEN:
        raise DeviceError(f"device config is {len(raw)} bytes, at most {CONFIG_LEN - 1}")
    return raw


def format_device(
    path: Path, size: int, *, uid: int = -1, gid: int = -1, mode: int = 0o600, vm: bool = False,
    config: dict[str, str] | None = None, host_path: str | None = None, doorbell_vectors: int = 0,
) -> None:
    """Create or reset ``path`` as an empty Orion device of ``size`` bytes.

    ``doorbell_vectors`` > 0 (VM devices only): the domain's device is ivshmem-doorbell with that
    many MSI-X vectors; the header gets FLAG_DOORBELL and oriond runs an ivshmem server for it.

    Contents are zeroed, then the header is written; owner and mode are applied before any data
    is written. Refuses nothing: callers check ``in_use`` first when that matters.
    """
    layout = plan_layout(size)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        if uid != -1 or gid != -1:
            os.fchown(fd, uid, gid)
        os.ftruncate(fd, 0)
        os.ftruncate(fd, size)
        with mmap.mmap(fd, PAGE) as mm:
            q = memoryview(mm).cast("Q")
            mm[8:16] = struct.pack("<II", LAYOUT_VERSION, PAGE)
            q[H_SIZE] = size
            flags = (FLAG_VM if vm else 0) | (FLAG_DOORBELL if vm and doorbell_vectors > 0 else 0)
            q[H_NCH_FLAGS] = layout.nchannels | (flags << 32)
            q[H_DB_VECTORS] = doorbell_vectors if vm and doorbell_vectors > 0 else 0
            q[H_STRIDE] = layout.stride
            q[H_RING] = layout.ring_size
            q[H_DEVICE_ID] = secrets.randbits(63) | 1
            raw = _encode_config(config or {})
            mm[CONFIG_OFF:CONFIG_OFF + len(raw)] = raw
            hp = (host_path or str(path)).encode()[:HOSTPATH_LEN - 1]
            mm[HOSTPATH_OFF:HOSTPATH_OFF + len(hp)] = hp
            mm[0:8] = MAGIC
            q.release()
    finally:
        os.close(fd)


def scrub_device(path: Path) -> None:
    """Zero the whole device (so no tenant data outlives it), then unlink it. Missing: no-op."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        zero = bytes(1 << 20)
        off = 0
        while off < size:
            off += os.pwrite(fd, zero[: min(len(zero), size - off)], off)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@dataclass(frozen=True)
class DeviceInfo:
    path: str
    size: int
    nchannels: int
    ring_size: int
    vm: bool
    device_id: int
    config: dict[str, str]
    host_path: str
    served: bool
    channel_states: tuple[int, ...]


class Device:
    """A mapped device (file or PCI BAR). Validates the header on open.

    ``lock_path``: where channel claim locks live. ``None`` means the device file itself (host,
    containers); a guest passes a local lock file because fcntl locks do not cross a VM boundary.
    """

    def __init__(self, path: str | os.PathLike[str], *, size: int | None = None,
                 lock_path: str | None = None, writable: bool = True) -> None:
        self.path = str(path)
        try:
            self.fd = os.open(self.path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise DeviceError(f"{self.path}: no such device (create it on the host with orion-shm)") from None
        except PermissionError:
            raise DeviceError(f"{self.path}: permission denied (check its owner and mode)") from None
        try:
            st = os.fstat(self.fd)
            self.inode = (st.st_dev, st.st_ino)
            real = size if size is not None else st.st_size
            if real < PAGE:
                raise DeviceError(f"{self.path}: {real} bytes is too small to be an Orion device "
                                  "(recreate it with orion-shm)")
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            self.mm = mmap.mmap(self.fd, real, mmap.MAP_SHARED, prot)
        except BaseException:
            os.close(self.fd)
            raise
        self.view = memoryview(self.mm)
        self.address = futex.base_address(self.mm) if writable else 0
        self.q = self.view[:PAGE].cast("Q")
        self.lock_fd = self.fd if lock_path is None else _open_lock_file(lock_path)
        try:
            self.layout = self._validate(real)
        except BaseException:
            self.close()
            raise

    def _validate(self, real: int) -> Layout:
        if bytes(self.view[0:8]) != MAGIC:
            raise DeviceError(f"{self.path}: not an Orion device (no header); create it with orion-shm "
                              "or let the libvirt hook prepare it")
        version, hsize = struct.unpack_from("<II", self.mm, 8)
        if version != LAYOUT_VERSION or hsize != PAGE:
            raise DeviceError(f"{self.path}: layout version {version}, this client speaks {LAYOUT_VERSION}: "
                              "upgrade the client or recreate the device with this oriond's orion-shm")
        size = self.q[H_SIZE]
        if size != real:
            raise DeviceError(f"{self.path}: header says {size} bytes but the device has {real}: "
                              "recreate it with orion-shm (and remount it into the container)")
        layout = plan_layout(size)
        nch = self.q[H_NCH_FLAGS] & 0xFFFFFFFF
        if nch != layout.nchannels or self.q[H_RING] != layout.ring_size or self.q[H_STRIDE] != layout.stride:
            raise DeviceError(f"{self.path}: corrupt channel table; recreate it with orion-shm")
        return layout

    @property
    def vm(self) -> bool:
        return bool((self.q[H_NCH_FLAGS] >> 32) & FLAG_VM)

    @property
    def doorbell(self) -> bool:
        """A VM device whose domain has the ivshmem-doorbell model (FLAG_DOORBELL)."""
        return self.vm and bool((self.q[H_NCH_FLAGS] >> 32) & FLAG_DOORBELL)

    @property
    def doorbell_vectors(self) -> int:
        """The domain device's MSI-X vectors (doorbell devices), clamped to 1..64."""
        return max(1, min(64, int(self.q[H_DB_VECTORS]))) if self.doorbell else 0

    @property
    def device_id(self) -> int:
        return int(self.q[H_DEVICE_ID])

    @property
    def config(self) -> dict[str, str]:
        return parse_config(bytes(self.view[CONFIG_OFF:CONFIG_OFF + CONFIG_LEN]))

    @property
    def host_path(self) -> str:
        raw = bytes(self.view[HOSTPATH_OFF:HOSTPATH_OFF + HOSTPATH_LEN])
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")

    @property
    def wakes(self) -> bool:
        """Whether the two ends of a channel can wake each other through futexes: a file both
        map on one kernel (host, containers), not a VM's BAR (either side of it)."""
        return futex.AVAILABLE and bool(self.address) and self.lock_fd == self.fd and not self.vm

    def ring_pair(self, i: int, server: bool, bells: tuple[Bell, Bell] | None = None
                  ) -> tuple[Ring, Ring]:
        """(transmit, receive) rings of channel ``i`` for the server or the client end.

        ``bells``: (request ring's, response ring's) bell where the ends wake each other by other
        means than a futex (a doorbell VM device); else futexes where ``wakes``, else polling."""
        ctrl = self.ctrl(i)
        req, resp = self.rings(i)
        addr = self.address + self.layout.channel_offset(i) if self.wakes else 0
        rb, sb = bells if bells is not None else (None, None)
        request = Ring(req, ctrl, C_REQ_HEAD, C_REQ_TAIL, C_REQ_WAIT, addr, rb)
        response = Ring(resp, ctrl, C_RESP_HEAD, C_RESP_TAIL, C_RESP_WAIT, addr, sb)
        return (response, request) if server else (request, response)

    def ctrl(self, i: int) -> memoryview:
        off = self.layout.channel_offset(i)
        return self.view[off:off + PAGE].cast("Q")

    def rings(self, i: int) -> tuple[memoryview, memoryview]:
        off = self.layout.channel_offset(i) + PAGE
        r = self.layout.ring_size
        return self.view[off:off + r], self.view[off + r:off + 2 * r]

    def state(self, i: int) -> int:
        return int(self.ctrl(i)[C_STATE])

    def reason(self, i: int) -> str:
        off = self.layout.channel_offset(i) + 8 * C_REASON
        return bytes(self.view[off:off + 64]).split(b"\0", 1)[0].decode("ascii", "replace")

    def set_dead(self, i: int, reason: str) -> None:
        off = self.layout.channel_offset(i) + 8 * C_REASON
        raw = reason.encode("ascii", "replace")[:63]
        self.view[off:off + 64] = raw + bytes(64 - len(raw))
        self.ctrl(i)[C_STATE] = DEAD

    def scrub(self, i: int) -> None:
        """Zero channel ``i``'s rings, so that no byte of a session is left for the next one."""
        off, n = self.layout.channel_offset(i) + PAGE, 2 * self.layout.ring_size
        if self.address:
            ctypes.memset(self.address + off, 0, n)
            return
        zero = bytes(min(n, 1 << 20))
        for p in range(off, off + n, len(zero)):
            k = min(len(zero), off + n - p)
            self.view[p:p + k] = zero[:k]

    def populate(self, i: int) -> None:
        """Fault channel ``i``'s pages into this mapping now, before it carries traffic: a copy
        into never-touched shared pages runs several times slower (measured here: 1 MiB in 500 µs
        against 110 µs), which would tax every first pass over the rings. Best effort."""
        off, length = self.layout.channel_offset(i), self.layout.stride
        try:
            self.mm.madvise(MADV_POPULATE_WRITE, off, length)
        except (OSError, ValueError):
            view = self.view
            for p in range(off, off + length, PAGE):
                view[p] = view[p]

    def lock_offset(self, i: int) -> int:
        return self.layout.channel_offset(i) if self.lock_fd == self.fd else i

    def try_lock(self, i: int) -> bool:
        try:
            fcntl.lockf(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, self.lock_offset(i))
            return True
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise

    def unlock(self, i: int) -> None:
        fcntl.lockf(self.lock_fd, fcntl.LOCK_UN, 1, self.lock_offset(i))

    def owner_pid(self, i: int) -> int | None:
        """The pid (in this process's pid namespace) of the process holding channel ``i``'s claim
        lock, None if none does. Host-visible locks only: a VM's guest locks its own file."""
        if self.lock_fd != self.fd:
            return None
        want = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, self.lock_offset(i), 1, 0)
        got = fcntl.fcntl(self.lock_fd, fcntl.F_GETLK, want)
        kind, _whence, _start, _len, pid = struct.unpack("hhqqi4x", got)
        return pid if kind != fcntl.F_UNLCK and pid > 0 else None

    def owner_alive(self, i: int) -> bool:
        """True if some process holds channel ``i``'s claim lock (host-visible locks only)."""
        if self.try_lock(i):
            self.unlock(i)
            return False
        return True

    def info(self) -> DeviceInfo:
        return DeviceInfo(
            self.path, self.layout.size, self.layout.nchannels, self.layout.ring_size, self.vm,
            self.device_id, self.config, self.host_path, self.q[H_SERVER_EPOCH] != 0,
            tuple(self.state(i) for i in range(self.layout.nchannels)),
        )

    def close(self) -> None:
        for attr in ("q",):
            v = getattr(self, attr, None)
            if v is not None:
                v.release()
        try:
            self.view.release()
            self.mm.close()
        except (BufferError, AttributeError, ValueError):
            pass
        if getattr(self, "lock_fd", self.fd) != self.fd:
            os.close(self.lock_fd)
        try:
            os.close(self.fd)
        except OSError:
            pass


def _open_lock_file(path: str) -> int:
    """A guest-local claim-lock file: holds no data, so every user of the guest may lock it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    try:
        os.fchmod(fd, 0o666)
    except PermissionError:
        pass
    return fd


def own_namespace_id() -> int:
    try:
        return os.stat("/proc/self/ns/mnt").st_ino
    except OSError:
        return 0


SERVER_STALE_S = 5.0
NEW_DEVICE_GRACE_S = 1.0
"""oriond looks for new devices twice a second: a just-created device may not be served yet."""


class ClientChannel:
    """The client's claim on one channel; builds the RingStream once oriond serves it."""

    def __init__(self, dev: Device, index: int, gen: int) -> None:
        self.dev = dev
        self.index = index
        self.gen = gen
        self.ctrl = dev.ctrl(index)
        self._beat = 0
        self._server_seen = (dev.q[H_SERVER_BEAT], time.monotonic())

    def check(self) -> None:
        """Raise StreamBroken when the session can no longer progress."""
        state = self.ctrl[C_STATE]
        if self.ctrl[C_GEN] != self.gen:
            raise StreamBroken(f"{self.dev.path}: channel {self.index} was taken over by another client")
        if state == DEAD:
            reason = self.dev.reason(self.index) or "session ended by oriond"
            raise StreamBroken(f"{self.dev.path}: {reason}")
        beat = self.dev.q[H_SERVER_BEAT]
        now = time.monotonic()
        if beat != self._server_seen[0]:
            self._server_seen = (beat, now)
        elif now - self._server_seen[1] > SERVER_STALE_S:
            raise StreamBroken(
                f"{self.dev.path}: oriond stopped serving this device (no heartbeat for "
                f"{SERVER_STALE_S:.0f} s); check `systemctl status oriond` and /var/log/orion/server.log")

    def heartbeat(self) -> None:
        self._beat += 1
        self.ctrl[C_CLIENT_BEAT] = self._beat

    def stream(self, timeout: float | None = None) -> RingStream:
        tx, rx = self.dev.ring_pair(self.index, server=False)
        return RingStream(tx, rx, check=self.check, timeout=timeout,
                          name=f"shm {self.dev.path}#{self.index}", on_close=self.release)

    def release(self) -> None:
        if self.ctrl[C_GEN] == self.gen and self.ctrl[C_STATE] != DEAD:
            self.ctrl[C_STATE] = CLOSED
        try:
            self.dev.unlock(self.index)
        except OSError:
            pass


def claim_channel(dev: Device, *, check_tenants: bool = True, wait_s: float = 5.0) -> ClientChannel:
    """Claim a free channel of ``dev`` and wait until oriond serves it.

    Raises DeviceError when the device is not served by oriond, is used by another container
    (a different mount namespace), or has no free channel; never waits longer than ``wait_s``.
    """
    settle = time.monotonic() + min(wait_s, NEW_DEVICE_GRACE_S)
    while dev.q[H_SERVER_EPOCH] == 0:
        if time.monotonic() > settle:
            raise DeviceError(f"{dev.path}: no oriond is serving this device (start oriond with "
                              "enable_shm=true; for VMs also enable_kvm=true)")
        time.sleep(0.01)
    me = own_namespace_id()
    if check_tenants and dev.lock_fd == dev.fd:
        for i in range(dev.layout.nchannels):
            c = dev.ctrl(i)
            if c[C_STATE] in (CLAIMED, SERVING) and c[C_OWNER_NS] not in (0, me) and dev.owner_alive(i):
                raise DeviceError(
                    f"{dev.path} is already in use by another container (mount namespace "
                    f"{c[C_OWNER_NS]}): every container needs its own device — create one with "
                    "`orion-shm -i N` and mount it with `docker run -v /dev/shm/orionsockN:/dev/shm/orionsockN:rw`")
    for i in range(dev.layout.nchannels):
        if not dev.try_lock(i):
            continue
        c = dev.ctrl(i)
        if dev.lock_fd == dev.fd:  # a file mapping (not a VM's PCI BAR): fault the rings in once
            dev.populate(i)
        gen = c[C_GEN] + 1
        c[C_OWNER_PID] = os.getpid()
        c[C_OWNER_NONCE] = secrets.randbits(63)
        c[C_OWNER_NS] = me
        c[C_CLIENT_BEAT] = 0
        c[C_DB_PEER] = 0  # this client never rings a doorbell: its worker must poll
        c[C_GEN] = gen
        c[C_STATE] = CLAIMED
        ring_claim_bell(dev)
        ch = ClientChannel(dev, i, gen)
        deadline = time.monotonic() + wait_s
        while not (c[C_STATE] == SERVING and c[C_SERVED_GEN] == gen):
            if c[C_STATE] == DEAD and c[C_SERVED_GEN] == gen:
                reason = dev.reason(i)
                dev.unlock(i)
                raise DeviceError(f"{dev.path}: oriond refused the channel: {reason}")
            if time.monotonic() > deadline:
                c[C_STATE] = CLOSED
                dev.unlock(i)
                raise DeviceError(f"{dev.path}: oriond did not take up the channel within {wait_s:.0f} s "
                                  "(is oriond running and serving this device?)")
            time.sleep(0.0005)
        return ch
    raise DeviceError(f"{dev.path}: all {dev.layout.nchannels} channels are in use; "
                      "create another device with `orion-shm -i N`")


def ring_claim_bell(dev: Device) -> None:
    """Tell oriond's main loop that a channel was claimed (it sleeps on this futex between its
    rounds; a VM's guest cannot wake it, and it polls VM devices instead)."""
    dev.q[H_CLAIM_BELL] = (dev.q[H_CLAIM_BELL] + 1) & 0xFFFF_FFFF
    if dev.wakes:
        futex.fence()
        futex.wake(dev.address + 8 * H_CLAIM_BELL, 1)


def list_devices(base: str | os.PathLike[str]) -> list[Path]:
    """Files named orionsock<N> under ``base``, sorted by N."""
    out = []
    try:
        for p in Path(base).iterdir():
            if p.name.startswith("orionsock") and p.name[9:].isdigit() and p.is_file():
                out.append(p)
    except OSError:
        return []
    return sorted(out, key=lambda p: int(p.name[9:]))
