//! One module per bootstrap step (docs/agent.md, "What it executes, in order"): each owns the
//! parsing of its cloud-config keys and their application. `run.rs` calls them in order.
//!
//! | step | module |
//! |---|---|
//! | `growpart` (every boot, first) | [`growpart`] |
//! | `bootcmd`, `runcmd`, `script` | [`scripts`] |
//! | `write_files`, `write_files_deferred` | [`write_files`] |
//! | `disk_setup` | [`disk_setup`] (devices probed with [`devices`]) |
//! | `fs_setup` | [`fs_setup`] |
//! | `mounts` | [`mounts`] |
//! | `hostname` | [`hostname`] |
//! | `users` | [`users`] |
//! | `ssh_keys` | [`ssh_keys`] |
//! | `swap` | [`swap`] |
//! | `online` (the one wait for the network, time sync, containerd) | [`online`] |
//! | `node_ip` | [`node_ip`] (the meta assignment: [`vlan_assign`]) |
//! | `ntp` | [`ntp`] |
//! | `packages` | [`packages`] |

use std::path::{Path, PathBuf};

use crate::fsutil::under;
use crate::report::Logger;

pub mod devices;
pub mod disk_setup;
pub mod fs_setup;
pub mod growpart;
pub mod hostname;
pub mod mounts;
pub mod node_ip;
pub mod ntp;
pub mod online;
pub mod packages;
pub mod scripts;
pub mod ssh_keys;
pub mod swap;
pub mod users;
pub mod vlan_assign;
pub mod write_files;

#[cfg(test)]
mod storage_tests;

/// What a step may touch while it applies: the root, the log, the status file's warnings.
pub struct Cx<'a> {
    pub root: &'a Path,
    /// `--root /`: the only case in which host-wide tools (hostname, useradd, swapoff) run.
    pub real_root: bool,
    /// `--root /` or `--execute`: the data's scripts and the node tools from PATH (disk, mount,
    /// systemctl, apt-get) run. Without it a test root only gets files written under it.
    pub execute: bool,
    pub log: &'a mut Logger,
    pub warnings: &'a mut Vec<String>,
}

impl Cx<'_> {
    /// An absolute guest path placed under the root.
    pub fn path(&self, abs: &str) -> PathBuf {
        under(self.root, abs)
    }

    pub fn info(&mut self, msg: &str) {
        self.log.info(msg);
    }

    /// Logged and listed in the status file's `warnings`.
    pub fn warn(&mut self, msg: String) {
        self.log.warn(&msg);
        self.warnings.push(msg);
    }
}
