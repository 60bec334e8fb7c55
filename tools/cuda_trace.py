"""A tracing ``libcuda.so.1`` for a GPU host: which driver functions and export-table slots a
program really uses, measured under NVIDIA's own driver.

    python3 tools/cuda_trace.py build DIR [--real /path/to/libcuda.so.1]
    ORION_TRACE_REAL=/path/to/libcuda.so.1 ORION_TRACE_LOG=LOGDIR LD_LIBRARY_PATH=DIR prog ...
    python3 tools/cuda_trace.py summary LOGDIR

``build`` writes a C library that exports every function the real library exports, each a
trampoline to the real one that counts its calls; ``cuGetProcAddress``/``_v2`` hand out counting
trampolines too (and log each request: symbol, version, flags, the spelling it resolved to), and
``cuGetExportTable`` hands out a copy of each table whose slots are counting trampolines. Every
process writes ``LOGDIR/trace-<pid>.log`` at exit. Export-table slot calls are logged in
``LOGDIR/requests-<pid>.log`` with their arguments, result and the two words each pointer argument
points at before and after the call; ``ORION_TRACE_ARGS=cuModuleLoadData,cuFuncGetAttribute`` (or
``*``) logs driver functions' calls so too, ``ORION_TRACE_MAX`` calls of each (default 8).
Arguments are forwarded as 14 integer registers/stack words, which is exact for the driver API (no
floating-point or struct arguments by value). A measuring tool, not part of the product.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from elf_symbols import exported_functions  # noqa: E402

SLOTS = 8192
SPECIAL = ("cuGetProcAddress", "cuGetProcAddress_v2", "cuGetExportTable")

_HEAD = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
typedef uint64_t u;
#define ARGS u a0, u a1, u a2, u a3, u a4, u a5, u a6, u a7, u a8, u a9, u a10, u a11, u a12, u a13
#define PASS a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13
#define API __attribute__((visibility("default")))
typedef u (*fn_t)(ARGS);
struct ent { char name[192]; fn_t real; unsigned long calls; };
static struct ent E[NSLOTS];
static int nE = NEXPORTS;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static void *real_lib;
static FILE *req_log;
static void load(void)
{
    if (real_lib) return;
    pthread_mutex_lock(&mu);
    if (!real_lib) {
        const char *p = getenv("ORION_TRACE_REAL");
        void *h = dlopen(p ? p : "/usr/lib/x86_64-linux-gnu/libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
        if (!h) { fprintf(stderr, "cuda_trace: %s\n", dlerror()); abort(); }
        const char *d = getenv("ORION_TRACE_LOG");
        char path[512];
        snprintf(path, sizeof path, "%s/requests-%d.log", d ? d : "/tmp", (int)getpid());
        req_log = fopen(path, "w");
        real_lib = h;
    }
    pthread_mutex_unlock(&mu);
}
#include <sys/uio.h>
/* reads 8 bytes at p if they are readable (process_vm_readv fails with EFAULT otherwise) */
static int peek(u p, u *out)
{
    if (p < 4096 || (p & 7)) return 0;
    struct iovec local = {out, 8}, remote = {(void *)p, 8};
    return process_vm_readv(getpid(), &local, 1, &remote, 1, 0) == 8;
}
/* export-table slots: their arguments, result, and the first two words each pointer argument
   points at, before and after the call ("*before>after" per word, "-" where unreadable) */
static void words(u p, u w[2], int ok[2])
{
    for (int k = 0; k < 2; k++) ok[k] = peek(p + 8 * (u)k, &w[k]);
}
/* ORION_TRACE_ARGS: comma-separated driver function names (or "*") whose calls are logged like
   slots; ORION_TRACE_MAX: calls logged per function or slot (default 8) */
static signed char tr[NSLOTS];  /* 0 not yet known, 1 traced, -1 not */
static int traced(int i)
{
    if (tr[i]) return tr[i] > 0;
    const char *w = getenv("ORION_TRACE_ARGS");
    int yes = w && !strcmp(w, "*");
    size_t n = strlen(E[i].name);
    for (const char *p = w; w && !yes && n && (p = strstr(p, E[i].name)); p += n)
        yes = (p == w || p[-1] == ',') && (p[n] == ',' || !p[n]);
    tr[i] = yes ? 1 : -1;
    return yes;
}
static unsigned long trace_max(void)
{
    const char *m = getenv("ORION_TRACE_MAX");
    return m && *m ? strtoul(m, NULL, 10) : 8;
}
static void slot_log(int i, u r, const u *a, u before[4][2], int bok[4][2])
{
    if (!req_log || E[i].calls > trace_max()) return;
    char d[4][120];
    for (int k = 0; k < 4; k++) {
        u after[2];
        int aok[2];
        words(a[k], after, aok);
        d[k][0] = 0;
        if (!bok[k][0] && !aok[0]) continue;
        size_t n = 0;
        for (int j = 0; j < 2; j++) {
            char b[24] = "-", c[24] = "-";
            if (bok[k][j]) snprintf(b, sizeof b, "%llx", (unsigned long long)before[k][j]);
            if (aok[j]) snprintf(c, sizeof c, "%llx", (unsigned long long)after[j]);
            n += (size_t)snprintf(d[k] + n, sizeof d[k] - n, "%s%s>%s", j ? "," : "*", b, c);
            if (n >= sizeof d[k]) break;
        }
    }
    pthread_mutex_lock(&mu);
    fprintf(req_log, "%s\t%s\tret %llx\targs %llx%s %llx%s %llx%s %llx%s\n", E[i].name[0] == '{' ? "slot" : "call",
            E[i].name, (unsigned long long)r,
            (unsigned long long)a[0], d[0], (unsigned long long)a[1], d[1], (unsigned long long)a[2], d[2],
            (unsigned long long)a[3], d[3]);
    fflush(req_log);
    pthread_mutex_unlock(&mu);
}
static u fwd(int i, ARGS)
{
    __atomic_fetch_add(&E[i].calls, 1, __ATOMIC_RELAXED);
    u a[4] = {a0, a1, a2, a3}, before[4][2] = {{0}};
    int bok[4][2] = {{0}};
    int slot = E[i].name[0] == '{' || traced(i);
    if (slot)
        for (int k = 0; k < 4; k++) words(a[k], before[k], bok[k]);
    u r = E[i].real(PASS);
    if (slot) slot_log(i, r, a, before, bok);
    return r;
}
static fn_t T[NSLOTS];
static void *real_sym(int i, const char *name)
{
    if (!E[i].real) { load(); snprintf(E[i].name, sizeof E[i].name, "%s", name); E[i].real = (fn_t)dlsym(real_lib, name); }
    return (void *)E[i].real;
}
/* a counting trampoline for fn under name; the same fn gets the same trampoline */
static void *wrap(const char *name, void *fn)
{
    if (!fn) return fn;
    pthread_mutex_lock(&mu);
    for (int i = 0; i < nE; i++)
        if ((void *)E[i].real == fn && E[i].name[0]) { pthread_mutex_unlock(&mu); return (void *)T[i]; }
    if (nE >= NSLOTS) { pthread_mutex_unlock(&mu); return fn; }
    int i = nE++;
    snprintf(E[i].name, sizeof E[i].name, "%s", name);
    E[i].real = (fn_t)fn;
    pthread_mutex_unlock(&mu);
    return (void *)T[i];
}
API u cuGetProcAddress(const char *, void **, int, u);
API u cuGetProcAddress_v2(const char *, void **, int, u, int *);
API u cuGetExportTable(const void **, const unsigned char *);
static void *special(void *p)
{
    if (p && p == dlsym(real_lib, "cuGetProcAddress_v2")) return (void *)cuGetProcAddress_v2;
    if (p && p == dlsym(real_lib, "cuGetProcAddress")) return (void *)cuGetProcAddress;
    if (p && p == dlsym(real_lib, "cuGetExportTable")) return (void *)cuGetExportTable;
    return NULL;
}
static const char *spelling(void *p)
{
    Dl_info di;
    if (p && dladdr(p, &di) && di.dli_sname && di.dli_saddr == p) return di.dli_sname;
    return "?";
}
static void requested(const char *sym, int ver, u flags, u r, void **pfn)
{
    if (req_log) {
        pthread_mutex_lock(&mu);
        fprintf(req_log, "proc\t%s\t%d\t%llu\t%llu\t%s\n", sym, ver, (unsigned long long)flags,
                (unsigned long long)r, r == 0 && pfn && *pfn ? spelling(*pfn) : "-");
        fflush(req_log);
        pthread_mutex_unlock(&mu);
    }
}
API u cuGetProcAddress_v2(const char *sym, void **pfn, int ver, u flags, int *st)
{
    load();
    u (*f)(const char *, void **, int, u, int *) = (u (*)(const char *, void **, int, u, int *))dlsym(real_lib, "cuGetProcAddress_v2");
    u r = f(sym, pfn, ver, flags, st);
    requested(sym, ver, flags, r, pfn);
    if (r == 0 && pfn && *pfn) { void *s = special(*pfn); *pfn = s ? s : wrap(spelling(*pfn)[0] == '?' ? sym : spelling(*pfn), *pfn); }
    return r;
}
API u cuGetProcAddress(const char *sym, void **pfn, int ver, u flags)
{
    load();
    u (*f)(const char *, void **, int, u) = (u (*)(const char *, void **, int, u))dlsym(real_lib, "cuGetProcAddress");
    u r = f(sym, pfn, ver, flags);
    requested(sym, ver, flags, r, pfn);
    if (r == 0 && pfn && *pfn) { void *s = special(*pfn); *pfn = s ? s : wrap(spelling(*pfn)[0] == '?' ? sym : spelling(*pfn), *pfn); }
    return r;
}
struct table { unsigned char id[16]; void **copy; };
static struct table tables[64];
static int ntables;
API u cuGetExportTable(const void **pp, const unsigned char *id)
{
    load();
    u (*f)(const void **, const unsigned char *) = (u (*)(const void **, const unsigned char *))dlsym(real_lib, "cuGetExportTable");
    u r = f(pp, id);
    char g[40];
    for (int i = 0; i < 16; i++) sprintf(g + 2 * i, "%02x", id[i]);
    if (r != 0 || !pp || !*pp) { if (req_log) { fprintf(req_log, "table\t%s\tstatus %llu\n", g, (unsigned long long)r); fflush(req_log); } return r; }
    for (int i = 0; i < ntables; i++)
        if (!memcmp(tables[i].id, id, 16)) { *pp = tables[i].copy; return r; }
    void **t = (void **)*pp;
    size_t size = (size_t)t[0];
    if (req_log) { fprintf(req_log, "table\t%s\tslot0 %zu\n", g, size); fflush(req_log); }
    /* the integrity check hashes the addresses of its own table and of the cudart table: both
       must stay the driver's (their slots are not counted) */
    if (!strcmp(g, "d4082055bde6704b8d34ba123c66e1f2") || !strcmp(g, "6bd5fb6c5bf4e74a8987d93912fd9df9")) return r;
    if (size == 0 || size % 8 || size > 4096 || ntables == 64) return r;
    size_t n = size / 8;
    void **c = calloc(n, sizeof *c);
    c[0] = t[0];
    for (size_t i = 1; i < n; i++) { char nm[96]; snprintf(nm, sizeof nm, "{%s}[%zu]", g, i); c[i] = wrap(nm, t[i]); }
    memcpy(tables[ntables].id, id, 16);
    tables[ntables++].copy = c;
    *pp = c;
    return r;
}
__attribute__((destructor)) static void report(void)
{
    const char *d = getenv("ORION_TRACE_LOG");
    char path[512];
    snprintf(path, sizeof path, "%s/trace-%d.log", d ? d : "/tmp", (int)getpid());
    FILE *fp = fopen(path, "w");
    if (!fp) return;
    for (int i = 0; i < nE; i++)
        if (E[i].calls) fprintf(fp, "%lu\t%s\n", E[i].calls, E[i].name);
    fclose(fp);
}
"""


def c_source(exports: list[str]) -> str:
    gen = [e for e in exports if e not in SPECIAL]
    out = [f"#define NSLOTS {SLOTS}\n#define NEXPORTS {len(gen)}", _HEAD]
    out += [f"static u t{i}(ARGS) {{ return fwd({i}, PASS); }}" for i in range(SLOTS)]
    out.append("__attribute__((constructor)) static void init_slots(void) {")
    out += [f"    T[{i}] = t{i};" for i in range(SLOTS)]
    out.append("}")
    for i, e in enumerate(gen):
        out.append(f"API u {e}(ARGS);\nAPI u {e}(ARGS) {{ real_sym({i}, \"{e}\"); return fwd({i}, PASS); }}")
    return "\n".join(out) + "\n"


def real_driver() -> str:
    ctypes.CDLL("libcuda.so.1")
    for line in Path("/proc/self/maps").read_text().splitlines():
        if "libcuda.so" in line:
            return os.path.realpath(line.split()[-1])
    raise SystemExit("libcuda.so.1 not found")


def build(out: Path, real: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    src = out / "cuda_trace.c"
    src.write_text(c_source(exported_functions(real)))
    subprocess.run(["gcc", "-O1", "-shared", "-fPIC", "-fvisibility=hidden", "-Wl,-soname,libcuda.so.1",
                    str(src), "-o", str(out / "libcuda.so.1"), "-ldl", "-pthread"], check=True)
    (out / "libcuda.so").unlink(missing_ok=True)
    (out / "libcuda.so").symlink_to("libcuda.so.1")
    print(f"export ORION_TRACE_REAL={real} LD_LIBRARY_PATH={out}")


def summary(logdir: Path) -> str:
    calls: Counter[str] = Counter()
    for f in logdir.glob("trace-*.log"):
        for line in f.read_text().splitlines():
            n, name = line.split("\t", 1)
            calls[name] += int(n)
    tables = sorted({ln for f in logdir.glob("requests-*.log") for ln in f.read_text().splitlines()
                     if ln.startswith("table")})
    lines = [f"{n}\t{name}" for name, n in sorted(calls.items())] + tables
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("dir", type=Path)
    b.add_argument("--real")
    s = sub.add_parser("summary")
    s.add_argument("dir", type=Path)
    a = ap.parse_args()
    if a.cmd == "build":
        build(a.dir, a.real or real_driver())
    else:
        sys.stdout.write(summary(a.dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
