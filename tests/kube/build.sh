#!/usr/bin/env bash
# Builds, from Go modules, every Kubernetes part the tests run for real, pinned and cached.
# No registry here serves Kubernetes binaries or images, but the Go module proxy serves the sources;
# the small wrapper modules in this directory build them (../shared/reference/kube-apiserver.md
# says why a wrapper with replace lines is needed).
#
#   tests/kube/build.sh            the controller tests' set: etcd, kube-apiserver, kubectl
#   tests/kube/build.sh --node     also the real node's set (below)
#   tests/kube/build.sh --node --kube-version v1.33.13
#                                  also a second version of the node's Kubernetes (below)
#
# Outputs, under $CLOUDSIGMA_K8S_CACHE (default ~/.cache/cloudsigma-k8s):
#   kube-bin/        host-side programs: etcd, kube-apiserver, kubectl and, with --node,
#                    kube-controller-manager, kube-scheduler, kubeadm (the control plane's)
#   node-artifacts/  with --node: the `local` artifact source of image-recipes/ubuntu-k8s
#                    (docs/imgbuild.md): bin/{containerd,containerd-shim-runc-v2,ctr,crictl,runc},
#                    cni/{bridge,host-local,loopback,portmap}, kubernetes/v1.34.1/{kubelet,kubeadm,
#                    kubectl} (also in bin/, as before; images/ is filled by tests/kube/images.sh)
#                    and, with --kube-version vX.Y.Z, kubernetes/vX.Y.Z/: only kubelet, kubeadm and
#                    kubectl differ between versions, and kube-proxy's image (tests/kube/addons.sh
#                    --kube-version vX.Y.Z writes it to kubernetes/vX.Y.Z/images/; the recipe uploads
#                    kubernetes/v<its version>/, the rest is shared, and so is the image's cached
#                    base layer). They are built from the wrapper module kubernetes-vX.Y/, whose
#                    go.mod requires exactly vX.Y.Z.
# Go's module and build caches live under $CLOUDSIGMA_K8S_CACHE/go, so a rerun is a no-op (a stamp
# file records what each binary was built from) and a rebuild after a change mostly relinks.
# Cold: ~5 min for the default set and ~12 more for --node on 2 cores; cached: about a second.
set -euo pipefail

KUBE_VERSION=v1.34.1
ETCD_VERSION=v3.6.4
CONTAINERD_VERSION=v1.7.28
CRICTL_VERSION=v1.34.0
CNI_PLUGINS_VERSION=v1.7.1

usage="usage: tests/kube/build.sh [--node [--kube-version vX.Y.Z]]"
node=0
extra_version=
while [[ $# -gt 0 ]]; do
    case "$1" in
        --node) node=1 ;;
        --kube-version)
            [[ $# -ge 2 ]] || { echo "$usage: --kube-version needs a value" >&2; exit 2; }
            extra_version=$2
            shift
            ;;
        *) echo "$usage (unknown argument: $1)" >&2; exit 2 ;;
    esac
    shift
done
if [[ -n $extra_version ]]; then
    [[ $node == 1 ]] || { echo "$usage: --kube-version needs --node" >&2; exit 2; }
    if [[ ! $extra_version =~ ^v1\.([0-9]+)\.[0-9]+$ ]]; then
        echo "tests/kube/build.sh: --kube-version $extra_version: not a Kubernetes release vX.Y.Z (e.g. v1.33.13)" >&2
        exit 2
    fi
    [[ $extra_version == "$KUBE_VERSION" ]] && extra_version=
fi

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=scripts/lib.sh
. "$here/../../scripts/lib.sh"
cache=$CLOUDSIGMA_K8S_CACHE
bin="$cache/kube-bin"
art="$cache/node-artifacts"
mkdir -p "$bin" "$cache/go"

export GOMODCACHE="$cache/go/mod"
export GOCACHE="$cache/go/build"
export GOTOOLCHAIN=local   # never download another Go toolchain behind the user's back
export GOFLAGS=-buildvcs=false
export CGO_ENABLED=0       # static binaries, no C toolchain needed (and they run in the guest as-is)

if ! command -v go >/dev/null; then
    echo "tests/kube/build.sh: 'go' not found; install Go >= 1.24 from go.dev (Debian 12's golang-go is too old, and scripts/install-deps does not install Go)" >&2
    exit 1
fi

# shellcheck source=tests/kube/go-build.sh
. "$here/go-build.sh"
build() { go_build "$@"; }

build "$bin" etcd "$here/etcd" go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "-s -w"

# Without these the programs report v0.0.0-master (and kubeadm refuses to join a 1.34 cluster).
vpkg=k8s.io/component-base/version
kflags="-s -w -X $vpkg.gitVersion=$KUBE_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=34 -X $vpkg.gitTreeState=clean"
kube() { build "$1" "$2" "$here/kubernetes" "k8s.io/kubernetes/cmd/$2" "$KUBE_VERSION" "$kflags"; }

kube "$bin" kube-apiserver
# kubectl from the same module: kustomize for the install checks and `auth can-i` for the RBAC
# tests, without depending on a kubectl the machine may not have.
kube "$bin" kubectl

"$bin/kube-apiserver" --version
"$bin/kubectl" version --client | sed -n 1p
"$bin/etcd" --version | sed -n 1p   # not head: its early exit SIGPIPEs etcd under pipefail

[[ $node == 1 ]] || exit 0

# --- the real node's set -----------------------------------------------------------------------
kube "$bin" kube-controller-manager
kube "$bin" kube-scheduler
kube "$bin" kubeadm
kube "$art/bin" kubelet
# the node gets the same kubeadm and kubectl as the host (hard links: no second copy on disk)
ln -f "$bin/kubeadm" "$art/bin/kubeadm"
ln -f "$bin/kubectl" "$art/bin/kubectl"

cflags="-s -w -X github.com/containerd/containerd/version.Version=$CONTAINERD_VERSION"
for cmd in containerd containerd-shim-runc-v2 ctr; do
    build "$art/bin" "$cmd" "$here/containerd" "github.com/containerd/containerd/cmd/$cmd" "$CONTAINERD_VERSION" "$cflags"
done
build "$art/bin" crictl "$here/cri-tools" sigs.k8s.io/cri-tools/cmd/crictl "$CRICTL_VERSION" \
    "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION"
for p in ipam/host-local main/bridge main/loopback meta/portmap; do
    build "$art/cni" "${p#*/}" "$here/cni-plugins" "github.com/containernetworking/plugins/plugins/$p" \
        "$CNI_PLUGINS_VERSION" "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$CNI_PLUGINS_VERSION"
done

# runc: Debian's package (the guest is Debian 12 too, and has the libseccomp it links against).
# Building runc from its module needs cgo and libseccomp-dev; Debian's build is the honest shortcut.
if [[ ! -x "$art/bin/runc" ]]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && { apt-get download runc >/dev/null 2>&1 || { apt-get update -qq && apt-get download runc; }; })
    dpkg-deb -x "$tmp"/runc_*.deb "$tmp/x"
    install -m 0755 "$tmp/x/usr/sbin/runc" "$art/bin/.runc.tmp"
    mv -f "$art/bin/.runc.tmp" "$art/bin/runc"
fi
# the recipe's per-version layout (hard links again)
mkdir -p "$art/kubernetes/$KUBE_VERSION"
for cmd in kubelet kubeadm kubectl; do ln -f "$art/bin/$cmd" "$art/kubernetes/$KUBE_VERSION/$cmd"; done
"$art/bin/kubelet" --version
"$art/bin/containerd" --version
"$art/bin/runc" --version | sed -n 1p

[[ -n $extra_version ]] || exit 0

# --- another version of the node's Kubernetes --------------------------------------------------
minor=${extra_version#v1.}
minor=${minor%%.*}
wrapper="$here/kubernetes-v1.$minor"
if ! grep -qx "require k8s.io/kubernetes $extra_version" "$wrapper/go.mod" 2>/dev/null; then
    echo "tests/kube/build.sh: --kube-version $extra_version: $wrapper/go.mod does not require k8s.io/kubernetes $extra_version;" >&2
    echo "  make that wrapper module (a copy of tests/kube/kubernetes-v1.33/ with the version and its replace lines changed, then go mod tidy)" >&2
    exit 2
fi
xflags="-s -w -X $vpkg.gitVersion=$extra_version -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean"
for cmd in kubelet kubeadm kubectl; do
    build "$art/kubernetes/$extra_version" "$cmd" "$wrapper" "k8s.io/kubernetes/cmd/$cmd" "$extra_version" "$xflags"
done
"$art/kubernetes/$extra_version/kubelet" --version
