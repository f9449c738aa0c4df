#!/usr/bin/env bash
# Proves an OCI archive is what a node's containerd accepts: a private containerd (own root, state
# and socket under a temp dir; the CRI plugin off) imports it the way the node images do
# (`ctr -n k8s.io images import`), then runs it with runc and checks what it prints.
#
#   tests/kube/import-check.sh ARCHIVE EXPECTED_PREFIX [ARGS...]
#
# With IMPORT_CHECK_STDERR=1 the program's stderr counts as output too (flanneld and the CNI plugins
# print their version there).
#
# The image is run by the name the archive carries (io.containerd.image.name in its index.json),
# so this also proves the import names it as the manifests expect.
#
# Uses containerd, ctr and runc from $CLOUDSIGMA_K8S_CACHE/node-artifacts/bin (tests/kube/build.sh
# --node). Needs root (runc, mounts); prints SKIP and exits 0 otherwise.
set -euo pipefail
archive=$1 expect=$2
shift 2
ref=$(tar -xOf "$archive" ./index.json | sed -n 's/.*"io.containerd.image.name":"\([^"]*\)".*/\1/p')
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/../../scripts/lib.sh"
cache=$CLOUDSIGMA_K8S_CACHE
bin="$cache/node-artifacts/bin"
say() { echo "tests/kube/import-check.sh: $*" >&2; }
if [ "$(id -u)" != 0 ] || [ ! -x "$bin/containerd" ]; then
    say "SKIP: needs root and $bin/containerd"
    exit 0
fi

d=$(mktemp -d /tmp/import-check.XXXXXX)
pid=
cleanup() {
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    # Snapshots may still be mounted if a run failed half-way.
    grep -o "$d/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount 2>/dev/null || true
    rm -rf "$d"
}
trap cleanup EXIT
cat > "$d/config.toml" <<TOML
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$d/containerd.sock"
[ttrpc]
  address = "$d/containerd.sock.ttrpc"
TOML
# The shim finds runc on the daemon's PATH.
PATH="$bin:$PATH" "$bin/containerd" --config "$d/config.toml" > "$d/containerd.log" 2>&1 &
pid=$!
ctr=("$bin/ctr" --address "$d/containerd.sock" -n k8s.io)
for _ in $(seq 50); do
    "${ctr[@]}" version > /dev/null 2>&1 && break
    sleep 0.2
done
"${ctr[@]}" images import "$archive" >&2
"${ctr[@]}" images ls -q | grep -qxF "$ref" || { say "imported, but no image named $ref"; exit 1; }
if [ "${IMPORT_CHECK_STDERR:-0}" = 1 ]; then
    out=$(timeout 60 "${ctr[@]}" run --rm "$ref" import-check "$@" 2>&1)
else
    out=$(timeout 60 "${ctr[@]}" run --rm "$ref" import-check "$@")
fi
case $out in
    "$expect"*) say "$ref imported and ran: $out" ;;
    *) say "$ref ran but printed: $out (expected $expect…)"; exit 1 ;;
esac
