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
net.ipv6.conf.all.disable_ipv6 = 0
CONF

# What kubelet's --protect-kernel-defaults expects (pkg/kubelet/cm setupKernelTunables), and
# inotify limits for the many watches of kubelet, containerd and log agents.
cat > /etc/sysctl.d/91-kubernetes-node.conf <<'CONF'
# written by imgbuild (image-recipes/common/10-kernel.sh)
vm.overcommit_memory = 1
vm.panic_on_oom = 0
kernel.panic = 10
kernel.panic_on_oops = 1
fs.inotify.max_user_instances = 8192
fs.inotify.max_user_watches = 524288
CONF

sysctl --system >/dev/null
echo "kernel modules and sysctls configured"
