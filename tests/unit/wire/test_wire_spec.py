"""The call spec is the one definition of each call: checks on the spec itself, and that every
file generated from it is current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from orion_virt.server.dispatch_gen import DISPATCH
from orion_virt.server.session import Session
from orion_virt.wire import SPECS
from orion_virt.wire.codes import Call as C
from orion_virt.wire.routes import ROUTES
from orion_virt.wire.spec import CALLS, HANDLE_KINDS, Dir, Role

ROOT = Path(__file__).resolve().parents[3]


def test_generated_files_are_current() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_wire.py"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"stale generated files (run python tools/gen_wire.py):\n{r.stdout}{r.stderr}"


def test_codes_and_names_are_unique() -> None:
    assert len({fn.code for fn in CALLS}) == len(CALLS)
    names = [fn.name for fn in CALLS] + [s for fn in CALLS for s in fn.spellings]
    assert len(set(names)) == len(names)


def test_every_reference_in_the_spec_names_an_argument() -> None:
    for fn in CALLS:
        names = {a.name for a in fn.args}
        for a in fn.args:
            if a.role is Role.HANDLE:
                assert a.kind in HANDLE_KINDS, (fn.name, a.name)
            if a.role is Role.DPTR and a.dir is Dir.IN or a.role is Role.SHARED:
                assert a.extent in names, (fn.name, a.name)
            if a.role in (Role.HOST_IN, Role.HOST_OUT) and a.length:
                assert a.length in names, (fn.name, a.name)
        if fn.no_reply:
            assert not fn.sync and not SPECS[fn.code].resp_fields, fn.name


def test_every_call_is_executed_and_dispatched() -> None:
    for fn in CALLS:
        assert callable(getattr(Session, "x_" + fn.name, None)), f"the server does not execute {fn.name}"
        assert fn.code in DISPATCH


def test_every_call_has_a_route() -> None:
    """New calls in the call table must be classified (device, handle or current context); the
    native client's cross-node router is generated from these routes."""
    device = {c: r.device for c, r in ROUTES.items() if r.device is not None}
    owned = {c: (r.owner, r.same) for c, r in ROUTES.items() if r.owner is not None}
    reply_handle = {c for c, r in ROUTES.items() if r.reply_handle and not r.merge}
    broadcast = {c: r.merge for c, r in ROUTES.items() if r.merge}
    current = {C.cuCtxSynchronize, C.cuMemAlloc, C.cuMemFree, C.cuMemGetInfo, C.cuMemcpyHtoD,
               C.cuMemcpyDtoH, C.cuMemcpyDtoD, C.cuMemsetD8, C.cuMemsetD32, C.cuStreamCreate,
               C.cuEventCreate, C.cuModuleLoadData, C.cuStreamCreateWithPriority,
               C.cuCtxGetStreamPriorityRange, C.cuCtxGetLimit, C.cuCtxSetLimit, C.cuPointerGetAttribute,
               C.orionHostShare, C.orionHostUnshare, C.orionMemcpyHtoDShared, C.orionMemcpyDtoHShared,
               C.orionHostDevicePointer, C.orionModuleFunctionNames, C.cuDeviceCanAccessPeer,
               C.cuCtxEnablePeerAccess, C.cuCtxDisablePeerAccess, C.cuMemcpyPeer, C.cuMemcpyPeerAsync}
    assert set(SPECS) == set(device) | set(owned) | set(broadcast) | current
    # the tables come from the call spec's roles: spot-check what they must say
    assert device[C.cuDeviceGetAttribute] == 1 and device[C.cuCtxCreate] == 1
    assert owned[C.cuLaunchKernel] == (0, (8,)) and owned[C.cuMemcpyDtoDAsync] == (3, ())
    assert reply_handle == {C.cuDevicePrimaryCtxRetain, C.cuCtxCreate, C.cuStreamCreate,
                            C.cuEventCreate, C.cuModuleLoadData, C.cuModuleGetFunction,
                            C.cuStreamCreateWithPriority, C.cuStreamEndCapture, C.cuGraphInstantiateWithFlags}
    assert broadcast == {C.cuInit: "first", C.cuDriverGetVersion: "min", C.cuDeviceGetCount: "sum",
                         C.orionPointerKinds: "or"}


def test_server_checks_follow_the_roles() -> None:
    """A handle argument is looked up in its own table; a device range is checked before the
    execution runs (spot checks of the generated dispatch)."""
    import inspect

    src = inspect.getsource(DISPATCH[42])  # cuLaunchKernel
    assert "s.h_function.get(a[0])" in src and "s.h_stream.get(a[8]) if a[8] else None" in src
    src = inspect.getsource(DISPATCH[19])  # cuMemcpyHtoD
    assert src.index("s._range(a[0], a[1])") < src.index("s.x_cuMemcpyHtoD")
    src = inspect.getsource(DISPATCH[26])  # cuMemsetD32: 4 bytes per element
    assert "s._range(a[0], a[2] * 4)" in src
