#!/usr/bin/env bash
# Kernel modules and sysctls every Kubernetes node needs (image-builder's node role checklist):
# overlay + br_netfilter now and at every boot, bridged traffic through iptables, forwarding on.
set -euo pipefail

cat > /etc/modules-load.d/kubernetes.conf <<'CONF'
# written by imgbuild (image-recipes/common/10-kernel.sh)
overlay
br_netfilter
CONF

for m in overlay br_netfilter; do
  modprobe "$m"
done

cat > /etc/sysctl.d/90-kubernetes.conf <<'CONF'
# written by imgbuild (image-recipes/common/10-kernel.sh)
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
net.ipv4.ip_forward = 1
net.ipv6.conf.all.forwarding = 1
CONF

sysctl --system >/dev/null
echo "kernel modules and sysctls configured"
