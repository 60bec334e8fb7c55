"""Read kernel entry points and their parameter layout from PTX text (no execution).

The layout is what the CUDA driver uses for a kernel's parameter buffer: each parameter at the
next offset aligned to its own alignment. Used by the sim backend, and to tell the client how many
bytes each ``kernelParams`` pointer refers to.
"""

from __future__ import annotations

import re

from .backend import ParamSlot

_ENTRY = re.compile(r"\.entry\s+([A-Za-z_$][\w$]*)\s*\(([^)]*)\)", re.S)
_PARAM = re.compile(
    r"\.param\s+(?:\.align\s+(\d+)\s+)?\.(u8|s8|b8|u16|s16|b16|f16|u32|s32|b32|f32|u64|s64|b64|f64)"
    r"(?:\s+\.ptr(?:\s+\.\w+)*(?:\s+\.align\s+\d+)?)?\s+([A-Za-z_$][\w$]*)(?:\[(\d+)\])?"
)
_SIZES = {"8": 1, "16": 2, "32": 4, "64": 8}

MAX_PTX = 64 << 20


def entries(ptx: str) -> dict[str, list[ParamSlot]]:
    """``{kernel name: [ParamSlot...]}`` for every ``.entry`` in ``ptx``. Raises ValueError if malformed."""
    out: dict[str, list[ParamSlot]] = {}
    for m in _ENTRY.finditer(ptx):
        name, plist = m.group(1), m.group(2)
        slots: list[ParamSlot] = []
        off = 0
        for part in filter(None, (p.strip() for p in plist.split(","))):
            pm = _PARAM.search(part)
            if pm is None:
                raise ValueError(f"kernel {name}: cannot parse parameter {part!r}")
            align_s, typ, _pname, count_s = pm.groups()
            elem = _SIZES[typ[1:]]
            count = int(count_s) if count_s else 1
            align = int(align_s) if align_s else elem
            size = elem * count
            off = (off + align - 1) // align * align
            slots.append(ParamSlot(off, size))
            off += size
        out[name] = slots
    return out


def looks_like_ptx(image: bytes) -> bool:
    head = image[:4096].lstrip()
    return head.startswith((b"//", b".version", b".target")) or b".version" in head[:2048]
