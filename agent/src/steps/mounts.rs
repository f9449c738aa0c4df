//! `mounts`: `/etc/fstab` entries of ours, mount points, `systemctl daemon-reload`, `mount -a`
//! (docs/agent.md, "Disks, filesystems, mounts").

use std::fs;

use serde_yaml::Value;

use super::Cx;
use crate::error::{Error, IoContext, IoOp, Result};
use crate::fsutil::{atomic_write, Owner, WriteMode};
use crate::sys;
use crate::yaml::{key_error, list_or_empty, scalar_string, type_name, ConfigError};

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

pub fn parse(
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
                        key_error(
                            format!("mount_default_fields[{j}]"),
                            format!("expected a string or null, got {}", type_name(other)),
                        )
                    })?),
                };
            }
        }
        Some(other) => {
            return Err(key_error(
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
            return Err(key_error(
                &key,
                format!("expected a list of fstab fields, got {}", type_name(it)),
            ));
        };
        if fields.is_empty() || fields.len() > 6 {
            return Err(key_error(
                &key,
                format!("expected 1 to 6 fields, got {}", fields.len()),
            ));
        }
        let mut f: Vec<Option<String>> = Vec::with_capacity(6);
        for (j, default) in def.iter().enumerate() {
            let given = match fields.get(j) {
                None | Some(Value::Null) => None,
                Some(v) => Some(scalar_string(v).ok_or_else(|| {
                    key_error(
                        format!("{key}[{j}]"),
                        format!("expected a string, got {}", type_name(v)),
                    )
                })?),
            };
            f.push(given.or_else(|| default.clone()));
        }
        let Some(dev) = f[0].clone() else {
            return Err(key_error(&key, "missing the device"));
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
            return Err(key_error(
                format!("{key}[1]"),
                format!("mount point {mountpoint:?} is not an absolute path or 'none'"),
            ));
        }
        let mut full = vec![device, mountpoint];
        for (j, x) in f.iter().enumerate().skip(2) {
            full.push(x.clone().ok_or_else(|| {
                key_error(
                    format!("{key}[{j}]"),
                    "missing (and no default in mount_default_fields)",
                )
            })?);
        }
        for (j, x) in full.iter().enumerate() {
            if !field_ok(x) {
                return Err(key_error(
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

pub fn apply(cx: &mut Cx, mounts: &[Mount]) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let fstab = cx.path("/etc/fstab");
    let (old, mode, owner) = match fs::read_to_string(&fstab) {
        Ok(t) => {
            let meta = fs::metadata(&fstab).at(IoOp::Access, &fstab)?;
            let owner = Owner {
                uid: Some(meta.uid()),
                gid: Some(meta.gid()),
            };
            (t, meta.permissions().mode() & 0o7777, owner)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            (String::new(), 0o644, Owner::default())
        }
        Err(e) => return Err(Error::io(IoOp::Access, fstab, e)),
    };
    let (new, left_out) = merge_fstab(&old, mounts);
    for d in &left_out {
        cx.warn(format!(
            "mounts: {d} is already in /etc/fstab (not written by us): that line is kept, the data's entry is not added"
        ));
    }
    let ours: Vec<&Mount> = mounts
        .iter()
        .filter(|m| !left_out.contains(&m.device))
        .collect();
    for m in &ours {
        if m.mountpoint.starts_with('/') {
            let dir = cx.path(&m.mountpoint);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&dir)
                .map_err(|e| Error::io(IoOp::Create, &m.mountpoint, e).context("mounts"))?;
        }
    }
    if new != old {
        atomic_write(&fstab, new.as_bytes(), mode, owner, WriteMode::Replace)
            .at(IoOp::Access, &fstab)?;
        cx.info(&format!(
            "mounts: /etc/fstab updated ({} entr{} of ours)",
            ours.len(),
            if ours.len() == 1 { "y" } else { "ies" }
        ));
        // systemd generates mount units from fstab: reload first, or mount -a warns that
        // systemd still uses the old version.
        if cx.execute {
            sys::check("systemctl", &["daemon-reload"], None)?;
        }
    } else {
        cx.info("mounts: /etc/fstab already up to date");
    }
    if !cx.execute {
        cx.info("mounts: systemctl daemon-reload and mount -a not run (--root without --execute)");
    } else if !ours.is_empty() {
        sys::check("mount", &["-a"], None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloudconfig::parse;

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
}
