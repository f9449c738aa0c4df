#!/usr/bin/env bash
# Builds the cluster add-ons a multi-node test cluster runs -- kube-proxy, CoreDNS and flannel (the
# CNI) -- from Go modules and Debian packages, and writes their container images as OCI archives
# next to pause.tar and hello.tar (tests/kube/images.sh), so the node image imports them
# (image-recipes/ubuntu-k8s/40-kubernetes.sh) and no registry is needed.
#
#   tests/kube/addons.sh [--kube-version vX.Y.Z]     (as root: CoreDNS's file capability is set
#                                                     with setcap)
#
# kube-proxy is per Kubernetes version (kubeadm vX.Y.Z deploys kube-proxy:vX.Y.Z), so its archive
# goes next to that version's kubelet, kubeadm and kubectl (tests/kube/build.sh --node
# [--kube-version vX.Y.Z]), in the directory the recipe uploads for that version only
# (image-recipes/roles/local-kubernetes-artifacts.yaml). --kube-version picks it (default v1.34.1);
# a version other than the default is built from the wrapper module kubernetes-vX.Y/, as build.sh
# does, whose go.mod requires exactly vX.Y.Z. The other add-ons are the same for every version.
#
# Images (archive under $CLOUDSIGMA_K8S_CACHE/node-artifacts/ -> name the import gives):
#   kubernetes/vX.Y.Z/images/kube-proxy.tar
#                           registry.k8s.io/kube-proxy:vX.Y.Z           (what `kubeadm init phase
#                           addon kube-proxy` vX.Y.Z deploys: /usr/local/bin/kube-proxy)
#   images/coredns.tar      registry.k8s.io/coredns/coredns:v1.12.1     (kubeadm v1.34.1's
#                           CoreDNSVersion -- v1.33's is v1.12.0, not built; /coredns, uid 65532
#                           with cap_net_bind_service=+ep as upstream's image)
#   images/flannel.tar      cloudsigma-k8s.test/flannel:v0.28.10        (/opt/bin/flanneld and
#                           /opt/bin/install-conf, as upstream's image)
#   images/flannel-cni-plugin.tar
#                           cloudsigma-k8s.test/flannel-cni-plugin:v0.9.1 (/flannel and /bin/cp)
# An images/kube-proxy.tar an older addons.sh wrote there (for every version: the defect this
# layout fixes) is removed, so that no image imports two kube-proxy versions.
# kube-proxy and flannel also carry Debian 12's netfilter userland (iptables 1.8.9, nft backend,
# like the guest): both exec iptables, iptables-save and iptables-restore.
# The manifest that uses the flannel images is tests/kube/addons/kube-flannel.yml.
#
# Binaries are cached under $CLOUDSIGMA_K8S_CACHE/addons-bin (kube-proxy in addons-bin/vX.Y.Z/;
# stamp files as in build.sh), the .debs under $CLOUDSIGMA_K8S_CACHE/debs; the archives are
# reproducible (same inputs, same digests) and each is written to a temporary file and renamed.
# Cold: ~6 min on 2 cores with the Go cache build.sh left (kube-proxy relinks from it; another
# version's compiles 26 packages of its own after build.sh --kube-version: 8 s); cached: ~3 s.
set -euo pipefail

DEFAULT_KUBE_VERSION=v1.34.1
COREDNS_VERSION=v1.12.1         # kubeadm v1.34.1: cmd/kubeadm/app/constants CoreDNSVersion
FLANNEL_VERSION=v0.28.10
FLANNEL_CNI_VERSION=v0.9.1      # containernetworking/plugins, the last release with meta/flannel

usage="usage: tests/kube/addons.sh [--kube-version vX.Y.Z]"
help="$usage
  --kube-version vX.Y.Z  the Kubernetes version whose kube-proxy image is built (default
                         $DEFAULT_KUBE_VERSION), to node-artifacts/kubernetes/vX.Y.Z/images/kube-proxy.tar;
                         other than $DEFAULT_KUBE_VERSION it needs the wrapper module tests/kube/kubernetes-vX.Y/
                         (as tests/kube/build.sh --node --kube-version vX.Y.Z). CoreDNS and flannel go to
                         node-artifacts/images/ whatever the version."
KUBE_VERSION=$DEFAULT_KUBE_VERSION
while [[ $# -gt 0 ]]; do
    case "$1" in
        --kube-version)
            [[ $# -ge 2 ]] || { echo "$usage: --kube-version needs a value" >&2; exit 2; }
            KUBE_VERSION=$2
            shift
            ;;
        -h|--help) echo "$help"; exit 0 ;;
        *) echo "$usage (unknown argument: $1)" >&2; exit 2 ;;
    esac
    shift
done
if [[ ! $KUBE_VERSION =~ ^v1\.([0-9]+)\.[0-9]+$ ]]; then
    echo "tests/kube/addons.sh: --kube-version $KUBE_VERSION: not a Kubernetes release vX.Y.Z (e.g. v1.33.13)" >&2
    exit 2
fi
minor=${BASH_REMATCH[1]}

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"
cache=$CLOUDSIGMA_K8S_CACHE
bin="$cache/addons-bin"
out="$cache/node-artifacts/images"
mkdir -p "$bin" "$out" "$cache/go"

export GOMODCACHE="$cache/go/mod"
export GOCACHE="$cache/go/build"
export GOTOOLCHAIN=local
export GOFLAGS=-buildvcs=false
export CGO_ENABLED=0

say() { echo "tests/kube/addons.sh: $*"; }
for tool in go apt-get dpkg-deb cargo setcap; do
    command -v "$tool" >/dev/null || { say "'$tool' not found: scripts/install-deps installs the Debian tools (setcap: libcap2-bin); Go and cargo come with this machine kind" >&2; exit 1; }
done

# build NAME MODULE_DIR PACKAGE VERSION LDFLAGS [SRC_DIR]: tests/kube/go-build.sh into
# addons-bin/, with this script in the stamp (it patches flannel's copy).
# shellcheck source=tests/kube/go-build.sh
. "$here/go-build.sh"
build() { go_build "$bin" "$1" "$2" "$3" "$4" "$5" "${6:-$2}" "$0"; }

# --- Go builds ---------------------------------------------------------------------------------
# kube-proxy from the wrapper module build.sh builds that version's kubelet from: kubernetes/ for
# the default version, kubernetes-vX.Y/ for another (its go.mod requires exactly vX.Y.Z).
if [[ $KUBE_VERSION == "$DEFAULT_KUBE_VERSION" ]]; then
    wrapper="$here/kubernetes"
else
    wrapper="$here/kubernetes-v1.$minor"
    if ! grep -qx "require k8s.io/kubernetes $KUBE_VERSION" "$wrapper/go.mod" 2>/dev/null; then
        say "--kube-version $KUBE_VERSION: $wrapper/go.mod does not require k8s.io/kubernetes $KUBE_VERSION;" >&2
        echo "  make that wrapper module (a copy of tests/kube/kubernetes-v1.33/ with the version and its replace lines changed, then go mod tidy)" >&2
        exit 2
    fi
fi
vpkg=k8s.io/component-base/version
go_build "$bin/$KUBE_VERSION" kube-proxy "$wrapper" k8s.io/kubernetes/cmd/kube-proxy "$KUBE_VERSION" \
    "-s -w -X $vpkg.gitVersion=$KUBE_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean" \
    "$wrapper" "$0"
build coredns "$here/coredns" github.com/coredns/coredns "$COREDNS_VERSION" "-s -w"
build flannel "$here/cni-flannel" github.com/containernetworking/plugins/plugins/meta/flannel "$FLANNEL_CNI_VERSION" \
    "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$FLANNEL_CNI_VERSION"

# flanneld cannot be built from the module as it is, for two reasons found here:
#  - with CGO_ENABLED=0 on amd64, pkg/backend/udp/udp_amd64.go and udp_network_amd64.go call
#    functions that only the cgo file cproxy_amd64.go defines (upstream links it with cgo);
#  - pkg/backend/tencentvpc imports github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/vpc,
#    which this machine's Go module proxy refuses (403).
# `go build -overlay` may not replace files under GOMODCACHE, so the module (verified by the
# wrapper's go.sum) is copied and those two backends are replaced by empty packages: the UDP and
# Tencent Cloud backends are then not registered; vxlan and host-gw (pure Go) are. The copy builds
# with flannel's own go.mod and go.sum.
fdir=$(cd "$here/flannel" && go mod download -json github.com/flannel-io/flannel | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
fsrc="$cache/src/flannel@$FLANNEL_VERSION"
if [[ ! -f "$fsrc/.patched" ]]; then
    rm -rf "$fsrc" && mkdir -p "${fsrc%/*}"
    cp -r "$fdir" "$fsrc.tmp" && chmod -R u+w "$fsrc.tmp"
    rm "$fsrc.tmp"/pkg/backend/udp/{udp_amd64.go,udp_network_amd64.go,cproxy_amd64.go,proxy_amd64.c,proxy_amd64.h}
    printf '// Emptied by tests/kube/addons.sh: the UDP backend needs cgo on amd64.\npackage udp\n' \
        > "$fsrc.tmp/pkg/backend/udp/zz_nocgo.go"
    printf '// Emptied by tests/kube/addons.sh: its SDK module is not served by the proxy.\npackage tencentvpc\n' \
        > "$fsrc.tmp/pkg/backend/tencentvpc/tencentvpc.go"
    touch "$fsrc.tmp/.patched" && mv "$fsrc.tmp" "$fsrc"
fi
build flanneld "$here/flannel" . "$FLANNEL_VERSION" \
    "-s -w -X github.com/flannel-io/flannel/pkg/version.Version=$FLANNEL_VERSION" "$fsrc"
build install-conf "$here/flannel" ./cmd/install_conf "$FLANNEL_VERSION" "-s -w" "$fsrc"

# cp for the flannel CNI plugin image's init container (tests/images/src/bin/cp.rs).
target="${CARGO_TARGET_DIR:-$cache/target}/e2e-build"
triple=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$target" \
    cargo build -q --release --locked --manifest-path "$repo/Cargo.toml" -p test-images --bin cp --target "$triple"

# --- netfilter userland from Debian packages ---------------------------------------------------
# The guest (Debian 12) uses iptables' nft backend; the images get the same build. glibc comes
# along (iptables is dynamically linked and dlopens its extensions from xtables/).
debs=(iptables libxtables12 libip4tc2 libip6tc2 libnftnl11 libmnl0 libnetfilter-conntrack3 libnfnetlink0 netbase libc6)
ddir="$cache/debs"
mkdir -p "$ddir"
for d in "${debs[@]}"; do
    if ! compgen -G "$ddir/${d}_*.deb" >/dev/null; then
        (cd "$ddir" && { apt-get download "$d" 2>/dev/null || { apt-get update -qq && apt-get download "$d"; }; })
    fi
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
nf="$work/netfilter"
mkdir -p "$nf"
for d in "${debs[@]}"; do
    # the newest cached .deb of that package
    deb=$(find "$ddir" -name "${d}_*.deb" | sort -V | tail -n1)
    dpkg-deb -x "$deb" "$nf"
done
# Docs, locales' charset converters and tools no add-on runs.
rm -rf "${nf:?}/usr/share" "$nf/usr/lib/x86_64-linux-gnu/gconv" "$nf/usr/bin/iptables-xml" "$nf/usr/sbin/nfnl_osf" \
    "$nf/usr/sbin/iptables-apply" "$nf/usr/sbin/ip6tables-apply"
# What Debian's alternatives would point at on an nft system (the guest's choice).
for n in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -sfn xtables-nft-multi "$nf/usr/sbin/$n"
done
mkdir -p "$nf/run" "$nf/tmp" "$nf/var/run"
chmod 1777 "$nf/tmp"
# Every shared object must resolve inside the rootfs (the image has nothing else): checked with
# the rootfs as root directory, so the host's libraries cannot stand in (needs root; else skipped).
if [[ $(id -u) == 0 ]]; then
    for f in /usr/sbin/xtables-nft-multi $(cd "$nf" && ls usr/lib/x86_64-linux-gnu/xtables/*.so); do
        if missing=$(chroot "$nf" /lib64/ld-linux-x86-64.so.2 --list "/${f#/}" | grep 'not found'); then
            say "netfilter rootfs: $f misses libraries: $missing" >&2
            exit 1
        fi
    done
    chroot "$nf" iptables -V >/dev/null
fi

# --- images --------------------------------------------------------------------------------------
# shellcheck source=scripts/oci-archive
. "$repo/scripts/oci-archive"
path='"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]'

image() { # FILE REF ROOTFS CONFIG (FILE: a path under node-artifacts/)
    local start=$SECONDS f="$cache/node-artifacts/$1"
    oci_archive_dir "$f" "$2" "$3" "$4"
    say "$2 -> $f ($(du -h "$f" | cut -f1), manifest $OCI_MANIFEST_DIGEST, $((SECONDS - start)) s)"
}

r="$work/kube-proxy"
cp -a "$nf" "$r" && install -D -m 0755 "$bin/$KUBE_VERSION/kube-proxy" "$r/usr/local/bin/kube-proxy"
image "kubernetes/$KUBE_VERSION/images/kube-proxy.tar" "registry.k8s.io/kube-proxy:$KUBE_VERSION" "$r" \
    "\"User\":\"0:0\",$path,\"Entrypoint\":[\"/usr/local/bin/kube-proxy\"]"
# the one an older addons.sh wrote for every version: left there, a v1.33 image would import both
if [[ -e $out/kube-proxy.tar ]]; then
    rm -f "$out/kube-proxy.tar"
    say "removed $out/kube-proxy.tar (the old, version-independent location)"
fi

r="$work/flannel"
cp -a "$nf" "$r"
install -D -m 0755 "$bin/flanneld" "$r/opt/bin/flanneld"
install -D -m 0755 "$bin/install-conf" "$r/opt/bin/install-conf"
image images/flannel.tar "cloudsigma-k8s.test/flannel:$FLANNEL_VERSION" "$r" \
    "\"User\":\"0:0\",$path,\"Entrypoint\":[\"/opt/bin/flanneld\"]"

r="$work/flannel-cni-plugin"
install -D -m 0755 "$bin/flannel" "$r/flannel"
install -D -m 0755 "$target/$triple/release/cp" "$r/bin/cp"
image images/flannel-cni-plugin.tar "cloudsigma-k8s.test/flannel-cni-plugin:$FLANNEL_CNI_VERSION" "$r" "\"User\":\"0:0\",$path"

# CoreDNS as upstream's image: uid 65532 (nonroot) with the file capability to bind port 53;
# kubeadm's Deployment drops all capabilities but NET_BIND_SERVICE and sets
# allowPrivilegeEscalation: false, under which the file capability still works because the bounding
# and permitted sets keep NET_BIND_SERVICE.
r="$work/coredns"
install -D -m 0755 "$bin/coredns" "$r/coredns"
if ! setcap cap_net_bind_service=+ep "$r/coredns"; then
    say "setcap failed: setting a file capability needs root (CAP_SETFCAP); run this script as root" >&2
    exit 1
fi
OCI_XATTRS=1 image images/coredns.tar "registry.k8s.io/coredns/coredns:$COREDNS_VERSION" "$r" \
    "\"User\":\"65532:65532\",$path,\"Entrypoint\":[\"/coredns\"],\"WorkingDir\":\"/\",\"ExposedPorts\":{\"53/tcp\":{},\"53/udp\":{}}"

"$bin/$KUBE_VERSION/kube-proxy" --version
"$bin/coredns" -version | sed -n 1p
"$bin/flanneld" --version 2>&1
