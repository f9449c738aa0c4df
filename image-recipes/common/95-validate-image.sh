#!/usr/bin/env bash
# Image hygiene, checked after sysprep (the last step): what image-builder's goss suite checks
# (packer/goss/goss-image-hygiene.yaml) plus networking that survives cloning. Every failure is
# listed; any fails the build. SSH host keys cannot be checked here: this very session needs them,
# and imgbuild removes them on its last login (clean-guest); tests/e2e/tests/first_boot.rs checks
# that a clone generates its own.
set -uo pipefail
# check, checks_done, all_masked, mac_pinned_net_configs: image-recipes/common/lib/image.sh, uploaded by the
# recipe's step "shared script helpers"
# shellcheck source=/dev/null
. /tmp/imgbuild/lib/image.sh

check "/etc/machine-id empty (systemd makes a new one on first boot)" test ! -s /etc/machine-id
check "/etc/machine-id present (empty, not missing: / may be read-only on first boot)" test -e /etc/machine-id
check "no cloud-init instance state" bash -c '! ls -d /var/lib/cloud/instance /var/lib/cloud/instances/* /var/lib/cloud/data/instance-id 2>/dev/null | grep -q .'
check "no shell history" bash -c '! find /root /home -maxdepth 2 -name .bash_history -size +0 2>/dev/null | grep -q .'
check "/var/log below 64 MiB (image-builder allows 200)" test "$(du -sm /var/log | cut -f1)" -lt 64
check "no core dumps" bash -c '! find /var/crash /var/lib/systemd/coredump /var/tmp /tmp -xdev -type f \( -name core -o -name "core.*" -o -name "*.core" \) 2>/dev/null | grep -q .'
check "no network config pinned to the build VM's MAC" test -z "$(mac_pinned_net_configs)"
if [ -n "$(mac_pinned_net_configs)" ]; then
  mac_pinned_net_configs | sed 's/^/      MAC-pinned: /'
fi
# shellcheck disable=SC2317 # called through check()
generic_dhcp() {
  test -f /etc/netplan/01-imgbuild-dhcp.yaml && return 0
  test -f /etc/systemd/network/99-imgbuild-dhcp.network && systemctl is-enabled systemd-networkd.service
}
check "a generic DHCP config (netplan or systemd-networkd, by interface name)" generic_dhcp
check "apt timers and unattended-upgrades still masked" all_masked apt-daily.timer apt-daily-upgrade.timer unattended-upgrades.service
check "no dpkg lock timeout left from the build" test ! -e /etc/apt/apt.conf.d/99imgbuild-lock-timeout
check "cloud-init still disabled" test -f /etc/cloud/cloud-init.disabled

checks_done
