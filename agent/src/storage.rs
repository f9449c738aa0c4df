//! cloud-init's `disk_setup`, `fs_setup` and `mounts`: parsing and the decisions that do not need
//! a disk (sfdisk scripts, blkid/lsblk output, fstab merging). Executed by `run.rs`.

use serde_yaml::Value;

use crate::cloudconfig::{boolish, scalar_string, type_name, ConfigError};

fn kerr(key: impl Into<String>, msg: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key: key.into(),
        msg: msg.into(),
    }
}

/// A top-level list key: `null` is an empty list, anything else but a list is an error naming it.
fn list_or_empty<'a>(v: &'a Value, key: &str) -> Result<&'a [Value], ConfigError> {
    match v {
        Value::Null => Ok(&[]),
        Value::Sequence(s) => Ok(s),
        other => Err(kerr(
            key,
            format!("expected a list, got {}", type_name(other)),
        )),
    }
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartSel {
    /// First free partition, or reuse one with the same type (cloud-init's default).
    Any,
    /// Like any, but reuse only when the label matches too.
    Auto,
    /// The device itself.
    Raw,
    Num(u32),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Filesystem {
    pub device: String,
    pub filesystem: String,
    pub label: Option<String>,
    pub partition: PartSel,
    pub overwrite: bool,
    pub replace_fs: Option<String>,
    pub extra_opts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub device: String,
    pub mountpoint: String,
    pub fstype: String,
    pub options: String,
    pub freq: String,
    pub passno: String,
}

/// cloud-init's default without its `x-systemd.requires=cloud-init.service`: that unit does not
/// run on our images, and requiring it would fail every such mount.
pub const MOUNT_DEFAULTS: [&str; 6] = ["", "", "auto", "defaults,nofail", "0", "2"];
/// Marks the fstab lines we own, in the options field, exactly as cloud-init does: mount(8)
/// ignores `comment=`, and lines a previous cloud-init run wrote are recognised as ours.
pub const MNT_COMMENT: &str = "comment=cloudconfig";

fn absolute_device(key: &str, dev: &str) -> Result<(), ConfigError> {
    if !dev.starts_with("/dev/") {
        return Err(kerr(
            key,
            format!("device {dev:?} is not a path under /dev (cloud-init's ephemeral/swap aliases do not exist on CloudSigma)"),
        ));
    }
    if dev.split('/').any(|c| c == "..") || dev.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(kerr(key, format!("device {dev:?} is not a plain path")));
    }
    Ok(())
}

/// sfdisk wants a GUID or an alias for GPT: translate the MBR-style codes cloud-init users write
/// (83, 8300...) to the matching aliases.
fn part_type(key: &str, t: &str, table: TableType) -> Result<String, ConfigError> {
    let lower = t.to_ascii_lowercase();
    let bad = || {
        kerr(
            key,
            format!("partition type {t:?} is not supported for {} (use 82, 83, 8e, fd, ef or a GPT type GUID)", table.label()),
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

pub fn parse_disk_setup(v: &Value) -> Result<Vec<Disk>, ConfigError> {
    let m = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Mapping(m) => m,
        other => {
            return Err(kerr(
                "disk_setup",
                format!("expected a mapping of devices, got {}", type_name(other)),
            ))
        }
    };
    let mut out = Vec::new();
    for (dev, def) in m {
        let dev = scalar_string(dev).unwrap_or_else(|| format!("<{}>", type_name(dev)));
        let key = format!("disk_setup.{dev}");
        absolute_device(&key, &dev)?;
        let Value::Mapping(d) = def else {
            return Err(kerr(
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
                    return Err(kerr(
                        format!("{key}.table_type"),
                        format!("{t:?} is not mbr or gpt"),
                    ))
                }
            },
        };
        let overwrite = match get("overwrite") {
            None => false,
            Some(v) => boolish(v).map_err(|e| kerr(format!("{key}.overwrite"), e))?,
        };
        let lkey = format!("{key}.layout");
        let parts = match get("layout") {
            // Not to be partitioned (cloud-init: layout false or absent).
            None | Some(Value::Null) | Some(Value::Bool(false)) => continue,
            Some(Value::Bool(true)) => Vec::new(),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("remove") => {
                return Err(kerr(lkey, "'remove' is not supported"))
            }
            Some(Value::Sequence(items)) if !items.is_empty() => {
                if table_type == TableType::Mbr && items.len() > 4 {
                    return Err(kerr(lkey, "mbr allows at most 4 partitions"));
                }
                let mut parts = Vec::new();
                for (i, it) in items.iter().enumerate() {
                    let ikey = format!("{lkey}[{i}]");
                    let (pct, ty) = match it {
                        Value::Sequence(pair) if pair.len() == 2 => (&pair[0], Some(&pair[1])),
                        Value::Sequence(_) => return Err(kerr(ikey, "expected [percent, type]")),
                        other => (other, None),
                    };
                    let percent = pct
                        .as_f64()
                        .filter(|p| *p > 0.0 && *p <= 100.0)
                        .ok_or_else(|| {
                            kerr(&ikey, "the size must be a percentage (0 < n <= 100)")
                        })?;
                    let ty = match ty {
                        None => "83".to_string(),
                        Some(t) => scalar_string(t)
                            .ok_or_else(|| kerr(&ikey, "the partition type must be a scalar"))?,
                    };
                    parts.push(Part {
                        percent,
                        sfdisk_type: part_type(&ikey, &ty, table_type)?,
                    });
                }
                if parts.iter().map(|p| p.percent).sum::<f64>() > 100.0 + 1e-9 {
                    return Err(kerr(lkey, "the percentages add up to more than 100"));
                }
                parts
            }
            Some(other) => {
                return Err(kerr(
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

const FS_FIELDS: &[&str] = &[
    "label",
    "filesystem",
    "device",
    "partition",
    "overwrite",
    "replace_fs",
    "extra_opts",
];

fn fs_name_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub fn parse_fs_setup(
    v: &Value,
    warnings: &mut Vec<String>,
) -> Result<Vec<Filesystem>, ConfigError> {
    let items = list_or_empty(v, "fs_setup")?;
    let mut out = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let key = format!("fs_setup[{i}]");
        let Value::Mapping(m) = it else {
            return Err(kerr(
                &key,
                format!("expected a mapping, got {}", type_name(it)),
            ));
        };
        let get = |n: &str| m.get(Value::String(n.into()));
        let s = |n: &str| -> Result<Option<String>, ConfigError> {
            match get(n) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => scalar_string(v).map(Some).ok_or_else(|| {
                    kerr(
                        format!("{key}.{n}"),
                        format!("expected a string, got {}", type_name(v)),
                    )
                }),
            }
        };
        if get("cmd").is_some() {
            // A shell command instead of mkfs: running something else than asked is worse than
            // stopping.
            return Err(kerr(
                format!("{key}.cmd"),
                "is not supported (use filesystem and extra_opts)",
            ));
        }
        let device = s("device")?.ok_or_else(|| kerr(&key, "missing 'device'"))?;
        absolute_device(&format!("{key}.device"), &device)?;
        let filesystem = s("filesystem")?.ok_or_else(|| kerr(&key, "missing 'filesystem'"))?;
        if !fs_name_ok(&filesystem) {
            return Err(kerr(
                format!("{key}.filesystem"),
                format!("{filesystem:?} is not a filesystem type"),
            ));
        }
        let label = s("label")?.filter(|l| !l.is_empty());
        if let Some(l) = &label {
            if l.chars().any(|c| c.is_control()) || l.len() > 64 {
                return Err(kerr(
                    format!("{key}.label"),
                    "contains control characters or is too long",
                ));
            }
        }
        let partition = match s("partition")?.map(|p| p.to_ascii_lowercase()) {
            None => PartSel::Any,
            Some(p) => match p.as_str() {
                "any" => PartSel::Any,
                "auto" => PartSel::Auto,
                "none" => PartSel::Raw,
                n => match n.parse::<u32>() {
                    Ok(n) if n >= 1 => PartSel::Num(n),
                    _ => {
                        return Err(kerr(
                            format!("{key}.partition"),
                            format!("{p:?} is not auto, any, none or a partition number"),
                        ))
                    }
                },
            },
        };
        let overwrite = match get("overwrite") {
            None => false,
            Some(v) => boolish(v).map_err(|e| kerr(format!("{key}.overwrite"), e))?,
        };
        let replace_fs = s("replace_fs")?.filter(|r| !r.is_empty());
        if let Some(r) = &replace_fs {
            if !fs_name_ok(r) {
                return Err(kerr(
                    format!("{key}.replace_fs"),
                    format!("{r:?} is not a filesystem type"),
                ));
            }
        }
        let extra_opts = match get("extra_opts") {
            None | Some(Value::Null) => Vec::new(),
            // cloud-init splits a string with shlex; a list of words is what the provider emits.
            Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
            Some(v) => crate::cloudconfig::string_list(v)
                .map_err(|e| kerr(format!("{key}.extra_opts"), e))?,
        };
        for (k, _) in m.iter() {
            let k = k.as_str().unwrap_or("<non-string key>");
            if !FS_FIELDS.contains(&k) {
                warnings.push(format!(
                    "{key}: field '{k}' is not implemented: NOT applied"
                ));
            }
        }
        out.push(Filesystem {
            device,
            filesystem,
            label,
            partition,
            overwrite,
            replace_fs,
            extra_opts,
        });
    }
    Ok(out)
}

/// Device names as cloud-init's sanitize_devname accepts them: paths, `KEY=value` tags, short
/// kernel names (`sdb1` → `/dev/sdb1`); anything else (tmpfs, host:/export) is kept as written.
/// None for the ephemeral/swap aliases, which no CloudSigma datasource defines.
fn mount_device(dev: &str) -> Option<String> {
    let lower = dev.to_ascii_lowercase();
    let alias = lower == "swap"
        || lower
            .strip_prefix("ephemeral")
            .map(|r| {
                r.split('.')
                    .next()
                    .unwrap_or("")
                    .chars()
                    .all(|c| c.is_ascii_digit())
            })
            .unwrap_or(false);
    if alias {
        return None;
    }
    let short_disk = ["xvd", "sd", "vd", "hd"]
        .iter()
        .find_map(|p| dev.strip_prefix(p))
        .map(|r| r.starts_with(|c: char| c.is_ascii_lowercase()))
        .unwrap_or(false)
        || dev.starts_with("nvme");
    let short_disk = short_disk && dev.chars().all(|c| c.is_ascii_alphanumeric());
    if short_disk {
        Some(format!("/dev/{dev}"))
    } else {
        Some(dev.to_string())
    }
}

fn field_ok(f: &str) -> bool {
    !f.is_empty()
        && !f
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '#')
}

pub fn parse_mounts(
    v: &Value,
    defaults: Option<&Value>,
    warnings: &mut Vec<String>,
) -> Result<Vec<Mount>, ConfigError> {
    let mut def: Vec<Option<String>> = MOUNT_DEFAULTS
        .iter()
        .map(|s| (!s.is_empty()).then(|| s.to_string()))
        .collect();
    match defaults {
        None | Some(Value::Null) => {}
        Some(Value::Sequence(items)) if items.len() <= 6 => {
            for (j, it) in items.iter().enumerate() {
                def[j] = match it {
                    Value::Null => None,
                    other => Some(scalar_string(other).ok_or_else(|| {
                        kerr(
                            format!("mount_default_fields[{j}]"),
                            format!("expected a string or null, got {}", type_name(other)),
                        )
                    })?),
                };
            }
        }
        Some(other) => {
            return Err(kerr(
                "mount_default_fields",
                format!(
                    "expected a list of at most 6 fields, got {}",
                    type_name(other)
                ),
            ))
        }
    }
    let items = list_or_empty(v, "mounts")?;
    let mut out = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let key = format!("mounts[{i}]");
        let Value::Sequence(fields) = it else {
            return Err(kerr(
                &key,
                format!("expected a list of fstab fields, got {}", type_name(it)),
            ));
        };
        if fields.is_empty() || fields.len() > 6 {
            return Err(kerr(
                &key,
                format!("expected 1 to 6 fields, got {}", fields.len()),
            ));
        }
        let mut f: Vec<Option<String>> = Vec::with_capacity(6);
        for (j, default) in def.iter().enumerate() {
            let given = match fields.get(j) {
                None | Some(Value::Null) => None,
                Some(v) => Some(scalar_string(v).ok_or_else(|| {
                    kerr(
                        format!("{key}[{j}]"),
                        format!("expected a string, got {}", type_name(v)),
                    )
                })?),
            };
            f.push(given.or_else(|| default.clone()));
        }
        let Some(dev) = f[0].clone() else {
            return Err(kerr(&key, "missing the device"));
        };
        let Some(device) = mount_device(&dev) else {
            warnings.push(format!("{key}: device {dev:?} is a cloud-init alias that does not exist on CloudSigma: entry skipped"));
            continue;
        };
        // A null mount point removes the entry (our old line is dropped and none is written).
        let Some(mountpoint) = f[1].clone() else {
            continue;
        };
        if mountpoint != "none"
            && (!mountpoint.starts_with('/') || mountpoint.split('/').any(|c| c == ".."))
        {
            return Err(kerr(
                format!("{key}[1]"),
                format!("mount point {mountpoint:?} is not an absolute path or 'none'"),
            ));
        }
        let mut full = vec![device, mountpoint];
        for (j, x) in f.iter().enumerate().skip(2) {
            full.push(x.clone().ok_or_else(|| {
                kerr(
                    format!("{key}[{j}]"),
                    "missing (and no default in mount_default_fields)",
                )
            })?);
        }
        for (j, x) in full.iter().enumerate() {
            if !field_ok(x) {
                return Err(kerr(
                    format!("{key}[{j}]"),
                    "an fstab field must not be empty or contain spaces, '#' or control characters",
                ));
            }
        }
        let mut it = full.into_iter();
        let mut n = || it.next().unwrap_or_default();
        out.push(Mount {
            device: n(),
            mountpoint: n(),
            fstype: n(),
            options: n(),
            freq: n(),
            passno: n(),
        });
    }
    Ok(out)
}

/// Merge our entries into an fstab: previous lines of ours (marked with [`MNT_COMMENT`]) are
/// replaced; a device the admin already lists keeps its line and ours is left out (cloud-init's
/// rule). Returns the new text and the devices left out.
pub fn merge_fstab(old: &str, mounts: &[Mount]) -> (String, Vec<String>) {
    let mut out = String::with_capacity(old.len() + 128);
    let mut devices: Vec<&str> = Vec::new();
    for line in old.lines() {
        if line.contains(MNT_COMMENT) {
            continue;
        }
        let t = line.trim_start();
        if !t.starts_with('#') {
            if let Some(d) = t.split_whitespace().next() {
                devices.push(d);
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    let mut left_out = Vec::new();
    for m in mounts {
        if devices.contains(&m.device.as_str()) {
            left_out.push(m.device.clone());
            continue;
        }
        out.push_str(&format!(
            "{}\t{}\t{}\t{},{MNT_COMMENT}\t{}\t{}\n",
            m.device, m.mountpoint, m.fstype, m.options, m.freq, m.passno
        ));
    }
    (out, left_out)
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

/// cloud-init's find_device_node for partition any/auto. Ok((device, reuse)); Err when every
/// candidate already carries a filesystem that must not be touched.
pub fn pick_device(fs: &Filesystem, devs: &[BlockDev]) -> Result<(String, bool), String> {
    let label_match = fs.partition == PartSel::Auto;
    let mut raw_used = false;
    for d in devs {
        if !label_match && fs.replace_fs.is_some() && d.fstype == fs.replace_fs {
            return Ok((d.name.clone(), false));
        }
        if d.fstype.as_deref() == Some(fs.filesystem.as_str())
            && (!label_match || d.label == fs.label)
        {
            return Ok((d.name.clone(), true));
        }
        if d.kind == "disk" || d.kind == "part" {
            if d.kind != "disk" || d.fstype.is_some() {
                raw_used = true;
            }
            if d.kind == "part" && d.fstype.is_none() {
                return Ok((d.name.clone(), false));
            }
        }
    }
    if !raw_used {
        return Ok((fs.device.clone(), false));
    }
    Err(format!(
        "no free partition on {} for the {} filesystem{} (every partition already has a filesystem; set partition: N with overwrite: true to replace one)",
        fs.device,
        fs.filesystem,
        fs.label.as_ref().map(|l| format!(" '{l}'")).unwrap_or_default()
    ))
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

/// mkfs's force flag (cloud-init's lookup_force_flag): needed on a whole disk or to replace a
/// filesystem, where mkfs would otherwise ask for confirmation.
pub fn force_flag(fs: &str) -> Option<&'static str> {
    let fs = fs.to_ascii_lowercase();
    if fs.starts_with("ext") {
        Some("-F")
    } else if ["btrfs", "xfs", "reiserfs", "swap"].contains(&fs.as_str()) {
        Some("-f")
    } else {
        None
    }
}

/// The mkfs tool and its argv (device last). `swap` is made with mkswap, as cloud-init's fallback.
pub fn mkfs_command(fs: &Filesystem, target: &str, force: bool) -> (String, Vec<String>) {
    let tool = if fs.filesystem == "swap" {
        "mkswap".to_string()
    } else {
        format!("mkfs.{}", fs.filesystem)
    };
    let mut args = Vec::new();
    if let Some(l) = &fs.label {
        args.push("-L".to_string());
        args.push(l.clone());
    }
    if force {
        if let Some(f) = force_flag(&fs.filesystem) {
            args.push(f.to_string());
        }
    }
    args.extend(fs.extra_opts.iter().cloned());
    args.push(target.to_string());
    (tool, args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloudconfig::parse;

    fn err(y: &str) -> String {
        match parse(y) {
            Err(ConfigError::Key { key, msg }) => format!("{key}: {msg}"),
            other => panic!("expected a key error for {y:?}, got {other:?}"),
        }
    }

    /// As the kubeadm provider renders a KubeadmConfig's diskSetup and mounts (CAPZ's etcd disk).
    const CAPI: &str = "disk_setup:
  /dev/sdb:
    table_type: gpt
    layout: true
    overwrite: false
  /dev/sdc:
    table_type: mbr
    layout:
      - 25
      - [75, 82]
    overwrite: true
  /dev/sdd:
    table_type: gpt
    layout: false
fs_setup:
  - label: etcd_disk
    filesystem: ext4
    device: /dev/sdb
    extra_opts:
      - -E
      - lazy_itable_init=1,lazy_journal_init=1
  - label: swap_disk
    filesystem: swap
    device: /dev/sdc
    partition: 2
    overwrite: true
  - label: null
    filesystem: xfs
    device: /dev/sde
    partition: none
    replace_fs: ntfs
mounts:
  - - LABEL=etcd_disk
    - /var/lib/etcddisk
  - - sdc2
    - none
    - swap
    - sw
    - 0
    - 0
  - - /dev/sde
    - /data
    - xfs
  - - /dev/sdf
    - null
  - [ephemeral0, /mnt]
";

    #[test]
    fn capi_storage_shapes() {
        let c = parse(CAPI).unwrap();
        assert!(c.unsupported.is_empty(), "{:?}", c.unsupported);
        assert_eq!(c.disk_setup.len(), 2, "layout false is not partitioned");
        assert_eq!(c.disk_setup[0].device, "/dev/sdb");
        assert_eq!(c.disk_setup[0].table_type, TableType::Gpt);
        assert!(c.disk_setup[0].parts.is_empty());
        assert!(c.disk_setup[1].overwrite);
        assert_eq!(c.disk_setup[1].parts[1].sfdisk_type, "82");
        assert_eq!(c.fs_setup[0].partition, PartSel::Any);
        assert_eq!(
            c.fs_setup[0].extra_opts,
            ["-E", "lazy_itable_init=1,lazy_journal_init=1"]
        );
        assert_eq!(c.fs_setup[1].partition, PartSel::Num(2));
        assert_eq!(c.fs_setup[2].partition, PartSel::Raw);
        assert_eq!(c.fs_setup[2].label, None);
        assert_eq!(c.fs_setup[2].replace_fs.as_deref(), Some("ntfs"));
        let m = c.mounts.as_ref().unwrap();
        assert_eq!(m.len(), 3, "null mount point removes, the alias is skipped");
        assert_eq!(
            (
                m[0].device.as_str(),
                m[0].mountpoint.as_str(),
                m[0].fstype.as_str(),
                m[0].options.as_str(),
                m[0].freq.as_str(),
                m[0].passno.as_str()
            ),
            (
                "LABEL=etcd_disk",
                "/var/lib/etcddisk",
                "auto",
                "defaults,nofail",
                "0",
                "2"
            )
        );
        assert_eq!(m[1].device, "/dev/sdc2");
        assert_eq!(m[1].passno, "0");
        assert_eq!(m[2].fstype, "xfs");
        assert!(
            c.warnings.iter().any(|w| w.contains("ephemeral0")),
            "{:?}",
            c.warnings
        );
        // mount_default_fields, also when it comes after mounts.
        let c = parse("mounts: [[/dev/sdb1, /srv]]\nmount_default_fields: [null, null, ext4, 'defaults,noatime', '0', '0']\n").unwrap();
        let m = c.mounts.unwrap();
        assert_eq!(m[0].fstype, "ext4");
        assert_eq!(m[0].options, "defaults,noatime");
    }

    #[test]
    fn truncated_documents_never_panic() {
        // Every prefix of the CAPI document: half-written mappings, lists and scalars.
        for i in 0..CAPI.len() {
            let _ = parse(&CAPI[..i]);
        }
    }

    #[test]
    fn bad_storage_input_names_the_key() {
        assert!(err("disk_setup: [a]").starts_with("disk_setup: expected a mapping"));
        assert!(err("disk_setup: {ephemeral0: {layout: true}}")
            .starts_with("disk_setup.ephemeral0: device"));
        assert!(
            err("disk_setup: {/dev/sdb: {layout: true, table_type: bsd}}")
                .starts_with("disk_setup./dev/sdb.table_type")
        );
        assert!(err("disk_setup: {/dev/sdb: {layout: [60, 60]}}").contains("more than 100"));
        assert!(err("disk_setup: {/dev/sdb: {layout: [0]}}")
            .starts_with("disk_setup./dev/sdb.layout[0]"));
        assert!(err("disk_setup: {/dev/sdb: {layout: [[50, 82, 1]]}}").contains("[percent, type]"));
        assert!(
            err("disk_setup: {/dev/sdb: {table_type: gpt, layout: [[50, zz]]}}").contains("\"zz\"")
        );
        assert!(
            err("disk_setup: {/dev/sdb: {layout: [10, 10, 10, 10, 10]}}").contains("at most 4")
        );
        assert!(err("disk_setup: {/dev/sdb: {layout: remove}}").contains("not supported"));
        assert!(
            err("disk_setup: {/dev/sdb: {layout: true, overwrite: perhaps}}")
                .starts_with("disk_setup./dev/sdb.overwrite")
        );
        assert!(err("fs_setup: {a: 1}").starts_with("fs_setup: expected a list"));
        assert!(err("fs_setup: [{filesystem: ext4}]").starts_with("fs_setup[0]: missing 'device'"));
        assert!(
            err("fs_setup: [{device: /dev/sdb}]").starts_with("fs_setup[0]: missing 'filesystem'")
        );
        assert!(
            err("fs_setup: [{device: /dev/sdb, filesystem: 'ext4; rm -rf /'}]")
                .starts_with("fs_setup[0].filesystem")
        );
        assert!(err("fs_setup: [{device: ephemeral0.1, filesystem: ext4}]")
            .starts_with("fs_setup[0].device"));
        assert!(
            err("fs_setup: [{device: /dev/sdb, filesystem: ext4, partition: first}]")
                .starts_with("fs_setup[0].partition")
        );
        assert!(err(
            "fs_setup: [{device: /dev/sdb, filesystem: ext4, cmd: 'mkfs -t %(filesystem)s'}]"
        )
        .starts_with("fs_setup[0].cmd"));
        assert!(
            err("fs_setup: [{device: /dev/sdb, filesystem: ext4, extra_opts: [[a]]}]")
                .starts_with("fs_setup[0].extra_opts")
        );
        assert!(err("mounts: {a: b}").starts_with("mounts: expected a list"));
        assert!(err("mounts: [/dev/sdb]").starts_with("mounts[0]: expected a list"));
        assert!(err("mounts: [[/dev/sdb, relative/dir]]").starts_with("mounts[0][1]"));
        assert!(
            err("mounts: [[/dev/sdb, /a, ext4, 'defaults, nofail']]").starts_with("mounts[0][3]")
        );
        assert!(err("mounts: [[a, b, c, d, e, f, g]]").contains("1 to 6"));
        assert!(err("mounts: [[/dev/sdb, /a]]\nmount_default_fields: x")
            .starts_with("mount_default_fields"));
    }

    #[test]
    fn fstab_merge_is_idempotent_and_keeps_admin_lines() {
        let c =
            parse("mounts: [[LABEL=etcd_disk, /var/lib/etcddisk], [/dev/sda1, /boot]]").unwrap();
        let old = "UUID=abcd / ext4 errors=remount-ro 0 1\n/dev/sda1 /boot ext4 defaults 0 2\nLABEL=old\t/old\tauto\tdefaults,comment=cloudconfig\t0\t2\n";
        let mounts = c.mounts.unwrap();
        let (new, left) = merge_fstab(old, &mounts);
        assert_eq!(
            new,
            "UUID=abcd / ext4 errors=remount-ro 0 1\n/dev/sda1 /boot ext4 defaults 0 2\nLABEL=etcd_disk\t/var/lib/etcddisk\tauto\tdefaults,nofail,comment=cloudconfig\t0\t2\n"
        );
        assert_eq!(left, ["/dev/sda1"]);
        assert_eq!(merge_fstab(&new, &mounts).0, new, "idempotent");
        assert_eq!(
            merge_fstab(&new, &[]).0,
            "UUID=abcd / ext4 errors=remount-ro 0 1\n/dev/sda1 /boot ext4 defaults 0 2\n"
        );
    }

    #[test]
    fn tool_io() {
        assert_eq!(
            parse_blkid_export("DEVNAME=/dev/sdb1\nLABEL=etcd_disk\nUUID=1\nTYPE=ext4\n"),
            Probe {
                pttype: None,
                fstype: Some("ext4".into()),
                label: Some("etcd_disk".into())
            }
        );
        assert_eq!(
            parse_blkid_export("DEVNAME=/dev/sdb\nPTUUID=x\nPTTYPE=gpt\n")
                .pttype
                .as_deref(),
            Some("gpt")
        );
        let devs = parse_lsblk_pairs("NAME=\"/dev/sdb\" TYPE=\"disk\" FSTYPE=\"\" LABEL=\"\"\nNAME=\"/dev/sdb1\" TYPE=\"part\" FSTYPE=\"ext4\" LABEL=\"etcd disk\"\n");
        assert_eq!(devs.len(), 2);
        assert_eq!(devs[1].label.as_deref(), Some("etcd disk"));
        assert_eq!(devs[0].fstype, None);
        assert_eq!(
            sfdisk_json_layout(
                r#"{"partitiontable": {"label": "gpt", "partitions": [{"node": "/dev/sdb1"}]}}"#
            ),
            Some(("gpt".into(), 1))
        );
        assert_eq!(sfdisk_json_layout("garbage"), None);
    }

    #[test]
    fn device_choice_like_cloud_init() {
        let fs = |p: PartSel, label: Option<&str>| Filesystem {
            device: "/dev/sdb".into(),
            filesystem: "ext4".into(),
            label: label.map(str::to_string),
            partition: p,
            overwrite: false,
            replace_fs: None,
            extra_opts: vec![],
        };
        let d = |name: &str, kind: &str, fstype: Option<&str>, label: Option<&str>| BlockDev {
            name: name.into(),
            kind: kind.into(),
            fstype: fstype.map(str::to_string),
            label: label.map(str::to_string),
        };
        let blank = [d("/dev/sdb", "disk", None, None)];
        assert_eq!(
            pick_device(&fs(PartSel::Any, None), &blank),
            Ok(("/dev/sdb".into(), false))
        );
        let parted = [
            d("/dev/sdb", "disk", None, None),
            d("/dev/sdb1", "part", None, None),
        ];
        assert_eq!(
            pick_device(&fs(PartSel::Any, Some("e")), &parted),
            Ok(("/dev/sdb1".into(), false))
        );
        let done = [
            d("/dev/sdb", "disk", None, None),
            d("/dev/sdb1", "part", Some("ext4"), Some("e")),
        ];
        assert_eq!(
            pick_device(&fs(PartSel::Any, Some("x")), &done),
            Ok(("/dev/sdb1".into(), true))
        );
        assert!(
            pick_device(&fs(PartSel::Auto, Some("x")), &done).is_err(),
            "auto matches the label too"
        );
        let other = [
            d("/dev/sdb", "disk", None, None),
            d("/dev/sdb1", "part", Some("xfs"), None),
        ];
        assert!(pick_device(&fs(PartSel::Any, None), &other)
            .unwrap_err()
            .contains("no free partition on /dev/sdb"));
        let mut r = fs(PartSel::Any, None);
        r.replace_fs = Some("xfs".into());
        assert_eq!(pick_device(&r, &other), Ok(("/dev/sdb1".into(), false)));
        assert_eq!(partition_path("/dev/sdb", 1), "/dev/sdb1");
        assert_eq!(partition_path("/dev/nvme0n1", 2), "/dev/nvme0n1p2");
    }

    #[test]
    fn sfdisk_and_mkfs_commands() {
        let c = parse(CAPI).unwrap();
        assert_eq!(
            sfdisk_script(&c.disk_setup[0], 10 << 30).unwrap(),
            "label: gpt\ntype=L\n"
        );
        assert_eq!(
            sfdisk_script(&c.disk_setup[1], 4 << 30).unwrap(),
            "label: dos\nsize=1024MiB, type=83\ntype=82\n"
        );
        assert!(sfdisk_script(&c.disk_setup[1], 1 << 20).is_err());
        let (tool, args) = mkfs_command(&c.fs_setup[0], "/dev/sdb1", false);
        assert_eq!(tool, "mkfs.ext4");
        assert_eq!(
            args,
            [
                "-L",
                "etcd_disk",
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1",
                "/dev/sdb1"
            ]
        );
        let (tool, args) = mkfs_command(&c.fs_setup[1], "/dev/sdc2", true);
        assert_eq!(
            (tool.as_str(), args),
            (
                "mkswap",
                vec![
                    "-L".to_string(),
                    "swap_disk".into(),
                    "-f".into(),
                    "/dev/sdc2".into()
                ]
            )
        );
        assert_eq!(force_flag("vfat"), None);
    }
}
