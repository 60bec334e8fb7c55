"""Define, boot and collect a test guest (``<domain type='qemu'>``, TCG) under libvirt.

The guest (see image.py) runs one shell script and powers off; its stdout, stderr and exit code
come back through the serial console log (base64 between markers, so they are byte-exact).

Typical use::

    res = run_guest(conn, "orion-test-foo", "echo hi", shmem=("orionsock91", 4))
    assert res.exit_code == 0 and res.stdout == "hi\\n"

or, when something else (the product's host agent) must add devices to the definition::

    g = define_guest(conn, "orion-test-foo", script)
    ...  # e.g. host agent edits g.domain's XML and re-defines it
    g.start(); res = g.wait(timeout=300); g.cleanup()
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable
from xml.sax.saxutils import escape, quoteattr

from . import image as _image
from .image import GuestImage

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Longest base64 script put on the kernel command line (x86 COMMAND_LINE_SIZE is 2048);
#: longer scripts go through a per-run 9p share (tag ``orionrun``).
MAX_CMDLINE_SCRIPT = 1400
BASE_CMDLINE = "console=ttyS0 quiet loglevel=1 panic=-1 8250.nr_uarts=1 rdinit=/init"


class GuestError(RuntimeError):
    """The guest did not run the script to completion; ``console`` holds the log."""

    def __init__(self, msg: str, console: str = "") -> None:
        tail = console[-4000:]
        super().__init__(f"{msg}\n--- console tail ---\n{tail}" if console else msg)
        self.console = console


@dataclasses.dataclass
class GuestResult:
    """What a guest run produced."""

    stdout: str
    exit_code: int
    seconds_to_first_output: float   #: virDomainCreate -> first console byte (/init started)
    seconds_total: float             #: virDomainCreate -> domain shut off
    stderr: str = ""
    seconds_to_command: float = 0.0  #: virDomainCreate -> the script started
    console: str = ""                #: the whole console log (\r\n normalised)
    stdout_bytes: bytes = b""


def parse_console(text: str) -> tuple[bytes, bytes, int]:
    """Extract (stdout, stderr, exit code) from a console log; raise GuestError if incomplete."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if _image.MARK_INIT_FAILED in text:
        reason = text.split(_image.MARK_INIT_FAILED, 1)[1].split("@@", 1)[0]
        raise GuestError(f"guest /init failed: {reason}", text)

    def block(begin: str, end: str) -> bytes:
        if begin not in text or end not in text:
            raise GuestError(f"console has no {begin} ... {end} block", text)
        body = text.rsplit(begin, 1)[1].split(end, 1)[0]
        return base64.b64decode("".join(body.split()))

    out = block(_image.MARK_STDOUT_BEGIN, _image.MARK_STDOUT_END)
    err = block(_image.MARK_STDERR_BEGIN, _image.MARK_STDERR_END)
    if _image.MARK_EXIT not in text:
        raise GuestError("console has no exit code", text)
    rc = int(text.rsplit(_image.MARK_EXIT, 1)[1].split("@@", 1)[0])
    return out, err, rc


def domain_xml(name: str, img: GuestImage, console_log: Path, *, cmdline: str,
               source_dir: Path = REPO_ROOT, run_dir: Path | None = None, memory_mib: int = 512,
               vcpus: int = 1, shmem: tuple[str, int] | None = None, extra_devices: str = "") -> str:
    """The domain XML: TCG, direct kernel boot, 9p rootfs + ``orion`` share, serial to a file.

    *shmem* ``(name, size_mib)`` adds ``<shmem name=...><model type='ivshmem-plain'/>`` (normally
    the product's host agent adds it); *run_dir* adds the ``orionrun`` 9p share.
    """
    def fs(src: Path, tag: str) -> str:
        return (f"    <filesystem type='mount' accessmode='passthrough'>\n"
                f"      <source dir={quoteattr(str(src))}/>\n"
                f"      <target dir={quoteattr(tag)}/>\n      <readonly/>\n    </filesystem>\n")

    devs = fs(img.rootfs, _image.ROOTFS_TAG) + fs(Path(source_dir), _image.SOURCE_TAG)
    if run_dir is not None:
        devs += fs(run_dir, _image.RUN_TAG)
    if shmem is not None:
        devs += (f"    <shmem name={quoteattr(shmem[0])}>\n      <model type='ivshmem-plain'/>\n"
                 f"      <size unit='M'>{int(shmem[1])}</size>\n    </shmem>\n")
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>{vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(img.kernel))}</kernel>
    <initrd>{escape(str(img.initrd))}</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
{devs}    <serial type='file'>
      <source path={quoteattr(str(console_log))}/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
{extra_devices}  </devices>
</domain>
"""


def _undefine(conn: Any, name: str) -> None:
    import libvirt
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return
    with contextlib.suppress(libvirt.libvirtError):
        if dom.isActive():
            dom.destroy()
    with contextlib.suppress(libvirt.libvirtError):
        dom.undefine()


class Guest:
    """A defined (persistent) test domain; see :func:`define_guest`."""

    def __init__(self, conn: Any, name: str, domain: Any, workdir: Path, console_log: Path,
                 keep_workdir: bool) -> None:
        self.conn, self.name, self.domain = conn, name, domain
        self.workdir, self.console_log, self.keep_workdir = workdir, console_log, keep_workdir
        self.t_start: float | None = None

    def start(self) -> None:
        """virDomainCreate (re-looking the domain up, in case its definition was replaced)."""
        self.domain = self.conn.lookupByName(self.name)
        self.console_log.unlink(missing_ok=True)
        self.t_start = time.monotonic()
        self.domain.create()

    def console_text(self) -> str:
        try:
            return self.console_log.read_bytes().decode("utf-8", "replace")
        except OSError:
            return ""

    def wait(self, timeout: float = 300.0, poll: float = 0.05) -> GuestResult:
        """Wait for the guest to power off; parse its console. Destroys it on timeout."""
        assert self.t_start is not None, "start() first"
        t0, first, cmd = self.t_start, None, None
        deadline = t0 + timeout
        while True:
            now = time.monotonic()
            if first is None and self.console_log.exists() and self.console_log.stat().st_size > 0:
                first = now - t0
            if cmd is None and first is not None and _image.MARK_CMD_START in self.console_text():
                cmd = now - t0
            if not self.domain.isActive():
                break
            if now > deadline:
                with contextlib.suppress(Exception):
                    self.domain.destroy()
                raise GuestError(f"guest {self.name} still running after {timeout:.0f}s; destroyed",
                                 self.console_text())
            time.sleep(poll)
        total = time.monotonic() - t0
        text = self.console_text().replace("\r\n", "\n")
        out, err, rc = parse_console(text)
        return GuestResult(stdout=out.decode("utf-8", "replace"), exit_code=rc,
                           seconds_to_first_output=round(first if first is not None else total, 2),
                           seconds_total=round(total, 2), stderr=err.decode("utf-8", "replace"),
                           seconds_to_command=round(cmd if cmd is not None else total, 2),
                           console=text, stdout_bytes=out)

    def cleanup(self) -> None:
        """Destroy + undefine the domain; remove the work dir (console log) unless kept."""
        _undefine(self.conn, self.name)
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def define_guest(conn: Any, name: str, script: str, *, img: GuestImage | None = None,
                 shmem: tuple[str, int] | None = None, source_dir: Path = REPO_ROOT,
                 memory_mib: int = 512, vcpus: int = 1, workdir: Path | None = None,
                 debug: bool = False, extra_devices: str = "", writable_root: bool = False,
                 user_net: bool = False, run_files: dict[str, Path] | None = None) -> Guest:
    """Define (not start) a persistent domain *name* that runs *script* with /bin/sh in the guest.

    A domain of the same name is destroyed and undefined first. *workdir* (default: a new
    temp dir, removed by cleanup()) holds console.log and, for long scripts, the run share.
    *debug* drops ``quiet`` so kernel messages reach the console. *writable_root*: the root is a
    tmpfs overlay over the read-only image (``orion.rw=1``); *user_net*: a virtio NIC on QEMU
    user-mode networking (the guest reaches the host's loopback at 10.0.2.2); *run_files*:
    files copied into the run share, at /run/orion/in/<name> in the guest.
    """
    img = img or _image.ensure_guest_image()
    _undefine(conn, name)
    keep = workdir is not None
    wd = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"{name}-", dir="/var/tmp"))
    wd.mkdir(parents=True, exist_ok=True)
    console = wd / "console.log"
    b64 = base64.b64encode(script.encode()).decode()
    cmdline = BASE_CMDLINE.replace(" quiet loglevel=1", " loglevel=7") if debug else BASE_CMDLINE
    if writable_root:
        cmdline += " orion.rw=1"
    if user_net:
        extra_devices += "    <interface type='user'><model type='virtio'/></interface>\n"
    run_dir = None
    if len(b64) <= MAX_CMDLINE_SCRIPT and not run_files:
        cmdline += f" orion.cmd={b64}"
    else:
        run_dir = wd / "run"
        run_dir.mkdir(exist_ok=True)
        (run_dir / "cmd.sh").write_text(script)
        for fname, src in (run_files or {}).items():
            shutil.copy2(src, run_dir / fname)
    xml = domain_xml(name, img, console, cmdline=cmdline, source_dir=source_dir, run_dir=run_dir,
                     memory_mib=memory_mib, vcpus=vcpus, shmem=shmem, extra_devices=extra_devices)
    dom = conn.defineXML(xml)
    return Guest(conn, name, dom, wd, console, keep)


def run_guest(conn: Any, name: str, script: str, shmem: tuple[str, int] | None = None,
              timeout: float = 300.0, *, img: GuestImage | None = None,
              before_start: Callable[[Guest], None] | None = None, keep_on_failure: bool = True,
              **define_kw: Any) -> GuestResult:
    """Boot a guest running *script*, wait for it to power off, return its result.

    *before_start(guest)* runs after the domain is defined and before it starts (e.g. to let the
    host agent add the ivshmem device). The domain is destroyed + undefined afterwards; on failure
    its console log is kept (path in the GuestError) when *keep_on_failure*.
    """
    g = define_guest(conn, name, script, img=img, shmem=shmem, **define_kw)
    ok = False
    try:
        if before_start is not None:
            before_start(g)
        g.start()
        res = g.wait(timeout)
        ok = True
        return res
    except GuestError as e:
        if keep_on_failure:
            g.keep_workdir = True
            e.args = (f"{e.args[0]}\n(console log kept at {g.console_log})",)
        raise
    finally:
        if not ok and keep_on_failure:
            g.keep_workdir = True
        g.cleanup()
