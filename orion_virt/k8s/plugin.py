"""The kubelet device plugin (device-plugin API v1beta1 over gRPC on unix sockets).

Life of the plugin (:meth:`DevicePlugin.run`), every step retried with a bounded backoff and its
reason logged, so a DaemonSet pod never crash-loops without saying why:

1. ``--interface``: wait until it has an IPv4 address (the seeds' ``Waiting for network
   interface eth0``); the address picks this node's oriond among the controller's nodes.
2. The device list: the controller's nodes that are this node's oriond (``slots.node_matches``),
   each GPU's ``vgpu_count`` slots (the seeds' ``Fail to get device list. Retry in 2 seconds ...``
   until there is one).
3. Serve ``DevicePlugin`` on ``<dir>/<endpoint>`` and ``Register`` with ``<dir>/kubelet.sock``.
4. Watch: every ``poll`` seconds the kubelet socket is stat'ed; when it was recreated (a new
   inode: the kubelet restarted, and it removed our socket too) or our socket is gone, the
   server is restarted on a fresh socket and registers again. Every ``health_interval`` the
   device list and health are refreshed and, when anything changed, sent on every open
   ``ListAndWatch`` stream. A slot is Healthy while the controller answers, lists its node up,
   and that oriond's data-plane port accepts a connection.

``Allocate`` answers, per container: its own shared-memory device (``shm.DeviceBook``) bound at
the same path read-write; the client library directory (``install-client``'s ``/usr/lib/orion``)
bound read-only with ``LD_LIBRARY_PATH`` naming its ``lib``; and ``ORION_CONTROLLER``,
``ORION_VGPU`` = the number of slots, ``ORION_GMEM``/``ORION_RATIO`` defaults (one slot's share of
its GPU unless configured), ``ORION_SHM_PATH_BASE``/``ORION_SHM_DEVICE``. The kubelet puts a
plugin's variables before the container's own ``env``, so a Pod that sets ``ORION_GMEM``,
``ORION_RATIO`` or ``ORION_VGPU`` overrides them.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import grpc

from ..controller import client as ctl
from ..controller.exceptions import ControllerError
from . import deviceplugin_pb2 as pb
from . import deviceplugin_pb2_grpc as pbg
from .common import DEFAULT_RESOURCE, MSG_DEVICE_LIST, MSG_WAIT_IFACE, Backoff, pyroute2_addr, tcp_probe
from .shm import DeviceBook
from .slots import HEALTHY, UNHEALTHY, Slot, health, node_matches, preferred, slots_of

log = logging.getLogger("orion.k8s.plugin")

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
DEFAULT_DIR = "/var/lib/kubelet/device-plugins"


@dataclass
class Options:
    controller: str
    plugin_dir: Path = Path(DEFAULT_DIR)
    resource: str = DEFAULT_RESOURCE
    endpoint: str = "orion-vgpu.sock"
    node_id: str | None = None
    hostname: str = field(default_factory=socket.gethostname)
    interface: str | None = None
    client_controller: str | None = None
    """ORION_CONTROLLER given to containers (default: ``controller``)."""
    client_lib_dir: str | None = "/usr/lib/orion"
    client_key_file: str | None = None
    """The controller's client key (allocations are signed with it): mounted read-only at the same
    path, named by ORION_CLIENT_KEY_FILE; None or a missing file: not given."""
    gmem_mib: int | None = None
    ratio: int | None = None
    health_interval: float = 2.0
    poll: float = 0.5
    sweep_interval: float = 10.0
    backoff_initial: float = 2.0
    backoff_max: float = 30.0
    extra_env: dict[str, str] = field(default_factory=dict)


class State:
    """The device list and its health; ``ListAndWatch`` streams wait on ``cond``."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.version = 0
        self.slots: list[Slot] = []
        self.health: dict[str, str] = {}
        self.stopping = False

    def update(self, slots: list[Slot], hl: dict[str, str]) -> bool:
        with self.cond:
            if [s.id for s in slots] == [s.id for s in self.slots] and hl == self.health:
                return False
            self.slots, self.health = slots, hl
            self.version += 1
            self.cond.notify_all()
            return True

    def devices(self) -> list[Any]:
        return [pb.Device(ID=s.id, health=self.health.get(s.id, UNHEALTHY)) for s in self.slots]


class Servicer(pbg.DevicePluginServicer):
    def __init__(self, plugin: DevicePlugin) -> None:
        self.p = plugin

    def GetDevicePluginOptions(self, request: Any, context: Any) -> Any:
        return pb.DevicePluginOptions(pre_start_required=True, get_preferred_allocation_available=True)

    def ListAndWatch(self, request: Any, context: Any) -> Iterator[Any]:
        st = self.p.state
        seen = -1
        log.info("kubelet opened ListAndWatch")
        while context.is_active() and not st.stopping:
            with st.cond:
                if st.version == seen:
                    st.cond.wait(0.5)
                    continue
                seen = st.version
                devs = st.devices()
            log.info("ListAndWatch: %d slot(s), %d healthy", len(devs),
                     sum(d.health == HEALTHY for d in devs))
            yield pb.ListAndWatchResponse(devices=devs)

    def GetPreferredAllocation(self, request: Any, context: Any) -> Any:
        out = []
        for r in request.container_requests:
            out.append(pb.ContainerPreferredAllocationResponse(
                deviceIDs=preferred(list(r.available_deviceIDs), list(r.must_include_deviceIDs),
                                    int(r.allocation_size))))
        return pb.PreferredAllocationResponse(container_responses=out)

    def Allocate(self, request: Any, context: Any) -> Any:
        out = []
        for r in request.container_requests:
            try:
                out.append(self.p.allocate_container(list(r.devices_ids)))
            except (ValueError, OSError, ControllerError) as e:
                log.error("Allocate %s failed: %s", ",".join(r.devices_ids), e)
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"orion-device-plugin: {e}")
        return pb.AllocateResponse(container_responses=out)

    def PreStartContainer(self, request: Any, context: Any) -> Any:
        try:
            self.p.book.ensure(list(request.devices_ids))
        except OSError as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"orion-device-plugin: {e}")
        return pb.PreStartContainerResponse()


class DevicePlugin:
    """One plugin process. ``probe(address) -> bool`` checks an oriond (default: its TCP port
    accepts); ``iface_addr(name) -> str`` raises while the interface has no address; ``sleep``
    waits (returns early on stop). All three are replaceable for tests."""

    def __init__(self, opts: Options, book: DeviceBook, *,
                 probe: Callable[[str], bool] | None = None,
                 iface_addr: Callable[[str], str] | None = None) -> None:
        self.opts = opts
        self.book = book
        self.state = State()
        self.probe = probe or tcp_probe
        self.iface_addr = iface_addr or pyroute2_addr
        self.address: str | None = None
        self.stop_event = threading.Event()
        self.server: Any = None
        self.registered = 0
        self._kubelet_id: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._last_error = ""

    # -- pieces --------------------------------------------------------------------------------

    @property
    def socket_path(self) -> Path:
        return self.opts.plugin_dir / self.opts.endpoint

    @property
    def kubelet_socket(self) -> Path:
        return self.opts.plugin_dir / KUBELET_SOCKET

    def sleep(self, seconds: float) -> bool:
        """False when stopped meanwhile."""
        return not self.stop_event.wait(seconds)

    def refresh(self) -> bool:
        """Fetch the device list and health from the controller and probe oriond. Returns
        whether the controller answered with at least one matching node."""
        try:
            nodes = ctl.nodes(self.opts.controller, timeout=3.0)
        except ControllerError as e:
            if self.state.slots:
                if self.state.update(self.state.slots, health(self.state.slots, {}, {}, False)):
                    log.warning("controller %s not answering (%s): all %d slot(s) Unhealthy",
                                self.opts.controller, e, len(self.state.slots))
            self._last_error = f"controller {self.opts.controller}: {e}"
            return False
        mine = [n for n in nodes if node_matches(n, node_id=self.opts.node_id, hostname=self.opts.hostname,
                                                 address=self.address)]
        if not mine:
            self._last_error = (f"the controller at {self.opts.controller} lists no oriond of this node ("
                                + (f"node id {self.opts.node_id}" if self.opts.node_id else
                                   f"address {self.address}" if self.address else
                                   f"node id {self.opts.hostname}:...") + ")")
            if self.state.slots and self.state.update(self.state.slots,
                                                      health(self.state.slots, {}, {}, True)):
                log.warning("%s: all %d slot(s) Unhealthy", self._last_error, len(self.state.slots))
            return False
        slots = slots_of(mine)
        up = {str(n["node_id"]): bool(n.get("up")) for n in mine}
        ok = {str(n["node_id"]): self.probe(str(n.get("address", ""))) for n in mine}
        hl = health(slots, up, ok, True)
        if self.state.update(slots, hl):
            bad = [nid for nid in up if not (up[nid] and ok[nid])]
            if bad:
                log.warning("slots Unhealthy on %s: %s", ", ".join(bad),
                            "; ".join(f"{nid}: " + ("down at the controller" if not up[nid] else
                                                   "oriond does not answer") for nid in bad))
            else:
                log.info("%d slot(s) Healthy", len(slots))
        return True

    def allocate_container(self, ids: Sequence[str]) -> Any:
        known = {s.id: s for s in self.state.slots}
        unknown = [i for i in ids if i not in known]
        if unknown or not ids:
            raise ValueError(f"unknown slot id(s) {unknown or ids} (this node has {len(known)})")
        with self._lock:
            dev = self.book.allocate(ids)
        first = known[ids[0]]
        o = self.opts
        env = {"ORION_CONTROLLER": o.client_controller or o.controller, "ORION_VGPU": str(len(ids)),
               "ORION_GMEM": str(o.gmem_mib if o.gmem_mib is not None else min(known[i].default_gmem_mib
                                                                               for i in ids)),
               "ORION_RATIO": str(o.ratio if o.ratio is not None else first.default_ratio),
               "ORION_SHM_PATH_BASE": str(dev.parent), "ORION_SHM_DEVICE": str(dev)}
        mounts = [pb.Mount(container_path=str(dev), host_path=str(dev), read_only=False)]
        if o.client_lib_dir:
            mounts.append(pb.Mount(container_path=o.client_lib_dir, host_path=o.client_lib_dir, read_only=True))
            env["LD_LIBRARY_PATH"] = f"{o.client_lib_dir.rstrip('/')}/lib"
        if o.client_key_file and Path(o.client_key_file).is_file():
            mounts.append(pb.Mount(container_path=o.client_key_file, host_path=o.client_key_file, read_only=True))
            env["ORION_CLIENT_KEY_FILE"] = o.client_key_file
        env.update(o.extra_env)
        log.info("Allocate %s: %s, ORION_VGPU=%s ORION_GMEM=%s ORION_RATIO=%s", ",".join(ids), dev,
                 env["ORION_VGPU"], env["ORION_GMEM"], env["ORION_RATIO"])
        return pb.ContainerAllocateResponse(envs=env, mounts=mounts)

    # -- server and registration ---------------------------------------------------------------

    def start_server(self) -> None:
        self.stop_server()
        self.opts.plugin_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pbg.add_DevicePluginServicer_to_server(Servicer(self), server)
        server.add_insecure_port(f"unix://{self.socket_path}")
        server.start()
        self.server = server
        log.info("serving %s on %s", self.opts.resource, self.socket_path)

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.stop(grace=0.5).wait(5)
            self.server = None

    def register(self) -> None:
        with grpc.insecure_channel(f"unix://{self.kubelet_socket}") as ch:
            stub = pbg.RegistrationStub(ch)
            stub.Register(pb.RegisterRequest(
                version=API_VERSION, endpoint=self.opts.endpoint, resource_name=self.opts.resource,
                options=pb.DevicePluginOptions(pre_start_required=True, get_preferred_allocation_available=True)),
                timeout=5)
        self.registered += 1
        log.info("registered %s with the kubelet (%s), endpoint %s", self.opts.resource, self.kubelet_socket,
                 self.opts.endpoint)

    def _kubelet_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.kubelet_socket)
            return (st.st_ino, st.st_ctime_ns)
        except OSError:
            return None

    # -- the loop ------------------------------------------------------------------------------

    def wait_interface(self) -> bool:
        if not self.opts.interface:
            return True
        b = Backoff(self.opts.backoff_initial, self.opts.backoff_max)
        while not self.stop_event.is_set():
            try:
                self.address = self.iface_addr(self.opts.interface)
                log.info("network interface %s: %s", self.opts.interface, self.address)
                return True
            except ModuleNotFoundError:
                raise
            except Exception as e:  # HostError, or pyroute2's own errors
                log.warning("%s (%s)", MSG_WAIT_IFACE.format(name=self.opts.interface), e)
            if not self.sleep(b.next()):
                return False
        return False

    def wait_devices(self) -> bool:
        b = Backoff(self.opts.backoff_initial, self.opts.backoff_max)
        while not self.stop_event.is_set():
            if self.refresh():
                return True
            d = b.next()
            log.warning("%s (%s)", MSG_DEVICE_LIST.format(delay=d), self._last_error)
            if not self.sleep(d):
                return False
        return False

    def connect(self) -> bool:
        """Serve and register, retrying until the kubelet accepts."""
        b = Backoff(self.opts.backoff_initial, self.opts.backoff_max)
        while not self.stop_event.is_set():
            ident = self._kubelet_identity()
            if ident is None:
                d = b.next()
                log.warning("waiting for the kubelet: %s does not exist (retry in %g s)", self.kubelet_socket, d)
            else:
                try:
                    self.start_server()
                    self.register()
                    self._kubelet_id = ident
                    return True
                except grpc.RpcError as e:
                    d = b.next()
                    log.warning("registering with the kubelet at %s failed: %s: %s (retry in %g s)",
                                self.kubelet_socket, e.code().name, e.details(), d)
                except OSError as e:
                    d = b.next()
                    log.warning("cannot serve on %s: %s (retry in %g s)", self.socket_path, e, d)
            if not self.sleep(d):
                return False
        return False

    def run(self) -> int:
        if not self.wait_interface() or not self.wait_devices() or not self.connect():
            self.shutdown()
            return 0
        next_health = time.monotonic() + self.opts.health_interval
        next_sweep = time.monotonic() + self.opts.sweep_interval
        while self.sleep(self.opts.poll):
            ident = self._kubelet_identity()
            if ident != self._kubelet_id or not self.socket_path.exists():
                why = ("its socket is gone" if ident is None else
                       "its socket was recreated" if ident != self._kubelet_id else "our socket was removed")
                log.warning("kubelet restarted (%s): serving and registering again", why)
                if not self.connect():
                    break
            now = time.monotonic()
            if now >= next_health:
                self.refresh()
                next_health = now + self.opts.health_interval
            if now >= next_sweep:
                with self._lock:
                    try:
                        self.book.sweep()
                    except OSError as e:
                        log.warning("sweeping shared-memory devices: %s", e)
                next_sweep = now + self.opts.sweep_interval
        self.shutdown()
        return 0

    def shutdown(self) -> None:
        with self.state.cond:
            self.state.stopping = True
            self.state.cond.notify_all()
        self.stop_server()
        try:
            self.socket_path.unlink()
        except OSError:
            pass

    def stop(self) -> None:
        self.stop_event.set()
