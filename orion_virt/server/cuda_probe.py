"""What the ``cuda`` backend knows about this host's GPUs, read in a short-lived child process.

oriond's main process must never initialise CUDA (session workers fork from it, and a CUDA
context does not survive ``fork``), yet it needs each GPU's name, memory, UUID and attributes to
answer device queries and size vGPUs. ``probe()`` runs this file's ``main`` in a child Python,
which prints one JSON document; ``parse`` turns it into ``PhysicalGpu`` records.

This file is also run as a script (its source is passed to ``python -c``), so ``main`` uses only
the standard library and ``cuda.bindings.driver``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def main() -> int:  # runs in the child process
    try:
        from cuda.bindings import driver as d

        def ok(res: Any, what: str) -> Any:
            err, *vals = res
            if int(err) != 0:
                raise RuntimeError(f"{what} failed: {err!r}")
            return vals[0] if len(vals) == 1 else vals

        ok(d.cuInit(0), "cuInit")
        version = ok(d.cuDriverGetVersion(), "cuDriverGetVersion")
        count = ok(d.cuDeviceGetCount(), "cuDeviceGetCount")
        gpus = []
        for i in range(count):
            dev = ok(d.cuDeviceGet(i), "cuDeviceGet")
            name = ok(d.cuDeviceGetName(256, dev), "cuDeviceGetName")
            name = bytes(name).split(b"\0", 1)[0].decode("utf-8", "replace").strip()
            total = ok(d.cuDeviceTotalMem(dev), "cuDeviceTotalMem")
            uuid = ok(d.cuDeviceGetUuid(dev), "cuDeviceGetUuid").bytes
            if isinstance(uuid, str):
                uuid = uuid.encode("latin-1")
            attrs = {}
            for a in d.CUdevice_attribute:
                if a.name.endswith("_MAX"):
                    continue
                err, value = d.cuDeviceGetAttribute(a, dev)
                if int(err) == 0:
                    attrs[str(int(a))] = int(value)
            gpus.append({"index": i, "name": name, "total_mem": int(total),
                         "uuid": bytes(uuid)[:16].hex(), "attributes": attrs})
    except BaseException as e:  # noqa: BLE001 - anything here means "no usable CUDA"
        print(json.dumps({"error": f"{type(e).__name__}: {e}".strip()}))
        return 1
    print(json.dumps({"driver_version": int(version), "gpus": gpus}))
    return 0


@dataclass(frozen=True)
class ProbeResult:
    driver_version: int
    gpus: list  # list[PhysicalGpu]
    error: str = ""


def parse(text: str) -> ProbeResult:
    """The child's JSON (its last line of output) as a ProbeResult; ``error`` set on failure."""
    from .backend import PhysicalGpu

    lines = [ln for ln in text.strip().splitlines() if ln.strip().startswith("{")]
    if not lines:
        return ProbeResult(0, [], "the CUDA probe printed nothing")
    try:
        doc = json.loads(lines[-1])
    except json.JSONDecodeError as e:
        return ProbeResult(0, [], f"the CUDA probe printed bad JSON: {e}")
    if doc.get("error"):
        return ProbeResult(0, [], str(doc["error"]))
    gpus = [
        PhysicalGpu(int(g["index"]), str(g["name"]), int(g["total_mem"]), bytes.fromhex(g["uuid"]).ljust(16, b"\0"),
                    {int(k): int(v) for k, v in g.get("attributes", {}).items()})
        for g in doc.get("gpus", [])
    ]
    if [g.index for g in gpus] != list(range(len(gpus))):
        return ProbeResult(0, [], "the CUDA probe returned devices out of order")
    return ProbeResult(int(doc.get("driver_version", 0)), gpus)


def probe(timeout: float = 120.0) -> ProbeResult:
    """Run ``main`` in a child Python (the same interpreter) and parse what it printed."""
    code = Path(__file__).read_text(encoding="utf-8")  # ends by calling main() as __main__
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return ProbeResult(0, [], f"the CUDA probe failed: {e}")
    res = parse(out.stdout)
    if res.error and out.returncode != 0 and not out.stdout.strip():
        tail = (out.stderr.strip().splitlines() or ["unknown error"])[-1]
        return ProbeResult(0, [], f"the CUDA probe exited with {out.returncode}: {tail}")
    return res


if __name__ == "__main__":
    sys.exit(main())
