"""Read kernel entry points and their parameter layout from PTX text (no execution).

The layout is what the CUDA driver uses for a kernel's parameter buffer: each parameter at the
next offset aligned to its own alignment. Used by the sim backend, and to tell the client how many
bytes each ``kernelParams`` pointer refers to.

The text is untrusted (any client can load a module), so the reader is **total and linear**: any
input returns entries or raises ``ValueError`` (never another exception), and it looks at each
character a bounded number of times: entries are found with ``str.find`` from where the last one
ended, a parameter list must close before the text ends, and every count, alignment and size is
bounded (an alignment must be a power of two up to ``MAX_ALIGN``; a kernel's parameters at most
``MAX_PARAM_BYTES``; at most ``MAX_ENTRIES`` kernels). Fuzzed in tests/unit/server/test_ptx.py.
"""

from __future__ import annotations

import re

from .backend import ParamSlot

_ENTRY_HEAD = re.compile(r"\.entry\s+([A-Za-z_$][\w$]*)\s*\(")
_PARAM = re.compile(
    r"\.param\s+(?:\.align\s+(\d{1,9})\s+)?\.(u8|s8|b8|u16|s16|b16|f16|u32|s32|b32|f32|u64|s64|b64|f64)"
    r"(?:\s+\.ptr(?:\s+\.\w+)*(?:\s+\.align\s+\d{1,9})?)?\s+([A-Za-z_$][\w$]*)(?:\[(\d{1,9})\])?"
)
_SIZES = {"8": 1, "16": 2, "32": 4, "64": 8}

MAX_PTX = 64 << 20
MAX_ENTRIES = 1 << 16
MAX_ALIGN = 1 << 12
MAX_PARAM_BYTES = 1 << 15
"""The driver's own limit on a kernel's parameter buffer is 32764 bytes (CUDA 12.1+)."""
MAX_PARAM_TEXT = 1 << 20
"""Longest parameter list (characters) looked at; a longer one is malformed."""


def entries(ptx: str) -> dict[str, list[ParamSlot]]:
    """``{kernel name: [ParamSlot...]}`` for every ``.entry`` in ``ptx``. Raises ValueError if
    malformed (and only ValueError), in time linear in ``len(ptx)``."""
    if not isinstance(ptx, str):
        raise ValueError("PTX must be text")
    if len(ptx) > MAX_PTX:
        raise ValueError(f"PTX of {len(ptx)} characters is over {MAX_PTX}")
    out: dict[str, list[ParamSlot]] = {}
    pos = 0
    while True:
        at = ptx.find(".entry", pos)
        if at < 0:
            return out
        m = _ENTRY_HEAD.match(ptx, at)
        if m is None:  # ".entry" in a comment or a name: skip it
            pos = at + 6
            continue
        name = m.group(1)
        close = ptx.find(")", m.end(), m.end() + MAX_PARAM_TEXT + 1)
        if close < 0:
            raise ValueError(f"kernel {name}: parameter list not closed")
        if len(out) >= MAX_ENTRIES and name not in out:
            raise ValueError(f"more than {MAX_ENTRIES} kernels in one module")
        out[name] = _params(name, ptx[m.end():close])
        pos = close + 1


def _params(name: str, plist: str) -> list[ParamSlot]:
    slots: list[ParamSlot] = []
    off = 0
    for part in filter(None, (p.strip() for p in plist.split(","))):
        pm = _PARAM.search(part)
        if pm is None:
            raise ValueError(f"kernel {name}: cannot parse parameter {part[:80]!r}")
        align_s, typ, _pname, count_s = pm.groups()
        elem = _SIZES[typ[1:]]
        count = int(count_s) if count_s else 1
        align = int(align_s) if align_s else elem
        if align < 1 or align > MAX_ALIGN or align & (align - 1):
            raise ValueError(f"kernel {name}: parameter {_pname}: .align {align} is not a power of "
                             f"two in 1..{MAX_ALIGN}")
        if count < 1:
            raise ValueError(f"kernel {name}: parameter {_pname}: array of {count} elements")
        size = elem * count
        off = (off + align - 1) // align * align
        if off + size > MAX_PARAM_BYTES:
            raise ValueError(f"kernel {name}: parameters take over {MAX_PARAM_BYTES} bytes")
        slots.append(ParamSlot(off, size))
        off += size
    return slots


def looks_like_ptx(image: bytes) -> bool:
    head = image[:4096].lstrip()
    return head.startswith((b"//", b".version", b".target")) or b".version" in head[:2048]
