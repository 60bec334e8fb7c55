"""Who may open a session, with what: controller tokens (token mode) or direct grants.

**Token mode** (``[controller] controller_addr`` set in server.conf): oriond trusts only the
Orion Controller. A HELLO must carry a token the controller signed with the key shared through
``token_key_file``, issued for this server's node id and not expired; the session gets exactly
the token's vGPUs (physical GPU, memory, compute share) whatever else the HELLO asks for. A token
opens one session (single use, also as a RENEW) and is refused once its allocation is released
(:mod:`.tokenstate`). oriond registers its GPUs with the controller and heartbeats, signed with
the controller's API key (``api_key_file``), and pulls the revoked allocations with each heartbeat
(:func:`make_registrar`).

**Direct mode** (no ``controller_addr``): for a single host before a controller is set up. A
session gets what its HELLO asks for (``ORION_VGPU``/``ORION_GMEM``/``ORION_RATIO``) if the node
still has it: every grant is written to a :class:`DirectLedger` that oriond and its session
workers share (``[server-limits] direct_accounting``, on by default), so the sessions together
never hold more than ``vgpu_count`` vGPUs per GPU nor more memory than a GPU has; a HELLO asking
for more than is left is refused with what is left. A grant is released when its session ends
and, at the latest, when oriond reaps its worker (also one that crashed or was killed).
Compute shares are not accounted (they are a throttle; an over-subscribed GPU is time-shared).
Anyone who can reach the port or a device may still open a session, so direct mode is for hosts
where that holds; a controller gives exclusive, authenticated allocations.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import socket
import tempfile
import time
import uuid
from typing import Any, Callable

from ..config import ServerConfig
from ..controller.client import GpuInfo, NodeInfo, Signer
from ..controller.exceptions import TokenError, TokenExpired
from ..controller.registration import Registrar
from ..controller.token import load_key, verify_token
from ..cuda_enums import CUresult
from ..errors import ConfigError, OrionError, Refused
from ..wire import Hello
from .backend import Backend, PhysicalGpu, VGpu
from .session import Admission, Authorizer, LeaseExpired, open_authorizer
from .tokenstate import TokenState, on_revoked_signal

NO_TOKEN = ("this Orion Server accepts only vGPUs allocated by the Orion Controller {ctl} and the "
            "client presented no allocation token: set ORION_CONTROLLER (or [controller] "
            "controller_addr in client.conf) on the client")


def node_id(cfg: ServerConfig, hostname: str | None = None) -> str:
    """This server's id in the pool: ``<hostname>:<bind_addr>:<listen_port>``.

    Stable across restarts (a restarted server finds its node again) and distinct for several
    oriond on one host. Tokens are bound to it.
    """
    host = hostname or socket.gethostname()
    return f"{host}:{cfg.bind_addr or '0.0.0.0'}:{cfg.listen_port}"


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return host == ""


def advertised_address(cfg: ServerConfig) -> str:
    """``HOST:PORT`` clients are told to use for TCP: ``bind_addr``, or when that is unspecified
    (``0.0.0.0``) the address of ``bind_net``, else the local address of the route towards the
    controller."""
    host = cfg.bind_addr
    if cfg.bind_net:
        try:
            from pyroute2 import IPRoute  # host extra; only needed for bind_net

            from ..host.netaddr import addr_of_interface

            with IPRoute() as ipr:
                host = addr_of_interface(cfg.bind_net, ipr)
        except Exception:  # noqa: BLE001 - fall back to the route towards the controller
            host = ""
    if _unspecified(host):
        ctl_host, _, ctl_port = cfg.controller_addr.rpartition(":")
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((ctl_host.strip("[]") or "127.0.0.1", int(ctl_port or 9123)))
                host = s.getsockname()[0]
        except (OSError, ValueError):
            host = "127.0.0.1"
    return f"[{host}]:{cfg.listen_port}" if ":" in host else f"{host}:{cfg.listen_port}"


def gpu_infos(backend: Backend, vgpu_count: int) -> list[GpuInfo]:
    """What oriond registers: index, ``GPU-<uuid>``, name, memory in MiB, vGPUs per GPU."""
    return [GpuInfo(g.index, "GPU-" + str(uuid.UUID(bytes=bytes(g.uuid).ljust(16, b"\0")[:16])),
                    g.name, g.total_mem >> 20, vgpu_count) for g in backend.gpus()]


def token_authorizer(key: bytes, this_node: str, gpus: list[PhysicalGpu], controller: str = "",
                     clock: Callable[[], float] = time.time,
                     state: TokenState | None = None,
                     on_end: Callable[[str], None] | None = None) -> Authorizer:
    """Grants exactly the vGPUs of a valid controller token for ``this_node``; refuses a
    HELLO without one, with a bad or expired one, or with one issued for another node. With
    ``state``, a token opens as many sessions as it grants (one) and a released allocation's
    tokens are refused. ``on_end(allocation_id)`` is called when a session ends (the
    controller then releases a single-node allocation at once)."""
    position = {g.index: i for i, g in enumerate(gpus)}

    def check(token: str) -> Any:
        try:
            grant = verify_token(key, token, clock(), node_id=this_node)
        except TokenExpired as e:
            raise OrionError(f"allocation token refused: {e} (the client must renew its lease "
                             f"with the Orion Controller)") from None
        except TokenError as e:
            raise OrionError(f"allocation token refused: {e}") from None
        if state is not None:
            state.check(grant.allocation_id)
        return grant

    def take(token: str, grant: Any) -> None:
        """One use of the token (after every other check passed): single use."""
        if state is not None:
            tid = grant.token_id or hashlib.sha256(token.encode()).hexdigest()[:32]
            state.take(tid, grant.expires_at, grant.sessions)

    def authorize(hello: Hello) -> Admission:
        if not hello.token:
            raise OrionError(NO_TOKEN.format(ctl=controller or "(controller_addr)"))
        grant = check(hello.token)
        if hello.allocation_id and hello.allocation_id != grant.allocation_id:
            raise OrionError(f"allocation token refused: it is for allocation "
                             f"{grant.allocation_id}, the client names {hello.allocation_id}")
        if not grant.vgpus:
            raise OrionError(f"allocation token refused: allocation {grant.allocation_id} holds "
                             f"no vGPU on node {this_node}")
        out = []
        for q in grant.vgpus:
            pos = position.get(q.gpu_index)
            if pos is None:
                raise OrionError(f"allocation {grant.allocation_id} names GPU {q.gpu_index}, "
                                 f"which this server does not have")
            if q.memory_mib << 20 > gpus[pos].total_mem or not 1 <= q.ratio <= 100:
                raise OrionError(f"allocation {grant.allocation_id}: vGPU of {q.memory_mib} MiB "
                                 f"at {q.ratio}% does not fit GPU {q.gpu_index}")
            out.append(VGpu(physical=pos, memory=q.memory_mib << 20, ratio=q.ratio))

        take(hello.token, grant)
        if state is not None:
            state.live(grant.allocation_id)
            on_revoked_signal(grant.allocation_id, LeaseExpired)

        def renew(token: str) -> float:
            new = check(token)
            if new.allocation_id != grant.allocation_id or new.vgpus != grant.vgpus:
                raise OrionError(f"renewed token is for allocation {new.allocation_id}, not "
                                 f"{grant.allocation_id} with the same vGPUs")
            take(token, new)
            return new.expires_at

        aid = grant.allocation_id
        return Admission(out, grant.expires_at, renew, (lambda: on_end(aid)) if on_end else None)

    return authorize


class DirectLedger:
    """What each live direct-mode session was granted: ``{worker pid: [[gpu, bytes], ...]}`` in
    an unlinked file that oriond opens before it forks (so its workers share it and nothing is
    left behind), under a POSIX record lock (``lockf``: per process, so oriond and each worker
    exclude one another although they share the open file)."""

    def __init__(self, gpus: list[PhysicalGpu], slots_per_gpu: int, directory: str | None = None) -> None:
        self.total = [g.total_mem for g in gpus]
        self.slots = slots_per_gpu
        fd, path = tempfile.mkstemp(prefix="oriond-direct-", dir=directory)
        os.unlink(path)
        self.fd = fd

    def _read(self) -> dict[str, list[list[int]]]:
        raw = os.pread(self.fd, os.fstat(self.fd).st_size, 0)
        return json.loads(raw) if raw else {}

    def _write(self, grants: dict[str, list[list[int]]]) -> None:
        raw = json.dumps(grants).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, raw, 0)

    def _locked(self, fn: Callable[[dict[str, list[list[int]]]], Any]) -> Any:
        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        try:
            return fn(self._read())
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def usage(self, grants: dict[str, list[list[int]]] | None = None) -> tuple[list[int], list[int]]:
        """(vGPUs held, bytes held) per GPU."""
        if grants is None:
            grants = self._locked(lambda g: g)
        held, mem = [0] * len(self.total), [0] * len(self.total)
        for vgpus in grants.values():
            for gpu, size in vgpus:
                if 0 <= gpu < len(self.total):
                    held[gpu] += 1
                    mem[gpu] += size
        return held, mem

    def grant(self, pid: int, sizes: list[int]) -> list[int] | str:
        """Place one vGPU of each size (bytes) on the GPUs, each where most memory is left; records
        and returns their GPUs, or returns why they do not fit (nothing recorded)."""

        def fn(grants: dict[str, list[list[int]]]) -> list[int] | str:
            held, mem = self.usage(grants)
            placed: list[list[int]] = []
            for size in sizes:
                fits = [i for i in range(len(self.total))
                        if held[i] < self.slots and mem[i] + size <= self.total[i]]
                if not fits:
                    return self._why(len(sizes), sizes[0] if sizes else 0, grants)
                i = max(fits, key=lambda j: (self.total[j] - mem[j], -j))
                held[i] += 1
                mem[i] += size
                placed.append([i, size])
            grants[str(pid)] = grants.get(str(pid), []) + placed
            self._write(grants)
            return [gpu for gpu, _ in placed]

        result: list[int] | str = self._locked(fn)
        return result

    def _why(self, n: int, size: int, grants: dict[str, list[list[int]]]) -> str:
        held, mem = self.usage(grants)
        left = ", ".join(f"GPU {i}: {self.slots - held[i]} vGPU(s), {(self.total[i] - mem[i]) >> 20} MiB"
                         for i in range(len(self.total)))
        return (f"this Orion Server cannot grant {n} vGPU(s) of {size >> 20} MiB: {len(grants)} "
                f"other session(s) hold the rest of its GPUs (free: {left}; "
                f"{self.slots} vGPUs per GPU)")

    def release(self, pid: int) -> bool:
        """Forget what worker ``pid`` was granted; True if it held something."""

        def fn(grants: dict[str, list[list[int]]]) -> bool:
            if grants.pop(str(pid), None) is None:
                return False
            self._write(grants)
            return True

        done: bool = self._locked(fn)
        return done


class DirectAuthorizer:
    """Direct mode with accounting: grants what the HELLO asks for if the node still has it
    (see the module's notes). ``release_worker(pid)`` is oriond's, on reaping a worker."""

    RETRY_S = 1.0
    """How long a HELLO over what is left waits for sessions that are ending to give theirs back
    (a client that runs programs one after another may connect before the last one's worker
    has finished closing)."""

    def __init__(self, ledger: DirectLedger, default_vgpus: int, default_gmem_mib: int,
                 gpu_mem_mib: int | None) -> None:
        self.ledger = ledger
        self.default_vgpus = default_vgpus
        self.default_gmem_mib = default_gmem_mib
        self.gpu_mem_mib = gpu_mem_mib

    def __call__(self, hello: Hello) -> list[VGpu]:
        n = hello.vgpu_count or self.default_vgpus
        mem = hello.gmem_mib or self.default_gmem_mib
        if self.gpu_mem_mib is not None and mem > self.gpu_mem_mib:
            raise Refused(f"ORION_GMEM={mem} MiB exceeds the memory of one GPU ({self.gpu_mem_mib} MiB)",
                          int(CUresult.CUDA_ERROR_OUT_OF_MEMORY))
        total_slots = self.ledger.slots * len(self.ledger.total)
        if n > total_slots:
            raise Refused(f"ORION_VGPU={n} exceeds the vGPUs of this Orion Server ({total_slots}: "
                          f"{len(self.ledger.total)} GPU(s) of {self.ledger.slots} vGPUs)",
                          int(CUresult.CUDA_ERROR_OUT_OF_MEMORY))
        deadline = time.monotonic() + self.RETRY_S
        while True:
            got = self.ledger.grant(os.getpid(), [mem << 20] * n)
            if not isinstance(got, str):
                break
            if time.monotonic() > deadline:
                raise Refused(got, int(CUresult.CUDA_ERROR_OUT_OF_MEMORY))
            time.sleep(0.05)
        return [VGpu(gpu, mem << 20, hello.ratio or 100) for gpu in got]

    def release_worker(self, pid: int) -> bool:
        return self.ledger.release(pid)


def build_authorizer(cfg: ServerConfig, backend: Backend, log: logging.Logger) -> Authorizer:
    """Token mode when ``controller_addr`` is set (reads ``token_key_file``: ConfigError if it
    is missing or malformed), else direct mode."""
    gpus = backend.gpus()
    if cfg.controller_addr:
        try:
            key = load_key(cfg.token_key_file)
        except ConfigError as e:
            raise ConfigError(f"{e} ([controller] token_key_file): oriond verifies the Orion "
                              f"Controller's allocation tokens with it; copy the file given to "
                              f"orion-controller --token-key here (mode 0600), or remove "
                              f"controller_addr to run in direct mode") from None
        me = node_id(cfg)
        log.info("token mode: sessions need an allocation token from the Orion Controller %s "
                 "for node %s (key %s)", cfg.controller_addr, me, cfg.token_key_file)
        return token_authorizer(key, me, gpus, cfg.controller_addr,
                                state=TokenState(cfg.token_state_dir), on_end=_session_end_notice(cfg, me, log))
    mem = min(g.total_mem for g in gpus) >> 20 if gpus else 0
    default_gmem = mem // cfg.vgpu_count if mem else 1024
    if not cfg.direct_accounting or not gpus:
        log.warning("direct mode (no controller_addr) without accounting ([server-limits] "
                    "direct_accounting = 0): every session gets what its HELLO asks for within one "
                    "GPU (default %d MiB per vGPU), however much the others hold", default_gmem)
        return open_authorizer(1, default_gmem, max(1, len(gpus)), mem or None)
    log.info("direct mode (no controller_addr): sessions get what their HELLO asks for while the "
             "node has it (%d GPU(s), %d vGPUs each; default %d MiB per vGPU)", len(gpus),
             cfg.vgpu_count, default_gmem)
    return DirectAuthorizer(DirectLedger(gpus, cfg.vgpu_count), 1, default_gmem, mem)


def _session_end_notice(cfg: ServerConfig, me: str, log: logging.Logger) -> Callable[[str], None] | None:
    """What a session worker calls at its end: tells the controller (signed with the API key,
    within 2 s), so that the vGPUs of a single-node allocation return at once, not at the lease's
    end. None (leases only) when the API key cannot be read."""
    try:
        signer = Signer("node", load_key(cfg.api_key_file))
    except ConfigError:
        return None
    from ..controller import client as ctl

    def notify(allocation_id: str) -> None:
        try:
            if ctl.session_ended(cfg.controller_addr, allocation_id, me, signer, timeout=2.0):
                log.info("allocation %s: its session ended; the controller released it", allocation_id)
        except ctl.NotFound:
            pass  # the application released it first
        except ctl.ControllerError as e:
            raise OrionError(str(e)) from None

    return notify


def make_registrar(cfg: ServerConfig, backend: Backend, interval: float = 5.0) -> Registrar | None:
    """A Registrar keeping this server's GPUs in the controller's pool (None in direct mode).
    ``start()`` it once oriond listens; ``stop(deregister=True)`` on a clean stop."""
    if not cfg.controller_addr:
        return None
    try:
        signer = Signer("node", load_key(cfg.api_key_file))
    except ConfigError as e:
        raise ConfigError(f"{e} ([controller] api_key_file): oriond signs its registration with "
                          f"the Orion Controller's API key; copy the file given to "
                          f"orion-controller --api-key here (mode 0600)") from None
    state = TokenState(cfg.token_state_dir)
    from .node_kind import detect

    return Registrar(cfg.controller_addr,
                     NodeInfo(node_id(cfg), advertised_address(cfg), detect()),
                     gpu_infos(backend, cfg.vgpu_count), interval=interval, signer=signer,
                     on_revoked=lambda ids: state.revoke(ids))
