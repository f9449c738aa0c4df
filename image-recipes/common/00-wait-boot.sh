#!/usr/bin/env bash
# First step of every build: let the first boot settle before provisioning. SSH answers before
# cloud-init has finished (it may still be writing keys, users or running apt), and Ubuntu's
# apt-daily/unattended-upgrades grab the dpkg lock right after boot.
set -euo pipefail

if command -v cloud-init >/dev/null 2>&1; then
  # exit code 2 = finished with recoverable errors: still finished, go on
  rc=0
  cloud-init status --wait >/dev/null || rc=$?
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 2 ]; then
    echo "cloud-init status --wait failed ($rc):" >&2
    cloud-init status --long >&2 || true
    exit 1
  fi
fi

# No background apt runs during the build, nor on the nodes cloned from the image: there they
# would take the dpkg lock while the bootstrap's preKubeadmCommands run (image-builder masks them
# too). Masked, so no package upgrade can bring them back. apt waits for a held lock instead of
# failing.
systemctl stop apt-daily.timer apt-daily-upgrade.timer unattended-upgrades.service >/dev/null 2>&1 || true
systemctl mask apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service unattended-upgrades.service >/dev/null
if [ -d /etc/apt/apt.conf.d ]; then
  echo 'DPkg::Lock::Timeout "600";' > /etc/apt/apt.conf.d/99imgbuild-lock-timeout
  # For the build only (sysprep removes both; the image keeps the distribution's settings): no
  # translated descriptions (6 MB of Debian's lists to fetch and parse, read by nobody here), and
  # dpkg without an fsync per unpacked file — the build VM is thrown away if it crashes, and
  # imgbuild syncs the disk at the end; on an emulated VM over a qcow2 file every fsync is a
  # host flush (what debootstrap and the Debian container images do).
  echo 'Acquire::Languages "none";' > /etc/apt/apt.conf.d/99imgbuild-build
  if [ -d /etc/dpkg/dpkg.cfg.d ]; then
    echo force-unsafe-io > /etc/dpkg/dpkg.cfg.d/99imgbuild-unsafe-io
  fi
fi

# initramfs updates deferred to ONE at the end of the build (common/80-initramfs.sh, else sysprep):
# every package that ships an initramfs hook (open-iscsi, …) asks for `update-initramfs -u`, and
# each regeneration takes minutes on an emulated CPU. `update_initramfs=no` is initramfs-tools'
# own switch (update-initramfs.conf(5)): it skips `-u` only — a new kernel's `-c` still runs. The
# original file is kept beside it; the marker line records where dpkg.log stood, so that the end
# of the build can tell whether any package asked for an update (a `trigproc initramfs-tools`
# line after it).
conf=/etc/initramfs-tools/update-initramfs.conf
if [ -f "$conf" ] && [ ! -e "$conf.imgbuild" ]; then
  cp -p "$conf" "$conf.imgbuild"
  mark=$(stat -c %s /var/log/dpkg.log 2>/dev/null || echo 0)
  {
    echo "# imgbuild: updates deferred to the end of the build; original in $conf.imgbuild"
    echo "# imgbuild-dpkg-log-offset=$mark"
    grep -v '^[[:space:]]*update_initramfs=' "$conf.imgbuild" || true
    echo "update_initramfs=no"
  } > "$conf"
  echo "initramfs updates deferred to the end of the build"
fi
echo "first boot settled"
