//! A drive's filesystem read from the host, without booting it.

use crate::harness::run;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A drive's ext4 filesystem read without booting or mounting it (no loop devices in the test
/// sandbox): the qcow2 (with its backing chain) converted to a sparse raw file, read with
/// e2fsprogs' `debugfs`. Only for drives whose whole disk is the filesystem (the local library
/// image's layout, tests/vm-image/build.sh).
pub struct DiskImage {
    _dir: tempfile::TempDir,
    pub raw: PathBuf,
}

impl DiskImage {
    pub fn open(qcow2: &Path) -> DiskImage {
        let dir = tempfile::tempdir().expect("tempdir");
        let raw = dir.path().join("disk.raw");
        run(
            Command::new("qemu-img")
                .args(["convert", "-U", "-O", "raw"])
                .arg(qcow2)
                .arg(&raw),
            "qemu-img convert",
        );
        DiskImage { _dir: dir, raw }
    }

    /// `debugfs -R REQUEST` on the raw image (read-only); its stdout.
    pub fn debugfs(&self, request: &str) -> String {
        run(
            Command::new("debugfs")
                .args(["-R", request])
                .arg(&self.raw)
                .stderr(std::process::Stdio::null()),
            &format!("debugfs -R {request:?}"),
        )
    }

    /// A file's content, or None when it does not exist.
    pub fn read(&self, path: &str) -> Option<String> {
        let listed = self.debugfs(&format!("stat {path}"));
        if !listed.contains("Inode:") {
            return None;
        }
        Some(self.debugfs(&format!("cat {path}")))
    }

    /// The names in a directory (empty when it does not exist).
    pub fn list(&self, dir: &str) -> Vec<String> {
        self.debugfs(&format!("ls -p {dir}"))
            .lines()
            .filter_map(|l| l.split('/').nth(5).map(str::to_string))
            .filter(|n| !n.is_empty() && n != "." && n != "..")
            .collect()
    }

    /// The filesystem's size in bytes (block count × block size from the superblock).
    pub fn fs_bytes(&self) -> u64 {
        let stats = self.debugfs("stats");
        let field = |name: &str| -> u64 {
            stats
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("debugfs stats has no {name}:\n{stats}"))
        };
        field("Block count:") * field("Block size:")
    }
}
