#!/usr/bin/env bash
# containerd (pinned), runc and the CNI plugins from their upstream releases, checksums
# verified; config with SystemdCgroup = true and the sandbox image matching Kubernetes.
# Env (from recipe vars): CONTAINERD_VERSION, RUNC_VERSION, CNI_PLUGINS_VERSION, PAUSE_IMAGE.
set -euo pipefail

: "${CONTAINERD_VERSION:?}" "${RUNC_VERSION:?}" "${CNI_PLUGINS_VERSION:?}" "${PAUSE_IMAGE:?}"
arch=$(dpkg --print-architecture)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

apt-get update -q
apt-get install -y -q --no-install-recommends ca-certificates curl gnupg iptables conntrack socat ebtables ethtool
# the distribution's containerd/runc would fight ours
apt-get remove -y -q containerd runc docker.io >/dev/null 2>&1 || true

fetch() { curl -fsSL --retry 5 --retry-delay 2 -o "$2" "$1"; }

gh=https://github.com
tarball=containerd-${CONTAINERD_VERSION}-linux-${arch}.tar.gz
fetch "$gh/containerd/containerd/releases/download/v${CONTAINERD_VERSION}/${tarball}" "$tarball"
fetch "$gh/containerd/containerd/releases/download/v${CONTAINERD_VERSION}/${tarball}.sha256sum" "$tarball.sha256sum"
sha256sum -c "$tarball.sha256sum"
tar -C /usr/local -xzf "$tarball"
fetch "https://raw.githubusercontent.com/containerd/containerd/v${CONTAINERD_VERSION}/containerd.service" containerd.service
install -m 0644 containerd.service /etc/systemd/system/containerd.service

fetch "$gh/opencontainers/runc/releases/download/v${RUNC_VERSION}/runc.${arch}" runc
fetch "$gh/opencontainers/runc/releases/download/v${RUNC_VERSION}/runc.sha256sum" runc.sha256sum
grep " runc.${arch}\$" runc.sha256sum | sed "s/runc.${arch}/runc/" | sha256sum -c -
install -m 0755 runc /usr/local/sbin/runc

cni=cni-plugins-linux-${arch}-v${CNI_PLUGINS_VERSION}.tgz
fetch "$gh/containernetworking/plugins/releases/download/v${CNI_PLUGINS_VERSION}/${cni}" "$cni"
fetch "$gh/containernetworking/plugins/releases/download/v${CNI_PLUGINS_VERSION}/${cni}.sha256" "$cni.sha256"
sha256sum -c "$cni.sha256"
install -d -m 0755 /opt/cni/bin /etc/cni/net.d
tar -C /opt/cni/bin -xzf "$cni"

install -d -m 0755 /etc/containerd
/usr/local/bin/containerd config default > config.toml
# runc through the systemd cgroup driver (kubelet's default since 1.22) and the pause image
# kubeadm expects, so joins do not pull a second sandbox image
sed -i -e 's/SystemdCgroup = false/SystemdCgroup = true/' \
       -e "s#sandbox_image = \".*\"#sandbox_image = \"${PAUSE_IMAGE}\"#" config.toml
grep -q 'SystemdCgroup = true' config.toml
grep -q "sandbox_image = \"${PAUSE_IMAGE}\"" config.toml
install -m 0644 config.toml /etc/containerd/config.toml

systemctl daemon-reload
systemctl enable --now containerd
/usr/local/bin/containerd --version
runc --version | sed -n 1p   # not head: SIGPIPE under pipefail
