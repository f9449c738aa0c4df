# shellcheck shell=bash
# Helpers shared by the recipe scripts (sourced, never run). imgbuild uploads this file to
# /tmp/imgbuild/lib/image.sh (step "shared script helpers"); scripts source it from there:
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
