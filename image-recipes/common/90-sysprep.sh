#!/usr/bin/env bash
# Sysprep: make the disk a template. Every node cloned from it must get its own machine-id,
# SSH host keys and logs. (The login key and the host keys are removed by imgbuild itself
# at the very end, because every new SSH connection needs the host keys.)
set -euo pipefail

if command -v cloud-init >/dev/null 2>&1; then
  cloud-init clean --logs --seed || cloud-init clean --logs || true
fi
rm -rf /var/lib/cloud/instances /var/lib/cloud/instance

# empty (not removed) machine-id: systemd generates a new one on first boot
truncate -s 0 /etc/machine-id
rm -f /var/lib/dbus/machine-id
if [ -d /var/lib/dbus ]; then
  ln -s /etc/machine-id /var/lib/dbus/machine-id
fi

# SSH host keys are NOT removed here: imgbuild still needs one more SSH login after this step.
# Its final clean-guest command removes them (with the login key) on that last connection.

rm -f /etc/apt/apt.conf.d/99imgbuild-lock-timeout
if command -v apt-get >/dev/null 2>&1; then
  apt-get clean
  rm -rf /var/lib/apt/lists/*
fi

# logs: truncate rather than delete so services keep their file modes
find /var/log -type f -exec truncate -s 0 {} +
rm -rf /var/log/journal/* || true
rm -f /root/.bash_history /home/*/.bash_history
# keep /tmp/imgbuild: this very script runs from there; imgbuild removes it at the end
find /tmp -mindepth 1 -maxdepth 1 ! -name imgbuild -exec rm -rf {} +
find /var/tmp -mindepth 1 -maxdepth 1 -exec rm -rf {} +

sync
echo "sysprep done"
