#!/bin/sh
# Facts from NVIDIA's real driver on a GPU host, for the native client:
#  - the cuGetProcAddress table of this driver (tools/gen_procaddr.py), checked in as data;
#  - which driver functions and export-table slots ordinary programs use (tools/cuda_trace.py):
#    runtime-API and cuBLAS programs built with nvcc, PyTorch, CuPy, cuda.core, cuda-bindings.
# Writes everything under ${OUT:-/tmp/orion-facts} and packs it into facts.tgz there.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
O=${OUT:-/tmp/orion-facts}/facts
mkdir -p "$O/trace" "$O/bin"
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
nvidia-smi -L
"$PY" tools/gen_procaddr.py --out "$O/procaddr" || echo "gen_procaddr FAILED"
"$PY" tools/cuda_trace.py build /tmp/orion-trace > "$O/trace-build.txt" 2>&1 || { cat "$O/trace-build.txt"; exit 1; }
REAL=$(sed -n 's/^export ORION_TRACE_REAL=\([^ ]*\) .*/\1/p' "$O/trace-build.txt")
echo "real driver: $REAL"
P=tests/gpu/programs
"$NVCC" -O2 -o "$O/bin/rt_vectorAdd" $P/rt_vectorAdd.cu
"$NVCC" -O2 -cudart shared -o "$O/bin/rt_vectorAdd_shared" $P/rt_vectorAdd.cu
"$NVCC" -O2 -o "$O/bin/rt_deviceQuery" $P/rt_deviceQuery.cu
"$NVCC" -O2 -o "$O/bin/cublas_sgemm" $P/cublas_sgemm.cu -lcublas
run() {
    name=$1; shift
    mkdir -p "$O/trace/$name"
    echo "=== $name: $*"
    ORION_TRACE_REAL="$REAL" ORION_TRACE_LOG="$O/trace/$name" LD_LIBRARY_PATH="/tmp/orion-trace${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
        timeout 300 "$@" > "$O/trace/$name.out" 2>&1
    echo "rc=$?" >> "$O/trace/$name.out"
    tail -3 "$O/trace/$name.out"
    "$PY" tools/cuda_trace.py summary "$O/trace/$name" > "$O/trace/$name.txt"
    echo "  $(grep -vc '^table' "$O/trace/$name.txt") functions; tables: $(grep '^table' "$O/trace/$name.txt" | cut -f2 | tr '\n' ' ')"
}
run rt_deviceQuery "$O/bin/rt_deviceQuery"
run rt_vectorAdd "$O/bin/rt_vectorAdd"
run rt_vectorAdd_shared "$O/bin/rt_vectorAdd_shared"
run cublas_sgemm "$O/bin/cublas_sgemm"
run cuda_bindings_deviceQuery "$PY" examples/deviceQuery.py
run nvrtc_saxpy "$PY" tests/gpu/programs/nvrtc_saxpy.py
run torch_tour "$PY" $P/torch_tour.py 100
run torch_tour_async env PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync "$PY" $P/torch_tour.py 20
run cupy_tour "$PY" $P/cupy_tour.py
run cuda_core_tour "$PY" $P/cuda_core_tour.py
tar czf "${OUT:-/tmp/orion-facts}/facts.tgz" -C "$O/.." facts
echo done
