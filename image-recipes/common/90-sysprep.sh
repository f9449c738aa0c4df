#!/usr/bin/env bash
# Sysprep: make the disk a template. Every node cloned from it must get its own machine-id,
# SSH host keys and logs. (The login key and the host keys are removed by imgbuild itself
# at the very end, because every new SSH connection needs the host keys.)
set -euo pipefail
# mac_pinned_net_configs, image_hygiene_checks, checks_done: image-recipes/common/lib/image.sh,
# uploaded with this script (`uses:`)
# shellcheck source=/dev/null
. /tmp/imgbuild/lib/image.sh

if command -v cloud-init >/dev/null 2>&1; then
  cloud-init clean --logs --seed || cloud-init clean --logs || true
fi
# and the directory itself: `cloud-init clean` leaves /var/lib/cloud empty, and the image claims no
# cloud-init state at all (the recipes' --verify check `test ! -e /var/lib/cloud`, which failed on
# a real VM for the empty directory); cloud-init, if ever enabled again, makes it anew
rm -rf /var/lib/cloud

# empty (not removed) machine-id: systemd generates a new one on first boot
truncate -s 0 /etc/machine-id
rm -f /var/lib/dbus/machine-id
if [ -d /var/lib/dbus ]; then
  ln -s /etc/machine-id /var/lib/dbus/machine-id
fi

# Networking that survives cloning: a clone has new MACs, so nothing may pin the build VM's NIC
# by its MAC. cloud-init's generated network files go (its `clean --configs network` list,
# cloudinit/cmd/clean.py GEN_NET_CONFIG_FILES, removed by name so any cloud-init version is
# covered), then udev's persistent-net rules (image-builder's sysprep "Reset network interface
# IDs"), then any other netplan/networkd file that matches on a MAC. The checks at the end fail
# the build if one is left.
rm -f /etc/netplan/50-cloud-init.yaml \
  /etc/NetworkManager/conf.d/99-cloud-init.conf \
  /etc/NetworkManager/conf.d/30-cloud-init-ip6-addr-gen-mode.conf \
  /etc/NetworkManager/system-connections/cloud-init-*.nmconnection \
  /etc/systemd/network/10-cloud-init-*.network \
  /etc/network/interfaces.d/50-cloud-init.cfg /etc/network/interfaces.d/50-cloud-init \
  /etc/udev/rules.d/70-persistent-net.rules
mac_pinned_net_configs | while read -r f; do
  case "$f" in
  /etc/netplan/* | /etc/systemd/network/*)
    echo "removing $f: it pins a NIC by the build VM's MAC"
    rm -f "$f"
    ;;
  esac
done
# The generic DHCP config instead: every Ethernet NIC by name. The NAT NIC gets its address by
# DHCP; a private VLAN NIC has no DHCP server on CloudSigma unless the operator runs one (see
# docs/imgbuild.md, "Networking"), so "online" means ANY link configured, not all of them.
if command -v netplan >/dev/null 2>&1; then
  install -d -m 0755 /etc/netplan
  # 0600: netplan warns about configs others can read
  (umask 077 && cat > /etc/netplan/01-imgbuild-dhcp.yaml) <<'NETPLAN'
# written by imgbuild (image-recipes/common/90-sysprep.sh): DHCP on every Ethernet NIC, matched by
# name and never by MAC, so that clones (new MACs) come up.
network:
  version: 2
  ethernets:
    imgbuild-en:
      match:
        name: "en*"
      dhcp4: true
    imgbuild-eth:
      match:
        name: "eth*"
      dhcp4: true
NETPLAN
fi
if [ -d /etc/systemd/network ] || systemctl is-enabled systemd-networkd.service >/dev/null 2>&1; then
  install -d -m 0755 /etc/systemd/network
  # last in lexical order: a .network file of the image's own (earlier) wins for its links
  cat > /etc/systemd/network/99-imgbuild-dhcp.network <<'NETWORKD'
# written by imgbuild (image-recipes/common/90-sysprep.sh): DHCP on every Ethernet NIC, matched by
# name and never by MAC, so that clones (new MACs) come up.
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
NETWORKD
  install -d -m 0755 /etc/systemd/system/systemd-networkd-wait-online.service.d
  cat > /etc/systemd/system/systemd-networkd-wait-online.service.d/50-imgbuild-any.conf <<'UNIT'
# written by imgbuild: network-online = any link configured (the NAT NIC's DHCP), not every link
# (a VLAN NIC without a DHCP server would hold the boot for the whole timeout).
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=60
UNIT
fi
# cloud-init, if an operator re-enables it, must not write a MAC-pinned fallback config again.
if [ -d /etc/cloud ]; then
  install -d -m 0755 /etc/cloud/cloud.cfg.d
  echo 'network: {config: disabled}' > /etc/cloud/cloud.cfg.d/99-imgbuild-network.cfg
fi

# SSH host keys are NOT removed here: imgbuild still needs one more SSH login after this step.
# Its final clean-guest command removes them (with the login key) on that last connection.

# the initramfs update deferred at first boot, if no earlier step made it (common/80-initramfs.sh)
initramfs_flush

rm -f /etc/apt/apt.conf.d/99imgbuild-lock-timeout /etc/apt/apt.conf.d/99imgbuild-build \
  /etc/dpkg/dpkg.cfg.d/99imgbuild-unsafe-io
if command -v apt-get >/dev/null 2>&1; then
  apt-get clean
  rm -rf /var/lib/apt/lists/*
fi

# logs: truncate rather than delete so services keep their file modes; rotated logs deleted
# (image-builder's sysprep: "Truncate all remaining log files", "Delete all logrotated logs")
journalctl --rotate >/dev/null 2>&1 || true
journalctl --vacuum-time=1s >/dev/null 2>&1 || true
find /var/log -type f \( -name '*.[0-9]' -o -name '*.gz' -o -name '*.xz' -o -name '*.old' \) -delete
find /var/log -type f -exec truncate -s 0 {} +
rm -rf /var/log/journal/* || true
# no crash dumps of the build VM in the image
rm -rf /var/crash/* /var/lib/systemd/coredump/* 2>/dev/null || true
rm -f /root/.bash_history /home/*/.bash_history
# keep /tmp/imgbuild: this very script runs from there; imgbuild removes it at the end
find /tmp -mindepth 1 -maxdepth 1 ! -name imgbuild -exec rm -rf {} +
find /var/tmp -mindepth 1 -maxdepth 1 -exec rm -rf {} +
# what a recipe uploaded outside /tmp/imgbuild (the local artifacts, kept across the base
# capture's reboot; normally consumed already)
rm -rf /var/lib/imgbuild

sync
echo "sysprep done; image hygiene:"
# Every failure listed, the build fails on any (checks_done exits 1).
image_hygiene_checks
checks_done
