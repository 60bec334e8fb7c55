#!/bin/sh
# Facts for CuPy's cuFFT on a GPU host: a small FFT traced over the real driver (export tables and
# slots, with what each pointer argument points at before and after the call), then the same
# program over the native client (which tables and slots it refuses).
#   OUT=/tmp/x sh scripts/gpu-cufft-facts.sh
set -u
O=${OUT:-/tmp/orion-cufft}/fft; mkdir -p $O
cat > $O/fft.py <<'PY'
import cupy as cp, numpy as np
a = np.arange(1024, dtype=np.complex64)
y = cp.asnumpy(cp.fft.fft(cp.asarray(a)))
print("fft ok", bool(np.allclose(y, np.fft.fft(a), rtol=1e-3, atol=1e-1)))
PY
python3 tools/cuda_trace.py build /tmp/orion-trace > $O/trace-build.txt 2>&1 || { tail -20 $O/trace-build.txt; }
REAL=$(sed -n 's/^export ORION_TRACE_REAL=\([^ ]*\) .*/\1/p' $O/trace-build.txt)
mkdir -p $O/trace
ORION_TRACE_REAL="$REAL" ORION_TRACE_LOG="$O/trace" LD_LIBRARY_PATH=/tmp/orion-trace timeout 120 python3 $O/fft.py > $O/real.out 2>&1; echo "real rc=$?"; tail -2 $O/real.out
grep -h "^slot" $O/trace/requests-*.log | grep -v "6bd5fb6c\|d4082055" | head -30
grep -h "^table" $O/trace/requests-*.log
echo "--- our client"
make -s -C orion_virt/client/native OUT=$(pwd)/build/native CUDA_INCLUDE=/usr/local/cuda/include PYTHON=python3 || exit 1
PORT=$(python3 -c 'from orion_virt.launch import free_port; print(free_port())')
mkdir -p $O/shm $O/log
python3 -c "from orion_virt.cli.oriond import main; main()" --backend cuda --listen-port $PORT --log-dir $O/log --shm-path-base $O/shm > $O/oriond.out 2>&1 &
OPID=$!
python3 -c "from orion_virt.launch import wait_port; wait_port($PORT, timeout=60, what='oriond')"
LD_LIBRARY_PATH=$(pwd)/build/native ORION_VGPU=1 ORION_GMEM=4096 ORION_SERVER=127.0.0.1:$PORT ORION_ENABLE_NET=1 ORION_LOG_LEVEL=DEBUG timeout 120 python3 $O/fft.py > $O/ours.out 2>&1; echo "ours rc=$?"
grep -i "warn\|not supported\|export table\|refused\|fft ok\|Error" $O/ours.out | sort | uniq -c | head -30
kill $OPID
