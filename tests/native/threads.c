/* Several threads calling the driver at once (one session, calls serialised by the client). */
#include "common.h"

#include <pthread.h>
#include <stdint.h>
#include <string.h>

#define THREADS 8
#define ROUNDS 200

static CUcontext ctx;

static void *worker(void *arg)
{
    uintptr_t id = (uintptr_t)arg;
    unsigned char in[4096], out[4096];
    CHECK(cuCtxSetCurrent(ctx));
    for (int r = 0; r < ROUNDS; r++) {
        CUdeviceptr p;
        memset(in, (int)(id * 31 + (uintptr_t)r), sizeof in);
        CHECK(cuMemAlloc(&p, sizeof in));
        CHECK(cuMemcpyHtoD(p, in, sizeof in));
        CHECK(cuMemcpyDtoH(out, p, sizeof out));
        CHECK(cuMemFree(p));
        if (memcmp(in, out, sizeof in)) {
            fprintf(stderr, "thread %u round %d: data mixed up\n", (unsigned)id, r);
            exit(1);
        }
    }
    return NULL;
}

int main(void)
{
    pthread_t t[THREADS];
    CUdevice dev;
    CHECK(cuInit(0));
    CHECK(cuDeviceGet(&dev, 0));
    CHECK(cuDevicePrimaryCtxRetain(&ctx, dev));
    for (uintptr_t i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, worker, (void *)i);
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    printf("%d threads x %d rounds: PASSED\n", THREADS, ROUNDS);
    return 0;
}
