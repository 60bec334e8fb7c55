/* Guest half of tests/integration/test_vm_doorbell.py's data-path test (built on the host,
 * linked against the native client's libcuda.so.1): the warm null call and the first call
 * after an idle pause, through the real client and oriond.
 *
 *   nullcall WARM_N IDLE_N IDLE_MS
 *
 * Prints "WARM n=.. median_us=.. p10_us=.. p90_us=.." for WARM_N back-to-back
 * cuCtxSynchronize calls, and "IDLE ..." for IDLE_N calls each after IDLE_MS of sleep (by then
 * both oriond's worker and this client have stopped spinning: asleep on the doorbell, or in
 * their longest poll sleeps). */
#define _GNU_SOURCE
#include "../common.h"

#include <time.h>

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void report(const char *what, double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp);
    printf("%s n=%d median_us=%.1f p10_us=%.1f p90_us=%.1f min_us=%.1f\n", what, n, v[n / 2], v[n / 10],
           v[n * 9 / 10], v[0]);
}

int main(int argc, char **argv)
{
    int warm_n = argc > 1 ? atoi(argv[1]) : 1000, idle_n = argc > 2 ? atoi(argv[2]) : 20;
    int idle_ms = argc > 3 ? atoi(argv[3]) : 50;
    if (warm_n < 1 || warm_n > 100000 || idle_n < 1 || idle_n > 10000 || idle_ms < 0) return 64;
    CUdevice dev;
    CUcontext ctx;
    CHECK(cuInit(0));
    CHECK(cuDeviceGet(&dev, 0));
    CHECK(cuCtxCreate(&ctx, NULL, 0, dev));
    for (int i = 0; i < 100; i++) CHECK(cuCtxSynchronize());
    double *v = malloc(sizeof *v * (size_t)(warm_n > idle_n ? warm_n : idle_n));
    if (!v) return 2;
    for (int i = 0; i < warm_n; i++) {
        double a = now_us();
        CHECK(cuCtxSynchronize());
        v[i] = now_us() - a;
    }
    report("WARM", v, warm_n);
    for (int i = 0; i < idle_n; i++) {
        struct timespec ts = {idle_ms / 1000, (long)(idle_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        double a = now_us();
        CHECK(cuCtxSynchronize());
        v[i] = now_us() - a;
    }
    report("IDLE", v, idle_n);
    free(v);
    CHECK(cuCtxDestroy(ctx));
    return 0;
}
