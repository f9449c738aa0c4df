#!/usr/bin/env bash
# containerd (pinned), runc and the CNI plugins, from the source KUBERNETES_SOURCE names (as
# image-builder's kubernetes_source_type):
#   pkgs   the upstream release tarballs, checksums verified (the default; needs the internet)
#   local  the files imgbuild uploaded from a local artifacts directory (recipe var artifacts_dir,
#          laid out as tests/kube/build.sh --node writes it) to /var/lib/imgbuild/artifacts
#          (../roles/local-runtime-artifacts.yaml; kept by the base capture's reboot)
# Either way this script writes the unit and the config: SystemdCgroup = true, the sandbox image
# matching Kubernetes, and registry hosts read from /etc/containerd/certs.d (so that mirrors in
# KubeadmConfig `files` take effect).
# Env (from recipe vars): KUBERNETES_SOURCE, CONTAINERD_VERSION, RUNC_VERSION, CNI_PLUGINS_VERSION,
# PAUSE_IMAGE.
set -euo pipefail

: "${KUBERNETES_SOURCE:?}" "${CONTAINERD_VERSION:?}" "${RUNC_VERSION:?}" "${CNI_PLUGINS_VERSION:?}" "${PAUSE_IMAGE:?}"
artifacts=/var/lib/imgbuild/artifacts
arch=$(dpkg --print-architecture)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

# What every node needs from the distribution (image-builder's common_debs and the CSI drivers'
# host tools): kubeadm's preflight and kube-proxy/CNI (iptables, conntrack, socat, ebtables,
# ethtool), NFS and iSCSI volumes (nfs-common, open-iscsi: the kubelet mounts them on the host),
# growpart for the agent's root growth (cloud-guest-utils, with sfdisk from fdisk), and curl
# (gnupg only to verify pkgs.k8s.io).
keyring_tools=()
[ "$KUBERNETES_SOURCE" = pkgs ] && keyring_tools=(gnupg)
apt-get update -q
echo "package lists updated (${SECONDS}s into this step)"
apt-get install -y -q --no-install-recommends ca-certificates curl "${keyring_tools[@]}" \
  iptables conntrack socat ebtables ethtool nfs-common open-iscsi cloud-guest-utils fdisk
echo "packages installed (${SECONDS}s into this step)"
# the distribution's containerd/runc would fight ours
apt-get remove -y -q containerd runc docker.io >/dev/null 2>&1 || true
install -d -m 0755 /opt/cni/bin /etc/cni/net.d /usr/local/bin /usr/local/sbin

case "$KUBERNETES_SOURCE" in
pkgs)
  fetch() { curl -fsSL --retry 5 --retry-delay 2 -o "$2" "$1"; }
  gh=https://github.com
  tarball=containerd-${CONTAINERD_VERSION}-linux-${arch}.tar.gz
  fetch "$gh/containerd/containerd/releases/download/v${CONTAINERD_VERSION}/${tarball}" "$tarball"
  fetch "$gh/containerd/containerd/releases/download/v${CONTAINERD_VERSION}/${tarball}.sha256sum" "$tarball.sha256sum"
  sha256sum -c "$tarball.sha256sum"
  tar -C /usr/local -xzf "$tarball"

  fetch "$gh/opencontainers/runc/releases/download/v${RUNC_VERSION}/runc.${arch}" runc
  fetch "$gh/opencontainers/runc/releases/download/v${RUNC_VERSION}/runc.sha256sum" runc.sha256sum
  grep " runc.${arch}\$" runc.sha256sum | sed "s/runc.${arch}/runc/" | sha256sum -c -
  install -m 0755 runc /usr/local/sbin/runc

  cni=cni-plugins-linux-${arch}-v${CNI_PLUGINS_VERSION}.tgz
  fetch "$gh/containernetworking/plugins/releases/download/v${CNI_PLUGINS_VERSION}/${cni}" "$cni"
  fetch "$gh/containernetworking/plugins/releases/download/v${CNI_PLUGINS_VERSION}/${cni}.sha256" "$cni.sha256"
  sha256sum -c "$cni.sha256"
  tar -C /opt/cni/bin -xzf "$cni"
  ;;
local)
  # imgbuild has checked each file's sha256 in the guest against the local one already. Moved,
  # not copied: the upload dir is on the root filesystem, so each is a rename (a copy of these
  # ~100 MB was seconds on an emulated VM); mv copies by itself across filesystems.
  place() { mv -f -- "$1" "$2" && chown root:root "$2" && chmod 0755 "$2"; }
  for b in containerd containerd-shim-runc-v2 ctr; do
    place "$artifacts/bin/$b" "/usr/local/bin/$b"
  done
  place "$artifacts/bin/runc" /usr/local/sbin/runc
  for p in "$artifacts"/cni/*; do
    place "$p" "/opt/cni/bin/${p##*/}"
  done
  ;;
*)
  echo "KUBERNETES_SOURCE=$KUBERNETES_SOURCE: expected pkgs or local (recipe var kubernetes_source)" >&2
  exit 2
  ;;
esac

# containerd's own unit (containerd/containerd containerd.service at the pinned tag), written here
# so that both sources install the same one.
cat > /etc/systemd/system/containerd.service <<'UNIT'
[Unit]
Description=containerd container runtime
Documentation=https://containerd.io
After=network.target local-fs.target dbus.service

[Service]
ExecStartPre=-/sbin/modprobe overlay
ExecStart=/usr/local/bin/containerd
Type=notify
Delegate=yes
KillMode=process
Restart=always
RestartSec=5
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
OOMScoreAdjust=-999

[Install]
WantedBy=multi-user.target
UNIT

install -d -m 0755 /etc/containerd /etc/containerd/certs.d /etc/containerd/conf.d
/usr/local/bin/containerd config default > config.toml
# runc through the systemd cgroup driver (kubelet's default since 1.22), the pause image kubeadm
# expects (so joins do not pull a second sandbox image), hosts.toml mirrors from certs.d, and
# drop-in configs from conf.d (containerd 1.7 merges `imports` over this file).
sed -i -e 's/SystemdCgroup = false/SystemdCgroup = true/' \
       -e "s#sandbox_image = \".*\"#sandbox_image = \"${PAUSE_IMAGE}\"#" \
       -e '/\[plugins."io.containerd.grpc.v1.cri".registry\]/,/^ *\[/ s#config_path = ".*"#config_path = "/etc/containerd/certs.d"#' \
       -e 's#^imports = \[.*\]#imports = ["/etc/containerd/conf.d/*.toml"]#' config.toml
grep -q 'SystemdCgroup = true' config.toml
grep -q "sandbox_image = \"${PAUSE_IMAGE}\"" config.toml
grep -q 'config_path = "/etc/containerd/certs.d"' config.toml
grep -q '^imports = \["/etc/containerd/conf.d/\*.toml"\]' config.toml
install -m 0644 config.toml /etc/containerd/config.toml

systemctl daemon-reload
echo "containerd configured (${SECONDS}s into this step)"
systemctl enable --now containerd
/usr/local/bin/containerd --version
runc --version | sed -n 1p   # not head: SIGPIPE under pipefail
