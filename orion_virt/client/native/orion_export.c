/* How NVIDIA's own libraries find the driver's functions: cuGetProcAddress (from the driver's
 * table, data in procaddr/, generated into procaddr_gen.c), cuGetExportTable (the undocumented
 * tables that libcudart and the math libraries ask for, implemented here) and the stubs for every
 * function outside the call spec.
 *
 * Facts about the tables (their GUIDs, sizes, which slots NVIDIA's libraries call) were measured
 * with tools/cuda_trace.py under the real driver; what a slot does follows the public write-ups
 * (ZLUDA's dark_api). A table or slot not implemented here is refused with a log line naming it.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "calls_gen.h"
#include "orion_client.h"
#include "orion_procaddr.h"

/* ---- stubs ---------------------------------------------------------------------------------- */

static atomic_uchar stub_said[1024];

int orion_unsupported(size_t stub)
{
    if (stub < sizeof stub_said && !atomic_exchange(&stub_said[stub], 1))
        orion_log("WARN", "%s is not supported by the orion_virt client: CUDA_ERROR_NOT_SUPPORTED",
                  orion_stub_names[stub]);
    return CUDA_ERROR_NOT_SUPPORTED;
}

/* ---- cuGetProcAddress ----------------------------------------------------------------------- */

static int proc_cmp(const char *name, const orion_proc *p) { return strcmp(name, p->name); }

static CUresult procaddr(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                         CUdriverProcAddressQueryResult *status)
{
    CUdriverProcAddressQueryResult st = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    if (!symbol || !pfn) return CUDA_ERROR_INVALID_VALUE;
    *pfn = NULL;
    unsigned char want = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) ? 2
                       : (flags & CU_GET_PROC_ADDRESS_LEGACY_STREAM) ? 1 : 0;
    size_t lo = 0, hi = orion_nprocs;
    while (lo < hi) {  /* first row of the name */
        size_t mid = (lo + hi) / 2;
        if (proc_cmp(symbol, &orion_procs[mid]) > 0) lo = mid + 1;
        else hi = mid;
    }
    int target = -1, known = 0;
    for (size_t i = lo; i < orion_nprocs && !strcmp(orion_procs[i].name, symbol); i++) {
        if (orion_procs[i].flags != want) continue;
        known = 1;
        if (orion_procs[i].minver <= cudaVersion) target = orion_procs[i].target;
    }
    if (known) st = target >= 0 ? CU_GET_PROC_ADDRESS_SUCCESS : CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT;
    if (status) *status = st;
    if (target < 0) return CUDA_ERROR_NOT_FOUND;
    *pfn = orion_exports[target].fn;
    return CUDA_SUCCESS;
}

ORION_API CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                                       CUdriverProcAddressQueryResult *symbolStatus)
{
    return procaddr(symbol, pfn, cudaVersion, flags, symbolStatus);
}

ORION_API CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags)
{
    return procaddr(symbol, pfn, cudaVersion, flags, NULL);
}

/* ---- export tables -------------------------------------------------------------------------- */

typedef struct {
    const char *name;
    unsigned char id[16];
    void **slots;
} export_table;

/* Said once per table and slot (16 tables of up to 128 slots). */
static void slot_refused(const char *table, int slot)
{
    static atomic_uint said[16][4];
    static const char *names[16];
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&mu);
    int k = 0;
    while (k < 16 && names[k] && names[k] != table) k++;
    if (k < 16 && !names[k]) names[k] = table;
    pthread_mutex_unlock(&mu);
    unsigned bit = 1u << (slot & 31);
    if (k < 16 && slot >= 0 && slot < 128 && !(atomic_fetch_or(&said[k][slot >> 5], bit) & bit))
        orion_log("WARN", "export table %s: slot %d is not supported by the orion_virt client", table, slot);
}

#define SLOT(table, n) static CUresult table##_##n(void) { slot_refused(#table, n); return CUDA_ERROR_NOT_SUPPORTED; }

/* CUDART_INTERFACE {6bd5fb6c-...}: module loading for libcudart's registered fat binaries, the
 * primary context, and compiler loading. */
static CUresult cudart_module_from_fatbinc(CUmodule *module, const void *wrapper)
{
    if (!module || !wrapper) return CUDA_ERROR_INVALID_VALUE;
    return cuModuleLoadData(module, wrapper);
}

static CUresult cudart_primary_ctx(CUcontext *pctx, CUdevice dev)
{
    if (!pctx) return CUDA_ERROR_INVALID_VALUE;
    return cuDevicePrimaryCtxRetain(pctx, dev);
}

static CUresult cudart_module_ext1(CUmodule *module, const void *wrapper, void *a3, void *a4, unsigned a5)
{
    if (a3 || a4 || a5) { slot_refused("CUDART_INTERFACE", 6); return CUDA_ERROR_NOT_SUPPORTED; }
    return cudart_module_from_fatbinc(module, wrapper);
}

static void cudart_fn7(size_t arg) { (void)arg; }

static CUresult cudart_module_ext2(const void *fatbin, CUmodule *module, void *a3, void *a4, unsigned a5)
{
    if (a3 || a4 || a5) { slot_refused("CUDART_INTERFACE", 8); return CUDA_ERROR_NOT_SUPPORTED; }
    return cudart_module_from_fatbinc(module, fatbin);
}

static CUresult cudart_load_compilers(void) { return CUDA_SUCCESS; }

SLOT(CUDART_INTERFACE, 3) SLOT(CUDART_INTERFACE, 4) SLOT(CUDART_INTERFACE, 5) SLOT(CUDART_INTERFACE, 9)
SLOT(CUDART_INTERFACE, 10) SLOT(CUDART_INTERFACE, 11)

static void *cudart_interface[13] = {
    (void *)(13 * sizeof(void *)), (void *)cudart_module_from_fatbinc, (void *)cudart_primary_ctx,
    (void *)CUDART_INTERFACE_3, (void *)CUDART_INTERFACE_4, (void *)CUDART_INTERFACE_5,
    (void *)cudart_module_ext1, (void *)cudart_fn7, (void *)cudart_module_ext2, (void *)CUDART_INTERFACE_9,
    (void *)CUDART_INTERFACE_10, (void *)CUDART_INTERFACE_11, (void *)cudart_load_compilers,
};

/* TOOLS_RUNTIME_CALLBACK_HOOKS {a094798c-...}: two buffers the runtime keeps its tool callback
 * state in (no tools are attached here, so they stay zero). */
static uint32_t hooks_buffer1[1024], hooks_buffer2[14];
static void hooks_get1(void **p, size_t *n) { *p = hooks_buffer1; *n = 1024; }
static void hooks_get2(void **p, size_t *n) { *p = hooks_buffer2; *n = 14; }
SLOT(TOOLS_RUNTIME_CALLBACK_HOOKS, 1) SLOT(TOOLS_RUNTIME_CALLBACK_HOOKS, 3) SLOT(TOOLS_RUNTIME_CALLBACK_HOOKS, 4)
SLOT(TOOLS_RUNTIME_CALLBACK_HOOKS, 5)
static void *tools_hooks[7] = {
    (void *)(7 * sizeof(void *)), (void *)TOOLS_RUNTIME_CALLBACK_HOOKS_1, (void *)hooks_get1,
    (void *)TOOLS_RUNTIME_CALLBACK_HOOKS_3, (void *)TOOLS_RUNTIME_CALLBACK_HOOKS_4,
    (void *)TOOLS_RUNTIME_CALLBACK_HOOKS_5, (void *)hooks_get2,
};

/* TOOLS_TLS {42d85a81-...}: 3 slots; slot 2 is the calling thread's current context (what
 * cuCtxGetCurrent says; measured under the real driver: cuBLAS calls it). */
SLOT(TOOLS_TLS, 1)
static CUresult tools_tls_current(CUcontext *out) { return cuCtxGetCurrent(out); }
static void *tools_tls[3] = {(void *)(3 * sizeof(void *)), (void *)TOOLS_TLS_1, (void *)tools_tls_current};

/* CONTEXT_LOCAL_STORAGE_INTERFACE_V0301 {c693336e-...}: a value per (context, key), which the
 * runtime keeps its per-context state in. This table has no size slot. A NULL context means the
 * current one. Values of a destroyed context are not dropped (contexts are few). */
#define CLS_MAX 256
static struct { CUcontext ctx; void *key, *value; } cls[CLS_MAX];
static pthread_mutex_t cls_lock = PTHREAD_MUTEX_INITIALIZER;

static CUcontext cls_ctx(CUcontext ctx)
{
    if (!ctx && cuCtxGetCurrent(&ctx) != CUDA_SUCCESS) return NULL;
    return ctx;
}

static CUresult cls_put(CUcontext ctx, void *key, void *value, void *dtor)
{
    (void)dtor;
    if (!(ctx = cls_ctx(ctx))) return CUDA_ERROR_INVALID_CONTEXT;
    pthread_mutex_lock(&cls_lock);
    int free_slot = -1;
    for (int i = 0; i < CLS_MAX; i++) {
        if (cls[i].key == key && cls[i].ctx == ctx) { cls[i].value = value; pthread_mutex_unlock(&cls_lock); return CUDA_SUCCESS; }
        if (!cls[i].key && free_slot < 0) free_slot = i;
    }
    if (free_slot < 0) { pthread_mutex_unlock(&cls_lock); return CUDA_ERROR_OUT_OF_MEMORY; }
    cls[free_slot].ctx = ctx; cls[free_slot].key = key; cls[free_slot].value = value;
    pthread_mutex_unlock(&cls_lock);
    return CUDA_SUCCESS;
}

static CUresult cls_delete(CUcontext ctx, void *key)
{
    if (!(ctx = cls_ctx(ctx))) return CUDA_ERROR_INVALID_CONTEXT;
    pthread_mutex_lock(&cls_lock);
    for (int i = 0; i < CLS_MAX; i++)
        if (cls[i].key == key && cls[i].ctx == ctx) cls[i].key = NULL;
    pthread_mutex_unlock(&cls_lock);
    return CUDA_SUCCESS;
}

static CUresult cls_get(void **value, CUcontext ctx, void *key)
{
    if (!value) return CUDA_ERROR_INVALID_VALUE;
    if (!(ctx = cls_ctx(ctx))) return CUDA_ERROR_INVALID_CONTEXT;
    CUresult st = CUDA_ERROR_INVALID_HANDLE;
    pthread_mutex_lock(&cls_lock);
    for (int i = 0; i < CLS_MAX; i++)
        if (cls[i].key == key && cls[i].ctx == ctx) { *value = cls[i].value; st = CUDA_SUCCESS; break; }
    pthread_mutex_unlock(&cls_lock);
    return st;
}

SLOT(CONTEXT_LOCAL_STORAGE, 3)
static void *context_local_storage[4] = {
    (void *)cls_put, (void *)cls_delete, (void *)cls_get, (void *)CONTEXT_LOCAL_STORAGE_3,
};

/* CONTEXT_CHECKS {263e8860-...}: 15 slots; slot 2 checks a context (nothing to report), slot 3
 * answers 0. */
static CUresult ctx_check(CUcontext ctx, uint32_t *r1, void **r2)
{
    (void)ctx; (void)r2;
    if (r1) *r1 = 0;
    return CUDA_SUCCESS;
}
static uint32_t ctx_check3(void) { return 0; }
SLOT(CONTEXT_CHECKS, 1) SLOT(CONTEXT_CHECKS, 4) SLOT(CONTEXT_CHECKS, 5) SLOT(CONTEXT_CHECKS, 6)
SLOT(CONTEXT_CHECKS, 7) SLOT(CONTEXT_CHECKS, 8) SLOT(CONTEXT_CHECKS, 9) SLOT(CONTEXT_CHECKS, 10)
SLOT(CONTEXT_CHECKS, 11) SLOT(CONTEXT_CHECKS, 12) SLOT(CONTEXT_CHECKS, 13) SLOT(CONTEXT_CHECKS, 14)
static void *context_checks[15] = {
    (void *)(15 * sizeof(void *)), (void *)CONTEXT_CHECKS_1, (void *)ctx_check, (void *)ctx_check3,
    (void *)CONTEXT_CHECKS_4, (void *)CONTEXT_CHECKS_5, (void *)CONTEXT_CHECKS_6, (void *)CONTEXT_CHECKS_7,
    (void *)CONTEXT_CHECKS_8, (void *)CONTEXT_CHECKS_9, (void *)CONTEXT_CHECKS_10, (void *)CONTEXT_CHECKS_11,
    (void *)CONTEXT_CHECKS_12, (void *)CONTEXT_CHECKS_13, (void *)CONTEXT_CHECKS_14,
};

/* {f8cff951-...}: asked for first by libcudart 13; 3 slots, none called in the programs traced. */
SLOT(RUNTIME_F8CFF951, 1) SLOT(RUNTIME_F8CFF951, 2)
static void *runtime_f8cff951[3] = {
    (void *)(3 * sizeof(void *)), (void *)RUNTIME_F8CFF951_1, (void *)RUNTIME_F8CFF951_2,
};

/* {21318c60-...} (the tools' context table): 93 slots, asked for by libcudart 13.5 at start;
 * cuBLAS (so PyTorch and CuPy) calls slots 4, 39 and 51 under the real driver. Slot 4 is a
 * context's unique id (as cuCtxGetId). Slot 51 hands out an object for a context and slot 39
 * reads a count from it; what they stand for is not known: the object is an empty block per
 * context and the count 0 (the real driver said 7 on an H200), which cuBLAS accepts. Every
 * other slot is refused and logged. */
static CUresult ctx_unique_id(CUcontext ctx, unsigned long long *id)
{
    if (!id) return CUDA_ERROR_INVALID_VALUE;
    if (!ctx && cuCtxGetCurrent(&ctx) != CUDA_SUCCESS) return CUDA_ERROR_INVALID_CONTEXT;
    if (!ctx) return CUDA_ERROR_INVALID_CONTEXT;
    *id = (unsigned long long)(uintptr_t)ctx;  /* oriond's handles are unique and never 0 */
    return CUDA_SUCCESS;
}

static CUresult ctx_object(CUcontext ctx, uint64_t which, void **out)
{
    static uint64_t objects[16][64];
    static CUcontext owners[16];
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    (void)which;
    pthread_mutex_lock(&mu);
    int k = 0;
    while (k < 16 && owners[k] && owners[k] != ctx) k++;
    if (k < 16) owners[k] = ctx;
    pthread_mutex_unlock(&mu);
    if (k == 16) return CUDA_ERROR_OUT_OF_MEMORY;
    *out = objects[k];
    return CUDA_SUCCESS;
}

static CUresult ctx_object_count(CUcontext ctx, void *object, uint64_t *out)
{
    (void)ctx;
    if (!object || !out) return CUDA_ERROR_INVALID_VALUE;
    *out = 0;
    return CUDA_SUCCESS;
}

SLOT(T21318C60, 1) SLOT(T21318C60, 2) SLOT(T21318C60, 3) SLOT(T21318C60, 5) SLOT(T21318C60, 6)
SLOT(T21318C60, 7) SLOT(T21318C60, 8) SLOT(T21318C60, 9) SLOT(T21318C60, 10) SLOT(T21318C60, 11) SLOT(T21318C60, 12)
SLOT(T21318C60, 13) SLOT(T21318C60, 14) SLOT(T21318C60, 15) SLOT(T21318C60, 16) SLOT(T21318C60, 17) SLOT(T21318C60, 18)
SLOT(T21318C60, 19) SLOT(T21318C60, 20) SLOT(T21318C60, 21) SLOT(T21318C60, 22) SLOT(T21318C60, 23) SLOT(T21318C60, 24)
SLOT(T21318C60, 25) SLOT(T21318C60, 26) SLOT(T21318C60, 27) SLOT(T21318C60, 28) SLOT(T21318C60, 29) SLOT(T21318C60, 30)
SLOT(T21318C60, 31) SLOT(T21318C60, 32) SLOT(T21318C60, 33) SLOT(T21318C60, 34) SLOT(T21318C60, 35) SLOT(T21318C60, 36)
SLOT(T21318C60, 37) SLOT(T21318C60, 38) SLOT(T21318C60, 40) SLOT(T21318C60, 41) SLOT(T21318C60, 42)
SLOT(T21318C60, 43) SLOT(T21318C60, 44) SLOT(T21318C60, 45) SLOT(T21318C60, 46) SLOT(T21318C60, 47) SLOT(T21318C60, 48)
SLOT(T21318C60, 49) SLOT(T21318C60, 50) SLOT(T21318C60, 52) SLOT(T21318C60, 53) SLOT(T21318C60, 54)
SLOT(T21318C60, 55) SLOT(T21318C60, 56) SLOT(T21318C60, 57) SLOT(T21318C60, 58) SLOT(T21318C60, 59) SLOT(T21318C60, 60)
SLOT(T21318C60, 61) SLOT(T21318C60, 62) SLOT(T21318C60, 63) SLOT(T21318C60, 64) SLOT(T21318C60, 65) SLOT(T21318C60, 66)
SLOT(T21318C60, 67) SLOT(T21318C60, 68) SLOT(T21318C60, 69) SLOT(T21318C60, 70) SLOT(T21318C60, 71) SLOT(T21318C60, 72)
SLOT(T21318C60, 73) SLOT(T21318C60, 74) SLOT(T21318C60, 75) SLOT(T21318C60, 76) SLOT(T21318C60, 77) SLOT(T21318C60, 78)
SLOT(T21318C60, 79) SLOT(T21318C60, 80) SLOT(T21318C60, 81) SLOT(T21318C60, 82) SLOT(T21318C60, 83) SLOT(T21318C60, 84)
SLOT(T21318C60, 85) SLOT(T21318C60, 86) SLOT(T21318C60, 87) SLOT(T21318C60, 88) SLOT(T21318C60, 89) SLOT(T21318C60, 90)
SLOT(T21318C60, 91) SLOT(T21318C60, 92)
static void *t21318c60[93] = {
    (void *)(93 * sizeof(void *)),
    (void *)T21318C60_1, (void *)T21318C60_2, (void *)T21318C60_3, (void *)ctx_unique_id, (void *)T21318C60_5, (void *)T21318C60_6,
    (void *)T21318C60_7, (void *)T21318C60_8, (void *)T21318C60_9, (void *)T21318C60_10, (void *)T21318C60_11, (void *)T21318C60_12,
    (void *)T21318C60_13, (void *)T21318C60_14, (void *)T21318C60_15, (void *)T21318C60_16, (void *)T21318C60_17, (void *)T21318C60_18,
    (void *)T21318C60_19, (void *)T21318C60_20, (void *)T21318C60_21, (void *)T21318C60_22, (void *)T21318C60_23, (void *)T21318C60_24,
    (void *)T21318C60_25, (void *)T21318C60_26, (void *)T21318C60_27, (void *)T21318C60_28, (void *)T21318C60_29, (void *)T21318C60_30,
    (void *)T21318C60_31, (void *)T21318C60_32, (void *)T21318C60_33, (void *)T21318C60_34, (void *)T21318C60_35, (void *)T21318C60_36,
    (void *)T21318C60_37, (void *)T21318C60_38, (void *)ctx_object_count, (void *)T21318C60_40, (void *)T21318C60_41, (void *)T21318C60_42,
    (void *)T21318C60_43, (void *)T21318C60_44, (void *)T21318C60_45, (void *)T21318C60_46, (void *)T21318C60_47, (void *)T21318C60_48,
    (void *)T21318C60_49, (void *)T21318C60_50, (void *)ctx_object, (void *)T21318C60_52, (void *)T21318C60_53, (void *)T21318C60_54,
    (void *)T21318C60_55, (void *)T21318C60_56, (void *)T21318C60_57, (void *)T21318C60_58, (void *)T21318C60_59, (void *)T21318C60_60,
    (void *)T21318C60_61, (void *)T21318C60_62, (void *)T21318C60_63, (void *)T21318C60_64, (void *)T21318C60_65, (void *)T21318C60_66,
    (void *)T21318C60_67, (void *)T21318C60_68, (void *)T21318C60_69, (void *)T21318C60_70, (void *)T21318C60_71, (void *)T21318C60_72,
    (void *)T21318C60_73, (void *)T21318C60_74, (void *)T21318C60_75, (void *)T21318C60_76, (void *)T21318C60_77, (void *)T21318C60_78,
    (void *)T21318C60_79, (void *)T21318C60_80, (void *)T21318C60_81, (void *)T21318C60_82, (void *)T21318C60_83, (void *)T21318C60_84,
    (void *)T21318C60_85, (void *)T21318C60_86, (void *)T21318C60_87, (void *)T21318C60_88, (void *)T21318C60_89, (void *)T21318C60_90,
    (void *)T21318C60_91, (void *)T21318C60_92,
};

/* TOOLS_MODULE {6e163fbe-b958-444d-835c-e182aff1991e} (CU_ETID_ToolsModule in NVIDIA's libcuxtra):
 * asked for by cuFFT 12 (CUDA 13) in cufftCreate, which fails without it. Slot 7 hands each kernel of
 * a module to a callback: count = slot7(ctx, module, cb, user) calls cb(user, function, 0) once per
 * kernel. cuFFT loads each kernel it plans with as a module of one kernel, keeps the function its
 * callback is given, and fails the plan (CUFFT_INTERNAL_ERROR) unless the count is exactly 1.
 * Measured with cuFFT 12.5 over this client (what it passes, what it accepts); the real table's
 * size and what the real callback's third argument is were not (cuFFT's callback ignores it).
 * The names come from oriond (orionModuleFunctionNames), the functions from cuModuleGetFunction, so
 * they are the handles a program gets by name, with their parameter layouts. Every other slot is
 * refused and logged. */
#define MODULE_NAMES_CAP (1u << 20)

CUresult orion_wire_orionModuleFunctionNames(CUmodule hmod, unsigned int *count, char *names, unsigned int len)
    __attribute__((weak, visibility("hidden")));

typedef void (*module_function_cb)(void *user, CUfunction function, uint64_t unknown);

static CUresult module_kernels(CUmodule mod, CUfunction **out, unsigned *n)
{
    *out = NULL;
    *n = 0;
    if (!orion_wire_orionModuleFunctionNames) return CUDA_ERROR_NOT_SUPPORTED;
    char *names = calloc(1, MODULE_NAMES_CAP);
    if (!names) return CUDA_ERROR_OUT_OF_MEMORY;
    unsigned count = 0;
    CUresult st = orion_wire_orionModuleFunctionNames(mod, &count, names, MODULE_NAMES_CAP - 1);
    CUfunction *fns = st == CUDA_SUCCESS && count ? calloc(count, sizeof *fns) : NULL;
    if (st == CUDA_SUCCESS && count && !fns) st = CUDA_ERROR_OUT_OF_MEMORY;
    const char *p = names, *end = names + MODULE_NAMES_CAP - 1;
    for (unsigned i = 0; st == CUDA_SUCCESS && i < count; i++) {
        size_t len = strnlen(p, (size_t)(end - p));
        if (!len || p + len >= end) {
            orion_log("WARN", "orionModuleFunctionNames: %u names said, name %u is empty or missing", count, i);
            st = CUDA_ERROR_INVALID_VALUE;
        } else {
            st = cuModuleGetFunction(&fns[i], mod, p);
            p += len + 1;
        }
    }
    free(names);
    if (st != CUDA_SUCCESS) { free(fns); return st; }
    *out = fns;
    *n = count;
    return CUDA_SUCCESS;
}

static uint64_t module_functions(CUcontext ctx, CUmodule mod, module_function_cb cb, void *user)
{
    (void)ctx;
    if (!mod || !cb) return 0;
    CUfunction *fns;
    unsigned n;
    CUresult st = module_kernels(mod, &fns, &n);
    if (st == CUDA_ERROR_NOT_SUPPORTED && !orion_wire_orionModuleFunctionNames) {
        static atomic_flag said = ATOMIC_FLAG_INIT;
        if (!atomic_flag_test_and_set(&said))
            orion_log("WARN", "export table TOOLS_MODULE: slot 7 (the kernels of a module) needs the call "
                      "orionModuleFunctionNames, which this build of the orion_virt client lacks");
        return 0;
    }
    if (st != CUDA_SUCCESS) {
        const char *name = "?";
        cuGetErrorName(st, &name);
        orion_log("WARN", "export table TOOLS_MODULE: slot 7: the kernels of module %p: %s", (void *)mod, name);
        return 0;
    }
    orion_log("DEBUG", "export table TOOLS_MODULE: slot 7: module %p has %u kernels", (void *)mod, n);
    for (unsigned i = 0; i < n; i++) cb(user, fns[i], 0);
    free(fns);
    return n;
}

SLOT(TOOLS_MODULE, 1) SLOT(TOOLS_MODULE, 2) SLOT(TOOLS_MODULE, 3) SLOT(TOOLS_MODULE, 4) SLOT(TOOLS_MODULE, 5)
SLOT(TOOLS_MODULE, 6) SLOT(TOOLS_MODULE, 8) SLOT(TOOLS_MODULE, 9) SLOT(TOOLS_MODULE, 10) SLOT(TOOLS_MODULE, 11)
SLOT(TOOLS_MODULE, 12) SLOT(TOOLS_MODULE, 13) SLOT(TOOLS_MODULE, 14) SLOT(TOOLS_MODULE, 15) SLOT(TOOLS_MODULE, 16)
SLOT(TOOLS_MODULE, 17) SLOT(TOOLS_MODULE, 18) SLOT(TOOLS_MODULE, 19) SLOT(TOOLS_MODULE, 20) SLOT(TOOLS_MODULE, 21)
SLOT(TOOLS_MODULE, 22) SLOT(TOOLS_MODULE, 23) SLOT(TOOLS_MODULE, 24) SLOT(TOOLS_MODULE, 25) SLOT(TOOLS_MODULE, 26)
SLOT(TOOLS_MODULE, 27) SLOT(TOOLS_MODULE, 28) SLOT(TOOLS_MODULE, 29) SLOT(TOOLS_MODULE, 30) SLOT(TOOLS_MODULE, 31)
SLOT(TOOLS_MODULE, 32) SLOT(TOOLS_MODULE, 33) SLOT(TOOLS_MODULE, 34) SLOT(TOOLS_MODULE, 35) SLOT(TOOLS_MODULE, 36)
SLOT(TOOLS_MODULE, 37) SLOT(TOOLS_MODULE, 38) SLOT(TOOLS_MODULE, 39) SLOT(TOOLS_MODULE, 40) SLOT(TOOLS_MODULE, 41)
SLOT(TOOLS_MODULE, 42) SLOT(TOOLS_MODULE, 43) SLOT(TOOLS_MODULE, 44) SLOT(TOOLS_MODULE, 45) SLOT(TOOLS_MODULE, 46)
SLOT(TOOLS_MODULE, 47) SLOT(TOOLS_MODULE, 48) SLOT(TOOLS_MODULE, 49) SLOT(TOOLS_MODULE, 50) SLOT(TOOLS_MODULE, 51)
SLOT(TOOLS_MODULE, 52) SLOT(TOOLS_MODULE, 53) SLOT(TOOLS_MODULE, 54) SLOT(TOOLS_MODULE, 55) SLOT(TOOLS_MODULE, 56)
SLOT(TOOLS_MODULE, 57) SLOT(TOOLS_MODULE, 58) SLOT(TOOLS_MODULE, 59) SLOT(TOOLS_MODULE, 60) SLOT(TOOLS_MODULE, 61)
SLOT(TOOLS_MODULE, 62) SLOT(TOOLS_MODULE, 63)
static void *tools_module[64] = {
    (void *)(64 * sizeof(void *)), (void *)TOOLS_MODULE_1, (void *)TOOLS_MODULE_2, (void *)TOOLS_MODULE_3, (void *)TOOLS_MODULE_4,
    (void *)TOOLS_MODULE_5, (void *)TOOLS_MODULE_6, (void *)module_functions, (void *)TOOLS_MODULE_8, (void *)TOOLS_MODULE_9,
    (void *)TOOLS_MODULE_10, (void *)TOOLS_MODULE_11, (void *)TOOLS_MODULE_12, (void *)TOOLS_MODULE_13, (void *)TOOLS_MODULE_14,
    (void *)TOOLS_MODULE_15, (void *)TOOLS_MODULE_16, (void *)TOOLS_MODULE_17, (void *)TOOLS_MODULE_18, (void *)TOOLS_MODULE_19,
    (void *)TOOLS_MODULE_20, (void *)TOOLS_MODULE_21, (void *)TOOLS_MODULE_22, (void *)TOOLS_MODULE_23, (void *)TOOLS_MODULE_24,
    (void *)TOOLS_MODULE_25, (void *)TOOLS_MODULE_26, (void *)TOOLS_MODULE_27, (void *)TOOLS_MODULE_28, (void *)TOOLS_MODULE_29,
    (void *)TOOLS_MODULE_30, (void *)TOOLS_MODULE_31, (void *)TOOLS_MODULE_32, (void *)TOOLS_MODULE_33, (void *)TOOLS_MODULE_34,
    (void *)TOOLS_MODULE_35, (void *)TOOLS_MODULE_36, (void *)TOOLS_MODULE_37, (void *)TOOLS_MODULE_38, (void *)TOOLS_MODULE_39,
    (void *)TOOLS_MODULE_40, (void *)TOOLS_MODULE_41, (void *)TOOLS_MODULE_42, (void *)TOOLS_MODULE_43, (void *)TOOLS_MODULE_44,
    (void *)TOOLS_MODULE_45, (void *)TOOLS_MODULE_46, (void *)TOOLS_MODULE_47, (void *)TOOLS_MODULE_48, (void *)TOOLS_MODULE_49,
    (void *)TOOLS_MODULE_50, (void *)TOOLS_MODULE_51, (void *)TOOLS_MODULE_52, (void *)TOOLS_MODULE_53, (void *)TOOLS_MODULE_54,
    (void *)TOOLS_MODULE_55, (void *)TOOLS_MODULE_56, (void *)TOOLS_MODULE_57, (void *)TOOLS_MODULE_58, (void *)TOOLS_MODULE_59,
    (void *)TOOLS_MODULE_60, (void *)TOOLS_MODULE_61, (void *)TOOLS_MODULE_62, (void *)TOOLS_MODULE_63,
};

/* INTEGRITY_CHECK {d4082055-...}: libcudart 13 refuses to start without it. Slot 1 answers an
 * HMAC over MD2 (RFC 1319; block and key are 16 bytes) keyed with a fixed 16-byte key, of: the
 * driver version, the caller's version, pid, thread, the addresses of the cudart table, of this
 * table and of the slot's function, the caller's clock, then per device its UUID and PCI domain,
 * bus and device. Versions ending in 0 or 1 get fixed answers. */
static const unsigned char md2_s[256] = {
    0x29, 0x2e, 0x43, 0xc9, 0xa2, 0xd8, 0x7c, 0x01, 0x3d, 0x36, 0x54, 0xa1, 0xec, 0xf0, 0x06, 0x13,
    0x62, 0xa7, 0x05, 0xf3, 0xc0, 0xc7, 0x73, 0x8c, 0x98, 0x93, 0x2b, 0xd9, 0xbc, 0x4c, 0x82, 0xca,
    0x1e, 0x9b, 0x57, 0x3c, 0xfd, 0xd4, 0xe0, 0x16, 0x67, 0x42, 0x6f, 0x18, 0x8a, 0x17, 0xe5, 0x12,
    0xbe, 0x4e, 0xc4, 0xd6, 0xda, 0x9e, 0xde, 0x49, 0xa0, 0xfb, 0xf5, 0x8e, 0xbb, 0x2f, 0xee, 0x7a,
    0xa9, 0x68, 0x79, 0x91, 0x15, 0xb2, 0x07, 0x3f, 0x94, 0xc2, 0x10, 0x89, 0x0b, 0x22, 0x5f, 0x21,
    0x80, 0x7f, 0x5d, 0x9a, 0x5a, 0x90, 0x32, 0x27, 0x35, 0x3e, 0xcc, 0xe7, 0xbf, 0xf7, 0x97, 0x03,
    0xff, 0x19, 0x30, 0xb3, 0x48, 0xa5, 0xb5, 0xd1, 0xd7, 0x5e, 0x92, 0x2a, 0xac, 0x56, 0xaa, 0xc6,
    0x4f, 0xb8, 0x38, 0xd2, 0x96, 0xa4, 0x7d, 0xb6, 0x76, 0xfc, 0x6b, 0xe2, 0x9c, 0x74, 0x04, 0xf1,
    0x45, 0x9d, 0x70, 0x59, 0x64, 0x71, 0x87, 0x20, 0x86, 0x5b, 0xcf, 0x65, 0xe6, 0x2d, 0xa8, 0x02,
    0x1b, 0x60, 0x25, 0xad, 0xae, 0xb0, 0xb9, 0xf6, 0x1c, 0x46, 0x61, 0x69, 0x34, 0x40, 0x7e, 0x0f,
    0x55, 0x47, 0xa3, 0x23, 0xdd, 0x51, 0xaf, 0x3a, 0xc3, 0x5c, 0xf9, 0xce, 0xba, 0xc5, 0xea, 0x26,
    0x2c, 0x53, 0x0d, 0x6e, 0x85, 0x28, 0x84, 0x09, 0xd3, 0xdf, 0xcd, 0xf4, 0x41, 0x81, 0x4d, 0x52,
    0x6a, 0xdc, 0x37, 0xc8, 0x6c, 0xc1, 0xab, 0xfa, 0x24, 0xe1, 0x7b, 0x08, 0x0c, 0xbd, 0xb1, 0x4a,
    0x78, 0x88, 0x95, 0x8b, 0xe3, 0x63, 0xe8, 0x6d, 0xe9, 0xcb, 0xd5, 0xfe, 0x3b, 0x00, 0x1d, 0x39,
    0xf2, 0xef, 0xb7, 0x0e, 0x66, 0x58, 0xd0, 0xe4, 0xa6, 0x77, 0x72, 0xf8, 0xeb, 0x75, 0x4b, 0x0a,
    0x31, 0x44, 0x50, 0xb4, 0x8f, 0xed, 0x1f, 0x1a, 0xdb, 0x99, 0x8d, 0x33, 0x9f, 0x11, 0x83, 0x14,
};

typedef struct { unsigned char x[48], block[16], sum[16]; unsigned n; } md2;

static void md2_compress(md2 *m)
{
    for (int i = 0; i < 16; i++) {
        m->x[16 + i] = m->block[i];
        m->x[32 + i] = (unsigned char)(m->x[i] ^ m->block[i]);
    }
    unsigned t = 0;
    for (int r = 0; r < 18; r++) {
        for (int i = 0; i < 48; i++) t = m->x[i] ^= md2_s[t];
        t = (t + (unsigned)r) & 0xff;
    }
    unsigned char l = m->sum[15];
    for (int i = 0; i < 16; i++) l = m->sum[i] ^= md2_s[m->block[i] ^ l];
}

static void md2_update(md2 *m, const void *data, size_t len, unsigned char mask)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++) {
        m->block[m->n++] = (unsigned char)(p[i] ^ mask);
        if (m->n == 16) { md2_compress(m); m->n = 0; }
    }
}

static void md2_final(md2 *m, unsigned char out[16])
{
    unsigned char pad = (unsigned char)(16 - m->n), padding[16], sum[16];
    memset(padding, pad, sizeof padding);
    md2_update(m, padding, pad, 0);
    memcpy(sum, m->sum, 16);
    md2_update(m, sum, 16, 0);
    memcpy(out, m->x, 16);
}

static const unsigned char integrity_key[16] = {
    0x14, 0x6a, 0xdd, 0xae, 0x53, 0xa9, 0xa7, 0x52, 0xaa, 0x08, 0x41, 0x36, 0x0b, 0xf5, 0x5a, 0x9f,
};

static CUresult integrity_check(uint32_t version, uint64_t unix_seconds, uint64_t result[2]);
SLOT(INTEGRITY_CHECK, 2)
static void *integrity_table[3] = {
    (void *)(3 * sizeof(void *)), (void *)integrity_check, (void *)INTEGRITY_CHECK_2,
};

static CUresult integrity_check(uint32_t version, uint64_t unix_seconds, uint64_t result[2])
{
    if (!result) return CUDA_ERROR_INVALID_VALUE;
    orion_log("DEBUG", "integrity check: version %u, time %llu", version, (unsigned long long)unix_seconds);
    if (version % 10 == 0) { result[0] = 0x3341181C03CB675Cull; result[1] = 0x8ED383AA1F4CD1E8ull; return CUDA_SUCCESS; }
    if (version % 10 == 1) { result[0] = 0x1841181C03CB675Cull; result[1] = 0x8ED383AA1F4CD1E8ull; return CUDA_SUCCESS; }
    struct { uint32_t driver, version, pid, thread; const void *cudart, *table, *fn; uint64_t seconds; } in;
    int drv = 0, n = 0;
    CUresult st = cuDriverGetVersion(&drv);
    if (st == CUDA_SUCCESS) st = cuDeviceGetCount(&n);
    if (st != CUDA_SUCCESS) return st;
    orion_log("DEBUG", "integrity check: driver %d, %d devices, thread %lx", drv, n, (unsigned long)pthread_self());
    in.driver = (uint32_t)drv;
    in.version = version;
    in.pid = (uint32_t)getpid();
    in.thread = (uint32_t)(uintptr_t)pthread_self();
    in.cudart = cudart_interface;
    in.table = integrity_table;
    in.fn = integrity_table[1];
    in.seconds = unix_seconds;
    md2 m = {0};
    md2_update(&m, integrity_key, 16, 0x36);
    md2_update(&m, &in, sizeof in, 0);
    for (int d = 0; d < n; d++) {
        struct { CUuuid uuid; int32_t domain, bus, device; } dev;
        if ((st = cuDeviceGetUuid_v2(&dev.uuid, d)) != CUDA_SUCCESS ||
            (st = cuDeviceGetAttribute(&dev.domain, CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID, d)) != CUDA_SUCCESS ||
            (st = cuDeviceGetAttribute(&dev.bus, CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, d)) != CUDA_SUCCESS ||
            (st = cuDeviceGetAttribute(&dev.device, CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID, d)) != CUDA_SUCCESS)
            return st;
        md2_update(&m, &dev, sizeof dev, 0);
    }
    unsigned char inner[16], outer[16];
    md2_final(&m, inner);
    md2 o = {0};
    md2_update(&o, integrity_key, 16, 0x5c);
    md2_update(&o, inner, 16, 0);
    md2_final(&o, outer);
    memcpy(result, outer, 16);
    return CUDA_SUCCESS;
}

#define UUID(a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p) {0x##a, 0x##b, 0x##c, 0x##d, 0x##e, 0x##f, 0x##g, \
    0x##h, 0x##i, 0x##j, 0x##k, 0x##l, 0x##m, 0x##n, 0x##o, 0x##p}

static const export_table tables[] = {
    {"CUDART_INTERFACE", UUID(6b, d5, fb, 6c, 5b, f4, e7, 4a, 89, 87, d9, 39, 12, fd, 9d, f9), cudart_interface},
    {"TOOLS_RUNTIME_CALLBACK_HOOKS", UUID(a0, 94, 79, 8c, 2e, 74, 2e, 74, 93, f2, 08, 00, 20, 0c, 0a, 66), tools_hooks},
    {"TOOLS_TLS", UUID(42, d8, 5a, 81, 23, f6, cb, 47, 82, 98, f6, e7, 8a, 3a, ec, dc), tools_tls},
    {"CONTEXT_LOCAL_STORAGE", UUID(c6, 93, 33, 6e, 11, 21, df, 11, a8, c3, 68, f3, 55, d8, 95, 93), context_local_storage},
    {"CONTEXT_CHECKS", UUID(26, 3e, 88, 60, 7c, d2, 61, 43, 92, f6, bb, d5, 00, 6d, fa, 7e), context_checks},
    {"T21318C60", UUID(21, 31, 8c, 60, 97, 14, 32, 48, 8c, a6, 41, ff, 73, 24, c8, f2), t21318c60},
    {"INTEGRITY_CHECK", UUID(d4, 08, 20, 55, bd, e6, 70, 4b, 8d, 34, ba, 12, 3c, 66, e1, f2), integrity_table},
    {"TOOLS_MODULE", UUID(6e, 16, 3f, be, b9, 58, 44, 4d, 83, 5c, e1, 82, af, f1, 99, 1e), tools_module},
    {"RUNTIME_F8CFF951", UUID(f8, cf, f9, 51, 21, 46, 8b, 4e, b9, e2, fb, 46, 9e, 7c, 0d, d9), runtime_f8cff951},
};

ORION_API CUresult cuGetExportTable(const void **ppExportTable, const CUuuid *pExportTableId)
{
    if (!ppExportTable || !pExportTableId) return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < sizeof tables / sizeof tables[0]; i++)
        if (!memcmp(tables[i].id, pExportTableId->bytes, 16)) {
            *ppExportTable = tables[i].slots;
            return CUDA_SUCCESS;
        }
    const unsigned char *b = (const unsigned char *)pExportTableId->bytes;
    char g[40];
    for (int i = 0; i < 16; i++) snprintf(g + 2 * i, 3, "%02x", b[i]);
    orion_log("DEBUG", "export table {%s} is not provided by the orion_virt client (refused)", g);
    *ppExportTable = NULL;
    return CUDA_ERROR_INVALID_VALUE;
}

ORION_API CUresult cuCtxGetId(CUcontext ctx, unsigned long long *ctxId) { return ctx_unique_id(ctx, ctxId); }
