//! The local library image built by `tests/vm-image/build.sh`, registered as a library drive.

use super::{err, process, QemuBackend};
use crate::backend::BackendError;
use std::path::Path;

impl QemuBackend {
    /// [`library_drive`] with this backend's `qemu-img`.
    pub fn local_library_drive(
        &self,
        image_dir: &Path,
    ) -> Result<crate::config::LibDriveSeed, BackendError> {
        library_drive(image_dir, &self.cfg.qemu_img)
    }
}

/// [`library_drive`] with `qemu-img` from `PATH` (the default of [`super::QemuConfig`]); a
/// configured backend has [`QemuBackend::local_library_drive`].
pub fn local_library_drive(image_dir: &Path) -> Result<crate::config::LibDriveSeed, BackendError> {
    library_drive(image_dir, Path::new("qemu-img"))
}

/// A library image built by `tests/vm-image/build.sh`: the directory holding
/// `debian-12.qcow2`, `vmlinuz`, `initrd.img` and `manifest.json`. `qemu_img` reads its size.
pub fn library_drive(
    image_dir: &Path,
    qemu_img: &Path,
) -> Result<crate::config::LibDriveSeed, BackendError> {
    let manifest_path = image_dir.join("manifest.json");
    let m: serde_json::Value = std::fs::read(&manifest_path)
        .map_err(|e| {
            err(format!(
                "cannot read {}: {e} (build it with tests/vm-image/build.sh)",
                manifest_path.display()
            ))
        })
        .and_then(|b| {
            serde_json::from_slice(&b)
                .map_err(|e| err(format!("{} is not JSON: {e}", manifest_path.display())))
        })?;
    let image = image_dir.join("debian-12.qcow2");
    if !image.exists() {
        return Err(err(format!("{} missing", image.display())));
    }
    let s = |k: &str| m.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let size = match process::virtual_size_blocking(qemu_img, &image) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "library image size unknown; assuming 3 GiB");
            3 << 30
        }
    };
    // A fixed uuid so state files and scripts can name it.
    let drive = cloudsigma_api::LibDrive {
        uuid: "6b1fb1a9-7b2e-4f0b-9c1e-0de5e7a10c12".into(),
        name: s("name").unwrap_or_else(|| "Debian 12 (local test image)".into()),
        os: Some("linux".into()),
        distribution: s("distribution").or(Some("Debian".into())),
        version: s("version").or(Some("12".into())),
        arch: Some("64".into()),
        image_type: Some("preinst".into()),
        media: "disk".into(),
        size,
        description: Some(
            "Local Debian 12 test image (tests/vm-image/build.sh), booted by the QEMU backend"
                .into(),
        ),
        default_user: s("default_user").or(Some("debian".into())),
        cloud_init_service: Some(true),
        deprecated: Some(false),
        status: None,
        resource_uri: None,
        extra: Default::default(),
    };
    Ok(crate::config::LibDriveSeed {
        drive,
        image_path: Some(image),
    })
}
