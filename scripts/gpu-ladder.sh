#!/bin/sh
# The GPU ladder of the native client on a GPU host: oriond --backend cuda, and ordinary programs
# run unmodified with build/native first on LD_LIBRARY_PATH (ORION_VGPU=2 ORION_GMEM=4096), over
# shared memory and over TCP:
#   C driver-API programs (tests/native), built with gcc;
#   CUDA C programs built with nvcc: runtime device query, vectorAdd with static and with shared
#   cudart, a cuBLAS SGEMM; NVIDIA's libcudart over a runtime-API C program;
#   cuda-python programs (driver, runtime, NVRTC); PyTorch, CuPy and cuda.core tours.
# Prints one PASS/FAIL line per program and transport, and writes the outputs under $OUT/ladder.
#   scripts/gpu-ladder.sh        (LADDER_ONLY="name ..." runs only those steps)
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
O=${OUT:-/tmp/orion-ladder}/ladder
rm -rf "$O"; mkdir -p "$O/bin" "$O/shm" "$O/log" "$O/out"
CUDA=${CUDA_HOME:-/usr/local/cuda}
export CUDA_INCLUDE=${CUDA_INCLUDE:-$CUDA/include}
make -s -C orion_virt/client/native OUT="$O/lib" CUDA_INCLUDE="$CUDA_INCLUDE" PYTHON="$PY" || exit 1
for p in deviceQuery memory vectorAdd errors threads procaddr pinned zero_copy two_devices cufft_plan launch_ex host_register; do
    gcc -std=c11 -O1 -pthread -I"$CUDA_INCLUDE" -Itests/native tests/native/$p.c -L"$O/lib" -lcuda -lm -ldl -o "$O/bin/$p" || exit 1
done
gcc -std=c11 -O1 -I"$CUDA_INCLUDE" tests/native/runtime/runtime_api.c -L"$CUDA/lib64" -lcudart -Wl,-rpath,"$CUDA/lib64" -o "$O/bin/runtime_api"
P=tests/gpu/programs
"$CUDA/bin/nvcc" -O2 -o "$O/bin/rt_vectorAdd" $P/rt_vectorAdd.cu
"$CUDA/bin/nvcc" -O2 -cudart shared -o "$O/bin/rt_vectorAdd_shared" $P/rt_vectorAdd.cu
"$CUDA/bin/nvcc" -O2 -o "$O/bin/rt_deviceQuery" $P/rt_deviceQuery.cu
"$CUDA/bin/nvcc" -O2 -o "$O/bin/cublas_sgemm" $P/cublas_sgemm.cu -lcublas
"$CUDA/bin/nvcc" -O2 -arch=sm_90 -o "$O/bin/rt_cluster" $P/rt_cluster.cu
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
# numba-cuda needs a NumPy with np.row_stack (< 2.3): a wheel carried in build/gpu-wheels, unpacked
# on PYTHONPATH for the numba steps only (the host's own NumPy stays for everything else)
NP_OLD=""
for w in build/gpu-wheels/numpy-*.whl; do
    [ -f "$w" ] && "$PY" -m zipfile -e "$w" "$O/numpy-old" && NP_OLD="$O/numpy-old"
done
CUFFT_LIB=$(ls "$CUDA"/lib64/libcufft.so.1[0-9] 2>/dev/null | tail -1)
PORT=$("$PY" -c 'from orion_virt.launch import free_port; print(free_port())')
"$PY" -c "from orion_virt.cli.orion_shm import main; main()" -i 1 --size 256 --path-base "$O/shm" >/dev/null
"$PY" -c "from orion_virt.cli.oriond import main; main()" --backend cuda --listen-port "$PORT" --log-dir "$O/log" \
    --shm-path-base "$O/shm" > "$O/log/oriond.out" 2>&1 &
OPID=$!
trap 'kill $OPID 2>/dev/null; wait $OPID 2>/dev/null || true' EXIT
"$PY" -c "from orion_virt.launch import wait_port; wait_port($PORT, timeout=60, what='oriond')" || exit 1
step() {
    mode=$1; name=$2; shift 2
    case " ${LADDER_ONLY:-$name} " in *" $name "*) ;; *) return 0 ;; esac
    if [ "$mode" = tcp ]; then net=1; else net=0; fi
    f="$O/out/$name.$mode.txt"
    env LD_LIBRARY_PATH="$O/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ORION_VGPU=2 ORION_GMEM=4096 \
        ORION_SERVER=127.0.0.1:$PORT ORION_SHM_PATH_BASE="$O/shm" ORION_ENABLE_NET=$net \
        timeout 240 "$@" > "$f" 2>&1
    rc=$?
    if [ $rc = 0 ]; then echo "PASS $name over $mode"; else
        echo "FAIL $name over $mode (rc $rc): $(grep -v '^VirtaiTech\|Client exits' "$f" | grep -m1 -i 'error\|fail\|not supported\|warn' | cut -c1-200)"; fi
}
for mode in shm tcp; do
    for p in deviceQuery memory errors threads procaddr; do step $mode $p "$O/bin/$p"; done
    step $mode pinned "$O/bin/pinned" 268435456
    step $mode host_register "$O/bin/host_register" 256
    [ $mode = shm ] && step $mode zero_copy "$O/bin/zero_copy" orion_virt/kernels/test_kernels.ptx
    step $mode vectorAdd "$O/bin/vectorAdd" orion_virt/kernels/test_kernels.ptx
    step $mode launch_ex "$O/bin/launch_ex" orion_virt/kernels/test_kernels.ptx
    step $mode runtime_api "$O/bin/runtime_api" 2 4096
    for p in rt_deviceQuery rt_vectorAdd rt_vectorAdd_shared cublas_sgemm rt_cluster; do step $mode $p "$O/bin/$p"; done
    for p in examples/deviceQuery.py examples/vectorAdd.py examples/runtimeQuery.py $P/nvrtc_saxpy.py; do
        step $mode "$(basename $p .py)" "$PY" $p
    done
    step $mode torch_tour "$PY" $P/torch_tour.py 100
    step $mode cupy_tour "$PY" $P/cupy_tour.py
    step $mode cuda_core_tour "$PY" $P/cuda_core_tour.py
    step $mode torch_train_step env ORION_GMEM=16384 "$PY" $P/torch_train_step.py 30 big
    step $mode two_devices "$O/bin/two_devices" orion_virt/kernels/test_kernels.ptx
    step $mode two_vgpus "$PY" $P/two_vgpus.py
    step $mode cufft_plan "$O/bin/cufft_plan" orion_virt/kernels/test_kernels.ptx $CUFFT_LIB
    step $mode cufft_tour "$PY" $P/cufft_tour.py
    step $mode numba_tour env PYTHONPATH="$NP_OLD:$PYTHONPATH" "$PY" $P/numba_tour.py
done
timeout 120 env PYTHONPATH="$NP_OLD:$PYTHONPATH" "$PY" $P/numba_tour.py > "$O/out/numba_tour.native.txt" 2>&1 \
    && echo "PASS numba_tour natively" || echo "FAIL numba_tour natively: $(tail -1 "$O/out/numba_tour.native.txt" | cut -c1-200)"
timeout 120 "$PY" $P/cufft_tour.py > "$O/out/cufft_tour.native.txt" 2>&1 \
    && echo "PASS cufft_tour natively" || echo "FAIL cufft_tour natively: $(tail -1 "$O/out/cufft_tour.native.txt" | cut -c1-200)"
# the same training steps and page-locked copies on the real driver, and the ratios
timeout 240 "$PY" $P/torch_train_step.py 30 big > "$O/out/torch_train_step.native.txt" 2>&1 || echo "FAIL torch_train_step natively"
"$PY" - "$O/out" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def result(mode):
    for line in (out / f"torch_train_step.{mode}.txt").read_text().splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return None
nat = result("native")
for mode in ("shm", "tcp"):
    r = result(mode)
    if nat and r:
        print(f"RATIO {mode}: CNN step native/remoted {nat['cnn_step_ms'] / r['cnn_step_ms']:.3f} "
              f"({nat['cnn_step_ms']:.2f} vs {r['cnn_step_ms']:.2f} ms); MLP step {nat['mlp_step_ms'] / r['mlp_step_ms']:.3f} "
              f"({nat['mlp_step_ms']:.3f} vs {r['mlp_step_ms']:.3f} ms); 1 GiB pinned HtoD remoted/native "
              f"{r['pinned_htod_gbps'] / nat['pinned_htod_gbps']:.3f} ({r['pinned_htod_gbps']} vs {nat['pinned_htod_gbps']} GB/s), "
              f"DtoH {r['pinned_dtoh_gbps'] / nat['pinned_dtoh_gbps']:.3f} ({r['pinned_dtoh_gbps']} vs {nat['pinned_dtoh_gbps']} GB/s)")
        if nat.get("cnn_big_step_ms") and r.get("cnn_big_step_ms"):
            print(f"RATIO {mode}: compute-bound CNN step native/remoted "
                  f"{nat['cnn_big_step_ms'] / r['cnn_big_step_ms']:.3f} "
                  f"({nat['cnn_big_step_ms']:.2f} vs {r['cnn_big_step_ms']:.2f} ms)")
PYEOF
tail -5 "$O/log/oriond.out" > /dev/null
