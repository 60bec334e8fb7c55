"""A cuFFT tour through CuPy: complex and real 1-D transforms in single and double precision, a
batch, 2-D and 3-D, sizes with large prime factors, an explicit plan on a stream; each checked
against numpy.fft. Prints one line per check, then PASS, or FAIL and exits 1."""
import sys

import cupy as cp
import numpy as np

print("cupy", cp.__version__, "cufft", cp.cuda.cufft.getVersion())
rng = np.random.default_rng(0)


def cplx(shape, dtype=np.complex64):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


def close(got, want, tol):
    """Relative to the largest magnitude of the reference: FFT errors grow with the transform."""
    got = cp.asnumpy(got)
    return got.shape == want.shape and float(np.max(np.abs(got - want))) <= tol * max(1.0, float(np.max(np.abs(want))))


x1 = cplx(1024)
x1d = cplx(4096, np.complex128)
r1 = rng.standard_normal(1000).astype(np.float32)
batch = cplx((64, 256))
x2 = cplx((128, 96))
x3 = cplx((16, 20, 24))
odd = cplx(1009 * 3)  # 3027 = 3 x 1009: Bluestein's path
checks = {
    "fft c2c 1024": close(cp.fft.fft(cp.asarray(x1)), np.fft.fft(x1), 1e-4),
    "ifft c2c 1024 round trip": close(cp.fft.ifft(cp.fft.fft(cp.asarray(x1))), x1.astype(np.complex128), 1e-4),
    "fft z2z 4096 (double)": close(cp.fft.fft(cp.asarray(x1d)), np.fft.fft(x1d), 1e-12),
    "rfft r2c 1000": close(cp.fft.rfft(cp.asarray(r1)), np.fft.rfft(r1), 1e-4),
    "irfft c2r 1000": close(cp.fft.irfft(cp.fft.rfft(cp.asarray(r1)), n=1000), r1.astype(np.float64), 1e-4),
    "batched fft 64 x 256": close(cp.fft.fft(cp.asarray(batch), axis=1), np.fft.fft(batch, axis=1), 1e-4),
    "fft2 128 x 96": close(cp.fft.fft2(cp.asarray(x2)), np.fft.fft2(x2), 1e-4),
    "fftn 16 x 20 x 24": close(cp.fft.fftn(cp.asarray(x3)), np.fft.fftn(x3), 1e-4),
    "fft 3027 (prime factor 1009)": close(cp.fft.fft(cp.asarray(odd)), np.fft.fft(odd), 1e-3),
}
stream = cp.cuda.Stream(non_blocking=True)
with stream:
    a = cp.asarray(x1)
    plan = cp.cuda.cufft.Plan1d(1024, cp.cuda.cufft.CUFFT_C2C, 1)
    out = cp.empty_like(a)
    plan.fft(a, out, cp.cuda.cufft.CUFFT_FORWARD)
    stream.synchronize()
checks["Plan1d on a stream"] = close(out, np.fft.fft(x1), 1e-4)
for k, v in checks.items():
    print(k, "ok" if v else "WRONG")
print("PASS" if all(checks.values()) else "FAIL")
sys.exit(0 if all(checks.values()) else 1)
