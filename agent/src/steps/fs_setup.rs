//! `fs_setup`: filesystems with `mkfs.<type>`, never over a filesystem the data did not ask to
//! replace (docs/agent.md, "Disks, filesystems, mounts").

use serde_yaml::Value;

use super::devices::{self, BlockDev};
use super::Cx;
use crate::error::{Error, Result};
use crate::sys;
use crate::yaml::{
    boolish, key_error, list_or_empty, scalar_string, string_list, type_name, ConfigError,
};

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

pub fn parse(v: &Value, warnings: &mut Vec<String>) -> Result<Vec<Filesystem>, ConfigError> {
    let items = list_or_empty(v, "fs_setup")?;
    let mut out = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let key = format!("fs_setup[{i}]");
        let Value::Mapping(m) = it else {
            return Err(key_error(
                &key,
                format!("expected a mapping, got {}", type_name(it)),
            ));
        };
        let get = |n: &str| m.get(Value::String(n.into()));
        let s = |n: &str| -> Result<Option<String>, ConfigError> {
            match get(n) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => scalar_string(v).map(Some).ok_or_else(|| {
                    key_error(
                        format!("{key}.{n}"),
                        format!("expected a string, got {}", type_name(v)),
                    )
                }),
            }
        };
        if get("cmd").is_some() {
            // A shell command instead of mkfs: running something else than asked is worse than
            // stopping.
            return Err(key_error(
                format!("{key}.cmd"),
                "is not supported (use filesystem and extra_opts)",
            ));
        }
        let device = s("device")?.ok_or_else(|| key_error(&key, "missing 'device'"))?;
        devices::absolute_device(&format!("{key}.device"), &device)?;
        let filesystem = s("filesystem")?.ok_or_else(|| key_error(&key, "missing 'filesystem'"))?;
        if !fs_name_ok(&filesystem) {
            return Err(key_error(
                format!("{key}.filesystem"),
                format!("{filesystem:?} is not a filesystem type"),
            ));
        }
        let label = s("label")?.filter(|l| !l.is_empty());
        if let Some(l) = &label {
            if l.chars().any(|c| c.is_control()) || l.len() > 64 {
                return Err(key_error(
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
                        return Err(key_error(
                            format!("{key}.partition"),
                            format!("{p:?} is not auto, any, none or a partition number"),
                        ))
                    }
                },
            },
        };
        let overwrite = match get("overwrite") {
            None => false,
            Some(v) => boolish(v).map_err(|e| key_error(format!("{key}.overwrite"), e))?,
        };
        let replace_fs = s("replace_fs")?.filter(|r| !r.is_empty());
        if let Some(r) = &replace_fs {
            if !fs_name_ok(r) {
                return Err(key_error(
                    format!("{key}.replace_fs"),
                    format!("{r:?} is not a filesystem type"),
                ));
            }
        }
        let extra_opts = match get("extra_opts") {
            None | Some(Value::Null) => Vec::new(),
            // cloud-init splits a string with shlex; a list of words is what the provider emits.
            Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
            Some(v) => string_list(v).map_err(|e| key_error(format!("{key}.extra_opts"), e))?,
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

pub fn apply(cx: &mut Cx, list: &[Filesystem]) -> Result<()> {
    let mut made = 0;
    for (i, f) in list.iter().enumerate() {
        let key = format!("fs_setup[{i}]");
        let (target, force) = match f.partition {
            PartSel::Num(_) | PartSel::Raw => {
                let raw = f.partition == PartSel::Raw;
                let target = match f.partition {
                    PartSel::Num(n) => devices::partition_path(&f.device, n),
                    _ => f.device.clone(),
                };
                devices::exists(cx, &target).map_err(|e| e.context(&key))?;
                let p = devices::blkid(&target)?;
                let label = p
                    .label
                    .as_ref()
                    .map(|l| format!(" labelled '{l}'"))
                    .unwrap_or_default();
                match (&p.fstype, &p.pttype) {
                    (Some(t), _) if *t == f.filesystem && p.label == f.label && !f.overwrite => {
                        cx.info(&format!(
                            "{key}: {target} already has the {t} filesystem{label}: kept"
                        ));
                        continue;
                    }
                    (Some(t), _) if f.overwrite || f.replace_fs.as_deref() == Some(t) => {
                        cx.warn(format!(
                            "{key}: replacing the {t} filesystem{label} on {target} ({})",
                            if f.overwrite { "overwrite is true" } else { "replace_fs" }
                        ));
                        (target, true)
                    }
                    (Some(t), _) => {
                        return Err(Error::Refused(format!(
                            "{key}: {target} already has a {t} filesystem{label}; not formatted as {} (overwrite is false)",
                            f.filesystem
                        )))
                    }
                    (None, Some(pt)) if raw && !f.overwrite => {
                        return Err(Error::Refused(format!(
                            "{key}: {target} has a {pt} partition table; not formatted as a whole (overwrite is false)"
                        )))
                    }
                    (None, _) => (target, raw || f.overwrite),
                }
            }
            PartSel::Any | PartSel::Auto => {
                devices::exists(cx, &f.device).map_err(|e| e.context(&key))?;
                let out = sys::check(
                    "lsblk",
                    &[
                        "--pairs",
                        "--paths",
                        "--output",
                        "NAME,TYPE,FSTYPE,LABEL",
                        &f.device,
                    ],
                    None,
                )?;
                let devs = devices::parse_lsblk_pairs(&out.stdout);
                let (target, reuse) =
                    pick_device(f, &devs).map_err(|e| Error::Refused(format!("{key}: {e}")))?;
                if reuse {
                    cx.info(&format!(
                        "{key}: {target} already has a {} filesystem: kept",
                        f.filesystem
                    ));
                    continue;
                }
                let had_fs = devs.iter().any(|d| d.name == target && d.fstype.is_some());
                let force = had_fs || target == f.device;
                (target, force)
            }
        };
        let (tool, args) = mkfs_command(f, &target, force);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        sys::check(&tool, &argv, None).map_err(|e| e.context(&key))?;
        made += 1;
        cx.info(&format!(
            "{key}: created {}{} on {target}",
            f.filesystem,
            f.label
                .as_ref()
                .map(|l| format!(" '{l}'"))
                .unwrap_or_default()
        ));
    }
    if made > 0 {
        // mounts by LABEL= need udev's by-label links of the new filesystems.
        let _ = sys::run("udevadm", &["settle"], None);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(devices::partition_path("/dev/sdb", 1), "/dev/sdb1");
        assert_eq!(devices::partition_path("/dev/nvme0n1", 2), "/dev/nvme0n1p2");
    }
}
