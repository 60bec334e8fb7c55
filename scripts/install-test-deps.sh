#!/bin/sh
# Install what the VM integration tests (tests/vmharness, tests/integration/test_vm_smoke.py)
# need on a Debian 12 host: libvirt's monolithic daemon + QEMU (TCG), the guest-image build
# tools, and libvirt-python in the project venv. Idempotent; needs root.
#
#   scripts/install-test-deps.sh [VENV]      (VENV defaults to ./.venv when it exists)
#
# prometheus is there for promtool (tests/unit/controller/test_metrics.py runs `promtool check
# metrics` on the controller's /metrics); like etcd-server, on a host run by systemd the package
# also enables its own service (systemctl disable --now prometheus if it is not wanted).
#
# libvirt-daemon-system is deliberately NOT installed: it pulls in the 'default' NAT network.
# We create the libvirt-qemu user/group ourselves instead (see docs/testing-vms.md).
set -eu

PKGS="libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 \
busybox-static cpio libvirt-dev pkg-config debootstrap \
etcd-server iproute2 util-linux python3-venv python3-dev gcc procps prometheus"
# the portal's browser test (tests/integration/test_portal_browser.py): Debian's chromium, headless
# (run as root here, so the test passes --no-sandbox), and a font for it to lay text out with
PKGS="$PKGS chromium fonts-dejavu-core"
# the container images (scripts/build-images.sh, tests/integration/test_container_images.py):
# podman/buildah from Debian, fuse-overlayfs for overlay storage where the kernel lacks it
PKGS="$PKGS podman buildah fuse-overlayfs uidmap"

if [ "$(id -u)" != 0 ]; then
    echo "install-test-deps.sh: must run as root" >&2
    exit 1
fi

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing
fi

# kubectl renders deploy/k8s/ (kubectl kustomize) for tests/integration/test_k8s_manifests.py:
# Debian's kubernetes-client, unless a kubectl is installed already (it would conflict with it)
if ! command -v kubectl >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends kubernetes-client \
        || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends kubernetes-client; }
fi

# systemd-analyze (package systemd) verifies install-server's units, logrotate -d its logrotate file
# (tests/integration/test_install_server.py); neither starts a service in a container
for p in systemd logrotate; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$p" || \
        { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$p"; }
done

getent group libvirt-qemu >/dev/null || addgroup --system libvirt-qemu
getent passwd libvirt-qemu >/dev/null || adduser --system --ingroup libvirt-qemu \
    --home /var/lib/libvirt --no-create-home --disabled-password libvirt-qemu

VENV="${1:-}"
if [ -z "$VENV" ] && [ -x ./.venv/bin/python ]; then VENV=./.venv; fi
if [ -n "$VENV" ]; then
    "$VENV/bin/python" -c 'import libvirt' 2>/dev/null || "$VENV/bin/pip" install -q 'libvirt-python>=9.0'
fi
