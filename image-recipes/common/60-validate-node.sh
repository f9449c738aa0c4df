#!/usr/bin/env bash
# Validation of the OS-level node checklist (the goss idea, in plain shell): fail loudly with
# every problem listed rather than stopping at the first.
set -uo pipefail
# check, checks_done, all_masked: image-recipes/common/lib/image.sh, uploaded with this script (`uses:`)
# shellcheck source=/dev/null
. /tmp/imgbuild/lib/image.sh

# /sys/module/X exists for loaded modules and for ones built into the kernel alike
check "module overlay loaded" test -d /sys/module/overlay
check "module br_netfilter loaded" test -d /sys/module/br_netfilter
check "modules configured at boot" grep -qx br_netfilter /etc/modules-load.d/kubernetes.conf
check "net.ipv4.ip_forward = 1" test "$(sysctl -n net.ipv4.ip_forward)" = 1
check "bridge-nf-call-iptables = 1" test "$(sysctl -n net.bridge.bridge-nf-call-iptables)" = 1
check "bridge-nf-call-ip6tables = 1" test "$(sysctl -n net.bridge.bridge-nf-call-ip6tables)" = 1
check "net.ipv6.conf.all.disable_ipv6 = 0" test "$(sysctl -n net.ipv6.conf.all.disable_ipv6)" = 0
check "vm.overcommit_memory = 1" test "$(sysctl -n vm.overcommit_memory)" = 1
check "kernel.panic = 10" test "$(sysctl -n kernel.panic)" = 10
check "kernel.panic_on_oops = 1" test "$(sysctl -n kernel.panic_on_oops)" = 1
check "fs.inotify.max_user_watches >= 524288" test "$(sysctl -n fs.inotify.max_user_watches)" -ge 524288
check "fs.inotify.max_user_instances >= 8192" test "$(sysctl -n fs.inotify.max_user_instances)" -ge 8192
check "apt timers and unattended-upgrades masked" all_masked apt-daily.timer apt-daily-upgrade.timer unattended-upgrades.service
check "swap off" test -z "$(swapon --show --noheadings)"
check "no swap in fstab" bash -c "! grep -Eq '^[^#].*[[:space:]]swap[[:space:]]' /etc/fstab"
check "agent binary present" test -x /usr/local/bin/cloudsigma-agent
check "bootstrap unit enabled" systemctl is-enabled cloudsigma-bootstrap.service
check "cloud-init disabled" test -f /etc/cloud/cloud-init.disabled
check "host key regeneration enabled" systemctl is-enabled imgbuild-ssh-hostkeys.service

checks_done
