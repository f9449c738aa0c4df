#!/usr/bin/env bash
# Writes the container images the real node runs as OCI image archives, with no registry and no
# container tool: each image is one static Rust binary in one layer (tests/images).
#
#   pause.tar  registry.k8s.io/pause:3.10.1            the pod sandbox (kubeadm 1.34's default name,
#                                                       so containerd's sandbox_image needs no change)
#   hello.tar  cloudsigma-k8s.test/hello:v1            the test workload (HTTP on :8080)
#
# Output: $CLOUDSIGMA_K8S_CACHE/node-artifacts/images/, imported on the node with
# `ctr -n k8s.io images import` (image-recipes/ubuntu-k8s/40-kubernetes.sh, `local` source).
# The archives are reproducible: same binaries, same digests.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"
cache=$CLOUDSIGMA_K8S_CACHE
out="$cache/node-artifacts/images"
# A target dir of its own: this runs inside `cargo test`, which holds the main one's lock.
target="${CARGO_TARGET_DIR:-$cache/target}/e2e-build"
triple=x86_64-unknown-linux-gnu
mkdir -p "$out"

RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$target" \
    cargo build -q --release --locked --manifest-path "$repo/Cargo.toml" -p test-images --target "$triple"

# The archive writer is shared with scripts/controller-image.
# shellcheck source=scripts/oci-archive
. "$repo/scripts/oci-archive"

image() {
    oci_archive "$out/$1" "$2" "$3" "$4" "$5"
    echo "tests/kube/images.sh: $2 -> $out/$1 (manifest $OCI_MANIFEST_DIGEST)"
}

bin="$target/$triple/release"
image pause.tar registry.k8s.io/pause:3.10.1 "$bin/pause" /pause 65535:65535
image hello.tar cloudsigma-k8s.test/hello:v1 "$bin/hello" /hello 65532:65532
