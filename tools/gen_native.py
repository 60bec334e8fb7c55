"""Generate the native client's marshalling (orion_virt/client/native/calls_gen.[ch]) from the call spec.

    python tools/gen_native.py          rewrite the generated files
    python tools/gen_native.py --check  exit 1 and show a diff when one is stale (a test runs this)

For every call of ``orion_virt/wire/spec.py`` (layouts from ``orion_virt/wire/calls.py``):

* ``orion_wire_<call>``: packs the request fields little-endian exactly as the wire layout says,
  sends them with the request blob through ``orion_call`` (orion_client.c) and, for a call that
  waits, unpacks the reply fields into the ``out`` arguments (the reply itself — kind, code, seq,
  length, blob length — is checked by ``orion_call``); NO_REPLY calls return once sent;
* one exported function per name and spelling, with the signature ``cuda.h`` declares for it
  (the build includes cuda.h with ``__CUDA_API_VERSION_INTERNAL``, so a definition that does not
  match its declaration does not compile). A legacy name whose ``_v2`` spelling widened its sizes
  and device pointers (``cuMemAlloc`` beside ``cuMemAlloc_v2``) gets the 32-bit signature and
  converts; the calls in ``C_CUSTOM`` are exported to hand-written ``orion_custom_<call>``;
* the CUresult name and message tables for cuGetErrorName/cuGetErrorString, and the client's
  strings (banner, exit lines) and limits, from the Python package that owns them.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from regen import regenerate  # noqa: E402  (tools/, the directory of this script)

from orion_virt import __version__, compat  # noqa: E402
from orion_virt.client.select import VM_NOT_SERVED  # noqa: E402
from orion_virt.cuda_enums import CUresult  # noqa: E402
from orion_virt.cuda_messages import MESSAGES  # noqa: E402
from orion_virt.wire import calls as wire_calls  # noqa: E402
from orion_virt.wire import frames  # noqa: E402
from orion_virt.wire import spec as S  # noqa: E402
from orion_virt.wire.calls import SPECS, CallSpec, WireField  # noqa: E402
from orion_virt.wire.routes import ROUTES  # noqa: E402

OUT_C = ROOT / "orion_virt/client/native/calls_gen.c"
OUT_H = ROOT / "orion_virt/client/native/calls_gen.h"
OUT_P = ROOT / "orion_virt/client/native/procaddr_gen.c"
PROCADDR_DIR = ROOT / "orion_virt/client/native/procaddr"

HAND_EXPORTS = (
    "cuCtxCreate_v4", "cuCtxGetCurrent", "cuGetErrorName", "cuGetErrorString",
    "cuGetProcAddress", "cuGetProcAddress_v2", "cuGetExportTable", "cuPointerGetAttribute",
    "cuOccupancyMaxActiveClusters", "cuCtxGetId",
    "cuModuleGetLoadingMode", "cuCtxPushCurrent_v2", "cuCtxPopCurrent_v2", "cuCtxGetDevice",
    "cuCtxGetDevice_v2", "cuDevicePrimaryCtxGetState", "cuCtxSynchronize_v2",
    "cuLibraryLoadData", "cuLibraryUnload", "cuLibraryGetKernel", "cuLibraryGetModule", "cuKernelGetFunction",
    "cuModuleLoadDataEx", "cuLaunchKernelEx", "cuStreamIsCapturing", "cuStreamIsCapturing_ptsz",
    "cuStreamGetCaptureInfo_v2", "cuStreamGetCaptureInfo_v3", "cuThreadExchangeStreamCaptureMode",
    "cuEventRecordWithFlags", "cuEventRecordWithFlags_ptsz", "cuLibraryGetGlobal", "cuKernelGetAttribute",
    "cuKernelSetAttribute", "cuOccupancyMaxActiveBlocksPerMultiprocessor", "cuCtxGetApiVersion",
    "cuPointerGetAttributes", "cuMemHostAlloc", "cuMemAllocHost_v2", "cuMemAllocHost", "cuMemFreeHost",
    "cuMemHostGetFlags", "cuDeviceGetDefaultMemPool", "cuDeviceGetMemPool", "cuMemAllocAsync",
    "cuMemAllocAsync_ptsz", "cuMemAllocFromPoolAsync", "cuMemAllocFromPoolAsync_ptsz", "cuMemFreeAsync",
    "cuMemFreeAsync_ptsz", "cuMemPoolSetAttribute", "cuMemPoolGetAttribute", "cuMemPoolTrimTo",
    "cuGraphGetNodes", "cuMemHostGetDevicePointer", "cuMemHostGetDevicePointer_v2",
    "cuMemcpy", "cuMemcpy_ptds", "cuMemcpyAsync", "cuMemcpyAsync_ptsz",
    "cuLaunchKernelEx_ptsz", "cuLaunchCooperativeKernel", "cuLaunchCooperativeKernel_ptsz",
    "cuMemHostRegister", "cuMemHostRegister_v2", "cuMemHostUnregister",
)
"""Exported by hand-written code (orion_client.c, orion_export.c, orion_memcpy.c): answered in the client or
mapped onto remoted calls. A test checks the built library exports exactly these, the spec's
names and spellings, and a stub for every other function of the driver."""

C_CUSTOM = ("cuInit", "cuDriverGetVersion", "cuCtxCreate", "cuCtxDestroy", "cuCtxSetCurrent",
            "cuDevicePrimaryCtxRetain", "cuDevicePrimaryCtxRelease", "cuModuleGetGlobal", "cuMemFree",
            "cuModuleLoadData", "cuModuleGetFunction", "cuLaunchKernel", "cuMemcpyHtoD", "cuMemcpyDtoH",
            "cuMemcpyHtoDAsync", "cuMemcpyDtoHAsync")
"""Exported to hand-written code in orion_client.c (connect, client-side state, image lengths,
kernel parameter packing, copies from host memory shared with oriond); their wire marshalling is
still generated here."""

HANDLE_TYPES = {"CUcontext", "CUstream", "CUevent", "CUmodule", "CUfunction", "CUgraph", "CUgraphExec"}
V1_TYPES = {"size_t": "unsigned int", "CUdeviceptr": "CUdeviceptr_v1"}
"""What the legacy (pre-_v2) spellings took instead."""

BANNER = "/* Generated by tools/gen_native.py from orion_virt/wire/spec.py. Do not edit. */\n"

PUT = {"B": "orion_put_u8", "I": "orion_put_u32", "i": "orion_put_i32", "Q": "orion_put_u64", "f": "orion_put_f32"}
GET = {"B": "orion_get_u8", "I": "orion_get_u32", "i": "orion_get_i32", "Q": "orion_get_u64", "f": "orion_get_f32"}
CAST = {"B": "uint8_t", "I": "uint32_t", "i": "int32_t", "Q": "uint64_t", "f": "float"}


def _c_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _decl(ctype: str, name: str) -> str:
    return f"{ctype}{'' if ctype.endswith('*') else ' '}{name}"


def _pointee(ctype: str) -> str:
    return ctype.removesuffix("*").strip()


def wire_params(fn: S.Fn) -> list[tuple[str, str]]:
    """(C type, name) of orion_wire_<call>'s parameters: the C arguments, with the buffers whose
    length the wire carries as a separate length (and, for a reply buffer, capacity) argument."""
    out: list[tuple[str, str]] = []
    for a in fn.args:
        if a.role is S.Role.NULL:
            continue
        if a.role is S.Role.HOST_IN and not a.length:
            out += [("const void *", a.name), ("uint32_t", f"{a.name}_len")]
        elif a.role is S.Role.HOST_OUT and not a.length:
            out += [("void *", a.name), ("uint64_t", f"{a.name}_cap"), ("uint64_t *", f"{a.name}_len")]
        else:
            out.append((a.ctype, a.name))
    return out


def c_params(fn: S.Fn, legacy: bool = False) -> list[tuple[str, str]]:
    """(C type, name) of the function as cuda.h declares it."""
    out = []
    for a in fn.args:
        if a.wire_only:
            continue
        t = a.ctype
        if legacy:
            base = _pointee(t)
            if base in V1_TYPES:
                t = V1_TYPES[base] + (" *" if t.endswith("*") else "")
        out.append((t, a.name))
    return out


def _plist(params: list[tuple[str, str]]) -> str:
    return ", ".join(_decl(t, n) for t, n in params) or "void"


def _offsets(fields: tuple[WireField, ...]) -> list[int]:
    offs, fmt = [], "<"
    for f in fields:
        offs.append(struct.calcsize(fmt))
        fmt += f.fmt
    return offs


def _value_expr(f: WireField) -> str:
    if f.arg is None:
        return f.name
    base = _pointee(f.arg.ctype) if f.arg.dir is not S.Dir.IN else f.arg.ctype
    if base == "CUfunction" and f.arg.dir is S.Dir.IN:  # a CUkernel stands for its function
        return f"(uint64_t)(uintptr_t)orion_function({f.name})"
    if base in HANDLE_TYPES:
        return f"(uint64_t)(uintptr_t){f.name}"
    return f"({CAST[f.fmt]}){f.name}"


def _chunked_by(fn: S.Fn) -> str:
    """The size argument of a copy whose bytes travel in the message (so at most a body's 4 GiB
    per message): the generated code splits a larger copy. "" for any other call."""
    bufs = [a for a in fn.args if a.role in (S.Role.HOST_IN, S.Role.HOST_OUT) and a.length]
    if len(bufs) != 1:
        return ""
    size = bufs[0].length
    dptrs = [a for a in fn.args if a.role is S.Role.DPTR]
    return size if dptrs and all(a.extent == size and a.scale == 1 for a in dptrs) else ""


def _chunk_loop(fn: S.Fn, size: str) -> list[str]:
    call = []
    for a in fn.args:
        if a.role is S.Role.NULL or a.wire_only:
            continue
        if a.name == size:
            call.append("k")
        elif a.role is S.Role.DPTR:
            call.append(f"{a.name} + off")
        elif a.role is S.Role.HOST_IN:
            call.append(f"(const char *){a.name} + off")
        elif a.role is S.Role.HOST_OUT:
            call.append(f"(char *){a.name} + off")
        else:
            call.append(a.name)
    return [f"    if ({size} > orion_copy_chunk()) {{  /* a message body is at most 4 GiB: copy in pieces */",
            f"        if (!{next(a.name for a in fn.args if a.role in (S.Role.HOST_IN, S.Role.HOST_OUT))}) "
            "return CUDA_ERROR_INVALID_VALUE;",
            f"        for (size_t off = 0; off < {size};) {{",
            f"            size_t k = {size} - off < orion_copy_chunk() ? {size} - off : orion_copy_chunk();",
            f"            CUresult st = orion_wire_{fn.name}({', '.join(call)});",
            "            if (st != CUDA_SUCCESS) return st;",
            "            off += k;",
            "        }",
            "        return CUDA_SUCCESS;",
            "    }"]


def gen_wire_fn(cs: CallSpec) -> list[str]:
    fn = cs.fn
    args = {a.name: a for a in fn.args}
    L = [f"/* {fn.name}: call {fn.code}{', NO_REPLY' if cs.async_ else ''}{', sync' if cs.synchronizing else ''}. */",
         f"CUresult orion_wire_{fn.name}({_plist(wire_params(fn))})", "{"]
    if _chunked_by(fn):
        L += _chunk_loop(fn, _chunked_by(fn))
    # argument checks the driver makes before anything is sent
    for a in fn.args:
        if a.dir is S.Dir.OUT and a.role not in (S.Role.HOST_OUT,):
            L.append(f"    if (!{a.name}) return CUDA_ERROR_INVALID_VALUE;")
        elif a.role is S.Role.HOST_IN:
            n = a.length or f"{a.name}_len"
            L.append(f"    if ({n} && !{a.name}) return CUDA_ERROR_INVALID_VALUE;")
            if not a.length:
                L.append(f"    if ({n} > {cs.max_req_blob}u) return CUDA_ERROR_INVALID_VALUE;")
        elif a.role is S.Role.HOST_OUT:
            cap = _cap_expr(a, args)
            L.append(f"    if ({cap} && !{a.name}) return CUDA_ERROR_INVALID_VALUE;")
    req_size, resp_size = cs.req.size, cs.resp.size
    L.append(f"    unsigned char req[{max(1, req_size)}];")
    for off, f in zip(_offsets(cs.req_fields), cs.req_fields, strict=True):
        if f.fmt == "16s":
            L.append(f"    memcpy(req + {off}, {f.name}.bytes, 16);")
        else:
            L.append(f"    {PUT[f.fmt]}(req + {off}, {_value_expr(f)});")
    if resp_size:
        L.append(f"    unsigned char resp[{resp_size}];")
    blob, blob_len = "NULL", "0"
    for a in fn.args:
        if a.role is S.Role.HOST_IN:
            blob, blob_len = a.name, f"(uint64_t){a.length or a.name + '_len'}"
    out, cap, blob_off = "NULL", "0", -1
    host_out = next((a for a in fn.args if a.role is S.Role.HOST_OUT), None)
    if host_out is not None:
        out, cap = host_out.name, _cap_expr(host_out, args)
        blob_off = _offsets(cs.resp_fields)[cs.resp_names.index(cs.resp_blob)]
    flags = "ORION_NO_REPLY" if cs.async_ else "0"
    L.append(f"    orion_msg m = {{{fn.code}, {flags}, {_c_string(fn.name)}, req, {req_size}, {blob}, {blob_len}, "
             f"{'resp' if resp_size else 'NULL'}, {resp_size}, {blob_off}, {out}, {cap}, 0}};")
    L.append("    CUresult st = orion_call(&m);")
    if cs.async_ or not cs.resp_fields:
        L += ["    return st;", "}", ""]
        return L
    L.append("    if (st != CUDA_SUCCESS) return st;")
    for off, f in zip(_offsets(cs.resp_fields), cs.resp_fields, strict=True):
        if f.arg is None:
            continue
        base = _pointee(f.arg.ctype)
        if f.fmt == "16s":
            L.append(f"    memcpy({f.name}->bytes, resp + {off}, 16);")
        elif base in HANDLE_TYPES:
            L.append(f"    *{f.name} = ({base})(uintptr_t){GET[f.fmt]}(resp + {off});")
        else:
            L.append(f"    *{f.name} = ({base}){GET[f.fmt]}(resp + {off});")
    if host_out is not None:
        if host_out.ctype == "char *":
            L.append(f"    if ({cap}) {host_out.name}[m.out_len < {cap} ? m.out_len : {cap} - 1] = '\\0';  "
                     "/* a C string, whatever the reply */")
        if not host_out.length:
            L.append(f"    if ({host_out.name}_len) *{host_out.name}_len = m.out_len;")
    L += ["    return CUDA_SUCCESS;", "}", ""]
    return L


def _cap_expr(a: S.Arg, args: dict[str, S.Arg]) -> str:
    if not a.length:
        return f"{a.name}_cap"
    ln = args[a.length]
    if ln.ctype == "int":
        return f"({a.length} > 0 ? (uint64_t){a.length} : 0u)"
    return f"(uint64_t){a.length}"


def _needs_v1(fn: S.Fn) -> bool:
    return f"{fn.name}_v2" in fn.spellings and c_params(fn, legacy=True) != c_params(fn)


C_WIRE_ONLY = ("cuGraphGetNodeCount", *(cs.fn.name for cs in SPECS.values() if cs.fn.name.startswith("orion")))
"""Spec calls that are no driver function (the orion* calls, and those whose export is written by
hand under another name): only their orion_wire_ marshalling is generated."""


def gen_exports(cs: CallSpec) -> list[str]:
    fn = cs.fn
    if fn.name in C_WIRE_ONLY:
        return []
    if fn.name in HAND_EXPORTS:  # its C signature is not its wire's (void *data): written by hand
        return []
    custom = fn.name in C_CUSTOM
    target = f"orion_custom_{fn.name}" if custom else f"orion_wire_{fn.name}"
    if not custom and c_params(fn) != wire_params(fn):
        raise SystemExit(f"{fn.name}: its wire parameters differ from its C arguments; add it to C_CUSTOM")
    L: list[str] = []
    call_args = ", ".join(n for _, n in c_params(fn))
    for name in (fn.name, *fn.spellings):
        if name == fn.name and _needs_v1(fn):
            L += gen_v1(fn, target)
            continue
        L += [f"ORION_API CUresult {name}({_plist(c_params(fn))})", "{",
              f"    return {target}({call_args});", "}", ""]
    return L


def gen_v1(fn: S.Fn, target: str) -> list[str]:
    """The legacy spelling: 32-bit sizes and device pointers, widened on the way in; values that
    come back are narrowed (sizes saturate; a device pointer that does not fit is freed and the
    call fails with CUDA_ERROR_OUT_OF_MEMORY, as the 32-bit API could not address it)."""
    L = [f"/* {fn.name}: the legacy 32-bit signature of {fn.name}_v2. */",
         f"ORION_API CUresult {fn.name}({_plist(c_params(fn, legacy=True))})", "{"]
    call: list[str] = []
    narrow: list[str] = []
    for a in fn.args:
        base = _pointee(a.ctype)
        if a.dir is S.Dir.OUT and a.role is not S.Role.HOST_OUT and base in V1_TYPES:
            L.append(f"    if (!{a.name}) return CUDA_ERROR_INVALID_VALUE;")
            L.append(f"    {base} wide_{a.name} = 0;")
            call.append(f"&wide_{a.name}")
            if a.role is S.Role.DPTR:
                narrow += [f"    if (wide_{a.name} > 0xFFFFFFFFu) {{",
                           f"        (void)orion_wire_cuMemFree(wide_{a.name});",
                           "        return CUDA_ERROR_OUT_OF_MEMORY;", "    }",
                           f"    *{a.name} = ({V1_TYPES[base]})wide_{a.name};"]
            else:
                narrow.append(f"    *{a.name} = wide_{a.name} > 0xFFFFFFFFu ? 0xFFFFFFFFu : "
                              f"({V1_TYPES[base]})wide_{a.name};")
        else:
            call.append(a.name)
    L.append(f"    CUresult st = {target}({', '.join(call)});")
    if narrow:
        L.append("    if (st != CUDA_SUCCESS) return st;")
        L += narrow
        L.append("    return CUDA_SUCCESS;")
    else:
        L.append("    return st;")
    L += ["}", ""]
    return L


def _messages() -> dict[int, str]:
    return {int(k): v for k, v in MESSAGES.items()}


def gen_errors() -> list[str]:
    msgs = _messages()
    L = ["const char *orion_error_name(CUresult r)", "{", "    switch ((int)r) {"]
    for r in CUresult:
        L.append(f"    case {int(r)}: return {_c_string(r.name)};")
    L += ["    default: return NULL;", "    }", "}", "",
          "const char *orion_error_string(CUresult r)", "{", "    switch ((int)r) {"]
    for r in CUresult:
        text = msgs.get(int(r), r.name.removeprefix("CUDA_ERROR_").replace("_", " ").lower())
        L.append(f"    case {int(r)}: return {_c_string(text)};")
    L += ["    default: return NULL;", "    }", "}", ""]
    return L


MERGES = {"": 0, "first": 1, "min": 2, "sum": 3, "or": 4}


def gen_routes() -> list[str]:
    """The cross-node routing table (wire/routes.py) as byte offsets into each call's packed
    request; -1: no such field. Codes are dense from 1, so the table is indexed by code."""
    top = max(SPECS)
    L = ["/* --- cross-node routes (orion_virt/wire/routes.py), indexed by code --------------------- */", "",
         f"const orion_route orion_routes[{top + 1}] = {{"]
    for code in range(top + 1):
        sp = SPECS.get(code)
        if sp is None:
            L.append("    {-1, -1, {-1, -1, -1}, 0, 0, 0},")
            continue
        r = ROUTES[code]
        offs = _offsets(sp.req_fields)
        same = [offs[i] for i in r.same]
        if len(same) > 3:
            raise ValueError(f"{sp.fn.name}: more than 3 further handles")
        same += [-1] * (3 - len(same))
        dev = offs[r.device] if r.device is not None else -1
        own = offs[r.owner] if r.owner is not None else -1
        L.append(f"    {{{dev}, {own}, {{{same[0]}, {same[1]}, {same[2]}}}, {int(r.reply_handle)}, "
                 f"{int(r.context_call)}, {MERGES[r.merge]}}},  /* {sp.fn.name} */")
    L += ["};", ""]
    return L


def gen_c() -> str:
    L = [BANNER, "#include \"orion_client.h\"", "#include \"calls_gen.h\"", "",
         "/* --- wire marshalling, one per call ---------------------------------------------- */", ""]
    for code in sorted(SPECS):
        L += gen_wire_fn(SPECS[code])
    L += ["/* --- exported API: every name and spelling ----------------------------------------- */", ""]
    for code in sorted(SPECS):
        L += gen_exports(SPECS[code])
    L += gen_routes()
    L += ["/* --- CUresult names and messages ----------------------------------------------------- */", ""]
    L += gen_errors()
    return "\n".join(L).rstrip("\n") + "\n"


def gen_h() -> str:
    L = [BANNER, "#ifndef ORION_CALLS_GEN_H", "#define ORION_CALLS_GEN_H", "", "#include \"orion_client.h\"", "",
         f"#define ORION_VERSION_STRING {_c_string(__version__)}",
         f"#define ORION_BANNER {_c_string(compat.BANNER_PREFIX + 'orion_virt-' + __version__)}",
         f"#define ORION_MSG_EXIT_WITH {_c_string(compat.MSG_EXIT_WITH.replace('{allocation_id}', '%s'))}",
         f"#define ORION_MSG_NO_ALLOCATION {_c_string(compat.MSG_NO_ALLOCATION)}",
         f"#define ORION_MSG_VM_NOT_SERVED {_c_string(VM_NOT_SERVED)}",
         f"#define ORION_HELLO_MAGIC 0x{frames.HELLO_MAGIC:08X}u",
         f"#define ORION_PROTO_MAJOR {frames.PROTO_MAJOR}",
         f"#define ORION_PROTO_MINOR {frames.PROTO_MINOR}",
         f"#define ORION_MAX_CONTROL_BODY {frames.MAX_CONTROL_BODY}u",
         f"#define ORION_MAX_NAME {S.MAX_NAME}u",
         f"#define ORION_MAX_IMAGE {S.MAX_IMAGE}u",
         f"#define ORION_MAX_PARAMS {S.MAX_PARAMS}u",
         f"#define ORION_MAX_COPY {wire_calls.MAX_COPY}ull",
         f"#define ORION_CALL_COUNT {len(SPECS)}",
         "", "/* Wire codes. */"]
    L += [f"#define ORION_CODE_{SPECS[c].fn.name} {c}" for c in sorted(SPECS)]
    L += ["", "/* Generated wire marshalling (calls_gen.c). */"]
    for code in sorted(SPECS):
        fn = SPECS[code].fn
        L.append(f"CUresult orion_wire_{fn.name}({_plist(wire_params(fn))});")
    L += ["", "/* Hand-written in orion_client.c: what the exported functions of these calls do. */"]
    for code in sorted(SPECS):
        fn = SPECS[code].fn
        if fn.name in C_CUSTOM:
            L.append(f"CUresult orion_custom_{fn.name}({_plist(c_params(fn))});")
    L += ["", "/* How a call is routed across the servers of a cross-node session: byte offsets into its",
          " * packed request (-1: none) of the device ordinal, the owning handle and further handles of",
          " * the same server; whether the reply's first value is a new handle; whether the owner is a",
          " * context; the broadcast merge (ORION_MERGE_*). */",
          "enum { ORION_MERGE_NONE, ORION_MERGE_FIRST, ORION_MERGE_MIN, ORION_MERGE_SUM, ORION_MERGE_OR };",
          "typedef struct { int16_t dev, owner, same[3]; uint8_t reply_handle, context_call, merge; } orion_route;",
          f"#define ORION_ROUTE_COUNT {max(SPECS) + 1}",
          "extern const orion_route orion_routes[ORION_ROUTE_COUNT];",
          "", "const char *orion_error_name(CUresult r);", "const char *orion_error_string(CUresult r);", "",
          "#endif"]
    return "\n".join(L) + "\n"


def procaddr_data() -> Path:
    """The newest driver table in PROCADDR_DIR (tools/gen_procaddr.py made it on a GPU host)."""
    files = sorted(PROCADDR_DIR.glob("driver-*.tsv"), key=lambda p: int(p.stem.split("-")[1]))
    if not files:
        raise SystemExit(f"no driver-*.tsv in {PROCADDR_DIR}: run tools/gen_procaddr.py on a GPU host")
    return files[-1]


def implemented() -> list[str]:
    names = [n for cs in SPECS.values() for n in (cs.fn.name, *cs.fn.spellings) if n not in C_WIRE_ONLY]
    return sorted(set(names) | set(HAND_EXPORTS))


def gen_procaddr() -> str:
    """Stubs for every driver function the client does not implement, and the cuGetProcAddress
    table: for a name and flags, from which CUDA version on which spelling answers."""
    data = procaddr_data()
    exports: set[str] = set()
    procs: list[tuple[str, int, int, str]] = []
    for line in data.read_text().splitlines():
        f = line.split("\t")
        if f[0] == "export" and f[1].startswith("cu"):
            exports.add(f[1])
        elif f[0] == "proc":
            procs.append((f[1], int(f[2]), int(f[3]), f[4]))
    exports |= {p[3] for p in procs if p[3] not in ("-", "?")}
    impl = implemented()
    stubs = sorted(exports - set(impl))
    every = sorted(exports | set(impl))
    index = {n: i for i, n in enumerate(every)}
    L = [BANNER.replace("orion_virt/wire/spec.py", f"orion_virt/wire/spec.py and procaddr/{data.name}"),
         "/* No cuda.h here: every function is declared as returning int (CUresult) and its address",
         "   only is taken, or, for a stub, its arguments are ignored (the SysV ABI allows both). */",
         "#include <stddef.h>", "#include <string.h>", "#include \"orion_procaddr.h\"", ""]
    L.append(f"const char *const orion_stub_names[{len(stubs)}] = {{")
    L += [f"    {_c_string(n)}," for n in stubs]
    L += ["};", ""]
    for n in every:
        if n in stubs:
            L.append(f"ORION_API int {n}(void);")
            L.append(f"ORION_API int {n}(void) {{ return orion_unsupported({stubs.index(n)}); }}")
        else:
            L.append(f"extern int {n}(void);")
    L += ["", f"const orion_export orion_exports[{len(every)}] = {{"]
    L += [f"    {{{_c_string(n)}, (void *){n}}}," for n in every]
    L += ["};", ""]
    L.append(f"const orion_proc orion_procs[{len(procs)}] = {{")
    for name, fl, ver, sp in sorted(procs):
        L.append(f"    {{{_c_string(name)}, {fl}, {ver}, {index.get(sp, -1)}}},")
    L += ["};", "", f"const int orion_driver_version = {int(data.stem.split('-')[1])};",
          f"const size_t orion_nprocs = {len(procs)};", f"const size_t orion_nexports = {len(every)};",
          f"const size_t orion_nstubs = {len(stubs)};", ""]
    return "\n".join(L)


def targets() -> list[tuple[Path, str]]:
    return [(OUT_H, gen_h()), (OUT_C, gen_c()), (OUT_P, gen_procaddr())]


def main(argv: list[str] | None = None) -> int:
    return regenerate(__doc__ or "", ROOT, [(p, lambda t=t: t) for p, t in targets()], argv)


if __name__ == "__main__":
    sys.exit(main())
