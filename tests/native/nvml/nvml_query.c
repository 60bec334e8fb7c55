/* NVML from C, linked with -lnvidia-ml and -lcuda: the vGPUs, their memory as an allocation changes
 * it, this process in the process list, the buffer and version checks, and the calling thread's
 * CUDA context left as it was by a memory query. Prints one line per check; exit 1 on a failure. */
#include <cuda.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "orion_nvml.h"

/* a function the library has only as a stub (orion_nvml.h does not declare it) */
nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, int sensorType, unsigned int *temp);

#define NV(call)                                                                                    \
    do {                                                                                            \
        nvmlReturn_t r_ = (call);                                                                   \
        if (r_ != NVML_SUCCESS) {                                                                   \
            fprintf(stderr, "%s -> %d %s at line %d\n", #call, (int)r_, nvmlErrorString(r_), __LINE__); \
            exit(1);                                                                                \
        }                                                                                           \
    } while (0)
#define WANT(call, want)                                                                            \
    do {                                                                                            \
        nvmlReturn_t r_ = (call);                                                                   \
        if (r_ != (want)) {                                                                         \
            fprintf(stderr, "%s -> %d, expected %s at line %d\n", #call, (int)r_, #want, __LINE__);   \
            exit(1);                                                                                \
        }                                                                                           \
        printf("ok: %s -> %s\n", #call, #want);                                                     \
    } while (0)
#define CU(call)                                                                                    \
    do {                                                                                            \
        CUresult r_ = (call);                                                                       \
        if (r_ != CUDA_SUCCESS) {                                                                   \
            fprintf(stderr, "%s -> CUDA %d at line %d\n", #call, (int)r_, __LINE__);                 \
            exit(1);                                                                                \
        }                                                                                           \
    } while (0)

int main(void)
{
    unsigned int n = 0;
    WANT(nvmlDeviceGetCount_v2(&n), NVML_ERROR_UNINITIALIZED);
    WANT(nvmlShutdown(), NVML_ERROR_UNINITIALIZED);
    NV(nvmlInit_v2());
    NV(nvmlInit());  /* counted: two shutdowns below */
    NV(nvmlDeviceGetCount_v2(&n));
    printf("devices: %u\n", n);
    char driver[NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE], nvml[NVML_SYSTEM_NVML_VERSION_BUFFER_SIZE];
    int cuda = 0;
    NV(nvmlSystemGetDriverVersion(driver, sizeof driver));
    NV(nvmlSystemGetNVMLVersion(nvml, sizeof nvml));
    NV(nvmlSystemGetCudaDriverVersion_v2(&cuda));
    printf("driver %s, NVML %s, CUDA %d\n", driver, nvml, cuda);

    for (unsigned int i = 0; i < n; i++) {
        nvmlDevice_t d, again;
        char name[NVML_DEVICE_NAME_V2_BUFFER_SIZE], uuid[NVML_DEVICE_UUID_V2_BUFFER_SIZE];
        nvmlMemory_t m;
        nvmlPciInfo_t pci;
        unsigned int index = 99;
        int major = 0, minor = 0;
        NV(nvmlDeviceGetHandleByIndex_v2(i, &d));
        NV(nvmlDeviceGetName(d, name, sizeof name));
        NV(nvmlDeviceGetUUID(d, uuid, sizeof uuid));
        NV(nvmlDeviceGetMemoryInfo(d, &m));
        NV(nvmlDeviceGetPciInfo_v3(d, &pci));
        NV(nvmlDeviceGetCudaComputeCapability(d, &major, &minor));
        NV(nvmlDeviceGetHandleByUUID(uuid, &again));
        NV(nvmlDeviceGetIndex(again, &index));
        printf("device %u: %s, %s, total %llu MiB, used %llu MiB, cc %d.%d, bus %s, by uuid %u\n", i, name, uuid,
               m.total >> 20, m.used >> 20, major, minor, pci.busId, index);
    }

    nvmlDevice_t d0;
    NV(nvmlDeviceGetHandleByIndex(0, &d0));
    char small[4];
    WANT(nvmlDeviceGetName(d0, small, sizeof small), NVML_ERROR_INSUFFICIENT_SIZE);
    WANT(nvmlDeviceGetUUID(d0, small, sizeof small), NVML_ERROR_INSUFFICIENT_SIZE);
    WANT(nvmlDeviceGetHandleByIndex_v2(n, &(nvmlDevice_t){0}), NVML_ERROR_INVALID_ARGUMENT);
    WANT(nvmlDeviceGetName((nvmlDevice_t)(void *)small, small, sizeof small), NVML_ERROR_INVALID_ARGUMENT);
    WANT(nvmlDeviceGetHandleByUUID("GPU-00000000-0000-0000-0000-000000000000", &(nvmlDevice_t){0}),
         NVML_ERROR_NOT_FOUND);
    nvmlMemory_v2_t m2;
    memset(&m2, 0, sizeof m2);
    m2.version = 1;
    WANT(nvmlDeviceGetMemoryInfo_v2(d0, &m2), NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    m2.version = nvmlMemory_v2;
    NV(nvmlDeviceGetMemoryInfo_v2(d0, &m2));
    printf("memory v2: total %llu MiB, free %llu MiB, used %llu MiB\n", m2.total >> 20, m2.free >> 20,
           m2.used >> 20);

    /* an allocation in a context of the application's own; the memory query leaves it current */
    CUcontext ctx = NULL, cur = NULL;
    CUdeviceptr p;
    CU(cuInit(0));
    CU(cuCtxCreate(&ctx, NULL, 0, 0));
    CU(cuMemAlloc(&p, 96u << 20));
    nvmlMemory_t m;
    NV(nvmlDeviceGetMemoryInfo(d0, &m));
    CU(cuCtxGetCurrent(&cur));
    printf("after 96 MiB: used %llu MiB of %llu MiB; context kept: %s\n", m.used >> 20, m.total >> 20,
           cur == ctx ? "yes" : "no");

    unsigned int count = 0;
    WANT(nvmlDeviceGetComputeRunningProcesses_v3(d0, &count, NULL), NVML_ERROR_INSUFFICIENT_SIZE);
    nvmlProcessInfo_t procs[4];
    count = 4;
    NV(nvmlDeviceGetComputeRunningProcesses_v3(d0, &count, procs));
    printf("processes: %u, this one: %s, using %llu MiB\n", count,
           count == 1 && procs[0].pid == (unsigned int)getpid() ? "yes" : "no", procs[0].usedGpuMemory >> 20);
    nvmlProcessInfo_v1_t old[2];
    count = 2;
    NV(nvmlDeviceGetComputeRunningProcesses(d0, &count, old));
    printf("processes (v1): %u, using %llu MiB\n", count, old[0].usedGpuMemory >> 20);
    count = 4;
    NV(nvmlDeviceGetGraphicsRunningProcesses_v3(d0, &count, procs));
    printf("graphics processes: %u\n", count);
    CU(cuMemFree(p));
    NV(nvmlDeviceGetMemoryInfo(d0, &m));
    printf("after free: used %llu MiB\n", m.used >> 20);

    unsigned int temp = 0;
    WANT(nvmlDeviceGetTemperature(d0, 0, &temp), NVML_ERROR_NOT_SUPPORTED);
    WANT(nvmlDeviceGetTemperature(d0, 0, &temp), NVML_ERROR_NOT_SUPPORTED);

    NV(nvmlShutdown());
    NV(nvmlDeviceGetCount(&n));  /* still initialised once */
    NV(nvmlShutdown());
    WANT(nvmlDeviceGetCount(&n), NVML_ERROR_UNINITIALIZED);
    printf("Test PASSED\n");
    return 0;
}
