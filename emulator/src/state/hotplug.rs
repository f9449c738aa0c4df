//! Drive hot-plug: a PUT of a running server that adds or removes entries of `drives`.
//!
//! [V kube-dc/cluster-api-provider-cloudsigma `csi/driver/controller.go`
//! (`ControllerPublishVolume`, `ControllerUnpublishVolume`) and `docs/csi.md` ("Controller
//! hot-plugs drive to node (running VM)")]: the provider's CSI driver attaches a volume by a PUT
//! of the running server with the drive appended to `drives` (virtio, the next free channel) and
//! detaches it by a PUT without it — "hotplug - no stop/start required" — and then waits for the
//! drive to show `unmounted` with an empty `mounted_on`. The docs' prose (servers.rst "Editing":
//! a running server's changes other than name/meta/tags are ignored) says otherwise; a client
//! that works against the real cloud wins, so `drives` is the one exception.
//!
//! [D] rules: a drive already attached keeps its entry (a changed `dev_channel`/`device`/
//! `boot_order` is ignored while running); a newly attached drive must be idle (`unmounted`) and
//! not mounted on another running server unless `allow_multimount` (the same rules as `start`);
//! a detached drive is `unmounted` at once (the real detach is asynchronous, up to seconds).
//!
//! The backend is told after the state changed ([`crate::backend::Backend::server_drives_changed`],
//! QEMU: QMP `blockdev-add`/`device_add`, `device_del`/`blockdev-del`); when it refuses, the
//! server's drives are put back ([`State::restore_server_drives`]) and the PUT fails.

use cloudsigma_api::{DriveStatus, ServerDrive, ServerStatus};

use crate::backend::StartDrive;
use serde_json::Value;

use super::State;
use crate::error::ApiError;

impl State {
    /// The server's `drives` after a hot-plug PUT with `drives` = `v`; refuses before changing
    /// anything. The caller stores the list and re-indexes the attachments.
    pub(super) fn hotplug_drives(
        &self,
        server: &str,
        v: &Value,
    ) -> Result<Vec<ServerDrive>, ApiError> {
        let wanted = self.parse_server_drives(v)?;
        let current = &self.get_server(server)?.drives;
        let mut out = Vec::new();
        for d in wanted {
            let du = d.drive.uuid();
            if let Some(kept) = current.iter().find(|c| c.drive.uuid() == du) {
                out.push(kept.clone());
                continue;
            }
            self.check_attachable(server, du)?;
            if current.iter().any(|c| c.dev_channel == d.dev_channel) {
                return Err(ApiError::validation(
                    format!(
                        "dev_channel {} is used by a drive attached to the running server",
                        d.dev_channel
                    ),
                    Some("drives"),
                ));
            }
            out.push(d);
        }
        Ok(out)
    }

    /// What a hot-plug PUT changed for a running server whose drives were `before`: the drives
    /// to attach (as the backend needs them) and the uuids to detach. Empty for a stopped
    /// server (nothing runs; the next start takes the drives as they are).
    pub fn hotplug_diff(
        &self,
        server: &str,
        before: &[ServerDrive],
    ) -> (Vec<StartDrive>, Vec<String>) {
        let Some(s) = self.servers.get(server) else {
            return (Vec::new(), Vec::new());
        };
        if s.status == ServerStatus::Stopped {
            return (Vec::new(), Vec::new());
        }
        let had = |u: &str| before.iter().any(|d| d.drive.uuid() == u);
        let attached = s
            .drives
            .iter()
            .filter(|d| !had(d.drive.uuid()))
            .filter_map(|d| self.start_drive(d))
            .collect();
        let detached = before
            .iter()
            .map(|d| d.drive.uuid())
            .filter(|u| !s.drives.iter().any(|d| d.drive.uuid() == *u))
            .map(str::to_string)
            .collect();
        (attached, detached)
    }

    /// Puts a server's drives back as they were before a hot-plug the backend refused.
    pub fn restore_server_drives(&mut self, server: &str, drives: Vec<ServerDrive>) {
        if !self.servers.contains_key(server) {
            return;
        }
        self.detach_drives(server);
        self.attach_drives(server, &drives);
        if let Some(s) = self.servers.get_mut(server) {
            s.drives = drives;
        }
        self.touch();
    }

    /// A drive can join `server` (starting or hot-plugged): idle, and not in use by another
    /// running server unless it allows multimount.
    pub(super) fn check_attachable(&self, server: &str, du: &str) -> Result<(), ApiError> {
        let Some(drive) = self.drives.get(du) else {
            return Err(ApiError::validation(
                format!("Drive {du} does not exist"),
                Some("drives"),
            ));
        };
        // [D] a drive must be idle (not creating/cloning/resizing) to be used by a guest
        if drive.status != DriveStatus::Unmounted {
            return Err(ApiError::permission(format!(
                "Drive {du} is in state \"{}\"; wait until it is \"unmounted\"",
                drive.status
            )));
        }
        // [D] a drive can be mounted by one running server unless allow_multimount
        let busy = self
            .attached_servers(du)
            .iter()
            .any(|(o, st)| o != server && *st != ServerStatus::Stopped);
        if busy && !drive.allow_multimount {
            return Err(ApiError::permission(format!(
                "Drive {du} is mounted on another running server"
            )));
        }
        Ok(())
    }
}
