#!/bin/sh
# Everything a session measures on the lent GPU host, in one call, results under $OUT:
#   ladder   the GPU ladder of ordinary programs over the native client (scripts/gpu-ladder.sh)
#   native   orion-bench --native: remoted (the native client, shm and TCP) beside the
#            real driver: null call, pipelined launches, HtoD/DtoH 4 KiB-1 GiB, matmul loop
#   wake     orion-bench --quick --client native on this host's CPUs: first call after idle,
#            idle CPU with 8 sessions (sim backend: the transport, not the GPU)
#   gpu      pytest -m gpu tests/gpu tests/parity
# Each part is bounded by its own timeout; a part that fails does not stop the others.
#   OUT=/tmp/x PARTS="ladder native wake gpu" scripts/gpu-session.sh
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/orion-gpu-session}
PARTS=${PARTS:-ladder native wake gpu}
mkdir -p "$OUT"
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export CUDA_INCLUDE=${CUDA_INCLUDE:-/usr/local/cuda/include}
make -s -C orion_virt/client/native OUT="$(pwd)/build/native" CUDA_INCLUDE="$CUDA_INCLUDE" PYTHON="$PY" || exit 1
BENCH="from orion_virt.cli.orion_bench import main; main()"
for part in $PARTS; do
    echo "=== $part $(date +%T)"
    case $part in
        ladder) OUT="$OUT" timeout 560 sh scripts/gpu-ladder.sh 2>&1 | tee "$OUT/ladder.txt" | grep -E '^(PASS|FAIL|RATIO)' ;;
        native) timeout 370 "$PY" -c "$BENCH" --native --out "$OUT/native" > "$OUT/native.txt" 2>&1; tail -40 "$OUT/native.txt" ;;
        wake) timeout 180 "$PY" -c "$BENCH" --quick --client native --out "$OUT/wake" > "$OUT/wake.txt" 2>&1
              sed -n '/^Idle/,$p' "$OUT/wake.txt" ;;
        gpu) timeout 300 "$PY" -m pytest -m gpu tests/gpu tests/parity -q -p no:cacheprovider > "$OUT/gpu.txt" 2>&1
             tail -5 "$OUT/gpu.txt" ;;
        *) echo "unknown part $part" ;;
    esac
done
echo "=== done $(date +%T)"
