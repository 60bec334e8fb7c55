"""Record what the real NVIDIA driver's cuGetProcAddress_v2 answers, as data for the native client.

Run on a GPU host (it loads the real ``libcuda.so.1``; nothing is launched on the GPU)::

    python3 tools/gen_procaddr.py [--header cudaTypedefs.h] [--out DIR]

For every driver function (the ``PFN_<name>_v<version>`` typedefs of ``cudaTypedefs.h`` and the
library's own exports) and each of the three stream flags, it asks for the function at every CUDA
version where some function gained a new ABI and maps the pointer back to the exported spelling
it is. Consecutive versions with the same answer are merged, so a row says: from ``min_version``
on, ``name`` with ``flags`` is ``spelling`` (``-`` not found, ``?`` a pointer that is no export).

Writes ``DIR/driver-<version>.tsv`` (default ``orion_virt/client/native/procaddr``): a header
naming the driver, the GPU and this command, ``export`` rows (every function the library exports)
and ``proc`` rows. ``tools/gen_native.py`` turns the newest file into the client's table.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from elf_symbols import exported_functions  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FLAGS = (0, 1, 2)
"""CU_GET_PROC_ADDRESS_DEFAULT, _LEGACY_STREAM, _PER_THREAD_DEFAULT_STREAM."""
_SUFFIX = re.compile(r"(_v\d+)?(_ptds|_ptsz)?$")


def find_header() -> Path:
    cands = [Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include/cudaTypedefs.h"]
    try:
        import nvidia  # type: ignore[import-not-found]
        cands += [c for d in nvidia.__path__ for c in sorted(Path(d).glob("cu*/include/cudaTypedefs.h"))]
    except ImportError:
        pass
    for c in cands:
        if c.exists():
            return c
    raise SystemExit("cudaTypedefs.h not found: pass --header PATH")


def typedefs(header: Path) -> dict[str, list[int]]:
    """``name -> sorted ABI versions`` from the PFN typedefs."""
    out: dict[str, set[int]] = {}
    for m in re.finditer(r"\bPFN_(cu\w+?)_v(\d+)\b", header.read_text()):
        out.setdefault(m.group(1), set()).add(int(m.group(2)))
    return {k: sorted(v) for k, v in out.items()}


def loaded_path(soname: str) -> str:
    for line in Path("/proc/self/maps").read_text().splitlines():
        if f"/{soname.split('.so')[0]}.so" in line:
            return line.split()[-1]
    raise SystemExit(f"{soname} is loaded but not in /proc/self/maps")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--header", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "orion_virt/client/native/procaddr")
    args = ap.parse_args()
    header = args.header or find_header()
    lib = ctypes.CDLL("libcuda.so.1")
    path = os.path.realpath(loaded_path("libcuda.so"))
    exports = exported_functions(path)
    by_addr = {}
    for e in exports:
        by_addr.setdefault(ctypes.cast(getattr(lib, e), ctypes.c_void_p).value, e)
    ver = ctypes.c_int()
    lib.cuDriverGetVersion(ctypes.byref(ver))
    if lib.cuInit(0) != 0:
        raise SystemExit("cuInit failed: is this a GPU host?")
    name = ctypes.create_string_buffer(256)
    lib.cuDeviceGetName(name, 256, 0)
    tds = typedefs(header)
    names = sorted(set(tds) | {_SUFFIX.sub("", e) for e in exports if e.startswith("cu")})
    versions = sorted({v for vs in tds.values() for v in vs} | {1000, ver.value})
    gpa = lib.cuGetProcAddress_v2
    gpa.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_uint64,
                    ctypes.POINTER(ctypes.c_int)]
    rows = []
    for n in names:
        for fl in FLAGS:
            last = None
            for v in versions:
                p, st = ctypes.c_void_p(), ctypes.c_int()
                r = gpa(n.encode(), ctypes.byref(p), v, fl, ctypes.byref(st))
                got = "-" if r != 0 or not p.value else by_addr.get(p.value, "?")
                if got != last:
                    rows.append(f"proc\t{n}\t{fl}\t{v}\t{got}")
                    last = got
    args.out.mkdir(parents=True, exist_ok=True)
    dest = args.out / f"driver-{ver.value}.tsv"
    lines = [f"# cuGetProcAddress_v2 of NVIDIA's libcuda.so.1, driver API {ver.value}, on {name.value.decode()}",
             f"# {os.path.basename(path)}; made by: python3 tools/gen_procaddr.py --header {header}",
             "# export NAME | proc NAME FLAGS MIN_VERSION SPELLING (- not found, ? not an export)"]
    lines += [f"export\t{e}" for e in exports] + rows
    dest.write_text("\n".join(lines) + "\n")
    print(f"{dest}: {len(exports)} exports, {len(names)} names, {len(rows)} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
