/* deviceQueryDrv, as NVIDIA's sample does it with the driver API. */
#include "common.h"

#include <string.h>

int main(void)
{
    int driver = 0, count = 0;
    CHECK(cuDriverGetVersion(&driver));
    printf("CUDA Device Query (Driver API) statically linked version\n");
    CHECK(cuInit(0));
    CHECK(cuDeviceGetCount(&count));
    if (count == 0) {
        printf("There are no available device(s) that support CUDA\n");
        return 1;
    }
    printf("Detected %d CUDA Capable device(s)\n", count);
    CHECK(cuDriverGetVersion(&driver));
    printf("  CUDA Driver Version: %d.%d\n", driver / 1000, (driver % 100) / 10);
    for (int i = 0; i < count; i++) {
        CUdevice dev;
        char name[256];
        size_t total = 0;
        int major = 0, minor = 0, sms = 0, warp = 0, threads = 0, clock = 0;
        CUuuid uuid;
        CHECK(cuDeviceGet(&dev, i));
        CHECK(cuDeviceGetName(name, sizeof name, dev));
        CHECK(cuDeviceTotalMem(&total, dev));
        CHECK(cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev));
        CHECK(cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev));
        CHECK(cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev));
        CHECK(cuDeviceGetAttribute(&warp, CU_DEVICE_ATTRIBUTE_WARP_SIZE, dev));
        CHECK(cuDeviceGetAttribute(&threads, CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK, dev));
        CHECK(cuDeviceGetAttribute(&clock, CU_DEVICE_ATTRIBUTE_CLOCK_RATE, dev));
        CHECK(cuDeviceGetUuid(&uuid, dev));
        printf("\nDevice %d: \"%s\"\n", i, name);
        printf("  CUDA Capability Major/Minor version number:    %d.%d\n", major, minor);
        printf("  Total amount of global memory: %llu MBytes (%llu bytes)\n",
               (unsigned long long)(total >> 20), (unsigned long long)total);
        printf("  Multiprocessors: %d\n", sms);
        printf("  Warp size: %d\n", warp);
        printf("  Maximum number of threads per block: %d\n", threads);
        printf("  GPU Max Clock rate: %.0f MHz\n", clock * 1e-3);
        printf("  UUID: GPU-");
        for (int b = 0; b < 16; b++) printf("%02x", (unsigned char)uuid.bytes[b]);
        printf("\n");
        if (!name[0] || strlen(name) >= sizeof name || warp <= 0 || threads <= 0) {
            printf("Result = FAIL\n");
            return 1;
        }
    }
    printf("\nResult = PASS\n");
    return 0;
}
