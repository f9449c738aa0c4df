#!/usr/bin/env bash
# kubelet refuses to run with swap on (by default): turn it off now and for good.
set -euo pipefail

swapoff -a
# comment out every swap line in fstab (keeps a record of what was there)
if grep -Eq '^[^#].*[[:space:]]swap[[:space:]]' /etc/fstab; then
  sed -ri 's/^([^#].*[[:space:]]swap[[:space:]].*)$/# disabled by imgbuild: \1/' /etc/fstab
fi
# Ubuntu cloud images may carry a swap file
rm -f /swap.img /swapfile
# systemd may still activate swap units generated from elsewhere
systemctl mask swap.target >/dev/null 2>&1 || true
if [ -n "$(swapon --show --noheadings)" ]; then
  echo "swap is still active" >&2
  exit 1
fi
echo "swap off"
