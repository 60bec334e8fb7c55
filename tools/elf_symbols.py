"""The functions a shared library exports: its ELF64 dynamic symbol table, read without binutils.

``exported_functions(path)`` lists the names of the defined global or weak ``STT_FUNC`` symbols
of ``.dynsym`` (version suffixes are not part of the names). Raises ``ValueError`` naming the
file for anything that is not a little-endian ELF64 object with a dynamic symbol table.
"""

from __future__ import annotations

import struct
from pathlib import Path

_STT_FUNC = 2
_STB_GLOBAL, _STB_WEAK = 1, 2
_SHT_DYNSYM = 11


def exported_functions(path: str | Path) -> list[str]:
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path}: not a little-endian ELF64 file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    for _name, kind, _fl, _addr, off, size, link, _info, _al, entsize in sections:
        if kind != _SHT_DYNSYM:
            continue
        stroff, strsize = sections[link][4], sections[link][5]
        strtab = data[stroff:stroff + strsize]
        names = []
        for i in range(1, size // entsize):
            st_name, st_info, _other, st_shndx = struct.unpack_from("<IBBH", data, off + i * entsize)
            if st_shndx == 0 or st_info & 0xF != _STT_FUNC or st_info >> 4 not in (_STB_GLOBAL, _STB_WEAK):
                continue
            end = strtab.index(b"\0", st_name)
            names.append(strtab[st_name:end].decode())
        return sorted(set(names))
    raise ValueError(f"{path}: no dynamic symbol table")


if __name__ == "__main__":
    import sys
    for n in exported_functions(sys.argv[1]):
        print(n)
