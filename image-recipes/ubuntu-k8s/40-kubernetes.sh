#!/usr/bin/env bash
# kubelet, kubeadm, kubectl and crictl at the pinned version, from the source KUBERNETES_SOURCE
# names (see 30-containerd.sh): pkgs.k8s.io (held against upgrades), or the uploaded local
# artifacts. Either way this script writes kubelet's unit and the kubeadm drop-in the deb would
# install (kubernetes/release packaging: kubelet.service, kubelet.service.d/10-kubeadm.conf),
# crictl.yaml, and pre-pulls the images: `kubeadm config images pull`, or `ctr images import` of
# the local OCI archives: the version's own under kubernetes/images/ (kube-proxy: the role uploads
# artifacts_dir/kubernetes/v<version>/ to kubernetes/, so its images/ lands there) and the shared
# ones under images/ (pause, CoreDNS, flannel, ...).
# Env: KUBERNETES_SOURCE, KUBERNETES_VERSION (e.g. 1.34.1), PAUSE_IMAGE.
set -euo pipefail

: "${KUBERNETES_SOURCE:?}" "${KUBERNETES_VERSION:?}"
# the local source's uploads (../roles/local-kubernetes-artifacts.yaml)
artifacts=/var/lib/imgbuild/artifacts

case "$KUBERNETES_SOURCE" in
pkgs)
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
  ;;
local)
  # moved, not copied (a rename on one filesystem; see 30-containerd.sh)
  place() { mv -f -- "$1" "$2" && chown root:root "$2" && chmod 0755 "$2"; }
  for b in kubelet kubeadm kubectl; do
    place "$artifacts/kubernetes/$b" "/usr/bin/$b"
  done
  place "$artifacts/bin/crictl" /usr/bin/crictl
  # what the binaries claim must be what the recipe tags the image with
  have=$(/usr/bin/kubelet --version)
  if [ "$have" != "Kubernetes v${KUBERNETES_VERSION}" ]; then
    echo "the uploaded kubelet says \"$have\", not Kubernetes v${KUBERNETES_VERSION} (artifacts_dir/kubernetes/v${KUBERNETES_VERSION}/kubelet)" >&2
    exit 1
  fi
  ;;
*)
  echo "KUBERNETES_SOURCE=$KUBERNETES_SOURCE: expected pkgs or local (recipe var kubernetes_source)" >&2
  exit 2
  ;;
esac

cat > /etc/systemd/system/kubelet.service <<'UNIT'
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
UNIT
install -d -m 0755 /etc/systemd/system/kubelet.service.d
cat > /etc/systemd/system/kubelet.service.d/10-kubeadm.conf <<'UNIT'
# Note: This dropin only works with kubeadm and kubelet v1.11+
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
# This is a file that "kubeadm init" and "kubeadm join" generates at runtime, populating the KUBELET_KUBEADM_ARGS variable dynamically
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
# This is a file that the user can use for overrides of the kubelet args as a last resort. Preferably, the user should use
# the .NodeRegistration.KubeletExtraArgs object in the configuration files instead. KUBELET_EXTRA_ARGS should be sourced from this file.
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
UNIT
systemctl daemon-reload

cat > /etc/crictl.yaml <<'CONF'
runtime-endpoint: unix:///run/containerd/containerd.sock
image-endpoint: unix:///run/containerd/containerd.sock
timeout: 10
CONF

# Provenance, for an operator on the node: what this image was built with, and from where.
cat > /etc/kubernetes-version <<PROV
KUBERNETES_VERSION=v${KUBERNETES_VERSION}
KUBERNETES_SOURCE=${KUBERNETES_SOURCE}
CONTAINERD_VERSION=$(/usr/local/bin/containerd --version | awk '{print $3}')
PROV

# kubelet crash-loops until kubeadm configures it: expected, so enabled but not started here
systemctl enable kubelet

echo "binaries and units in place (${SECONDS}s into this step); images next"
if [ "$KUBERNETES_SOURCE" = pkgs ]; then
  kubeadm config images pull --kubernetes-version "v${KUBERNETES_VERSION}" --cri-socket unix:///run/containerd/containerd.sock
else
  # (the binaries above were moved by name: kubernetes/images/ is not mistaken for one)
  for img in "$artifacts"/kubernetes/images/*.tar "$artifacts"/images/*.tar; do
    [ -e "$img" ] || continue
    ctr -n k8s.io images import "$img"
  done
  # every uploaded file is installed or imported: nothing of it stays in the image
  rm -rf /var/lib/imgbuild
fi
crictl images
