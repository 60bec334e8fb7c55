#!/bin/sh
# The cuda backend's checks on a GPU host (the lent H100/H200 machine): the gpu-marked tests
# (tests/gpu, and the 'cuda' half of the backend-parity suite tests/parity), then the demo
# programs against `oriond --backend cuda`, over shared memory and over TCP.
#
#   scripts/gpu-run.sh [WHEEL_DIR]            (run from anywhere; WHEEL_DIR defaults to ./.whl)
#
# No network needed: when WHEEL_DIR holds wheels (cuda-bindings, cuda-pathfinder, pytest and its
# needs, click) they are installed to /tmp/site and put on PYTHONPATH; numpy must already be
# there. Environment: PYTHON (default python3), PYTEST_ARGS (default "-x -q").
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHL=${1:-.whl}
if ls "$WHL"/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHL"/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ]; then
    export CUDA_HOME=/usr/local/cuda  # where cuda-pathfinder finds libnvrtc for the NVRTC test
fi
"$PY" --version
nvidia-smi -L || echo "(no nvidia-smi)"
"$PY" -c "import cuda.bindings, numpy, pytest, click; print('cuda-bindings', cuda.bindings.__version__, 'numpy', numpy.__version__, 'pytest', pytest.__version__)"
"$PY" -c "
from orion_virt.server.cuda_probe import probe
r = probe()
print('probe:', r.error or ', '.join(f'GPU {g.index} {g.name} {g.total_mem >> 20} MiB' for g in r.gpus), '| driver', r.driver_version)
"

echo "=== pytest -m gpu tests/gpu tests/parity"
# shellcheck disable=SC2086
"$PY" -m pytest -m gpu tests/gpu tests/parity ${PYTEST_ARGS:--x -q} -p no:cacheprovider

echo "=== demo: ORION_VGPU=2 ORION_GMEM=4096 orion-run examples/{deviceQuery,vectorAdd}.py against oriond --backend cuda"
"$PY" - <<'PYEOF'
import sys, tempfile
from pathlib import Path
from tests.parity.harness import ROOT, Oriond

failed = 0
with tempfile.TemporaryDirectory(prefix="orion-gpu-demo-") as tmp:
    srv = Oriond(Path(tmp), "cuda").start()
    try:
        for tcp in (False, True):
            for prog in ("deviceQuery.py", "vectorAdd.py"):
                print(f"\n--- {prog} over {'TCP' if tcp else 'shared memory'}", flush=True)
                r = srv.run_client([sys.executable, str(ROOT / "examples" / prog)], tcp=tcp, vgpus=2, gmem_mib=4096)
                print(r.stdout + r.stderr, flush=True)
                failed |= r.returncode != 0
    finally:
        srv.stop()
        print("--- oriond server.log (tail)\n" + "\n".join(srv.server_log().splitlines()[-12:]))
print("gpu demo", "FAILED" if failed else "PASSED")
sys.exit(1 if failed else 0)
PYEOF
