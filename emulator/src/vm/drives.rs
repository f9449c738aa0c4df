//! Drive image files: `drives/<uuid>.qcow2` created, cloned, resized and deleted with `qemu-img`,
//! and the `.boot` sidecar naming the kernel directory of drives descended from a library image.
//!
//! A clone of a *library* drive is a qcow2 overlay whose backing file is the library image
//! (instant; library images are immutable and outlive the emulator in the cache — deleting the
//! cache breaks such drives, documented in docs/e2e.md). A clone of an *account* drive is a full
//! `qemu-img convert` copy, so deleting the source drive can never break the clone.

use super::{err, process, QemuBackend};
use crate::backend::{BackendError, StartSpec};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

impl QemuBackend {
    /// Path of an account drive's image file.
    pub fn drive_path(&self, uuid: &str) -> PathBuf {
        self.cfg
            .data_dir
            .join("drives")
            .join(format!("{uuid}.qcow2"))
    }

    pub(super) fn boot_sidecar(&self, uuid: &str) -> PathBuf {
        self.cfg
            .data_dir
            .join("drives")
            .join(format!("{uuid}.boot"))
    }

    async fn qemu_img(&self, args: &[&OsStr]) -> Result<(), BackendError> {
        process::run(&self.cfg.qemu_img, args).await.map(|_| ())
    }

    pub(super) async fn virtual_size(&self, path: &Path) -> Result<u64, BackendError> {
        process::virtual_size(&self.cfg.qemu_img, path).await
    }

    /// Every drive of a starting server has its image file (QEMU would fail less clearly).
    pub(super) fn check_drive_files(&self, spec: &StartSpec) -> Result<(), BackendError> {
        for d in &spec.drives {
            let path = self.drive_path(&d.uuid);
            if !path.exists() {
                return Err(err(format!(
                    "drive {} of server {} has no image file {} (created before the VM backend was in use?)",
                    d.uuid,
                    spec.uuid,
                    path.display()
                )));
            }
        }
        Ok(())
    }

    pub(super) async fn create_drive(&self, uuid: &str, size: u64) -> Result<(), BackendError> {
        let p = self.drive_path(uuid);
        let size = size.max(1).to_string();
        self.qemu_img(&[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            p.as_os_str(),
            size.as_ref(),
        ])
        .await
    }

    pub(super) async fn clone_drive(
        &self,
        src: &str,
        src_is_library: bool,
        dst: &str,
        size: u64,
    ) -> Result<(), BackendError> {
        let dst_path = self.drive_path(dst);
        if src_is_library {
            let img = self.events().and_then(|e| e.library_image(src));
            let Some(img) = img else {
                // A library entry without a local image (the seed's catalogue): an empty disk of
                // the right size, so state-level flows keep working.
                tracing::warn!(
                    libdrive = src,
                    "library drive has no local image; clone is an empty disk"
                );
                return self.create_drive(dst, size).await;
            };
            let img = std::fs::canonicalize(&img)
                .map_err(|e| err(format!("library image {} of {src}: {e}", img.display())))?;
            let vsize = self.virtual_size(&img).await?;
            let size = size.max(vsize).to_string();
            self.qemu_img(&[
                "create".as_ref(),
                "-q".as_ref(),
                "-f".as_ref(),
                "qcow2".as_ref(),
                "-F".as_ref(),
                "qcow2".as_ref(),
                "-b".as_ref(),
                img.as_os_str(),
                dst_path.as_os_str(),
                size.as_ref(),
            ])
            .await?;
            if let Some(dir) = img.parent() {
                if dir.join("vmlinuz").exists() {
                    write_atomic(&self.boot_sidecar(dst), dir.to_string_lossy().as_bytes())?;
                }
            }
            return Ok(());
        }
        let src_path = self.drive_path(src);
        // Full copy (not an overlay): the source may be deleted while the clone lives on.
        let tmp = dst_path.with_extension("qcow2.part");
        self.qemu_img(&[
            "convert".as_ref(),
            "-U".as_ref(),
            "-O".as_ref(),
            "qcow2".as_ref(),
            src_path.as_os_str(),
            tmp.as_os_str(),
        ])
        .await?;
        let vsize = self.virtual_size(&tmp).await?;
        if size > vsize {
            let size = size.to_string();
            self.qemu_img(&[
                "resize".as_ref(),
                "-q".as_ref(),
                tmp.as_os_str(),
                size.as_ref(),
            ])
            .await?;
        }
        std::fs::rename(&tmp, &dst_path).map_err(|e| {
            err(format!(
                "cannot rename {} to {}: {e}",
                tmp.display(),
                dst_path.display()
            ))
        })?;
        if let Ok(b) = std::fs::read(self.boot_sidecar(src)) {
            write_atomic(&self.boot_sidecar(dst), &b)?;
        }
        Ok(())
    }

    pub(super) async fn resize_drive(&self, uuid: &str, new_size: u64) -> Result<(), BackendError> {
        let p = self.drive_path(uuid);
        let vsize = self.virtual_size(&p).await?;
        if new_size == vsize {
            return Ok(());
        }
        if new_size < vsize {
            return Err(err(format!(
                "drive {uuid}: shrinking from {vsize} to {new_size} bytes would destroy data"
            )));
        }
        let size = new_size.to_string();
        self.qemu_img(&[
            "resize".as_ref(),
            "-q".as_ref(),
            p.as_os_str(),
            size.as_ref(),
        ])
        .await
    }

    pub(super) fn delete_drive(&self, uuid: &str) -> Result<(), BackendError> {
        for p in [self.drive_path(uuid), self.boot_sidecar(uuid)] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(err(format!("cannot remove {}: {e}", p.display()))),
            }
        }
        Ok(())
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), BackendError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| err(format!("cannot write {}: {e}", path.display())))
}
