#!/usr/bin/env bash
# Runs the add-on images of tests/kube/addons.sh for real, without VMs: two "nodes" as network
# namespaces on one bridge (the VLAN), a real etcd and kube-apiserver, and from the images' own
# root filesystems (extracted from the OCI archives, run with chroot): flanneld with the
# manifest's net-conf.json (host-gw) on both nodes, the flannel CNI plugin (+ bridge, host-local)
# making one pod per node, kube-proxy on node 1, CoreDNS in a pod on node 2. Then, from the pod on
# node 1: `hello get` of the other pod by IP (host-gw routes), by Service ClusterIP (kube-proxy's
# DNAT) and by name (CoreDNS through the ClusterIP of kube-dns).
#
#   tests/kube/addons-check.sh          (root; prints SKIP and exits 0 otherwise)
#
# Needs tests/kube/build.sh --node (etcd, kube-apiserver, kubectl, the CNI plugins) and
# tests/kube/addons.sh (the archives). Everything runs in a private network and mount namespace
# of its own (unshare), so the host's interfaces, routes and iptables are never touched.
# What it cannot show: the kubelet/containerd side (import-check.sh covers the import) and the
# real VLAN of the emulator.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"
cache=$CLOUDSIGMA_K8S_CACHE
say() { echo "tests/kube/addons-check.sh: $*" >&2; }

if [[ $(id -u) != 0 ]]; then
    say "SKIP: needs root (network namespaces, chroot)"
    exit 0
fi
if [[ "${ADDONS_CHECK_INNER:-}" != 1 ]]; then
    # Re-run inside fresh network and mount namespaces: nothing leaks to the host.
    exec env ADDONS_CHECK_INNER=1 unshare --net --mount --propagation private "$0" "$@"
fi

kb="$cache/kube-bin"
cni="$cache/node-artifacts/cni"
images="$cache/node-artifacts/images"
# kube-proxy is per version (addons.sh --kube-version); this cluster is kube-bin's v1.34.1
kube_proxy="$cache/node-artifacts/kubernetes/v1.34.1/images/kube-proxy.tar"
for f in "$kb/etcd" "$kb/kube-apiserver" "$kb/kubectl" "$cni/bridge" "$cni/host-local" \
    "$images/flannel.tar" "$images/flannel-cni-plugin.tar" "$kube_proxy" "$images/coredns.tar"; do
    [[ -e $f ]] || { say "missing $f: run tests/kube/build.sh --node and tests/kube/addons.sh first"; exit 1; }
done
target="${CARGO_TARGET_DIR:-$cache/target}/e2e-build"
triple=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$target" \
    cargo build -q --release --locked --manifest-path "$repo/Cargo.toml" -p test-images --bin hello --target "$triple"
hello="$target/$triple/release/hello"

w=$(mktemp -d /tmp/addons-check.XXXXXX)
pids=()
cleanup() {
    local rc=$?
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ $rc != 0 ]]; then
        for l in "$w"/*.log; do [[ -f $l ]] && { echo "--- ${l##*/} (tail)"; tail -n 15 "$l"; }; done
    fi
    grep -o "$w/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$w"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
bg() { local log=$1; shift; "$@" > "$w/$log.log" 2>&1 & pids+=($!); }

# extract ARCHIVE DIR: the single layer of an archive written by scripts/oci-archive, unpacked
# (file capabilities included) as containerd would.
extract() {
    mkdir -p "$2" "$w/oci"
    tar -xf "$1" -C "$w/oci" ./index.json
    local m l
    m=$(sed 's/.*"digest":"sha256:\([0-9a-f]*\)".*/\1/' "$w/oci/index.json")
    l=$(tar -xOf "$1" "./blobs/sha256/$m" | sed 's/.*"layers":\[{[^}]*"digest":"sha256:\([0-9a-f]*\)".*/\1/')
    tar -xOf "$1" "./blobs/sha256/$l" | tar --xattrs --xattrs-include='security.capability' -xf - -C "$2"
}
# A rootfs made usable for chroot like a container runtime would: /dev, /proc, /sys.
chrootfs() {
    mkdir -p "$1/dev" "$1/proc" "$1/sys"
    mount --rbind /dev "$1/dev"
    mount -t proc proc "$1/proc"
    mount -t sysfs sysfs "$1/sys"
}

# --- the "VLAN": a bridge in this namespace, one veth per node namespace ----------------------------
ip link set lo up
ip link add vlan0 type bridge
ip addr add 192.0.2.1/24 dev vlan0
ip link set vlan0 up
mkdir -p /run/netns /var/lib/cni
mount -t tmpfs tmpfs /var/lib/cni   # host-local's leases (private, like /run/netns)
mount -t tmpfs tmpfs /run/netns     # private (mount namespace): ip netns names live only here
for n in 1 2; do
    ip netns add "node$n"
    ip link add "veth$n" type veth peer name eth1 netns "node$n"
    ip link set "veth$n" master vlan0 up
    ip -n "node$n" link set lo up
    ip -n "node$n" addr add "192.0.2.1$n/24" dev eth1
    ip -n "node$n" link set eth1 up
    ip -n "node$n" route add default via 192.0.2.1
    ip netns exec "node$n" sysctl -qw net.ipv4.ip_forward=1
done

# --- control plane on 192.0.2.1 ---------------------------------------------------------------
openssl genrsa -out "$w/sa.key" 2048 2>/dev/null
openssl rsa -in "$w/sa.key" -pubout -out "$w/sa.pub" 2>/dev/null
echo 'addons-check-token,admin,1,"system:masters"' > "$w/tokens.csv"
bg etcd "$kb/etcd" --data-dir "$w/etcd" --listen-client-urls http://127.0.0.1:2379 \
    --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380
bg apiserver "$kb/kube-apiserver" --etcd-servers http://127.0.0.1:2379 --advertise-address 192.0.2.1 \
    --bind-address 0.0.0.0 --secure-port 6443 --cert-dir "$w/certs" --allow-privileged=true \
    --service-account-issuer https://kubernetes.default.svc --service-account-key-file "$w/sa.pub" \
    --service-account-signing-key-file "$w/sa.key" --token-auth-file "$w/tokens.csv" \
    --authorization-mode RBAC --service-cluster-ip-range 10.96.0.0/12
cat > "$w/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://192.0.2.1:6443", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: addons-check-token}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
EOF
k() { "$kb/kubectl" --kubeconfig "$w/kubeconfig" "$@"; }
for _ in $(seq 120); do k get --raw /readyz >/dev/null 2>&1 && break; sleep 0.5; done
k get --raw /readyz >/dev/null
say "apiserver ready"

# The manifest is applied for real (no kubelet runs its DaemonSet); its ConfigMap is what flanneld
# and the CNI plugin get below.
k apply -f "$here/addons/kube-flannel.yml" >/dev/null
k -n kube-flannel get cm kube-flannel-cfg -o jsonpath='{.data.net-conf\.json}' > "$w/net-conf.json"
k -n kube-flannel get cm kube-flannel-cfg -o jsonpath='{.data.cni-conf\.json}' > "$w/cni-conf.json"
for n in 1 2; do
    # What kube-controller-manager --allocate-node-cidrs and the cloud controller would set. The
    # annotation is the one every kubelet sets at registration: flanneld v0.28.10 panics on a Node
    # with no annotations at all (nil map in kube.go AcquireLease), which a real node never is.
    k create -f - >/dev/null <<EOF
{"apiVersion":"v1","kind":"Node","metadata":{"name":"node$n",
 "annotations":{"volumes.kubernetes.io/controller-managed-attach-detach":"true"}},"spec":{"podCIDR":"10.244.$n.0/24","podCIDRs":["10.244.$n.0/24"]}}
EOF
    k patch node "node$n" --subresource=status --type=merge \
        -p "{\"status\":{\"addresses\":[{\"type\":\"InternalIP\",\"address\":\"192.0.2.1$n\"}]}}" >/dev/null
done

# --- flanneld on both nodes (the flannel image; args as the manifest's container) --------------------
for n in 1 2; do
    r="$w/flannel$n"
    extract "$images/flannel.tar" "$r"
    chrootfs "$r"
    mkdir -p "$r/etc/kube-flannel" "$r/run/flannel"
    cp "$w/net-conf.json" "$r/etc/kube-flannel/net-conf.json"
    cp "$w/kubeconfig" "$r/kubeconfig"
    bg "flanneld$n" ip netns exec "node$n" env -i NODE_NAME="node$n" POD_NAME="kube-flannel-ds-$n" \
        POD_NAMESPACE=kube-flannel PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        chroot "$r" /opt/bin/flanneld --ip-masq --kube-subnet-mgr --iface="192.0.2.1$n" --kubeconfig-file=/kubeconfig
done
for n in 1 2; do
    for _ in $(seq 120); do [[ -s "$w/flannel$n/run/flannel/subnet.env" ]] && break; sleep 0.5; done
    [[ -s "$w/flannel$n/run/flannel/subnet.env" ]] || { say "flanneld on node$n wrote no subnet.env"; exit 1; }
done
other() { echo $((3 - $1)); }
for n in 1 2; do
    o=$(other $n)
    for _ in $(seq 60); do ip -n "node$n" route | grep -q "10.244.$o.0/24 via 192.0.2.1$o" && break; sleep 0.5; done
    ip -n "node$n" route | grep -q "10.244.$o.0/24 via 192.0.2.1$o" \
        || { say "node$n has no host-gw route to 10.244.$o.0/24:"; ip -n "node$n" route >&2; exit 1; }
done
say "flanneld: subnet.env written, host-gw routes in place ($(tr '\n' ' ' < "$w/flannel1/run/flannel/subnet.env"))"
public_ip=$(k get node node1 -o jsonpath='{.metadata.annotations.flannel\.alpha\.coreos\.com/public-ip}')
[[ $public_ip == 192.0.2.11 ]] || { say "node1's flannel public-ip is '$public_ip', not its InternalIP"; exit 1; }

# --- one pod per node through the CNI config of the manifest --------------------------------------
# The install-cni init container's step, from the image: install-conf writes the conflist.
mkdir -p "$w/flannel1/etc/cni/net.d"
cp "$w/cni-conf.json" "$w/flannel1/etc/kube-flannel/cni-conf.json"
chroot "$w/flannel1" /opt/bin/install-conf /etc/kube-flannel/cni-conf.json /etc/cni/net.d/10-flannel.conflist
cp "$w/flannel1/etc/cni/net.d/10-flannel.conflist" "$w/conflist"
# The flannel CNI plugin from its image, the delegates (bridge, host-local, portmap) from the node.
extract "$images/flannel-cni-plugin.tar" "$w/cniimg"
mkdir -p "$w/cnibin"
# The init container's own copy step, run from the image: cp -f /flannel /opt/cni/bin/flannel.
mkdir -p "$w/cniimg/opt/cni/bin"
mount --bind "$w/cnibin" "$w/cniimg/opt/cni/bin"
chroot "$w/cniimg" /bin/cp -f /flannel /opt/cni/bin/flannel
cp "$cni"/* "$w/cnibin/"
pod() { # NODE NAME: a pod network namespace with eth0 from the conflist's flannel plugin
    local n=$1 name=$2
    ip netns add "$name"
    ip -n "$name" link set lo up   # what the runtime's loopback plugin does
    # The conflist's first plugin with the runtime's fields, as libcni hands it over (the
    # subnet file and data dir of this node's flanneld instead of the host's /run and /var/lib).
    python3 - "$w/conflist" "$w/flannel$n/run/flannel/subnet.env" "$w/cnidata$n" > "$w/$name.conf" <<'PY'
import json, sys
conf = json.load(open(sys.argv[1]))
plugin = dict(conf["plugins"][0], name=conf["name"], cniVersion=conf["cniVersion"],
              subnetFile=sys.argv[2], dataDir=sys.argv[3])
print(json.dumps(plugin))
PY
    ip netns exec "node$n" env CNI_COMMAND=ADD CNI_CONTAINERID="$name" CNI_NETNS="/run/netns/$name" \
        CNI_IFNAME=eth0 CNI_PATH="$w/cnibin" "$w/cnibin/flannel" < "$w/$name.conf" > "$w/$name.result"
    sed -n 's/.*"address": *"\([0-9.]*\)\/.*/\1/p' "$w/$name.result" | head -n1
}
ip1=$(pod 1 pod1)
ip2=$(pod 2 pod2)
[[ $ip1 == 10.244.1.* && $ip2 == 10.244.2.* ]] || { say "pod IPs $ip1 / $ip2 not from the nodes' podCIDRs"; cat "$w"/pod*.result >&2; exit 1; }
say "pods: pod1 $ip1 (node1), pod2 $ip2 (node2)"
hostname_in() { # run hello with /etc/hostname = the pod name, as the kubelet would
    mkdir -p "$w/etc-$1" && echo "$1" > "$w/etc-$1/hostname"
}
hostname_in pod2
bg hello-pod2 ip netns exec pod2 unshare --mount sh -c "mount --bind '$w/etc-pod2/hostname' /etc/hostname && exec '$hello'"
sleep 1
out=$(ip netns exec pod1 "$hello" get "http://$ip2:8080/")
[[ $out == "hello from pod pod2" ]] || { say "pod1 -> pod2 by IP answered: $out"; exit 1; }
say "pod1 -> pod2 across nodes (host-gw): $out"

# --- kube-proxy on node1 (the image; the config kubeadm writes, reduced to what matters) -------------
k create service clusterip hello --tcp=8080:8080 >/dev/null
# No controller-manager here: the EndpointSlice the endpointslice controller would write.
k create -f - >/dev/null <<EOF
{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"hello-1","namespace":"default",
 "labels":{"kubernetes.io/service-name":"hello"}},"addressType":"IPv4",
 "ports":[{"name":"8080-8080","port":8080,"protocol":"TCP"}],
 "endpoints":[{"addresses":["$ip2"],"conditions":{"ready":true},"nodeName":"node2"}]}
EOF
svc=$(k get svc hello -o jsonpath='{.spec.clusterIP}')
r="$w/kube-proxy"
extract "$kube_proxy" "$r"
chrootfs "$r"
mkdir -p "$r/var/lib/kube-proxy" "$r/run"
cp "$w/kubeconfig" "$r/var/lib/kube-proxy/kubeconfig.conf"
cat > "$r/var/lib/kube-proxy/config.conf" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: /var/lib/kube-proxy/kubeconfig.conf}
clusterCIDR: 10.244.0.0/16
mode: ""
conntrack: {maxPerCore: 0}
EOF
bg kube-proxy ip netns exec node1 env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    chroot "$r" /usr/local/bin/kube-proxy --config=/var/lib/kube-proxy/config.conf --hostname-override=node1
for _ in $(seq 120); do
    ip netns exec node1 chroot "$r" iptables-save -t nat 2>/dev/null | grep -q "default/hello.*DNAT" && break
    sleep 0.5
done
out=$(ip netns exec pod1 "$hello" get "http://$svc:8080/")
[[ $out == "hello from pod pod2" ]] || { say "pod1 -> Service $svc answered: $out"; exit 1; }
say "pod1 -> Service hello ($svc, kube-proxy iptables DNAT on node1): $out"

# --- CoreDNS in a pod on node2, as kubeadm deploys it (its Corefile, uid 65532, port 53) -------------
r="$w/coredns"
extract "$images/coredns.tar" "$r"
chrootfs "$r"
getcap "$r/coredns" | grep -q cap_net_bind_service || { say "coredns lost its file capability in the archive"; exit 1; }
ip3=$(pod 2 dns)
mkdir -p "$r/etc/coredns" "$r/var/run/secrets/kubernetes.io/serviceaccount"
cat > "$r/etc/coredns/Corefile" <<'EOF'
.:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       kubeconfig /kubeconfig c
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    cache 30
    loop
    loadbalance
}
EOF
cp "$w/kubeconfig" "$r/kubeconfig"
# As uid 65532 (the image's user): binding port 53 works only through the file capability.
# (import-check-style runs under runc with no_new_privs showed the same; see docs/e2e.md.)
bg coredns ip netns exec dns chroot --userspec=65532:65532 "$r" /coredns -conf /etc/coredns/Corefile
# kube-dns with both protocols, and its EndpointSlice (UDP and TCP 53 on the CoreDNS pod).
kdns=10.96.0.10
k -n kube-system create -f - >/dev/null <<EOF
{"apiVersion":"v1","kind":"Service","metadata":{"name":"kube-dns","namespace":"kube-system"},
 "spec":{"clusterIP":"$kdns","ports":[{"name":"dns","port":53,"protocol":"UDP"},{"name":"dns-tcp","port":53,"protocol":"TCP"}]}}
EOF
k -n kube-system create -f - >/dev/null <<EOF
{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"kube-dns-1","namespace":"kube-system",
 "labels":{"kubernetes.io/service-name":"kube-dns"}},"addressType":"IPv4",
 "ports":[{"name":"dns","port":53,"protocol":"UDP"},{"name":"dns-tcp","port":53,"protocol":"TCP"}],
 "endpoints":[{"addresses":["$ip3"],"conditions":{"ready":true},"nodeName":"node2"}]}
EOF
for _ in $(seq 120); do
    ip netns exec node1 chroot "$w/kube-proxy" iptables-save -t nat 2>/dev/null | grep -q "kube-system/kube-dns:dns .*DNAT" && break
    sleep 0.5
done
for _ in $(seq 60); do ip netns exec dns "$hello" get "http://127.0.0.1:8181/ready" >/dev/null 2>&1 && break; sleep 0.5; done
# The pod's resolv.conf as the kubelet writes it (ClusterFirst).
printf 'search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver %s\noptions ndots:5\n' "$kdns" > "$w/resolv-pod1"
out=$(ip netns exec pod1 unshare --mount sh -c "mount --bind '$w/resolv-pod1' /etc/resolv.conf && exec '$hello' get http://hello.default.svc.cluster.local:8080/")
[[ $out == "hello from pod pod2" ]] || { say "pod1 -> hello.default.svc.cluster.local answered: $out"; exit 1; }
say "pod1 -> http://hello.default.svc.cluster.local:8080/ (CoreDNS via kube-dns $kdns, kube-proxy, host-gw): $out"
out=$(ip netns exec pod1 unshare --mount sh -c "mount --bind '$w/resolv-pod1' /etc/resolv.conf && exec '$hello' get http://hello:8080/")
[[ $out == "hello from pod pod2" ]] || { say "pod1 -> hello (search list) answered: $out"; exit 1; }
say "pod1 -> http://hello:8080/ (search list): $out"
say "OK"
