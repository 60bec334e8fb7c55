/* Every function of the call spec (orion_virt/wire/spec.py CALLS), at least once, after cuInit, with
 * plausible arguments: the program tests/integration/test_native_fuzz.py runs against a fake oriond
 * that answers with generated and mutated replies.
 *
 * It ignores every status, prints one line per call ("<name> <status>"), and exits 0 at the end.
 * Nothing the server sent is trusted: handles and device pointers it returned are only passed back
 * to later calls as values (the library treats them as opaque), never dereferenced here, and every
 * host buffer is a fixed buffer of this program (exactly as large as the call is told, so that the
 * sanitizer build sees any write past it).
 *
 * The kernel launch: the library packs kernelParams by the parameter layout oriond's
 * cuModuleGetFunction reply gave (the driver API passes no sizes), so a hostile layout makes it
 * read up to 32764 parameters of up to 32764 bytes each. By default every kernelParams entry points
 * at a buffer of that size, so the fuzz finds what else goes wrong; with the argument "tight" the
 * launch passes the kernel's real arguments only (fill_u32: 16 bytes), as a real program does.
 *
 * Exit: 0 after the last call; 2 for a bad argument. The last lines, "after <name> <status>", are
 * three cuDeviceGetAttribute calls (attributes 1, 2, 3, asked nowhere else): once the session is
 * over they return its final status. Against a real oriond (sim) every call returns CUDA_SUCCESS
 * but v1_cuMemAlloc (CUDA_ERROR_OUT_OF_MEMORY: the device pointer does not fit in 32 bits) and
 * cuModuleGetGlobal (CUDA_ERROR_NOT_FOUND: the sim backend has no module globals).
 *
 * When the spec grows, add the new call here: test_every_call_calls_every_function_of_the_spec
 * fails until every name of CALLS is printed.
 */
#include <cuda.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The legacy 32-bit spellings, which the library converts (cuda.h maps the plain names to _v2). */
CUresult CUDAAPI v1_cuDeviceTotalMem(unsigned int *bytes, CUdevice dev) __asm__("cuDeviceTotalMem");
CUresult CUDAAPI v1_cuMemAlloc(unsigned int *dptr, unsigned int bytesize) __asm__("cuMemAlloc");
CUresult CUDAAPI v1_cuMemGetInfo(unsigned int *free, unsigned int *total) __asm__("cuMemGetInfo");
CUresult CUDAAPI v1_cuMemFree(unsigned int dptr) __asm__("cuMemFree");

static int calls;

static void said(const char *prefix, const char *name, CUresult st)
{
    printf("%s%s %d\n", prefix, name, (int)st);
    calls++;
}

/* CALL(cuFoo, (args)): call it (through cuda.h's macro, so the spelling cuda.h picks) and print it. */
#define CALL(fn, args) said("", #fn, fn args)
#define AFTER(fn, args) said("after ", #fn, fn args)

static const char ptx[] =
    ".version 9.0\n"
    ".target sm_80\n"
    ".address_size 64\n"
    ".visible .global .align 4 .u32 counter;\n"
    ".visible .entry fill_u32(\n"
    "\t.param .u64 fill_u32_param_0,\n"
    "\t.param .u32 fill_u32_param_1,\n"
    "\t.param .u32 fill_u32_param_2\n"
    ")\n"
    "{\n"
    "\t.reg .pred %p<2>;\n"
    "\t.reg .b32 %r<7>;\n"
    "\t.reg .b64 %rd<5>;\n"
    "\tld.param.u64 %rd1, [fill_u32_param_0];\n"
    "\tld.param.u32 %r2, [fill_u32_param_1];\n"
    "\tld.param.u32 %r3, [fill_u32_param_2];\n"
    "\tmov.u32 %r4, %ntid.x;\n"
    "\tmov.u32 %r5, %ctaid.x;\n"
    "\tmov.u32 %r6, %tid.x;\n"
    "\tmad.lo.s32 %r1, %r4, %r5, %r6;\n"
    "\tsetp.ge.s32 %p1, %r1, %r3;\n"
    "\t@%p1 bra $L__BB0_2;\n"
    "\tcvta.to.global.u64 %rd2, %rd1;\n"
    "\tmul.wide.s32 %rd3, %r1, 4;\n"
    "\tadd.s64 %rd4, %rd2, %rd3;\n"
    "\tst.global.u32 [%rd4], %r2;\n"
    "$L__BB0_2:\n"
    "\tret;\n"
    "}\n";

#define MAX_PARAMS 32764  /* the protocol's bound on a kernel's parameter buffer */
#define COPY 256          /* bytes per copy */

static void *wide_params[MAX_PARAMS];
static unsigned char wide_arg[MAX_PARAMS];

int main(int argc, char **argv)
{
    int tight = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "tight")) tight = 1;
        else { fprintf(stderr, "usage: %s [tight]\n", argv[0]); return 2; }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);  /* each line out at once: a crash or hang shows how far it got */

    /* fixed host buffers, exactly as large as each call is told */
    char *name = malloc(64);
    unsigned char *src = malloc(COPY), *dst = malloc(COPY), *dst_async = malloc(COPY);
    if (!name || !src || !dst || !dst_async) return 3;
    for (int i = 0; i < COPY; i++) src[i] = (unsigned char)i;

    /* what the server returns: stored, passed back as opaque values, never dereferenced */
    int version = 0, count = 0, attr = 0, least = 0, greatest = 0;
    CUdevice dev = 0;
    size_t total_mem = 0, mem_free = 0, mem_total = 0;
    CUuuid uuid;
    CUcontext primary = NULL, ctx = NULL, cur = NULL;
    CUdeviceptr d = 0;
    CUstream s = NULL, s_prio = NULL;
    CUevent e0 = NULL, e1 = NULL;
    CUmodule mod = NULL;
    CUfunction fn = NULL;
    float ms = 0;
    CUdeviceptr global = 0, range_start = 0;
    size_t global_size = 0, smem = 0, limit = 0;
    int blocks = 0, clusters = 0;
    unsigned int memory_type = 0;  /* the attribute's own size: the library writes 4 bytes */
    unsigned int legacy_total = 0, legacy_free = 0, legacy_d = 0;

    CALL(cuInit, (0));
    CALL(cuDriverGetVersion, (&version));
    CALL(cuDeviceGetCount, (&count));
    CALL(cuDeviceGet, (&dev, 0));
    CALL(cuDeviceGetName, (name, 64, 0));
    CALL(cuDeviceTotalMem, (&total_mem, 0));
    CALL(cuDeviceGetAttribute, (&attr, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 0));
    CALL(cuDeviceGetUuid, (&uuid, 0));
    CALL(cuDevicePrimaryCtxRetain, (&primary, 0));
    CALL(cuCtxCreate, (&ctx, NULL, 0, 0));  /* CUDA 13: cuCtxCreate_v4 */
    CALL(cuCtxSetCurrent, (primary));
    CALL(cuCtxSetCurrent, (ctx));
    CALL(cuCtxGetCurrent, (&cur));
    CALL(cuCtxGetStreamPriorityRange, (&least, &greatest));
    CALL(cuMemGetInfo, (&mem_free, &mem_total));

    CALL(cuMemAlloc, (&d, 1 << 20));
    CALL(cuMemcpyHtoD, (d, src, COPY));
    CALL(cuMemcpyDtoH, (dst, d, COPY));
    CALL(cuMemcpyDtoD, (d + 4096, d, COPY));
    CALL(cuMemsetD8, (d, 0x5A, 64));
    CALL(cuMemsetD32, (d + 64, 0xDEADBEEFu, 16));

    CALL(cuStreamCreate, (&s, CU_STREAM_NON_BLOCKING));
    CALL(cuStreamCreateWithPriority, (&s_prio, CU_STREAM_DEFAULT, 0));
    CALL(cuEventCreate, (&e0, CU_EVENT_DEFAULT));
    CALL(cuEventCreate, (&e1, CU_EVENT_DEFAULT));
    CALL(cuEventRecord, (e0, s));
    CALL(cuMemcpyHtoDAsync, (d, src, COPY, s));
    CALL(cuMemcpyDtoDAsync, (d + 8192, d, COPY, s));
    CALL(cuMemsetD8Async, (d + 256, 1, 16, s));
    CALL(cuMemsetD32Async, (d + 512, 7, 16, s));
    CALL(cuMemcpyDtoHAsync, (dst_async, d, COPY, s));
    CALL(cuStreamWaitEvent, (s_prio, e0, 0));
    CALL(cuEventRecord, (e1, s));
    CALL(cuStreamQuery, (s));
    CALL(cuStreamSynchronize, (s));
    CALL(cuDeviceCanAccessPeer, (&attr, 0, count > 1 ? 1 : 0));
    CALL(cuCtxEnablePeerAccess, (primary, 0));  /* a context of the same device: refused by the server */
    CALL(cuCtxDisablePeerAccess, (primary));
    CALL(cuMemcpyPeer, (d + 4096, ctx, d, ctx, COPY));
    CALL(cuMemcpyPeerAsync, (d + 8192, ctx, d, ctx, COPY, s));
    CALL(cuEventQuery, (e1));
    CALL(cuEventSynchronize, (e1));
    CALL(cuEventElapsedTime, (&ms, e0, e1));

    CALL(cuModuleLoadData, (&mod, ptx));
    CALL(cuModuleGetFunction, (&fn, mod, "fill_u32"));
    CALL(cuModuleGetGlobal, (&global, &global_size, mod, "counter"));
    CALL(cuFuncGetAttribute, (&attr, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, fn));
    CALL(cuFuncSetAttribute, (fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 1024));
    CALL(cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags, (&blocks, fn, 256, 0, CU_OCCUPANCY_DEFAULT));
    CALL(cuOccupancyAvailableDynamicSMemPerBlock, (&smem, fn, 1, 256));
    {
        CUlaunchAttribute cluster = {.id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION};
        cluster.value.clusterDim.x = 2;
        cluster.value.clusterDim.y = 1;
        cluster.value.clusterDim.z = 1;
        CUlaunchConfig config = {.gridDimX = 4, .gridDimY = 1, .gridDimZ = 1, .blockDimX = 128, .blockDimY = 1,
                                 .blockDimZ = 1, .hStream = s, .attrs = &cluster, .numAttrs = 1};
        CALL(cuOccupancyMaxActiveClusters, (&clusters, fn, &config));
    }
    CALL(cuCtxGetLimit, (&limit, CU_LIMIT_STACK_SIZE));
    CALL(cuCtxSetLimit, (CU_LIMIT_STACK_SIZE, 2048));
    CALL(cuPointerGetAttribute, (&memory_type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, d + 100));
    CALL(cuPointerGetAttribute, (&range_start, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, d + 100));
    {
        CUdeviceptr p = d;
        unsigned int v = 3;
        int n = 16;
        void *args[] = {&p, &v, &n};
        void **params = args;
        if (!tight) {
            memcpy(wide_arg, &p, sizeof p);
            for (int i = 0; i < MAX_PARAMS; i++) wide_params[i] = wide_arg;
            params = wide_params;
        }
        CALL(cuLaunchKernel, (fn, 1, 1, 1, 16, 1, 1, 0, s, params, NULL));
        /* the same launch with its parameters packed in `extra` (the buffer as large as any layout) */
        size_t size = tight ? 16 : sizeof wide_arg;
        struct { CUdeviceptr p; unsigned int v; int n; } packed = {d, 5, 16};
        void *buf = tight ? (void *)&packed : (void *)wide_arg;
        void *extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, buf, CU_LAUNCH_PARAM_BUFFER_SIZE, &size, CU_LAUNCH_PARAM_END};
        CALL(cuLaunchKernel, (fn, 1, 1, 1, 16, 1, 1, 0, s, NULL, extra));
    }
    {
        CUgraph graph = NULL;
        CUgraphExec exec = NULL;
        CUstreamCaptureStatus capturing = CU_STREAM_CAPTURE_STATUS_NONE;
        cuuint64_t capture_id = 0;
        size_t nodes = 0;
        unsigned int v = 9;
        int n = 16;
        CUdeviceptr p = d;
        void *args[] = {&p, &v, &n};
        CALL(cuStreamBeginCapture, (s, CU_STREAM_CAPTURE_MODE_RELAXED));
        CALL(cuStreamGetCaptureInfo, (s, &capturing, &capture_id, NULL, NULL, NULL, NULL));
        CALL(cuLaunchKernel, (fn, 1, 1, 1, 16, 1, 1, 0, s, tight ? args : wide_params, NULL));
        CALL(cuStreamEndCapture, (s, &graph));
        CALL(cuGraphGetNodes, (graph, NULL, &nodes));
        CALL(cuGraphInstantiate, (&exec, graph, 0));
        CALL(cuGraphLaunch, (exec, s));
        CALL(cuGraphExecDestroy, (exec));
        CALL(cuGraphDestroy, (graph));
    }
    CALL(cuCtxSynchronize, ());
    CALL(cuModuleUnload, (mod));

    CALL(cuEventDestroy, (e0));
    CALL(cuEventDestroy, (e1));
    CALL(cuStreamDestroy, (s_prio));
    CALL(cuStreamDestroy, (s));
    CALL(cuMemFree, (d));

    /* the legacy spellings, which convert: a device pointer or size beyond 32 bits */
    CALL(v1_cuDeviceTotalMem, (&legacy_total, 0));
    CALL(v1_cuMemGetInfo, (&legacy_free, &legacy_total));
    CALL(v1_cuMemAlloc, (&legacy_d, 4096));
    CALL(v1_cuMemFree, (legacy_d));

    CALL(cuCtxDestroy, (ctx));
    CALL(cuDevicePrimaryCtxRelease, (0));

    /* at the end: after a session that ended, each returns its final status (attributes 1-3, asked
     * nowhere else, so that a server can tell these calls from the others) */
    AFTER(cuDeviceGetAttribute, (&attr, CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK, 0));
    AFTER(cuDeviceGetAttribute, (&attr, CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X, 0));
    AFTER(cuDeviceGetAttribute, (&attr, CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y, 0));

    printf("every_call: done, %d calls\n", calls);
    free(name);
    free(src);
    free(dst);
    free(dst_async);
    return 0;
}
