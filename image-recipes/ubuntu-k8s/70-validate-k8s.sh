#!/usr/bin/env bash
# Kubernetes part of the validation: pinned versions present, held, services enabled, images there.
set -uo pipefail

: "${KUBERNETES_SOURCE:?}" "${KUBERNETES_VERSION:?}" "${CONTAINERD_VERSION:?}" "${PAUSE_IMAGE:?}"
# check, checks_done: image-recipes/common/lib/image.sh, uploaded with this script (`uses:`)
# shellcheck source=/dev/null
. /tmp/imgbuild/lib/image.sh

check "kubeadm v$KUBERNETES_VERSION" bash -c "kubeadm version -o short | grep -qx 'v$KUBERNETES_VERSION'"
check "kubelet v$KUBERNETES_VERSION" bash -c "kubelet --version | grep -q 'v$KUBERNETES_VERSION\$'"
check "kubectl v$KUBERNETES_VERSION" bash -c "kubectl version --client | grep -q 'v$KUBERNETES_VERSION'"
if [ "$KUBERNETES_SOURCE" = pkgs ]; then
  check "kube packages held" bash -c "apt-mark showhold | grep -qx kubeadm && apt-mark showhold | grep -qx kubelet"
fi
check "provenance in /etc/kubernetes-version" grep -qx "KUBERNETES_VERSION=v$KUBERNETES_VERSION" /etc/kubernetes-version
check "kubelet drop-in for kubeadm" grep -q KUBELET_KUBEADM_ARGS /etc/systemd/system/kubelet.service.d/10-kubeadm.conf
check "crictl v1.34" bash -c "crictl --version | grep -q 'v1.34'"
check "conntrack present (kubeadm preflight)" command -v conntrack
check "socat present (kubectl port-forward)" command -v socat
check "ebtables present" command -v ebtables
check "mount.nfs present (nfs-common: NFS volumes, CSI)" test -x /sbin/mount.nfs
check "iscsiadm present (open-iscsi: iSCSI volumes, CSI)" command -v iscsiadm
check "growpart present (cloud-guest-utils: the agent grows the root partition)" command -v growpart
check "iptables present (CNI bridge, kube-proxy)" command -v iptables
check "containerd $CONTAINERD_VERSION" bash -c "containerd --version | grep -q 'v$CONTAINERD_VERSION '"
check "containerd enabled" systemctl is-enabled containerd
check "containerd active" systemctl is-active containerd
check "kubelet enabled" systemctl is-enabled kubelet
check "SystemdCgroup = true" grep -q 'SystemdCgroup = true' /etc/containerd/config.toml
check "runc present" test -x /usr/local/sbin/runc
check "CNI plugins present (bridge, host-local, loopback, portmap)" bash -c "for p in bridge host-local loopback portmap; do test -x /opt/cni/bin/\$p || exit 1; done"
check "containerd reads registry hosts from certs.d" grep -q 'config_path = "/etc/containerd/certs.d"' /etc/containerd/config.toml
check "crictl configured" grep -q containerd.sock /etc/crictl.yaml
check "pause image pulled" bash -c "crictl images -o json | grep -q '${PAUSE_IMAGE%%:*}'"

checks_done
