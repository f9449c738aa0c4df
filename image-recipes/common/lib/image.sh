# shellcheck shell=bash
# Helpers shared by the recipe scripts (sourced, never run). imgbuild uploads this file to
# /tmp/imgbuild/lib/image.sh (by `uses:` on each step that runs such a script); scripts source it from there:
#   . /tmp/imgbuild/lib/image.sh

# goss-style checks: every failure is listed, the script exits 1 at the end if any failed.
#   check "what" command args...     (the command's output is hidden; its status decides)
#   checks_done                      (exit 0, or 1 after any failed check)
_image_checks_failed=0
check() {
  local what=$1
  shift
  if "$@" >/dev/null 2>&1; then
    echo "ok:   $what"
  else
    echo "FAIL: $what"
    _image_checks_failed=1
  fi
}
checks_done() {
  exit "$_image_checks_failed"
}

# All the given systemd units are masked (for check).
all_masked() {
  local u
  for u in "$@"; do
    [ "$(systemctl is-enabled "$u" 2>/dev/null)" = masked ] || return 1
  done
}

# Network configuration files that pin the build VM's NIC by its MAC address (printed, one per
# line). A clone has new MACs: with such a file its NIC keeps no name or no address. Covered:
# netplan (match macaddress / set-name), systemd-networkd and .link files ([Match] MACAddress=),
# udev's persistent-net rules (ATTR{address}), ifupdown (hwaddress).
mac_pinned_net_configs() {
  local f
  for f in /etc/netplan/*.yaml /run/netplan/*.yaml /lib/netplan/*.yaml; do
    [ -f "$f" ] && grep -Eq '^[[:space:]]*(macaddress|set-name)[[:space:]]*:' "$f" && echo "$f"
  done
  for f in /etc/systemd/network/*.network /etc/systemd/network/*.link; do
    [ -f "$f" ] && grep -Eq '^[[:space:]]*(Permanent)?MACAddress[[:space:]]*=' "$f" && echo "$f"
  done
  for f in /etc/udev/rules.d/*.rules; do
    [ -f "$f" ] && grep -q 'ATTR{address}' "$f" && echo "$f"
  done
  for f in /etc/network/interfaces /etc/network/interfaces.d/*; do
    [ -f "$f" ] && grep -Eq '^[[:space:]]*hwaddress[[:space:]]' "$f" && echo "$f"
  done
  return 0
}

# The generic DHCP config sysprep writes is there, for the network stack in use.
generic_dhcp_config() {
  test -f /etc/netplan/01-imgbuild-dhcp.yaml && return 0
  test -f /etc/systemd/network/99-imgbuild-dhcp.network && systemctl is-enabled systemd-networkd.service
}

# Image hygiene, checked at the end of sysprep: what image-builder's goss suite checks
# (packer/goss/goss-image-hygiene.yaml) plus networking that survives cloning. SSH host keys
# cannot be checked there: that very session needs them, and imgbuild removes them on its last
# login (clean-guest); tests/e2e/tests/first_boot.rs checks the image drive for them.
image_hygiene_checks() {
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
  check "a generic DHCP config (netplan or systemd-networkd, by interface name)" generic_dhcp_config
  check "apt timers and unattended-upgrades still masked" all_masked apt-daily.timer apt-daily-upgrade.timer unattended-upgrades.service
  check "no dpkg lock timeout left from the build" test ! -e /etc/apt/apt.conf.d/99imgbuild-lock-timeout
  check "cloud-init still disabled" test -f /etc/cloud/cloud-init.disabled
}
