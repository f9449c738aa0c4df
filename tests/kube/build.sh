#!/usr/bin/env bash
# Builds the pinned kube-apiserver and kubectl (v1.34.1) and etcd (v3.6.4) that the controller's integration tests
# start on loopback. No registry here serves Kubernetes binaries, but the Go module proxy serves the
# sources, so the small wrapper modules in this directory build them (see
# /work/shared/reference/kube-apiserver.md for why a wrapper with replace lines is needed).
#
# Output: $CLOUDSIGMA_K8S_CACHE/kube-bin/{kube-apiserver,etcd} (default ~/.cache/cloudsigma-k8s).
# Go's module and build caches live under $CLOUDSIGMA_K8S_CACHE/go, so a rerun is a no-op (a stamp
# file records what each binary was built from) and a rebuild after a change mostly relinks.
# Cold: ~5–12 min on 2 cores (download + compile); cached: well under a second.
set -euo pipefail

KUBE_VERSION=v1.34.1
ETCD_VERSION=v3.6.4

here="$(cd "$(dirname "$0")" && pwd)"
cache="${CLOUDSIGMA_K8S_CACHE:-$HOME/.cache/cloudsigma-k8s}"
bin="$cache/kube-bin"
mkdir -p "$bin" "$cache/go"

export GOMODCACHE="$cache/go/mod"
export GOCACHE="$cache/go/build"
export GOTOOLCHAIN=local   # never download another Go toolchain behind the user's back
export GOFLAGS=-buildvcs=false
export CGO_ENABLED=0       # static binaries, no C toolchain needed

if ! command -v go >/dev/null; then
    echo "tests/kube/build.sh: 'go' not found; install Go >= 1.24 (scripts/install-deps installs golang-go)" >&2
    exit 1
fi

# build NAME MODULE_DIR PACKAGE VERSION LDFLAGS: skips when the stamp says this exact input was built.
build() {
    local name=$1 dir=$2 pkg=$3 version=$4 ldflags=$5
    # go.sum is committed; tidy only fills it in when it is missing (first creation).
    if [[ ! -s "$dir/go.sum" ]]; then (cd "$dir" && go mod tidy); fi
    local stamp_want
    stamp_want="$version $(cat "$dir/go.mod" "$dir/go.sum" | sha256sum | cut -d' ' -f1) $ldflags"
    if [[ -x "$bin/$name" && -f "$bin/$name.stamp" && "$(cat "$bin/$name.stamp")" == "$stamp_want" ]]; then
        echo "tests/kube/build.sh: $name $version cached in $bin"
        return 0
    fi
    echo "tests/kube/build.sh: building $name $version (cold: several minutes) ..."
    local start=$SECONDS
    (cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$bin/.$name.tmp" "$pkg")
    mv -f "$bin/.$name.tmp" "$bin/$name"          # atomic: a half-written binary is never picked up
    printf '%s' "$stamp_want" > "$bin/.$name.stamp.tmp" && mv -f "$bin/.$name.stamp.tmp" "$bin/$name.stamp"
    echo "tests/kube/build.sh: built $name in $((SECONDS - start)) s"
}

build etcd "$here/etcd" go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "-s -w"

# Without these the server reports v0.0.0-master.
vpkg=k8s.io/component-base/version
build kube-apiserver "$here/apiserver" k8s.io/kubernetes/cmd/kube-apiserver "$KUBE_VERSION" \
    "-s -w -X $vpkg.gitVersion=$KUBE_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=34 -X $vpkg.gitTreeState=clean"

# kubectl from the same module: kustomize for the install checks and `auth can-i` for the RBAC tests,
# without depending on a kubectl the machine may not have.
build kubectl "$here/apiserver" k8s.io/kubernetes/cmd/kubectl "$KUBE_VERSION" \
    "-s -w -X $vpkg.gitVersion=$KUBE_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=34 -X $vpkg.gitTreeState=clean"

"$bin/kube-apiserver" --version
"$bin/kubectl" version --client | sed -n 1p
"$bin/etcd" --version | sed -n 1p   # not head: its early exit SIGPIPEs etcd under pipefail
