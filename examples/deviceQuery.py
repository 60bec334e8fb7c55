"""deviceQuery, cuda-python style: lists the CUDA devices this process sees.

Runs unmodified against a real driver or, under orion-run, against Orion vGPUs.
"""

import sys

from cuda.bindings import driver as cuda


def check(result):
    err, *values = result
    if err != cuda.CUresult.CUDA_SUCCESS:
        _, name = cuda.cuGetErrorName(err)
        sys.exit(f"CUDA error {int(err)} ({name.decode()})")
    return values[0] if len(values) == 1 else values


def main() -> None:
    check(cuda.cuInit(0))
    version = check(cuda.cuDriverGetVersion())
    count = check(cuda.cuDeviceGetCount())
    print(f"CUDA driver version {version // 1000}.{version % 1000 // 10}")
    print(f"Detected {count} CUDA Capable device(s)")
    A = cuda.CUdevice_attribute
    for i in range(count):
        dev = check(cuda.cuDeviceGet(i))
        name = check(cuda.cuDeviceGetName(256, dev)).split(b"\0", 1)[0].decode()
        total = check(cuda.cuDeviceTotalMem(dev))
        major = check(cuda.cuDeviceGetAttribute(A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev))
        minor = check(cuda.cuDeviceGetAttribute(A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev))
        sms = check(cuda.cuDeviceGetAttribute(A.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev))
        print(f"Device {i}: \"{name}\"")
        print(f"  Total amount of global memory: {total >> 20} MBytes ({total} bytes)")
        print(f"  CUDA Capability Major/Minor version number: {major}.{minor}")
        print(f"  Multiprocessors: {sms}")
    print("Result = PASS")


if __name__ == "__main__":
    main()
