/* cuFFT's export table over the client: TOOLS_MODULE {6e163fbe-...} slot 7 (the kernels of a module,
 * each handed to a callback, their count returned), checked on a PTX module of five kernels and on one
 * of a single kernel (as cuFFT loads its kernels), whose function is launched; then, given NVIDIA's
 * libcufft.so, a 1-D complex FFT planned and run, checked against a DFT on the host.
 * Usage: cufft_plan PTX [LIBCUFFT]   prints "Result = PASS" when every step it ran passed. */
#define _GNU_SOURCE
#include "common.h"

#include <dlfcn.h>
#include <math.h>
#include <string.h>

typedef void (*module_cb)(void *user, CUfunction f, unsigned long long unknown);
typedef unsigned long long (*module_functions_fn)(CUcontext ctx, CUmodule mod, module_cb cb, void *user);

static const CUuuid TOOLS_MODULE = {{(char)0x6e, 0x16, 0x3f, (char)0xbe, (char)0xb9, 0x58, 0x44, 0x4d,
                                     (char)0x83, 0x5c, (char)0xe1, (char)0x82, (char)0xaf, (char)0xf1,
                                     (char)0x99, 0x1e}};

struct seen { CUfunction f[64]; int n; };

static void collect(void *user, CUfunction f, unsigned long long unknown)
{
    (void)unknown;
    struct seen *s = user;
    if (s->n < 64) s->f[s->n] = f;
    s->n++;
}

static int count_entries(const char *ptx)
{
    int n = 0;
    for (const char *p = ptx; (p = strstr(p, ".entry ")); p++) n++;
    return n;
}

/* The PTX header (up to the first kernel) and the one kernel named `name`, as a module of its own. */
static char *single_kernel(const char *ptx, const char *name)
{
    char decl[128];
    snprintf(decl, sizeof decl, ".visible .entry %s(", name);
    const char *first = strstr(ptx, ".visible .entry "), *k = strstr(ptx, decl);
    if (!first || !k) { fprintf(stderr, "no kernel %s in the PTX\n", name); exit(2); }
    const char *end = strstr(k + 1, ".visible .entry ");
    size_t head = (size_t)(first - ptx), body = end ? (size_t)(end - k) : strlen(k);
    char *out = malloc(head + body + 1);
    memcpy(out, ptx, head);
    memcpy(out + head, k, body);
    out[head + body] = '\0';
    return out;
}

static int check_tools_module(CUcontext ctx, const char *ptx)
{
    const void *table = NULL;
    CHECK(cuGetExportTable(&table, &TOOLS_MODULE));
    void *const *slots = table;
    size_t bytes = (size_t)slots[0];
    printf("table TOOLS_MODULE: %zu bytes\n", bytes);
    if (bytes < 8 * sizeof(void *) || !slots[7]) { fprintf(stderr, "no slot 7\n"); return 0; }
    module_functions_fn functions = (module_functions_fn)slots[7];

    CUmodule all, one;
    CHECK(cuModuleLoadData(&all, ptx));
    struct seen s = {0};
    unsigned long long n = functions(ctx, all, collect, &s);
    int want = count_entries(ptx);
    printf("slot 7 on a module of %d kernels: returned %llu, callback called %d times\n", want, n, s.n);
    int ok = n == (unsigned long long)want && s.n == want;
    for (int i = 0; i < s.n && i < 64; i++) ok = ok && s.f[i];

    struct seen none = {0};
    n = functions(ctx, NULL, collect, &none);
    printf("slot 7 without a module: returned %llu, callback called %d times\n", n, none.n);
    ok = ok && n == 0 && none.n == 0;

    char *ptx1 = single_kernel(ptx, "vectorAdd");
    CHECK(cuModuleLoadData(&one, ptx1));
    struct seen s1 = {0};
    n = functions(ctx, one, collect, &s1);
    printf("slot 7 on a module of one kernel: returned %llu, callback called %d times\n", n, s1.n);
    if (n != 1 || s1.n != 1) return 0;

    enum { N = 1000 };
    float a[N], b[N], c[N];
    for (int i = 0; i < N; i++) { a[i] = (float)i; b[i] = 0.5f * (float)i; c[i] = -1; }
    CUdeviceptr da, db, dc;
    CHECK(cuMemAlloc(&da, sizeof a));
    CHECK(cuMemAlloc(&db, sizeof b));
    CHECK(cuMemAlloc(&dc, sizeof c));
    CHECK(cuMemcpyHtoD(da, a, sizeof a));
    CHECK(cuMemcpyHtoD(db, b, sizeof b));
    int count = N;
    void *args[] = {&da, &db, &dc, &count};
    CHECK(cuLaunchKernel(s1.f[0], (N + 255) / 256, 1, 1, 256, 1, 1, 0, NULL, args, NULL));
    CHECK(cuMemcpyDtoH(c, dc, sizeof c));
    int sums = 1;
    for (int i = 0; i < N; i++) sums = sums && fabsf(c[i] - 1.5f * (float)i) < 1e-4f;
    printf("vectorAdd through the function slot 7 gave: %s\n", sums ? "PASSED" : "FAILED");
    CHECK(cuMemFree(da));
    CHECK(cuMemFree(db));
    CHECK(cuMemFree(dc));
    CHECK(cuModuleUnload(one));
    CHECK(cuModuleUnload(all));
    free(ptx1);
    return ok && sums;
}

/* cufft.h's ABI, as NVIDIA documents it: cufftHandle is an int, cufftComplex two floats. */
typedef struct { float x, y; } cplx;
enum { CUFFT_C2C = 0x29, CUFFT_FORWARD = -1 };
typedef int (*cufft_create_fn)(int *plan);
typedef int (*cufft_make1d_fn)(int plan, int nx, int type, int batch, size_t *work);
typedef int (*cufft_exec_fn)(int plan, void *in, void *out, int direction);
typedef int (*cufft_destroy_fn)(int plan);

static int check_cufft(const char *lib)
{
    void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (!h) { fprintf(stderr, "%s\n", dlerror()); return 0; }
    cufft_create_fn create = (cufft_create_fn)dlsym(h, "cufftCreate");
    cufft_make1d_fn make1d = (cufft_make1d_fn)dlsym(h, "cufftMakePlan1d");
    cufft_exec_fn exec = (cufft_exec_fn)dlsym(h, "cufftExecC2C");
    cufft_destroy_fn destroy = (cufft_destroy_fn)dlsym(h, "cufftDestroy");
    if (!create || !make1d || !exec || !destroy) { fprintf(stderr, "%s: not cuFFT\n", lib); return 0; }
    int plan = -1;
    int st = create(&plan);
    printf("cufftCreate: %d\n", st);
    if (st) return 0;
    enum { N = 256 };
    size_t work = 0;
    st = make1d(plan, N, CUFFT_C2C, 1, &work);
    printf("cufftMakePlan1d(%d, C2C): %d, work area %zu bytes\n", N, st, work);
    if (st) { destroy(plan); return 0; }
    static cplx x[N], y[N];
    for (int i = 0; i < N; i++) { x[i].x = (float)sin(0.3 * i) + 0.25f * (float)(i % 7); x[i].y = (float)cos(0.1 * i); }
    CUdeviceptr d;
    CHECK(cuMemAlloc(&d, sizeof x));
    CHECK(cuMemcpyHtoD(d, x, sizeof x));
    st = exec(plan, (void *)(uintptr_t)d, (void *)(uintptr_t)d, CUFFT_FORWARD);
    printf("cufftExecC2C: %d\n", st);
    CHECK(cuCtxSynchronize());
    CHECK(cuMemcpyDtoH(y, d, sizeof y));
    double worst = 0;
    for (int k = 0; k < N; k++) {
        double re = 0, im = 0;
        for (int n = 0; n < N; n++) {
            double w = -2 * M_PI * (double)k * n / N;
            re += x[n].x * cos(w) - x[n].y * sin(w);
            im += x[n].x * sin(w) + x[n].y * cos(w);
        }
        worst = fmax(worst, fmax(fabs(y[k].x - re), fabs(y[k].y - im)));
    }
    printf("cuFFT 1-D C2C of %d points against the host DFT: largest difference %.3g\n", N, worst);
    CHECK(cuMemFree(d));
    destroy(plan);
    return st == 0 && worst < 1e-2;
}

int main(int argc, char **argv)
{
    if (argc < 2) { fprintf(stderr, "usage: %s PTX [LIBCUFFT]\n", argv[0]); return 2; }
    char *ptx = read_file(argv[1]);
    CHECK(cuInit(0));
    CUdevice dev;
    CUcontext ctx;
    CHECK(cuDeviceGet(&dev, 0));
    CHECK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CHECK(cuCtxSetCurrent(ctx));
    int ok = check_tools_module(ctx, ptx);
    if (argc > 2) ok = check_cufft(argv[2]) && ok;
    free(ptx);
    CHECK(cuDevicePrimaryCtxRelease(dev));
    printf("Result = %s\n", ok ? "PASS" : "FAIL");
    return ok ? 0 : 1;
}
