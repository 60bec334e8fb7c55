#!/bin/sh
# Side by side: orion-bench (sim backend, shared memory) alternately on an earlier tree and on
# this one, ROUNDS times each, so both see the same machine. Prints the medians of the shm null
# call and the pipelined launch rate.
#
#   scripts/ab-bench.sh BASE_TREE OUT_DIR [ROUNDS]     (BASE_TREE: e.g. git worktree add /tmp/base REV)
set -eu
cd "$(dirname "$0")/.."
BASE=$1; OUT=$2; ROUNDS=${3:-3}
PY=${PYTHON:-$(pwd)/.venv/bin/python}
[ -x "$PY" ] || PY=python3
HERE=$(pwd)
i=1
while [ "$i" -le "$ROUNDS" ]; do
    for tree in "$BASE" "$HERE"; do
        tag=$( [ "$tree" = "$HERE" ] && echo new || echo base )-$i
        mkdir -p "$OUT/$tag"
        (cd "$tree" && PYTHONPATH="$tree" "$PY" -c "from orion_virt.cli.orion_bench import main; main()" \
            --quick --transports shm --idle-seconds 0.5 --out "$OUT/$tag" > "$OUT/$tag/stdout.txt" 2>&1) \
            || { echo "bench failed in $tree:"; tail -20 "$OUT/$tag/stdout.txt"; exit 1; }
    done
    i=$((i + 1))
done
"$PY" - "$OUT" <<'PYEOF'
import json, statistics, sys
from pathlib import Path
rows = {}
for f in sorted(Path(sys.argv[1]).glob("*/bench.json")):
    d = json.loads(f.read_text())
    n, p = d["null"]["shm"], d["pipelined"]["shm"]
    rows[f.parent.name] = (n["remote"]["median_us"], n["floor"]["median_us"], p["launch"]["per_s"])
for side in ("base", "new"):
    r = [v for k, v in rows.items() if k.startswith(side)]
    print(f"{side}: shm null call median {statistics.median(x[0] for x in r):.2f} us "
          f"(floor {statistics.median(x[1] for x in r):.2f} us), pipelined launches "
          f"{statistics.median(x[2] for x in r):.0f}/s  [rounds: "
          + ", ".join(f"{x[0]:.2f} us/{x[2]:.0f}/s" for x in r) + "]")
PYEOF
