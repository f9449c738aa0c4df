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
cache="${CLOUDSIGMA_K8S_CACHE:-$HOME/.cache/cloudsigma-k8s}"
out="$cache/node-artifacts/images"
# A target dir of its own: this runs inside `cargo test`, which holds the main one's lock.
target="${CARGO_TARGET_DIR:-$cache/target}/e2e-build"
triple=x86_64-unknown-linux-gnu
mkdir -p "$out"

RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$target" \
    cargo build -q --release --locked --manifest-path "$repo/Cargo.toml" -p test-images --target "$triple"

sha() { sha256sum "$1" | cut -d' ' -f1; }

# oci_archive FILE REF BINARY ENTRYPOINT USER
oci_archive() {
    local file=$1 ref=$2 binary=$3 entry=$4 user=$5
    local w
    w=$(mktemp -d)
    mkdir -p "$w/rootfs" "$w/oci/blobs/sha256"
    install -m 0755 "$binary" "$w/rootfs/${entry#/}"
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$w/rootfs" -cf "$w/layer.tar" .
    local layer config manifest
    layer=$(sha "$w/layer.tar")
    mv "$w/layer.tar" "$w/oci/blobs/sha256/$layer"
    printf '{"architecture":"amd64","os":"linux","config":{"User":"%s","Entrypoint":["%s"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
        "$user" "$entry" "$layer" > "$w/config.json"
    config=$(sha "$w/config.json")
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%d}]}' \
        "$config" "$(stat -c %s "$w/config.json")" "$layer" "$(stat -c %s "$w/oci/blobs/sha256/$layer")" > "$w/manifest.json"
    manifest=$(sha "$w/manifest.json")
    mv "$w/config.json" "$w/oci/blobs/sha256/$config"
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
        "$manifest" "$(stat -c %s "$w/manifest.json")" "$ref" "${ref##*:}" > "$w/oci/index.json"
    mv "$w/manifest.json" "$w/oci/blobs/sha256/$manifest"
    printf '{"imageLayoutVersion":"1.0.0"}' > "$w/oci/oci-layout"
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$w/oci" -cf "$out/.$file.tmp" .
    mv -f "$out/.$file.tmp" "$out/$file"
    rm -rf "$w"
    echo "tests/kube/images.sh: $ref -> $out/$file (manifest sha256:$manifest)"
}

bin="$target/$triple/release"
oci_archive pause.tar registry.k8s.io/pause:3.10.1 "$bin/pause" /pause 65535:65535
oci_archive hello.tar cloudsigma-k8s.test/hello:v1 "$bin/hello" /hello 65532:65532
