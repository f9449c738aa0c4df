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

# The initramfs update common/00-wait-boot.sh deferred: initramfs-tools' own config restored, then
# the one `update-initramfs -u` that dpkg's triggers asked for during the build, if any did (a
# `trigproc initramfs-tools` line in dpkg.log after the recorded offset; no record, or a rotated
# log, counts as asked). Idempotent: nothing to do once the config is back. INITRAMFS_UPDATE=no
# (recipe var initramfs_update) skips the run: only for a guest whose kernel and initrd come from
# outside its disk (cloudsim's QEMU backend boots the library image with QEMU's -kernel/-initrd),
# where nothing ever reads the initrd under /boot.
initramfs_flush() {
  local conf=/etc/initramfs-tools/update-initramfs.conf mark size asked=yes
  [ -e "$conf.imgbuild" ] || return 0
  case "${INITRAMFS_UPDATE:-yes}" in
  yes | no) ;;
  *)
    echo "INITRAMFS_UPDATE=$INITRAMFS_UPDATE: expected yes or no (recipe var initramfs_update)" >&2
    return 2
    ;;
  esac
  mark=$(sed -n 's/^# imgbuild-dpkg-log-offset=\([0-9][0-9]*\)$/\1/p' "$conf")
  size=$(stat -c %s /var/log/dpkg.log 2>/dev/null || echo 0)
  if [ -n "$mark" ] && [ "$size" -ge "$mark" ]; then
    # grep -c reads to the end: no SIGPIPE for tail under pipefail
    if [ "$(tail -c +"$((mark + 1))" /var/log/dpkg.log | grep -Ec ' trigproc initramfs-tools(:[a-z0-9]+)? ' || true)" = 0 ]; then
      asked=no
    fi
  fi
  mv -f "$conf.imgbuild" "$conf"
  if [ "$asked" = no ]; then
    echo "initramfs: no package asked for an update during the build; none made"
  elif [ "${INITRAMFS_UPDATE:-yes}" = no ]; then
    echo "initramfs: the deferred update SKIPPED (initramfs_update=no: this guest's kernel and initrd come from outside its disk)"
  else
    echo "initramfs: the deferred update, once:"
    update-initramfs -u
  fi
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
  check "no build-only apt/dpkg settings left (translations off, unsafe-io)" bash -c '! test -e /etc/apt/apt.conf.d/99imgbuild-build && ! test -e /etc/dpkg/dpkg.cfg.d/99imgbuild-unsafe-io'
  check "cloud-init still disabled" test -f /etc/cloud/cloud-init.disabled
  check "initramfs updates no longer deferred (update-initramfs.conf restored)" bash -c '! test -e /etc/initramfs-tools/update-initramfs.conf.imgbuild && ! grep -q "^# imgbuild" /etc/initramfs-tools/update-initramfs.conf 2>/dev/null'
}
