"""The call spec is the one definition of each call: checks on the spec itself, and that every
file generated from it is current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from orion_virt.client import driver
from orion_virt.client import multinode as mn
from orion_virt.server.dispatch_gen import DISPATCH
from orion_virt.server.session import Session
from orion_virt.wire import SPECS
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


def test_every_call_is_executed_dispatched_and_bound() -> None:
    for fn in CALLS:
        assert callable(getattr(Session, "x_" + fn.name, None)), f"the server does not execute {fn.name}"
        assert fn.code in DISPATCH
        if fn.client == "native":
            assert getattr(driver, fn.name, None) is None, f"{fn.name} is the native client's"
            continue
        assert callable(getattr(driver, fn.name, None)), f"the client does not bind {fn.name}"
        for s in fn.spellings:
            if not s.endswith(("_ptds", "_ptsz")):
                assert getattr(driver, s) is getattr(driver, fn.name)


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
    assert mn.OWNED_BY[42] == (0, (8,))
