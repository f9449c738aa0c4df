#!/usr/bin/env bash
# kubelet, kubeadm, kubectl (and cri-tools' crictl) at the pinned version from pkgs.k8s.io,
# held against upgrades; crictl pointed at containerd; control-plane/node images pre-pulled.
# Env: KUBERNETES_VERSION (e.g. 1.34.1), PAUSE_IMAGE.
set -euo pipefail

: "${KUBERNETES_VERSION:?}"
minor=$(echo "$KUBERNETES_VERSION" | cut -d. -f1,2)
repo="https://pkgs.k8s.io/core:/stable:/v${minor}/deb/"

install -d -m 0755 /etc/apt/keyrings
curl -fsSL --retry 5 "${repo}Release.key" | gpg --batch --yes --dearmor -o /etc/apt/keyrings/kubernetes-apt-keyring.gpg
echo "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] ${repo} /" > /etc/apt/sources.list.d/kubernetes.list
apt-get update -q

# the package revision (e.g. 1.34.1-1.1) is whatever the repo carries for that version
pkgver=$(apt-cache madison kubeadm | awk -v v="$KUBERNETES_VERSION" '$3 ~ "^"v"-" {print $3; exit}')
if [ -z "$pkgver" ]; then
  echo "kubeadm $KUBERNETES_VERSION not found in $repo" >&2
  exit 1
fi
apt-get install -y -q --no-install-recommends "kubelet=$pkgver" "kubeadm=$pkgver" "kubectl=$pkgver" cri-tools
apt-mark hold kubelet kubeadm kubectl

cat > /etc/crictl.yaml <<'CONF'
runtime-endpoint: unix:///run/containerd/containerd.sock
image-endpoint: unix:///run/containerd/containerd.sock
timeout: 10
CONF

# kubelet crash-loops until kubeadm configures it: expected, so enabled but not started here
systemctl enable kubelet

kubeadm config images pull --kubernetes-version "v${KUBERNETES_VERSION}" --cri-socket unix:///run/containerd/containerd.sock
crictl images
