#!/bin/bash
# Builds the local "library image" the QEMU backend of cloudsim boots: a small Debian 12 (bookworm)
# with systemd, a kernel, openssh-server and Debian's cloud-init (its CloudSigma datasource reads the
# server context over ttyS1 when the DMI product is "CloudSigma"). It stands in for CloudSigma's
# Ubuntu library drive, which cannot be downloaded here.
#
# Why no loop mounts / bootloader: builds run as root in a sandbox without loop devices, so the root
# filesystem is populated with `mke2fs -d` straight from the debootstrap tree (the whole disk is one
# ext4 filesystem, no partition table) and the VM boots with QEMU's direct kernel boot: vmlinuz and
# initrd.img are kept beside the image and the kernel command line says root=/dev/vda.
#
# Output (cached, keyed by a hash of this script):
#   $CLOUDSIGMA_K8S_CACHE/vm-image/<hash>/{debian-12.qcow2,vmlinuz,initrd.img,manifest.json}
#   $CLOUDSIGMA_K8S_CACHE/vm-image/current -> <hash>
# Prints the directory on the last line of stdout.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/../../scripts/lib.sh"
CACHE="$CLOUDSIGMA_K8S_CACHE/vm-image"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SIZE="${VM_IMAGE_SIZE:-3G}"
HASH="$(sha256sum "$0" | cut -c1-16)"
OUT="$CACHE/$HASH"

log() { printf '[vm-image %s] %s\n' "$(date +%T)" "$*" >&2; }

if [[ -f "$OUT/manifest.json" && -f "$OUT/debian-12.qcow2" ]]; then
  log "cached: $OUT"
  ln -sfn "$HASH" "$CACHE/current"
  echo "$OUT"
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "build.sh: debootstrap needs root (run as root or under fakeroot-capable sandbox)" >&2
  exit 2
fi
for tool in debootstrap mke2fs qemu-img; do
  command -v "$tool" >/dev/null || { echo "build.sh: '$tool' not found; run scripts/install-deps" >&2; exit 2; }
done

mkdir -p "$CACHE"
WORK="$(mktemp -d "$CACHE/.build.XXXXXX")"
cleanup() {
  # keep debootstrap's own log of a failed run: it names the package that failed to configure
  [[ -f "$WORK/root/debootstrap/debootstrap.log" ]] && cp "$WORK/root/debootstrap/debootstrap.log" "$CACHE/last-debootstrap.log"
  rm -rf "$WORK"
}
trap cleanup EXIT
ROOT="$WORK/root"
start=$(date +%s)

# Debootstrap's tarball of downloaded .debs is kept so a script change does not download again.
# libnss-myhostname: the current hostname always resolves (sudo looks it up on every call; without
# it each sudo waits for a DNS timeout, as the emulated network has no resolver for it).
# python3-cffi-backend: provides the virtual python3-cffi-backend-api-* that python3-cryptography
# (cloud-init -> oauthlib) needs; debootstrap's resolver does not follow virtual packages.
PKGS="systemd-sysv,udev,dbus,linux-image-cloud-amd64,initramfs-tools,openssh-server,cloud-init,python3-cffi-backend,libnss-myhostname,sudo,ca-certificates,iproute2,procps,less,python3-serial"
DEBS="$CACHE/debs-bookworm-$(echo "$PKGS" | sha256sum | cut -c1-8).tgz"
if [[ ! -f "$DEBS" ]]; then
  log "downloading packages (~150 MB) from $MIRROR"
  debootstrap --variant=minbase --include="$PKGS" --make-tarball="$DEBS.tmp" bookworm "$WORK/tb" "$MIRROR" >&2
  mv "$DEBS.tmp" "$DEBS"
  rm -rf "$WORK/tb"
fi
log "debootstrap (from $DEBS)"
debootstrap --variant=minbase --include="$PKGS" --unpack-tarball="$DEBS" bookworm "$ROOT" "$MIRROR" >&2
t_boot=$(date +%s)

log "configuring guest"
echo "debian" > "$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 debian\n' > "$ROOT/etc/hosts"
echo "/dev/vda / ext4 defaults,errors=remount-ro 0 1" > "$ROOT/etc/fstab"

# DHCP on whichever virtio NIC appears, via systemd-networkd (already part of systemd).
mkdir -p "$ROOT/etc/systemd/network"
cat > "$ROOT/etc/systemd/network/10-dhcp.network" <<'NET'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
NET
chroot "$ROOT" systemctl enable systemd-networkd.service >&2
# No systemd-resolved in minbase; a static resolver is enough (QEMU user networking's DNS).
printf 'nameserver 10.0.2.3\noptions timeout:1 attempts:1\n' > "$ROOT/etc/resolv.conf"
# "network online" = any interface configured, at most 30 s (the bootstrap unit orders after it).
mkdir -p "$ROOT/etc/systemd/system/systemd-networkd-wait-online.service.d"
cat > "$ROOT/etc/systemd/system/systemd-networkd-wait-online.service.d/10-any.conf" <<'UNIT'
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=30
UNIT

# cloud-init: only the CloudSigma datasource (what CloudSigma's own images ship), networking left
# to networkd above. The default user "debian" gets the ssh_public_key from the context meta.
mkdir -p "$ROOT/etc/cloud/cloud.cfg.d"
cat > "$ROOT/etc/cloud/cloud.cfg.d/90-cloudsigma-local.cfg" <<'CFG'
datasource_list: [ CloudSigma, None ]
network: {config: disabled}
manage_etc_hosts: localhost
# the locale module fails on minbase (no locales package) and costs seconds under TCG
locale: false
CFG

# The default user exists up front (cloud-init would create it too), passwordless sudo, so a key
# written by cloud-init into ~/.ssh/authorized_keys is all imgbuild needs.
chroot "$ROOT" useradd -m -s /bin/bash -G sudo debian
echo 'debian ALL=(ALL) NOPASSWD:ALL' > "$ROOT/etc/sudoers.d/90-debian"
chmod 0440 "$ROOT/etc/sudoers.d/90-debian"
# Root: no password (locked); serial console login disabled for safety is the default.

# Host keys: generated on first boot (each clone gets its own), not baked into the image.
rm -f "$ROOT"/etc/ssh/ssh_host_*
mkdir -p "$ROOT/etc/systemd/system/ssh.service.d"
cat > "$ROOT/etc/systemd/system/ssh.service.d/10-hostkeys.conf" <<'UNIT'
[Service]
ExecStartPre=/usr/bin/ssh-keygen -A
UNIT
# Faster SSH under TCG: no reverse DNS.
echo "UseDNS no" > "$ROOT/etc/ssh/sshd_config.d/10-local.conf"

# Kernel command line goes on QEMU's -append; keep the initrd small and generic.
cp "$ROOT"/boot/vmlinuz-* "$WORK/vmlinuz"
cp "$ROOT"/boot/initrd.img-* "$WORK/initrd.img"
truncate -s 0 "$ROOT/etc/machine-id"
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*

log "creating ext4 ($SIZE) from the tree"
mke2fs -q -t ext4 -L root -d "$ROOT" "$WORK/root.raw" "$SIZE" >&2
qemu-img convert -c -f raw -O qcow2 "$WORK/root.raw" "$WORK/debian-12.qcow2"
rm -f "$WORK/root.raw"
end=$(date +%s)

kver="$(basename "$(ls "$ROOT"/boot/vmlinuz-*)" | sed 's/^vmlinuz-//')"
cat > "$WORK/manifest.json" <<JSON
{"name":"Debian 12 (local test image)","distribution":"Debian","version":"12","arch":"64",
 "default_user":"debian","kernel":"$kver","cmdline":"root=/dev/vda rw console=ttyS0 net.ifnames=1",
 "built_at":"$(date -u +%FT%TZ)","script_hash":"$HASH","debootstrap_seconds":$((t_boot-start)),
 "total_seconds":$((end-start))}
JSON
mkdir -p "$OUT"
mv "$WORK/debian-12.qcow2" "$WORK/vmlinuz" "$WORK/initrd.img" "$WORK/manifest.json" "$OUT/"
ln -sfn "$HASH" "$CACHE/current"
log "done in $((end-start)) s: $OUT ($(du -sh "$OUT/debian-12.qcow2" | cut -f1))"
echo "$OUT"
