/* libnvidia-ml.so.1 for the vGPUs: NVML answered from the driver API of libcuda.so.1 (the
 * orion_virt client, found by the same LD_LIBRARY_PATH / ldconfig that selects it), so a tool or
 * framework asking NVML sees the application's vGPUs, their quota and this process, never the
 * host's GPUs. See README.md, "NVML".
 *
 * nvmlInit loads libcuda.so.1 with dlopen, calls cuInit (which opens the session, as a CUDA
 * program's first call does) and takes each device's name, total memory (the vGPU's quota),
 * UUID, PCI location and compute capability. Memory in use is asked each time, from cuMemGetInfo
 * in the device's primary context (retained, pushed, popped and released around the call: the
 * calling thread's contexts are as they were). Every other function an application may look up
 * is a stub (nvml_stubs_gen.c) that says its name once and returns NVML_ERROR_NOT_SUPPORTED. */
#define _POSIX_C_SOURCE 200809L
#include <cuda.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "orion_nvml.h"

#define MAX_DEV 64

struct nvmlDevice_st {
    unsigned int index;
    CUdevice cu;
    char name[256];
    char uuid[48];                  /* GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx */
    unsigned long long total;       /* cuDeviceTotalMem: the vGPU's quota */
    int cc_major, cc_minor;
    unsigned int domain, bus, device;
};

static struct nvmlDevice_st devices[MAX_DEV];
static unsigned int device_count;
static atomic_int init_refs;        /* nvmlInit calls not yet shut down */
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;

/* ---- log ------------------------------------------------------------------------------------ */

static void say(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(const char *level, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "[%s] %s\n", level, line);
    fflush(stderr);
}

static atomic_uchar stub_said[1024];

nvmlReturn_t orion_nvml_unsupported(size_t stub, const char *name)
{
    if (stub >= sizeof stub_said || !atomic_exchange(&stub_said[stub], 1))
        say("WARN", "%s is not supported by the orion_virt client: NVML_ERROR_NOT_SUPPORTED", name);
    return NVML_ERROR_NOT_SUPPORTED;
}

/* ---- libcuda.so.1 --------------------------------------------------------------------------- */

static struct {
    void *lib;
    CUresult (*cuInit)(unsigned int);
    CUresult (*cuDriverGetVersion)(int *);
    CUresult (*cuGetErrorName)(CUresult, const char **);
    CUresult (*cuDeviceGetCount)(int *);
    CUresult (*cuDeviceGet)(CUdevice *, int);
    CUresult (*cuDeviceGetName)(char *, int, CUdevice);
    CUresult (*cuDeviceTotalMem)(size_t *, CUdevice);
    CUresult (*cuDeviceGetUuid)(CUuuid *, CUdevice);
    CUresult (*cuDeviceGetAttribute)(int *, CUdevice_attribute, CUdevice);
    CUresult (*cuDevicePrimaryCtxGetState)(CUdevice, unsigned int *, int *);
    CUresult (*cuDevicePrimaryCtxRetain)(CUcontext *, CUdevice);
    CUresult (*cuDevicePrimaryCtxRelease)(CUdevice);
    CUresult (*cuCtxPushCurrent)(CUcontext);
    CUresult (*cuCtxPopCurrent)(CUcontext *);
    CUresult (*cuMemGetInfo)(size_t *, size_t *);
} cu;

static void *symbol(const char *name)
{
    void *p = dlsym(cu.lib, name);
    if (!p) say("ERROR", "NVML (orion_virt): libcuda.so.1 has no %s", name);
    return p;
}

#define BIND(field, name) ((cu.field = (__typeof__(cu.field))symbol(name)) != NULL)

/* Called with init_lock held; the library stays loaded (the application may use it too). */
static nvmlReturn_t load_driver(void)
{
    if (cu.cuMemGetInfo) return NVML_SUCCESS;
    if (!cu.lib) cu.lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!cu.lib) {
        say("ERROR", "NVML (orion_virt): cannot load libcuda.so.1: %s", dlerror());
        return NVML_ERROR_LIBRARY_NOT_FOUND;
    }
    int ok = 1;
    ok &= BIND(cuInit, "cuInit");
    ok &= BIND(cuDriverGetVersion, "cuDriverGetVersion");
    ok &= BIND(cuGetErrorName, "cuGetErrorName");
    ok &= BIND(cuDeviceGetCount, "cuDeviceGetCount");
    ok &= BIND(cuDeviceGet, "cuDeviceGet");
    ok &= BIND(cuDeviceGetName, "cuDeviceGetName");
    ok &= BIND(cuDeviceTotalMem, "cuDeviceTotalMem_v2");
    ok &= BIND(cuDeviceGetUuid, "cuDeviceGetUuid");
    ok &= BIND(cuDeviceGetAttribute, "cuDeviceGetAttribute");
    ok &= BIND(cuDevicePrimaryCtxGetState, "cuDevicePrimaryCtxGetState");
    ok &= BIND(cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain");
    ok &= BIND(cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2");
    ok &= BIND(cuCtxPushCurrent, "cuCtxPushCurrent_v2");
    ok &= BIND(cuCtxPopCurrent, "cuCtxPopCurrent_v2");
    ok &= BIND(cuMemGetInfo, "cuMemGetInfo_v2");
    if (!ok) {
        cu.cuMemGetInfo = NULL;  /* not loaded: the next nvmlInit tries again */
        return NVML_ERROR_LIBRARY_NOT_FOUND;
    }
    return NVML_SUCCESS;
}

static nvmlReturn_t from_cuda(CUresult r)
{
    switch (r) {
    case CUDA_SUCCESS: return NVML_SUCCESS;
    case CUDA_ERROR_INVALID_VALUE: return NVML_ERROR_INVALID_ARGUMENT;
    case CUDA_ERROR_NOT_INITIALIZED:
    case CUDA_ERROR_DEINITIALIZED: return NVML_ERROR_UNINITIALIZED;
    case CUDA_ERROR_NO_DEVICE: return NVML_ERROR_DRIVER_NOT_LOADED;
    case CUDA_ERROR_INVALID_DEVICE: return NVML_ERROR_INVALID_ARGUMENT;
    case CUDA_ERROR_OUT_OF_MEMORY: return NVML_ERROR_INSUFFICIENT_RESOURCES;
    case CUDA_ERROR_NOT_PERMITTED: return NVML_ERROR_NO_PERMISSION;
    case CUDA_ERROR_NOT_SUPPORTED: return NVML_ERROR_NOT_SUPPORTED;
    case CUDA_ERROR_DEVICE_UNAVAILABLE: return NVML_ERROR_GPU_IS_LOST;
    default: return NVML_ERROR_UNKNOWN;
    }
}

static const char *cuda_name(CUresult r)
{
    const char *s = NULL;
    if (cu.cuGetErrorName && cu.cuGetErrorName(r, &s) == CUDA_SUCCESS && s) return s;
    return "CUDA error";
}

static int attribute(CUdevice_attribute a, CUdevice d)
{
    int v = 0;
    return cu.cuDeviceGetAttribute(&v, a, d) == CUDA_SUCCESS ? v : 0;
}

/* Called with init_lock held, after cuInit: the device table. */
static nvmlReturn_t enumerate(void)
{
    int n = 0;
    CUresult r = cu.cuDeviceGetCount(&n);
    if (r != CUDA_SUCCESS) return from_cuda(r);
    if (n < 0) n = 0;
    if (n > MAX_DEV) n = MAX_DEV;
    for (int i = 0; i < n; i++) {
        struct nvmlDevice_st *d = &devices[i];
        memset(d, 0, sizeof *d);
        d->index = (unsigned int)i;
        size_t total = 0;
        CUuuid u;
        if ((r = cu.cuDeviceGet(&d->cu, i)) != CUDA_SUCCESS ||
            (r = cu.cuDeviceGetName(d->name, (int)sizeof d->name, d->cu)) != CUDA_SUCCESS ||
            (r = cu.cuDeviceTotalMem(&total, d->cu)) != CUDA_SUCCESS ||
            (r = cu.cuDeviceGetUuid(&u, d->cu)) != CUDA_SUCCESS) {
            say("ERROR", "NVML (orion_virt): device %d: %s", i, cuda_name(r));
            return from_cuda(r);
        }
        d->name[sizeof d->name - 1] = '\0';
        d->total = total;
        const unsigned char *b = (const unsigned char *)u.bytes;
        snprintf(d->uuid, sizeof d->uuid,
                 "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
                 b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
                 b[14], b[15]);
        d->cc_major = attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, d->cu);
        d->cc_minor = attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, d->cu);
        d->domain = (unsigned int)attribute(CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID, d->cu);
        d->bus = (unsigned int)attribute(CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, d->cu) & 0xffu;
        d->device = (unsigned int)attribute(CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID, d->cu) & 0x1fu;
    }
    device_count = (unsigned int)n;
    return NVML_SUCCESS;
}

/* ---- initialisation ------------------------------------------------------------------------- */

NVML_API nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    nvmlReturn_t st = NVML_SUCCESS;
    pthread_mutex_lock(&init_lock);
    if (atomic_load(&init_refs) > 0) {
        atomic_fetch_add(&init_refs, 1);
        pthread_mutex_unlock(&init_lock);
        return NVML_SUCCESS;
    }
    device_count = 0;
    st = load_driver();
    if (st == NVML_SUCCESS) {
        CUresult r = cu.cuInit(0);
        if (r != CUDA_SUCCESS) {
            say("ERROR", "NVML (orion_virt): cuInit of libcuda.so.1: %d %s", (int)r, cuda_name(r));
            st = from_cuda(r);
        } else {
            st = enumerate();
        }
    }
    if (st != NVML_SUCCESS && (flags & NVML_INIT_FLAG_NO_GPUS)) {
        device_count = 0;  /* no GPUs asked for: initialised without devices */
        st = NVML_SUCCESS;
    }
    if (st == NVML_SUCCESS) atomic_store(&init_refs, 1);
    pthread_mutex_unlock(&init_lock);
    return st;
}

NVML_API nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
NVML_API nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

NVML_API nvmlReturn_t nvmlShutdown(void)
{
    nvmlReturn_t st = NVML_SUCCESS;
    pthread_mutex_lock(&init_lock);
    if (atomic_load(&init_refs) <= 0) st = NVML_ERROR_UNINITIALIZED;
    else atomic_fetch_sub(&init_refs, 1);
    pthread_mutex_unlock(&init_lock);
    return st;
}

static int ready(void) { return atomic_load(&init_refs) > 0; }

/* The handle's device, or why not. */
static nvmlReturn_t device_of(nvmlDevice_t h, struct nvmlDevice_st **out)
{
    if (!ready()) return NVML_ERROR_UNINITIALIZED;
    uintptr_t p = (uintptr_t)h, base = (uintptr_t)devices;
    if (!h || p < base || p >= base + device_count * sizeof devices[0] || (p - base) % sizeof devices[0])
        return NVML_ERROR_INVALID_ARGUMENT;
    *out = &devices[(p - base) / sizeof devices[0]];
    return NVML_SUCCESS;
}

#define DEVICE(h, d)                                                                                \
    struct nvmlDevice_st *d = NULL;                                                                 \
    do {                                                                                            \
        nvmlReturn_t st_ = device_of(h, &d);                                                        \
        if (st_ != NVML_SUCCESS) return st_;                                                        \
    } while (0)

/* s into buf of length bytes, NUL-terminated; NVML_ERROR_INSUFFICIENT_SIZE when it does not fit */
static nvmlReturn_t put_string(char *buf, unsigned int length, const char *s)
{
    if (!buf) return NVML_ERROR_INVALID_ARGUMENT;
    size_t n = strlen(s);
    if (n + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(buf, s, n + 1);
    return NVML_SUCCESS;
}

/* ---- errors --------------------------------------------------------------------------------- */

NVML_API const char *nvmlErrorString(nvmlReturn_t result)
{
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_ALREADY_INITIALIZED: return "Already Initialized";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_INSUFFICIENT_POWER: return "Insufficient External Power";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case NVML_ERROR_IRQ_ISSUE: return "Interrupt Request Issue";
    case NVML_ERROR_LIBRARY_NOT_FOUND: return "NVML Shared Library Not Found";
    case NVML_ERROR_FUNCTION_NOT_FOUND: return "Function Not Found";
    case NVML_ERROR_CORRUPTED_INFOROM: return "Corrupted infoROM";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_RESET_REQUIRED: return "GPU requires restart";
    case NVML_ERROR_OPERATING_SYSTEM: return "The operating system has blocked the request";
    case NVML_ERROR_LIB_RM_VERSION_MISMATCH: return "RM has detected an NVML/RM version mismatch";
    case NVML_ERROR_IN_USE: return "In use by another client";
    case NVML_ERROR_MEMORY: return "Insufficient Memory";
    case NVML_ERROR_NO_DATA: return "No data";
    case NVML_ERROR_VGPU_ECC_NOT_SUPPORTED: return "vGPU ECC not supported";
    case NVML_ERROR_INSUFFICIENT_RESOURCES: return "Insufficient resources";
    case NVML_ERROR_FREQ_NOT_SUPPORTED: return "Frequency not supported";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    case NVML_ERROR_DEPRECATED: return "Deprecated";
    case NVML_ERROR_NOT_READY: return "Not ready";
    case NVML_ERROR_GPU_NOT_FOUND: return "GPU not found";
    case NVML_ERROR_INVALID_STATE: return "Invalid state";
    case NVML_ERROR_RESET_TYPE_NOT_SUPPORTED: return "Reset type not supported";
    case NVML_ERROR_UNKNOWN: return "Unknown Error";
    }
    return "Unknown Error";
}

/* ---- system --------------------------------------------------------------------------------- */

/* The host's driver is not known to the client: the driver version said is the Linux driver
 * that the CUDA version libcuda.so.1 reports (cuDriverGetVersion) shipped with. */
static const char *driver_for_cuda(int v)
{
    static const struct { int cuda; const char *driver; } table[] = {
        {13000, "580.65.06"}, {12090, "575.51.03"}, {12080, "570.86.10"}, {12060, "560.28.03"},
        {12040, "550.54.14"}, {12020, "535.54.03"}, {12000, "525.60.13"},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (v >= table[i].cuda) return table[i].driver;
    return "525.60.13";
}

static int cuda_version(void)
{
    int v = 0;
    if (!cu.cuDriverGetVersion || cu.cuDriverGetVersion(&v) != CUDA_SUCCESS) v = 0;
    return v;
}

NVML_API nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    if (!ready()) return NVML_ERROR_UNINITIALIZED;
    return put_string(version, length, driver_for_cuda(cuda_version()));
}

NVML_API nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length)
{
    if (!ready()) return NVML_ERROR_UNINITIALIZED;
    int v = cuda_version();
    char s[NVML_SYSTEM_NVML_VERSION_BUFFER_SIZE];
    snprintf(s, sizeof s, "%d.%s", (v / 1000) % 1000, driver_for_cuda(v));
    return put_string(version, length, s);
}

NVML_API nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *cudaDriverVersion)
{
    if (!cudaDriverVersion) return NVML_ERROR_INVALID_ARGUMENT;
    if (!ready()) return NVML_ERROR_UNINITIALIZED;
    CUresult r = cu.cuDriverGetVersion(cudaDriverVersion);
    return from_cuda(r);
}

NVML_API nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *cudaDriverVersion)
{
    return nvmlSystemGetCudaDriverVersion(cudaDriverVersion);
}

/* ---- devices -------------------------------------------------------------------------------- */

NVML_API nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount)
{
    if (!deviceCount) return NVML_ERROR_INVALID_ARGUMENT;
    if (!ready()) return NVML_ERROR_UNINITIALIZED;
    *deviceCount = device_count;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetCount(unsigned int *deviceCount) { return nvmlDeviceGetCount_v2(deviceCount); }

NVML_API nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    if (!device) return NVML_ERROR_INVALID_ARGUMENT;
    if (!ready()) return NVML_ERROR_UNINITIALIZED;
    if (index >= device_count) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &devices[index];
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device)
{
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

NVML_API nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device)
{
    if (!uuid || !device) return NVML_ERROR_INVALID_ARGUMENT;
    if (!ready()) return NVML_ERROR_UNINITIALIZED;
    for (unsigned int i = 0; i < device_count; i++)
        if (!strcasecmp(uuid, devices[i].uuid)) {
            *device = &devices[i];
            return NVML_SUCCESS;
        }
    return NVML_ERROR_NOT_FOUND;
}

/* "domain:bus:device.function" or "bus:device.function", hex */
static int parse_bus_id(const char *s, unsigned int *domain, unsigned int *bus, unsigned int *dev)
{
    unsigned int a = 0, b = 0, c = 0, f = 0;
    char end = 0;
    if (sscanf(s, "%x:%x:%x.%x%c", &a, &b, &c, &f, &end) == 4) {
        *domain = a; *bus = b; *dev = c;
        return 1;
    }
    if (sscanf(s, "%x:%x.%x%c", &b, &c, &f, &end) == 3) {
        *domain = 0; *bus = b; *dev = c;
        return 1;
    }
    return 0;
}

NVML_API nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *pciBusId, nvmlDevice_t *device)
{
    if (!pciBusId || !device) return NVML_ERROR_INVALID_ARGUMENT;
    if (!ready()) return NVML_ERROR_UNINITIALIZED;
    unsigned int domain, bus, dev;
    if (!parse_bus_id(pciBusId, &domain, &bus, &dev)) return NVML_ERROR_INVALID_ARGUMENT;
    for (unsigned int i = 0; i < device_count; i++)
        if (devices[i].domain == domain && devices[i].bus == bus && devices[i].device == dev) {
            *device = &devices[i];
            return NVML_SUCCESS;
        }
    return NVML_ERROR_NOT_FOUND;
}

NVML_API nvmlReturn_t nvmlDeviceGetHandleByPciBusId(const char *pciBusId, nvmlDevice_t *device)
{
    return nvmlDeviceGetHandleByPciBusId_v2(pciBusId, device);
}

NVML_API nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index)
{
    DEVICE(device, d);
    if (!index) return NVML_ERROR_INVALID_ARGUMENT;
    *index = d->index;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t device, unsigned int *minorNumber)
{
    DEVICE(device, d);
    if (!minorNumber) return NVML_ERROR_INVALID_ARGUMENT;
    *minorNumber = d->index;  /* no /dev/nvidiaN of its own: the vGPU's index */
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
    DEVICE(device, d);
    return put_string(name, length, d->name);
}

NVML_API nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)
{
    DEVICE(device, d);
    return put_string(uuid, length, d->uuid);
}

NVML_API nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int *major, int *minor)
{
    DEVICE(device, d);
    if (!major || !minor) return NVML_ERROR_INVALID_ARGUMENT;
    *major = d->cc_major;
    *minor = d->cc_minor;
    return NVML_SUCCESS;
}

/* ---- PCI ------------------------------------------------------------------------------------ */

/* The PCI location is what cuDeviceGetAttribute says (vGPUs of one GPU share it); the PCI device
 * id is not known through the driver API: only NVIDIA's vendor id is said. */
#define PCI_ID_NVIDIA 0x10DEu

static void bus_id(char *out, size_t n, const struct nvmlDevice_st *d, int legacy)
{
    char s[40];
    if (legacy) snprintf(s, sizeof s, "%04X:%02X:%02X.0", d->domain & 0xffffu, d->bus, d->device);
    else snprintf(s, sizeof s, "%08X:%02X:%02X.0", d->domain, d->bus, d->device);
    size_t len = strnlen(s, sizeof s);
    if (len >= n) len = n - 1;
    memcpy(out, s, len);
    out[len] = '\0';
}

NVML_API nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci)
{
    DEVICE(device, d);
    if (!pci) return NVML_ERROR_INVALID_ARGUMENT;
    memset(pci, 0, sizeof *pci);
    bus_id(pci->busIdLegacy, sizeof pci->busIdLegacy, d, 1);
    bus_id(pci->busId, sizeof pci->busId, d, 0);
    pci->domain = d->domain;
    pci->bus = d->bus;
    pci->device = d->device;
    pci->pciDeviceId = PCI_ID_NVIDIA;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetPciInfo_v2(nvmlDevice_t device, nvmlPciInfoLegacy_t *pci)
{
    DEVICE(device, d);
    if (!pci) return NVML_ERROR_INVALID_ARGUMENT;
    memset(pci, 0, sizeof *pci);
    bus_id(pci->busId, sizeof pci->busId, d, 1);
    pci->domain = d->domain;
    pci->bus = d->bus;
    pci->device = d->device;
    pci->pciDeviceId = PCI_ID_NVIDIA;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetPciInfo(nvmlDevice_t device, nvmlPciInfoLegacy_t *pci)
{
    return nvmlDeviceGetPciInfo_v2(device, pci);
}

/* ---- memory and processes ------------------------------------------------------------------- */

/* Free and used memory of the vGPU, from cuMemGetInfo in its primary context, within the quota;
 * *active: whether the application held the primary context before this call. */
static nvmlReturn_t memory(const struct nvmlDevice_st *d, unsigned long long *total, unsigned long long *free_,
                           unsigned long long *used, int *active)
{
    unsigned int flags = 0;
    int was_active = 0;
    if (cu.cuDevicePrimaryCtxGetState(d->cu, &flags, &was_active) != CUDA_SUCCESS) was_active = 0;
    CUcontext ctx = NULL, popped = NULL;
    CUresult r = cu.cuDevicePrimaryCtxRetain(&ctx, d->cu);
    if (r != CUDA_SUCCESS) return from_cuda(r);
    size_t fr = 0, tot = 0;
    r = cu.cuCtxPushCurrent(ctx);
    if (r == CUDA_SUCCESS) {
        r = cu.cuMemGetInfo(&fr, &tot);
        cu.cuCtxPopCurrent(&popped);
    }
    cu.cuDevicePrimaryCtxRelease(d->cu);
    if (r != CUDA_SUCCESS) return from_cuda(r);
    unsigned long long t = d->total;
    if (tot && tot < t) t = tot;
    unsigned long long f = fr < t ? fr : t;
    *total = t;
    *free_ = f;
    *used = t - f;
    if (active) *active = was_active;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *mem)
{
    DEVICE(device, d);
    if (!mem) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned long long total, free_, used;
    nvmlReturn_t st = memory(d, &total, &free_, &used, NULL);
    if (st != NVML_SUCCESS) return st;
    mem->total = total;
    mem->free = free_;
    mem->used = used;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *mem)
{
    DEVICE(device, d);
    if (!mem) return NVML_ERROR_INVALID_ARGUMENT;
    if (mem->version != nvmlMemory_v2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    unsigned long long total, free_, used;
    nvmlReturn_t st = memory(d, &total, &free_, &used, NULL);
    if (st != NVML_SUCCESS) return st;
    mem->total = total;
    mem->reserved = 0;
    mem->free = free_;
    mem->used = used;
    return NVML_SUCCESS;
}

/* This process, when it holds the primary context or has memory on the vGPU: the only process
 * the client can see (other sessions on the same GPU are other vGPUs). */
static nvmlReturn_t processes(nvmlDevice_t device, unsigned int *count, void *infos, int v1, int compute)
{
    DEVICE(device, d);
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int n = 0;
    unsigned long long total = 0, free_ = 0, used = 0;
    if (compute) {
        int active = 0;
        nvmlReturn_t st = memory(d, &total, &free_, &used, &active);
        if (st != NVML_SUCCESS) return st;
        n = active || used ? 1 : 0;
    }
    if (n > *count || (n && !infos)) {
        *count = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    *count = n;
    if (!n) return NVML_SUCCESS;
    if (v1) {
        nvmlProcessInfo_v1_t *p = infos;
        memset(p, 0, sizeof *p);
        p->pid = (unsigned int)getpid();
        p->usedGpuMemory = used;
    } else {
        nvmlProcessInfo_t *p = infos;
        memset(p, 0, sizeof *p);
        p->pid = (unsigned int)getpid();
        p->usedGpuMemory = used;
        p->gpuInstanceId = NVML_VALUE_NOT_AVAILABLE_UINT;
        p->computeInstanceId = NVML_VALUE_NOT_AVAILABLE_UINT;
    }
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t device, unsigned int *infoCount,
                                                           nvmlProcessInfo_v1_t *infos)
{
    return processes(device, infoCount, infos, 1, 1);
}

NVML_API nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device, unsigned int *infoCount,
                                                              nvmlProcessInfo_t *infos)
{
    return processes(device, infoCount, infos, 0, 1);
}

NVML_API nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *infoCount,
                                                              nvmlProcessInfo_t *infos)
{
    return processes(device, infoCount, infos, 0, 1);
}

/* No graphics and no MPS server on a remoted vGPU: the lists are empty. */
NVML_API nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses(nvmlDevice_t device, unsigned int *infoCount,
                                                            nvmlProcessInfo_v1_t *infos)
{
    return processes(device, infoCount, infos, 1, 0);
}

NVML_API nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v2(nvmlDevice_t device, unsigned int *infoCount,
                                                               nvmlProcessInfo_t *infos)
{
    return processes(device, infoCount, infos, 0, 0);
}

NVML_API nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t device, unsigned int *infoCount,
                                                               nvmlProcessInfo_t *infos)
{
    return processes(device, infoCount, infos, 0, 0);
}

NVML_API nvmlReturn_t nvmlDeviceGetMPSComputeRunningProcesses(nvmlDevice_t device, unsigned int *infoCount,
                                                              nvmlProcessInfo_v1_t *infos)
{
    return processes(device, infoCount, infos, 1, 0);
}

NVML_API nvmlReturn_t nvmlDeviceGetMPSComputeRunningProcesses_v2(nvmlDevice_t device, unsigned int *infoCount,
                                                                 nvmlProcessInfo_t *infos)
{
    return processes(device, infoCount, infos, 0, 0);
}

NVML_API nvmlReturn_t nvmlDeviceGetMPSComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *infoCount,
                                                                 nvmlProcessInfo_t *infos)
{
    return processes(device, infoCount, infos, 0, 0);
}
