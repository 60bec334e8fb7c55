#!/bin/sh
# Build (or reuse) the cached guest the VM tests boot: Debian kernel + busybox initramfs +
# debootstrap'd 9p root with python3/numpy. Cache: $ORION_TEST_GUEST_CACHE or
# /var/cache/orion-test-guest; rebuilt only when the recipe in tests/vmharness/image.py changes.
#   scripts/build-guest.sh [--rebuild]
set -eu
cd "$(dirname "$0")/.."
PY=./.venv/bin/python
[ -x "$PY" ] || PY=python3
exec "$PY" -m tests.vmharness "$@"
