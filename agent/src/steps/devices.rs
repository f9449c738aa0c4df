//! Block devices as the storage steps see them: device paths from the data, `blkid` and `lsblk`
//! output, partition node names. Shared by disk_setup, fs_setup and the tests' fake disk.

use super::Cx;
use crate::error::{Error, Result};
use crate::sys;
use crate::yaml::{key_error, ConfigError};

pub fn absolute_device(key: &str, dev: &str) -> Result<(), ConfigError> {
    if !dev.starts_with("/dev/") {
        return Err(key_error(
            key,
            format!("device {dev:?} is not a path under /dev (cloud-init's ephemeral/swap aliases do not exist on CloudSigma)"),
        ));
    }
    if dev.split('/').any(|c| c == "..") || dev.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(key_error(
            key,
            format!("device {dev:?} is not a plain path"),
        ));
    }
    Ok(())
}

/// `blkid -p -o export` output → (PTTYPE, TYPE, LABEL).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Probe {
    pub pttype: Option<String>,
    pub fstype: Option<String>,
    pub label: Option<String>,
}

pub fn parse_blkid_export(out: &str) -> Probe {
    let mut p = Probe::default();
    for line in out.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = Some(v.trim().to_string()).filter(|v| !v.is_empty());
        match k.trim() {
            "PTTYPE" => p.pttype = v,
            "TYPE" => p.fstype = v,
            "LABEL" => p.label = v,
            _ => {}
        }
    }
    p
}

#[derive(Debug, Clone, PartialEq)]
pub struct BlockDev {
    pub name: String,
    pub kind: String,
    pub fstype: Option<String>,
    pub label: Option<String>,
}

/// `lsblk --pairs --paths --output NAME,TYPE,FSTYPE,LABEL` output (values are double-quoted with
/// `\x..` escapes, which we keep as is: they are only compared).
pub fn parse_lsblk_pairs(out: &str) -> Vec<BlockDev> {
    let mut v = Vec::new();
    for line in out.lines() {
        let mut name = None;
        let mut kind = String::new();
        let mut fstype = None;
        let mut label = None;
        let mut rest = line.trim();
        while let Some((k, r)) = rest.split_once("=\"") {
            let Some((val, r2)) = r.split_once('"') else {
                break;
            };
            let val = Some(val.to_string()).filter(|x| !x.is_empty());
            match k.trim() {
                "NAME" => name = val,
                "TYPE" => kind = val.unwrap_or_default(),
                "FSTYPE" => fstype = val,
                "LABEL" => label = val,
                _ => {}
            }
            rest = r2.trim_start();
        }
        if let Some(name) = name {
            v.push(BlockDev {
                name,
                kind,
                fstype,
                label,
            });
        }
    }
    v
}

/// `/dev/sdb` + 1 → `/dev/sdb1`; `/dev/nvme0n1` + 1 → `/dev/nvme0n1p1` (the kernel's rule; cloud-init
/// appends the number blindly).
pub fn partition_path(device: &str, n: u32) -> String {
    if device.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{device}p{n}")
    } else {
        format!("{device}{n}")
    }
}

/// `blkid -p` (low-level probe, no cache, like cloud-init's `-c /dev/null`): exit 2 means no
/// signature at all.
pub fn blkid(dev: &str) -> Result<Probe> {
    let args = ["-p", "-o", "export", dev];
    let out = sys::run("blkid", &args, None)?;
    match out.code {
        Some(0) => Ok(parse_blkid_export(&out.stdout)),
        Some(2) => Ok(Probe::default()),
        _ => Err(out.failed("blkid", &args)),
    }
}

/// A device path is looked up under --root (tests create stand-ins there; a debugging run
/// with a scratch root thus never reaches the host's disks), but passed to the tools as is.
pub fn exists(cx: &Cx, dev: &str) -> Result<()> {
    let p = cx.path(dev);
    if p.exists() {
        return Ok(());
    }
    // Partitions created a moment ago may still be on their way from udev.
    let _ = sys::run("udevadm", &["settle"], None);
    if p.exists() {
        Ok(())
    } else {
        Err(Error::NoDevice { device: dev.into() })
    }
}
