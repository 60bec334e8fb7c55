"""The one diagnosis of an Orion Controller at an address, in the seeds' words.

``orion-check runtime server``, ``runtime controller`` and the guest's ``runtime client`` all
print their "Checking Orion Controller status" section with these functions (the wording of
the original lines is in :mod:`orion_virt.compat`). Standard library only: install-client
carries it into guests with ``check/client.py``.
"""

from __future__ import annotations

from collections.abc import Mapping

from .. import compat
from .report import Report, split_addr, tcp_reach


def controller_from_env(env: Mapping[str, str]) -> tuple[str, str] | None:
    """(address, variable) when ORION_CONTROLLER (or the seeds' misspelling) is set."""
    for var in compat.ENV_CONTROLLER_NAMES:
        if env.get(var, "").strip():
            return env[var].strip(), var
    return None


def controller_intro(report: Report) -> None:
    """``Checking Orion Controller status ...`` and the seeds' two ``[Info]`` lines."""
    report.section("Checking Orion Controller status")
    report.info(compat.CONTROLLER_SHELL_INFO)
    report.info(compat.CONTROLLER_ENV_PRIORITY)
    report.line()


def check_controller(report: Report, addr: str, origin: str, timeout: float = 3.0,
                     summary_out: list | None = None) -> bool:
    """The seeds' controller diagnosis for ``addr`` (``origin``: ``configuration file`` or
    ``environment variable ORION_CONTROLLER``). Returns True when version and pool could be
    read; ``summary_out`` receives the controller's ``Summary`` when given."""
    from ..controller import client as ctl
    from ..errors import ControllerError

    report.line(compat.CONTROLLER_ADDR_SET.format(addr=addr, origin=origin))
    try:
        host, port = split_addr(addr)
    except ValueError:
        report.error(f"{addr} is not HOST:PORT")
        return False
    why = tcp_reach(host, port, timeout)
    if why is not None:
        report.error(f"Address {addr} cannot be reached: {why}")
        report.line(compat.MSG_CONNECT)
        report.line(compat.MSG_VERSION)
        report.info("check that orion-controller runs (orion-check runtime controller on its "
                    "host), listens on 0.0.0.0:9123 or this address, and that no firewall "
                    "(firewalld, Docker's iptables rules) blocks the port")
        return False
    report.line(compat.ADDRESS_REACHED.format(addr=addr))
    try:
        version = ctl.get_version(addr, timeout=timeout)
    except ControllerError as e:
        report.line(compat.MSG_VERSION)
        report.error(f"{addr} answers, but not as an Orion Controller: {e}")
        return False
    report.line(compat.CONTROLLER_VERSION.format(version=version))
    try:
        s = ctl.summary(addr, timeout=timeout)
    except ControllerError as e:
        report.error(f"cannot read the pool from the Orion Controller: {e}")
        return False
    report.line(compat.VGPU_SUMMARY.format(total=s.total_vgpus, free=s.free_vgpus))
    if summary_out is not None:
        summary_out.append(s)
    if s.nodes_down:
        report.warn(f"{s.nodes_down} Orion Server node(s) stopped heartbeating and are marked "
                    f"down: their vGPUs are not in the pool")
    if not s.total_vgpus:
        report.warn("no Orion Server has registered GPUs with this Orion Controller: clients "
                    f"will print \"{compat.MSG_NO_ALLOCATION}\"")
    elif not s.free_vgpus:
        report.warn("no vGPU is free: running clients hold them all (or released ones are "
                    "still within their lease)")
    return True
