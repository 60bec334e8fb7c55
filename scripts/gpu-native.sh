#!/bin/sh
# The native client (libcuda.so.1) on a GPU host: build it, build the C driver-API programs of
# tests/native against cuda.h, and run them against `oriond --backend cuda` over shared memory
# and over TCP (ORION_VGPU=2 ORION_GMEM=4096). Only the programs load our libcuda.so.1; oriond
# uses the real driver.
#
#   scripts/gpu-native.sh [WORK_DIR]
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
W=${1:-/tmp/orion-gpu-native}
rm -rf "$W"; mkdir -p "$W/bin" "$W/shm" "$W/log"
INC=${CUDA_INCLUDE:-$("$PY" -c 'import nvidia, pathlib; print(next((str(p) for d in nvidia.__path__ for p in sorted(pathlib.Path(d).glob("cu*/include")) if (p / "cuda.h").exists()), ""))' 2>/dev/null || true)}
[ -n "$INC" ] || INC=/usr/local/cuda/include
echo "cuda.h from $INC"
make -s -C orion_virt/client/native OUT="$W/lib" CUDA_INCLUDE="$INC" PYTHON="$PY"
for p in deviceQuery memory vectorAdd errors threads; do
    gcc -std=c11 -O1 -pthread -I"$INC" -Itests/native tests/native/$p.c -L"$W/lib" -lcuda -lm -o "$W/bin/$p"
done
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
PORT=$("$PY" -c 'from orion_virt.launch import free_port; print(free_port())')
"$PY" -c "from orion_virt.cli.orion_shm import main; main()" -i 1 --size 64 --path-base "$W/shm" >/dev/null
"$PY" -c "from orion_virt.cli.oriond import main; main()" --backend "${BACKEND:-cuda}" --listen-port "$PORT" --log-dir "$W/log" --shm-path-base "$W/shm" > "$W/log/oriond.out" 2>&1 &
OPID=$!
trap 'kill $OPID 2>/dev/null; wait $OPID 2>/dev/null || true' EXIT
"$PY" -c "from orion_virt.launch import wait_port; wait_port($PORT, timeout=60, what='oriond')"
failed=0
for mode in shm tcp; do
    for p in deviceQuery memory vectorAdd errors threads; do
        args=""; [ "$p" = vectorAdd ] && args=orion_virt/kernels/test_kernels.ptx
        echo "--- $p over $mode"
        if [ "$mode" = tcp ]; then net=1; else net=0; fi
        if env LD_LIBRARY_PATH="$W/lib" ORION_VGPU=2 ORION_GMEM=4096 ORION_SERVER=127.0.0.1:$PORT \
               ORION_SHM_PATH_BASE="$W/shm" ORION_ENABLE_NET=$net "$W/bin/$p" $args; then
            echo "--- $p over $mode: PASS"
        else
            echo "--- $p over $mode: FAIL ($?)"; failed=1
        fi
    done
done
tail -5 "$W/log/server.log" 2>/dev/null || tail -20 "$W/log/oriond.out"
echo "native client on the GPU: $([ $failed = 0 ] && echo PASSED || echo FAILED)"
exit $failed
