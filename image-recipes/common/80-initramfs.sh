#!/usr/bin/env bash
# The initramfs update deferred since first boot (common/00-wait-boot.sh), made once: after the
# package steps that ask for one and before a reboot, so that the reboot boots the initrd the
# image will ship (a later package that asks for an update gets it at once: the deferral ends here).
# sysprep does the same for a recipe without this step. Env: INITRAMFS_UPDATE (yes|no, recipe var
# initramfs_update; see initramfs_flush in lib/image.sh).
set -euo pipefail
# initramfs_flush: image-recipes/common/lib/image.sh, uploaded with this script (`uses:`)
# shellcheck source=/dev/null
. /tmp/imgbuild/lib/image.sh

initramfs_flush
