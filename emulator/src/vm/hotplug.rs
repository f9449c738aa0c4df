//! Drives hot-plugged into and out of a running VM over QMP (`qmp.rs` holds the steps).

use super::{err, qmp, QemuBackend, QMP_TIMEOUT};
use crate::backend::{BackendError, StartDrive};

impl QemuBackend {
    /// Hot-plugs `attached` into and out `detached` of the running VM of `server` over QMP.
    /// [D] Only virtio disks are hot-plugged: QEMU's IDE bus (and so an IDE cdrom) takes no
    /// hot-plug; such a drive is logged and appears at the next start.
    pub(super) async fn hotplug(
        &self,
        server: &str,
        attached: &[StartDrive],
        detached: &[String],
    ) -> Result<(), BackendError> {
        let Some(sock) = self.lock().vms.get(server).map(|v| v.qmp.clone()) else {
            // no VM (never started by this backend): nothing runs to tell
            return Ok(());
        };
        for uuid in detached {
            let Some((dev, node)) = self
                .lock()
                .vms
                .get(server)
                .and_then(|v| v.drives.get(uuid).cloned())
            else {
                continue; // never plugged into this VM (e.g. an IDE drive added while running)
            };
            qmp::run(
                &sock,
                &qmp::detach_steps(&dev, node.as_deref()),
                QMP_TIMEOUT,
            )
            .await
            .map_err(|e| err(format!("detaching drive {uuid} from server {server}: {e}")))?;
            if let Some(v) = self.lock().vms.get_mut(server) {
                v.drives.remove(uuid);
            }
        }
        for d in attached {
            if d.media == "cdrom" || d.device != "virtio" {
                tracing::warn!(server, drive = %d.uuid, device = %d.device, media = %d.media,
                    "only virtio disks are hot-plugged into a QEMU guest; this one appears at the next start");
                continue;
            }
            let path = self.drive_path(&d.uuid);
            if !path.exists() {
                return Err(err(format!(
                    "drive {} has no image file {} (created before the VM backend was in use?)",
                    d.uuid,
                    path.display()
                )));
            }
            let n = match self.lock().vms.get_mut(server) {
                Some(v) => {
                    v.hotplugged += 1;
                    v.hotplugged
                }
                None => return Ok(()), // the VM went away meanwhile
            };
            let (node, dev) = (format!("hp{n}"), format!("vhp{n}"));
            qmp::run(&sock, &qmp::attach_steps(&path, &node, &dev), QMP_TIMEOUT)
                .await
                .map_err(|e| {
                    err(format!(
                        "attaching drive {} to server {server}: {e}",
                        d.uuid
                    ))
                })?;
            if let Some(v) = self.lock().vms.get_mut(server) {
                v.drives.insert(d.uuid.clone(), (dev, Some(node)));
            }
        }
        Ok(())
    }
}
