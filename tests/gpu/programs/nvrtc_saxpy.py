"""cuda-python's NVRTC saxpy example, unmodified in spirit: compile with NVRTC, launch with the
driver API, check on the host. ``python nvrtc_saxpy.py ptx|cubin``.

Run under ``orion-run``, ``cuda.bindings.driver`` is the Orion client (calls go to oriond) while
``cuda.bindings.nvrtc`` stays NVIDIA's, compiling on the client: nothing here knows about Orion.
"""

import sys

import numpy as np
from cuda.bindings import driver, nvrtc

SAXPY = """\
extern "C" __global__
void saxpy(float a, float *x, float *y, float *out, size_t n)
{
    size_t tid = blockIdx.x * blockDim.x + threadIdx.x;
    if (tid < n) {
        out[tid] = a * x[tid] + y[tid];
    }
}
"""


def check(result):
    err, *values = result
    if isinstance(err, driver.CUresult):
        if err != driver.CUresult.CUDA_SUCCESS:
            raise RuntimeError(f"CUDA error {err!r}")
    elif isinstance(err, nvrtc.nvrtcResult):
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise RuntimeError(f"NVRTC error {err!r}")
    else:
        raise RuntimeError(f"unknown error type {err!r}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def main() -> None:
    kind = sys.argv[1] if len(sys.argv) > 1 else "ptx"
    check(driver.cuInit(0))
    device = check(driver.cuDeviceGet(0))
    major = check(driver.cuDeviceGetAttribute(
        driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device))
    minor = check(driver.cuDeviceGetAttribute(
        driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device))
    arch = f"{'sm' if kind == 'cubin' else 'compute'}_{major}{minor}"
    print(f"NVRTC {check(nvrtc.nvrtcVersion())}: compiling saxpy for {arch}")

    prog = check(nvrtc.nvrtcCreateProgram(str.encode(SAXPY), b"saxpy.cu", 0, [], []))
    opts = [b"--fmad=false", f"--gpu-architecture={arch}".encode()]
    try:
        check(nvrtc.nvrtcCompileProgram(prog, len(opts), opts))
    except RuntimeError:
        size = check(nvrtc.nvrtcGetProgramLogSize(prog))
        log = b" " * size
        check(nvrtc.nvrtcGetProgramLog(prog, log))
        print(log.decode(errors="replace"))
        raise
    if kind == "cubin":
        size = check(nvrtc.nvrtcGetCUBINSize(prog))
        image = b" " * size
        check(nvrtc.nvrtcGetCUBIN(prog, image))
    else:
        size = check(nvrtc.nvrtcGetPTXSize(prog))
        image = b" " * size
        check(nvrtc.nvrtcGetPTX(prog, image))
    image = np.char.array(image)

    context = check(driver.cuCtxCreate(None, 0, device))
    module = check(driver.cuModuleLoadData(image.ctypes.data))
    kernel = check(driver.cuModuleGetFunction(module, b"saxpy"))

    num_threads, num_blocks = 512, 32768
    n = np.array(num_threads * num_blocks, dtype=np.uint64)
    a = np.array([2.0], dtype=np.float32)
    rng = np.random.default_rng(1)
    h_x = rng.random(int(n), dtype=np.float32)
    h_y = rng.random(int(n), dtype=np.float32)
    h_out = np.zeros(int(n), dtype=np.float32)
    buffer_size = int(n) * a.itemsize

    d_x = check(driver.cuMemAlloc(buffer_size))
    d_y = check(driver.cuMemAlloc(buffer_size))
    d_out = check(driver.cuMemAlloc(buffer_size))
    stream = check(driver.cuStreamCreate(0))
    check(driver.cuMemcpyHtoDAsync(d_x, h_x.ctypes.data, buffer_size, stream))
    check(driver.cuMemcpyHtoDAsync(d_y, h_y.ctypes.data, buffer_size, stream))

    d_x_arg = np.array([int(d_x)], dtype=np.uint64)
    d_y_arg = np.array([int(d_y)], dtype=np.uint64)
    d_out_arg = np.array([int(d_out)], dtype=np.uint64)
    args = [a, d_x_arg, d_y_arg, d_out_arg, n]
    args = np.array([arg.ctypes.data for arg in args], dtype=np.uint64)
    check(driver.cuLaunchKernel(kernel, num_blocks, 1, 1, num_threads, 1, 1, 0, stream, args.ctypes.data, 0))
    check(driver.cuMemcpyDtoHAsync(h_out.ctypes.data, d_out, buffer_size, stream))
    check(driver.cuStreamSynchronize(stream))

    expected = a[0] * h_x + h_y
    if not np.allclose(h_out, expected):
        bad = int(np.argmax(~np.isclose(h_out, expected)))
        sys.exit(f"saxpy FAILED at {bad}: {h_out[bad]} != {expected[bad]}")
    print(f"saxpy ({kind}) of {int(n)} elements: PASSED")

    check(driver.cuStreamDestroy(stream))
    for p in (d_x, d_y, d_out):
        check(driver.cuMemFree(p))
    check(driver.cuModuleUnload(module))
    check(driver.cuCtxDestroy(context))
    check(nvrtc.nvrtcDestroyProgram(prog))


if __name__ == "__main__":
    main()
