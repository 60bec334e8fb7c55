#!/bin/sh
# Build the four container images (deploy/images/*.Dockerfile) without a container registry:
# the base debian:12 is a Debian bookworm root file system made with debootstrap (cached as a
# tarball) and imported as docker.io/library/debian:12, so the Dockerfiles users with registry
# access build are used unchanged. Each image is labelled org.orion-virt.inputs with a hash of
# the files it is built from; an image whose label matches is kept (not rebuilt).
#
#   scripts/build-images.sh [IMAGE...]      IMAGE: oriond controller device-plugin client (default all)
#
#   ORION_IMAGE_CACHE   the debootstrap tarball's directory (default /var/cache/orion-images)
#   ORION_IMAGE_TAG     the images' tag (default 0.1.0): localhost/orion-virt/IMAGE:TAG
#   DEBIAN_MIRROR       debootstrap's mirror (default http://deb.debian.org/debian)
#   ORION_IMAGE_CONTEXT the tree the images are built from (default: this checkout, as it is on
#                       disk); e.g. a clean export: git archive HEAD | tar -x -C DIR
#   ORION_BUILD_CA      a CA bundle pip in the build trusts (default: $PIP_CERT when set), for an
#                       egress proxy that re-signs TLS; mounted into RUN steps only, not in the image
#
# Needs root, buildah, debootstrap, and PyPI and the Debian mirror reachable (pip and apt run in
# the build). RUN steps use buildah's chroot isolation: crun cannot start containers on hosts
# that withhold CAP_SYS_RESOURCE (docs/containers.md).
set -eu

say() { echo "build-images.sh: $*" >&2; }
die() { say "$*"; exit 1; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CONTEXT=$(cd "${ORION_IMAGE_CONTEXT:-$ROOT}" && pwd) || die "ORION_IMAGE_CONTEXT=${ORION_IMAGE_CONTEXT:-}: no such directory"
CACHE="${ORION_IMAGE_CACHE:-/var/cache/orion-images}"
TAG="${ORION_IMAGE_TAG:-0.1.0}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE=docker.io/library/debian:12
LABEL=org.orion-virt.inputs

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap and buildah's storage)"
for t in buildah debootstrap sha256sum; do
    command -v "$t" >/dev/null || die "$t not found (scripts/install-test-deps.sh installs it)"
done

# elapsed-time lines every 15 s while a long step runs
run_step() {
    name=$1; shift
    start=$(date +%s)
    say "$name: started"
    ( while sleep 15; do say "$name: running, $(( $(date +%s) - start )) s"; done ) &
    ticker=$!
    rc=0
    "$@" || rc=$?
    kill "$ticker" 2>/dev/null || true
    wait "$ticker" 2>/dev/null || true
    [ "$rc" = 0 ] || die "$name: failed (exit $rc) after $(( $(date +%s) - start )) s"
    say "$name: done in $(( $(date +%s) - start )) s"
}

base_image() {
    tarball="$CACHE/debian-bookworm-minbase.tar"
    if buildah inspect --type image "$BASE" >/dev/null 2>&1; then return 0; fi
    mkdir -p "$CACHE"
    if [ ! -s "$tarball" ]; then
        tmp="$CACHE/rootfs.tmp"
        rm -rf "$tmp"
        run_step "debootstrap --variant=minbase bookworm" \
            debootstrap --variant=minbase bookworm "$tmp" "$MIRROR"
        rm -rf "$tmp/var/cache/apt/archives"/*.deb "$tmp/var/lib/apt/lists"/*_Packages
        tar -C "$tmp" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
        rm -rf "$tmp"
    fi
    run_step "import $tarball as $BASE" \
        sh -c "buildah import '$tarball' '$BASE' >/dev/null 2>&1 || podman import '$tarball' '$BASE' >/dev/null"
}

# the files an image is built from: its Dockerfile and the context the build sees (git's list in a
# checkout, else every file but caches)
INPUTS="pyproject.toml README.md orion_virt server examples deploy/images tools Makefile"
context_files() {
    # shellcheck disable=SC2086
    if git -C "$CONTEXT" rev-parse --show-toplevel 2>/dev/null | grep -qx "$CONTEXT"; then
        git -C "$CONTEXT" ls-files -co --exclude-standard -- $INPUTS
    else
        (cd "$CONTEXT" && find $INPUTS -type f ! -path '*/__pycache__/*' ! -name '*.pyc' 2>/dev/null)
    fi
}
inputs_hash() {
    (
        cd "$CONTEXT"
        context_files | LC_ALL=C sort | while read -r f; do
            [ -f "$f" ] && sha256sum "$f"
        done
        sha256sum "deploy/images/$1.Dockerfile"
    ) | sha256sum | cut -c1-16
}

build_one() {
    name=$1
    file="$CONTEXT/deploy/images/$name.Dockerfile"
    [ -f "$file" ] || die "$file: no such Dockerfile (images: oriond controller device-plugin client)"
    ref="localhost/orion-virt/$name:$TAG"
    want=$(inputs_hash "$name")
    have=$(buildah inspect --type image --format "{{index .ImageAnnotations \"x\"}}{{index .OCIv1.Config.Labels \"$LABEL\"}}" "$ref" 2>/dev/null || true)
    if [ "$have" = "$want" ]; then
        say "$name: $ref is current (inputs $want), kept"
        return 0
    fi
    old=$(buildah inspect --type image --format '{{.FromImageID}}' "$ref" 2>/dev/null || true)
    set --
    ca="${ORION_BUILD_CA:-${PIP_CERT:-}}"
    if [ -n "$ca" ]; then
        [ -f "$ca" ] || die "ORION_BUILD_CA/PIP_CERT=$ca: no such file"
        conf="$CACHE/pip-build.conf"
        printf '[global]\ncert = /etc/orion-build-ca.crt\n' >"$conf"
        set -- -v "$ca:/etc/orion-build-ca.crt:ro" -v "$conf:/etc/pip.conf:ro"
    fi
    run_step "$name: buildah bud -f deploy/images/$name.Dockerfile -t $ref (inputs $want)" \
        buildah bud --pull-never --isolation chroot --network host --layers --force-rm "$@" \
            --ignorefile "$CONTEXT/deploy/images/images.dockerignore" \
            --label "$LABEL=$want" -f "$file" -t "$ref" "$CONTEXT"
    # the image the tag named before, now untagged: removed (kept while a container uses it)
    if [ -n "$old" ] && [ "$old" != "$(buildah inspect --type image --format '{{.FromImageID}}' "$ref")" ]; then
        buildah rmi "$old" >/dev/null 2>&1 && say "removed $(echo "$old" | cut -c1-12), the image $ref named before" || true
    fi
}

base_image
[ $# -gt 0 ] || set -- oriond controller device-plugin client
IMAGES="$*"
for img in $IMAGES; do build_one "$img"; done
say "images: $(for img in $IMAGES; do printf '%s ' "localhost/orion-virt/$img:$TAG"; done)"
