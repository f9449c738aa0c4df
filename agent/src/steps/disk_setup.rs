//! `disk_setup`: partition tables with sfdisk, once per instance (docs/agent.md, "Disks,
//! filesystems, mounts").

use serde_yaml::Value;

use super::{devices, Cx};
use crate::error::{Error, Result};
use crate::sys;
use crate::yaml::{boolish, key_error, scalar_string, type_name, ConfigError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableType {
    Mbr,
    Gpt,
}

impl TableType {
    /// The name sfdisk and blkid use for it.
    pub fn label(self) -> &'static str {
        match self {
            TableType::Mbr => "dos",
            TableType::Gpt => "gpt",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub percent: f64,
    /// sfdisk's `type=` value, already translated for the table type.
    pub sfdisk_type: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Disk {
    pub device: String,
    pub table_type: TableType,
    /// Empty: `layout: true` (one partition over the whole disk).
    pub parts: Vec<Part>,
    pub overwrite: bool,
}

/// GPT type GUID of "Microsoft basic data" (FAT, NTFS, exFAT).
const MS_BASIC_DATA: &str = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7";

/// sfdisk wants a GUID or an alias for GPT: translate the MBR-style codes cloud-init users write
/// (83, 8300...) to the matching aliases.
fn part_type(key: &str, t: &str, table: TableType) -> Result<String, ConfigError> {
    let lower = t.to_ascii_lowercase();
    let bad = || {
        key_error(
            key,
            format!("partition type {t:?} is not supported for {} (use 82, 83, 8e, fd, ef, 07, 0c or a GPT type GUID)", table.label()),
        )
    };
    match table {
        TableType::Mbr => {
            let code = lower
                .strip_suffix("00")
                .filter(|c| c.len() == 2)
                .unwrap_or(&lower);
            if (1..=2).contains(&code.len()) && code.chars().all(|c| c.is_ascii_hexdigit()) {
                Ok(code.to_string())
            } else {
                Err(bad())
            }
        }
        TableType::Gpt => {
            // The kubeadm provider's MBR codes for FAT32 (0c) and NTFS/exFAT (07) are "Microsoft
            // basic data" on GPT (gdisk converts MBR 0x07/0x0c to 0700 the same way); an
            // extended partition (85, 05, 0f) has no GPT counterpart.
            if ["07", "0700", "0c", "0c00"].contains(&lower.as_str()) {
                return Ok(MS_BASIC_DATA.into());
            }
            if ["85", "8500", "05", "0500", "0f", "0f00"].contains(&lower.as_str()) {
                return Err(key_error(
                    key,
                    format!("partition type {t:?} is an MBR extended partition, which a GPT table does not have: use table_type: mbr, or a data type (83) on gpt"),
                ));
            }
            let alias = match lower.as_str() {
                "83" | "8300" => "L",
                "82" | "8200" => "S",
                "8e" | "8e00" => "V",
                "fd" | "fd00" => "R",
                "ef" | "ef00" => "U",
                _ => "",
            };
            if !alias.is_empty() {
                return Ok(alias.into());
            }
            let guid = lower.len() == 36
                && lower.chars().enumerate().all(|(i, c)| {
                    if [8, 13, 18, 23].contains(&i) {
                        c == '-'
                    } else {
                        c.is_ascii_hexdigit()
                    }
                });
            if guid {
                Ok(t.to_ascii_uppercase())
            } else {
                Err(bad())
            }
        }
    }
}

pub fn parse(v: &Value) -> Result<Vec<Disk>, ConfigError> {
    let m = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Mapping(m) => m,
        other => {
            return Err(key_error(
                "disk_setup",
                format!("expected a mapping of devices, got {}", type_name(other)),
            ))
        }
    };
    let mut out = Vec::new();
    for (dev, def) in m {
        let dev = scalar_string(dev).unwrap_or_else(|| format!("<{}>", type_name(dev)));
        let key = format!("disk_setup.{dev}");
        devices::absolute_device(&key, &dev)?;
        let Value::Mapping(d) = def else {
            return Err(key_error(
                &key,
                format!("expected a mapping, got {}", type_name(def)),
            ));
        };
        let get = |n: &str| d.get(Value::String(n.into()));
        let table_type = match get("table_type").map(scalar_string) {
            None | Some(None) => TableType::Mbr,
            Some(Some(t)) => match t.to_ascii_lowercase().as_str() {
                "mbr" => TableType::Mbr,
                "gpt" => TableType::Gpt,
                _ => {
                    return Err(key_error(
                        format!("{key}.table_type"),
                        format!("{t:?} is not mbr or gpt"),
                    ))
                }
            },
        };
        let overwrite = match get("overwrite") {
            None => false,
            Some(v) => boolish(v).map_err(|e| key_error(format!("{key}.overwrite"), e))?,
        };
        let lkey = format!("{key}.layout");
        let parts = match get("layout") {
            // Not to be partitioned (cloud-init: layout false or absent).
            None | Some(Value::Null) | Some(Value::Bool(false)) => continue,
            Some(Value::Bool(true)) => Vec::new(),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("remove") => {
                return Err(key_error(lkey, "'remove' is not supported"))
            }
            Some(Value::Sequence(items)) if !items.is_empty() => {
                if table_type == TableType::Mbr && items.len() > 4 {
                    return Err(key_error(lkey, "mbr allows at most 4 partitions"));
                }
                let mut parts = Vec::new();
                for (i, it) in items.iter().enumerate() {
                    let ikey = format!("{lkey}[{i}]");
                    let (pct, ty) = match it {
                        Value::Sequence(pair) if pair.len() == 2 => (&pair[0], Some(&pair[1])),
                        Value::Sequence(_) => {
                            return Err(key_error(ikey, "expected [percent, type]"))
                        }
                        other => (other, None),
                    };
                    let percent = pct
                        .as_f64()
                        .filter(|p| *p > 0.0 && *p <= 100.0)
                        .ok_or_else(|| {
                            key_error(&ikey, "the size must be a percentage (0 < n <= 100)")
                        })?;
                    let ty = match ty {
                        None => "83".to_string(),
                        Some(t) => scalar_string(t).ok_or_else(|| {
                            key_error(&ikey, "the partition type must be a scalar")
                        })?,
                    };
                    parts.push(Part {
                        percent,
                        sfdisk_type: part_type(&ikey, &ty, table_type)?,
                    });
                }
                if parts.iter().map(|p| p.percent).sum::<f64>() > 100.0 + 1e-9 {
                    return Err(key_error(lkey, "the percentages add up to more than 100"));
                }
                parts
            }
            Some(other) => {
                return Err(key_error(
                    lkey,
                    format!(
                        "expected true, false or a non-empty list, got {}",
                        type_name(other)
                    ),
                ))
            }
        };
        out.push(Disk {
            device: dev,
            table_type,
            parts,
            overwrite,
        });
    }
    Ok(out)
}

/// The sfdisk script for a disk of `size_bytes`: sizes in MiB (sfdisk aligns to 1 MiB itself),
/// the last partition takes the rest as in cloud-init.
pub fn sfdisk_script(d: &Disk, size_bytes: u64) -> Result<String, String> {
    let mut s = format!("label: {}\n", d.table_type.label());
    let default_type = match d.table_type {
        TableType::Gpt => "L",
        TableType::Mbr => "83",
    };
    if d.parts.is_empty() {
        s.push_str(&format!("type={default_type}\n"));
        return Ok(s);
    }
    let last = d.parts.len() - 1;
    for (i, p) in d.parts.iter().enumerate() {
        if i == last {
            s.push_str(&format!("type={}\n", p.sfdisk_type));
        } else {
            let mib = (size_bytes as f64 * p.percent / 100.0 / 1048576.0).floor() as u64;
            if mib == 0 {
                return Err(format!(
                    "partition {} of {} would be smaller than 1 MiB ({}% of {size_bytes} bytes)",
                    i + 1,
                    d.device,
                    p.percent
                ));
            }
            s.push_str(&format!("size={mib}MiB, type={}\n", p.sfdisk_type));
        }
    }
    Ok(s)
}

/// Number of partitions and table label in `sfdisk --json` output, to tell whether an existing
/// table already has the requested layout (cloud-init then leaves it, even with overwrite).
pub fn sfdisk_json_layout(out: &str) -> Option<(String, usize)> {
    let v: serde_json::Value = serde_json::from_str(out).ok()?;
    let t = v.get("partitiontable")?;
    let label = t.get("label")?.as_str()?.to_string();
    let n = t
        .get("partitions")
        .and_then(|p| p.as_array())
        .map(|a| a.len())
        .unwrap_or(0);
    Some((label, n))
}

pub fn apply(cx: &mut Cx, disks: &[Disk]) -> Result<()> {
    for d in disks {
        let dev = d.device.as_str();
        devices::exists(cx, dev).map_err(|e| e.context(format!("disk_setup {dev}")))?;
        let probe = devices::blkid(dev)?;
        if let Some(pt) = &probe.pttype {
            if !d.overwrite {
                cx.info(&format!(
                    "disk_setup: {dev} already has a {pt} partition table: left as is (overwrite is false)"
                ));
                continue;
            }
            let out = sys::check("sfdisk", &["--json", dev], None)?;
            if let Some((label, n)) = sfdisk_json_layout(&out.stdout) {
                let count_ok = if d.parts.is_empty() {
                    n >= 1
                } else {
                    n == d.parts.len()
                };
                if label == d.table_type.label() && count_ok {
                    cx.info(&format!(
                        "disk_setup: {dev} already has the requested layout ({label}, {n} partition(s)): left as is"
                    ));
                    continue;
                }
            }
            cx.warn(format!(
                "disk_setup: replacing the {pt} partition table of {dev} (overwrite is true)"
            ));
        } else if let Some(fs) = &probe.fstype {
            if !d.overwrite {
                cx.warn(format!(
                    "disk_setup: {dev} carries a {fs} filesystem on the whole disk: not partitioned (overwrite is false)"
                ));
                continue;
            }
        }
        let out = sys::check("blockdev", &["--getsize64", dev], None)?;
        let size: u64 = out.stdout.trim().parse().map_err(|_| {
            Error::Refused(format!(
                "disk_setup {dev}: blockdev --getsize64 did not print a size"
            ))
        })?;
        let script =
            sfdisk_script(d, size).map_err(|e| Error::Refused(format!("disk_setup: {e}")))?;
        sys::check(
            "sfdisk",
            &["--wipe", "always", dev],
            Some(script.as_bytes()),
        )
        .map_err(|e| e.context(format!("disk_setup {dev}")))?;
        // The partition nodes (and their by-label links) appear through udev.
        let _ = sys::run("udevadm", &["settle"], None);
        cx.info(&format!(
            "disk_setup: partitioned {dev} ({}, {} partition(s))",
            d.table_type.label(),
            d.parts.len().max(1)
        ));
    }
    Ok(())
}
