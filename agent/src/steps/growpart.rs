//! `growpart`: grow the root partition and the root filesystem to the size of the drive, on every
//! boot (docs/agent.md, "Growing the root filesystem").
//!
//! Providers clone the image drive at the size the Machine asks for, so a node's drive is usually
//! larger than the image. cloud-init grows into it on every boot with two modules whose defaults
//! every cloud image runs: cc_growpart (`growpart: {mode: auto, devices: ["/"]}`, which calls
//! cloud-guest-utils' `growpart DISK N`) and cc_resizefs (`resize_rootfs: true`: `resize2fs DEV`,
//! `xfs_growfs /`, `btrfs filesystem resize max /`). Our images run with cloud-init disabled,
//! so the agent does the same, before anything of the bootstrap (kubeadm pulls images, kubelet
//! keeps them) needs the space.
//!
//! The decisions are pure functions tested below: which mount is `/`, which block device and
//! partition hold it, which tool grows its filesystem (an unknown type is refused: nothing is
//! touched), and what growpart's exit means. Failures are warnings, not a failed bootstrap (as in
//! cloud-init): a node that joins with the image's size is better than one that does not join.

use std::fs;
use std::path::Path;

use super::Cx;
use crate::error::{Error, Result};
use crate::sys;

/// cloud-init's (and cloud-initramfs-growroot's) opt-out: with this file, the partition is not
/// grown (the filesystem still is, as cc_resizefs does not read it).
pub const GROWROOT_DISABLED: &str = "/etc/growroot-disabled";
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Why the step does not run at all under this root (a test root has no /proc of its own).
pub fn skip(root: &Path) -> Option<&'static str> {
    (!crate::fsutil::under(root, MOUNTINFO).exists())
        .then_some("no /proc/self/mountinfo under the root (not a booted system)")
}

/// The mount of `/`, from /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootMount {
    /// `major:minor` of the mounted device (0:N for btrfs, whose st_dev is anonymous).
    pub devnum: (u32, u32),
    pub fstype: String,
    /// The mount source as the kernel reports it (`/dev/vda1`, `/dev/root`, …).
    pub source: String,
}

/// The last mount at `/` (a later one hides an earlier one). Lines are
/// `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL…] - FSTYPE SOURCE SUPEROPTIONS`.
pub fn root_mount(mountinfo: &str) -> Option<RootMount> {
    mountinfo.lines().rev().find_map(|line| {
        let (head, tail) = line.split_once(" - ")?;
        let head: Vec<&str> = head.split(' ').collect();
        if head.len() < 6 || head[4] != "/" {
            return None;
        }
        let (maj, min) = head[2].split_once(':')?;
        let mut tail = tail.split(' ');
        Some(RootMount {
            devnum: (maj.parse().ok()?, min.parse().ok()?),
            fstype: tail.next()?.to_string(),
            source: tail.next()?.to_string(),
        })
    })
}

/// The command that grows a mounted filesystem of type `fstype` on `dev` (mounted at `/`):
/// cc_resizefs's table for Linux. Any other type is refused: a tool we cannot name is never run.
pub fn resize_command(fstype: &str, dev: &str) -> std::result::Result<Vec<String>, String> {
    let argv: &[&str] = match fstype {
        "ext2" | "ext3" | "ext4" => &["resize2fs", dev],
        "xfs" => &["xfs_growfs", "/"],
        "btrfs" => &["btrfs", "filesystem", "resize", "max", "/"],
        other => {
            return Err(format!(
                "root filesystem type '{other}' is not one the agent can grow (ext2/3/4, xfs, btrfs): nothing resized"
            ))
        }
    };
    Ok(argv.iter().map(|s| s.to_string()).collect())
}

/// Where the root filesystem lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Partition `number` of `disk` (`/dev/vda`, 1), device `dev` (`/dev/vda1`).
    Partition {
        disk: String,
        number: u32,
        dev: String,
    },
    /// A device without a partition table under it: a whole disk (the test image's root is an
    /// ext4 over all of `/dev/vda`), or a device-mapper/md device whose size the agent does not
    /// manage. Only the filesystem is grown.
    Whole { dev: String },
}

impl Target {
    pub fn dev(&self) -> &str {
        match self {
            Target::Partition { dev, .. } | Target::Whole { dev } => dev,
        }
    }
}

/// The device from its canonical sysfs directory (`/sys/devices/…/block/vda/vda1`) and its
/// `partition` attribute (present only for partitions): cloud-init's `device_part_info`, where
/// the disk is the parent directory.
pub fn target(sys_dir: &str, partition_attr: Option<&str>) -> std::result::Result<Target, String> {
    let sys_dir = sys_dir.trim_end_matches('/');
    let mut parts = sys_dir.rsplit('/');
    let name = parts.next().filter(|n| !n.is_empty());
    let parent = parts.next();
    // /sys/dev/block/M:m and /sys/class/block/NAME link into /sys/devices (…/block/vda/vda1 for
    // virtio, …/nvme0/nvme0n1/nvme0n1p1 for nvme).
    let (Some(name), true) = (name, sys_dir.starts_with("/sys/devices/")) else {
        return Err(format!("{sys_dir} is not a block device's sysfs directory"));
    };
    let dev = format!("/dev/{name}");
    match partition_attr.map(str::trim) {
        None => Ok(Target::Whole { dev }),
        Some(n) => {
            let number = n
                .parse()
                .map_err(|_| format!("{sys_dir}/partition holds {n:?}, not a partition number"))?;
            match parent {
                Some(disk) if !["", "block", "devices"].contains(&disk) => Ok(Target::Partition {
                    disk: format!("/dev/{disk}"),
                    number,
                    dev,
                }),
                _ => Err(format!(
                    "{sys_dir}: partition {number} without a parent disk"
                )),
            }
        }
    }
}

/// What growpart's exit says (cloud-guest-utils: 0 `CHANGED:`, 1 `NOCHANGE:`, 2 `FAILED:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grown {
    Changed(String),
    NoChange(String),
}

pub fn growpart_outcome(code: Option<i32>, stdout: &str) -> std::result::Result<Grown, String> {
    let line = |tag: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(tag))
            .map(|s| s.trim().to_string())
    };
    match (code, line("CHANGED:"), line("NOCHANGE:")) {
        (Some(0), Some(s), _) => Ok(Grown::Changed(s)),
        (Some(1), _, Some(s)) => Ok(Grown::NoChange(s)),
        (Some(c), ..) => Err(format!(
            "exited with status {c}{}",
            line("FAILED:")
                .map(|s| format!(": {s}"))
                .unwrap_or_default()
        )),
        (None, ..) => Err("killed by a signal".into()),
    }
}

/// What the step will do: read from the root's /proc and /sys, nothing changed yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub target: Target,
    pub fstype: String,
    pub resize: Vec<String>,
    /// The root device's sysfs directory under the root (its `size`, `start`; the disk's is the
    /// parent directory for a partition).
    pub sysfs: std::path::PathBuf,
}

/// The plan for this root, or why nothing may be done. The filesystem is identified first:
/// an unknown one stops everything, the partition under it included.
pub fn plan(root: &Path) -> std::result::Result<Plan, String> {
    let root = fs::canonicalize(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let at = |p: &str| crate::fsutil::under(&root, p);
    let text = fs::read_to_string(at(MOUNTINFO)).map_err(|e| format!("{MOUNTINFO}: {e}"))?;
    let m = root_mount(&text).ok_or_else(|| format!("{MOUNTINFO} has no mount at /"))?;
    resize_command(&m.fstype, "")?;
    // The device number is exact (also for /dev/root); btrfs reports an anonymous 0:N, so its
    // source path names the device instead.
    let link = if m.devnum.0 != 0 {
        format!("/sys/dev/block/{}:{}", m.devnum.0, m.devnum.1)
    } else if m.source.starts_with("/dev/") && m.source != "/dev/root" {
        let real = fs::canonicalize(at(&m.source)).map_err(|e| format!("{}: {e}", m.source))?;
        let name = real.file_name().unwrap_or_default().to_string_lossy();
        format!("/sys/class/block/{name}")
    } else {
        return Err(format!(
            "cannot tell the block device of / (source {}, device {}:{})",
            m.source, m.devnum.0, m.devnum.1
        ));
    };
    let real = fs::canonicalize(at(&link)).map_err(|e| format!("{link}: {e}"))?;
    let partition = fs::read_to_string(real.join("partition")).ok();
    let sys_dir = Path::new("/").join(real.strip_prefix(&root).unwrap_or(&real));
    let target = target(&sys_dir.to_string_lossy(), partition.as_deref())?;
    let resize = resize_command(&m.fstype, target.dev())?;
    Ok(Plan {
        target,
        fstype: m.fstype,
        resize,
        sysfs: real,
    })
}

/// Grow the partition (growpart), then the filesystem. Every problem is a warning.
pub fn apply(cx: &mut Cx) -> Result<()> {
    let plan = match plan(cx.root) {
        Ok(p) => p,
        Err(why) => {
            cx.warn(format!("growpart: root not grown: {why}"));
            return Ok(());
        }
    };
    if let Target::Partition { disk, number, dev } = &plan.target {
        if cx.path(GROWROOT_DISABLED).exists() {
            cx.info(&format!(
                "growpart: {GROWROOT_DISABLED} exists: partition {dev} not grown"
            ));
        } else if let Some(gap) = partition_gap(&plan.sysfs).filter(|g| *g < GROWPART_FUDGE) {
            // Every boot after the first: no growpart process (a shell script running sfdisk).
            cx.info(&format!(
                "growpart: {dev} already ends {gap} sector(s) before the end of {disk} (growpart grows by 1 MiB or more): growpart not run"
            ));
        } else {
            grow_partition(cx, disk, *number);
        }
    }
    if let Some(blocks) = ext_fills(cx, &plan) {
        cx.info(&format!(
            "growpart: {} filesystem on {} already fills the device ({blocks} blocks): {} not run",
            plan.fstype,
            plan.target.dev(),
            plan.resize[0]
        ));
        return Ok(());
    }
    let before = root_size(cx);
    let (tool, args) = plan
        .resize
        .split_first()
        .expect("resize_command is never empty");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match sys::run(tool, &args, None) {
        Ok(out) if out.ok() => {
            let after = root_size(cx);
            cx.info(&format!(
                "growpart: {} filesystem on {} resized with {} (size {} -> {})",
                plan.fstype,
                plan.target.dev(),
                sys::command_line(tool, &args),
                human(before),
                human(after)
            ));
        }
        Ok(out) => cx.warn(format!(
            "growpart: root filesystem not resized: {}",
            out.failed(tool, &args)
        )),
        Err(e) => cx.warn(format!("growpart: root filesystem not resized: {e}")),
    }
    Ok(())
}

fn grow_partition(cx: &mut Cx, disk: &str, number: u32) {
    let n = number.to_string();
    let args = [disk, n.as_str()];
    match sys::run("growpart", &args, None) {
        Ok(out) => match growpart_outcome(out.code, &out.stdout) {
            Ok(Grown::Changed(s)) => cx.info(&format!("growpart {disk} {n}: CHANGED: {s}")),
            Ok(Grown::NoChange(s)) => cx.info(&format!("growpart {disk} {n}: NOCHANGE: {s}")),
            Err(why) => cx.warn(format!(
                "growpart {disk} {n} {why}{}: partition not grown",
                out.why()
            )),
        },
        Err(Error::NotFound { .. }) => cx.warn(format!(
            "growpart not found on PATH (package cloud-guest-utils): partition {n} of {disk} not grown"
        )),
        Err(e) => cx.warn(format!("growpart {disk} {n}: {e}: partition not grown")),
    }
}

/// growpart's (cloud-utils) FUDGE, 1 MiB in 512-byte sectors: it reports NOCHANGE ("could only
/// be grown by N") unless the partition can grow by more, and it never lets a partition end
/// past the disk's last sector.
pub const GROWPART_FUDGE: u64 = 2048;

/// Sectors (512 bytes, sysfs' unit for every device) between the partition's end and the end of
/// its disk, from `start` and `size` of the partition and `size` of its parent, or None.
pub fn partition_gap(part: &Path) -> Option<u64> {
    let num = |p: &Path| -> Option<u64> { fs::read_to_string(p).ok()?.trim().parse().ok() };
    let start = num(&part.join("start"))?;
    let size = num(&part.join("size"))?;
    let disk = num(&part.parent()?.join("size"))?;
    disk.checked_sub(start.checked_add(size)?)
}

/// For an ext2/3/4 root: Some(block count) when the filesystem already spans the whole device
/// (what resize2fs would grow it to: the device size in whole blocks), so resize2fs has nothing
/// to do. None for other types, or when anything cannot be read: then resize2fs runs, as
/// before. resize2fs may leave a tail too small for a block group unused; such a filesystem is
/// never "full" here and resize2fs keeps running (and saying "Nothing to do") every boot.
fn ext_fills(cx: &Cx, plan: &Plan) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    if !plan.fstype.starts_with("ext") {
        return None;
    }
    let sectors: u64 = fs::read_to_string(plan.sysfs.join("size"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let mut sb = [0u8; 1024];
    fs::File::open(cx.path(plan.target.dev()))
        .ok()?
        .read_exact_at(&mut sb, 1024)
        .ok()?;
    ext_fills_device(&sb, sectors * 512)
}

/// The ext superblock `sb` (1024 bytes from offset 1024 of the device) against `dev_bytes`:
/// Some(block count) when the filesystem has every whole block of the device.
pub fn ext_fills_device(sb: &[u8], dev_bytes: u64) -> Option<u64> {
    let u32_at = |o: usize| -> Option<u64> {
        Some(u32::from_le_bytes(sb.get(o..o + 4)?.try_into().ok()?) as u64)
    };
    // s_magic
    if sb.get(0x38..0x3a)? != [0x53, 0xef] {
        return None;
    }
    let log = u32_at(0x18)?; // s_log_block_size: 1024 << n
    if log > 6 {
        return None;
    }
    let block = 1024u64 << log;
    let mut blocks = u32_at(0x04)?; // s_blocks_count_lo
    if u32_at(0x60)? & 0x80 != 0 {
        // INCOMPAT_64BIT: s_blocks_count_hi
        blocks |= u32_at(0x150)? << 32;
    }
    (blocks >= dev_bytes / block).then_some(blocks)
}

/// Size of the filesystem at `/` in bytes (statvfs), for the log.
fn root_size(cx: &Cx) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(cx.root).ok()?;
    Some(st.blocks() as u64 * st.fragment_size() as u64)
}

fn human(b: Option<u64>) -> String {
    match b {
        Some(b) => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        None => "?".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const DEBIAN_CLOUD: &str = "\
22 28 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
23 28 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:13 - proc proc rw
28 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,discard,errors=remount-ro
30 28 254:15 / /boot/efi rw,relatime shared:3 - vfat /dev/vda15 rw,fmask=0022
";

    #[test]
    fn root_mount_is_the_last_mount_at_slash() {
        let m = root_mount(DEBIAN_CLOUD).unwrap();
        assert_eq!(m.devnum, (254, 1));
        assert_eq!(m.fstype, "ext4");
        assert_eq!(m.source, "/dev/vda1");
        // the test image: whole-disk ext4 booted with root=/dev/vda, reported as /dev/root
        let t = "1 0 254:0 / / rw,relatime - ext4 /dev/root rw\n";
        assert_eq!(root_mount(t).unwrap().source, "/dev/root");
        // an overmount hides the first; optional fields (shared:, master:) are skipped
        let t = "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n9 1 0:33 / / rw shared:1 master:2 - overlay overlay rw\n";
        assert_eq!(root_mount(t).unwrap().fstype, "overlay");
        // no / at all, or garbage
        assert_eq!(root_mount("22 28 0:20 / /sys rw - sysfs sysfs rw\n"), None);
        assert_eq!(root_mount("junk\n\n1 2 x / / - ext4 a b\n"), None);
    }

    #[test]
    fn resize_tool_by_filesystem_type_and_unknown_refused() {
        assert_eq!(
            resize_command("ext4", "/dev/vda1").unwrap(),
            ["resize2fs", "/dev/vda1"]
        );
        assert_eq!(resize_command("ext3", "/dev/sda").unwrap()[0], "resize2fs");
        assert_eq!(
            resize_command("xfs", "/dev/vda1").unwrap(),
            ["xfs_growfs", "/"]
        );
        assert_eq!(
            resize_command("btrfs", "/dev/vda2").unwrap(),
            ["btrfs", "filesystem", "resize", "max", "/"]
        );
        for t in ["overlay", "tmpfs", "zfs", "vfat", "", "ext4dev", "squashfs"] {
            let e = resize_command(t, "/dev/vda1").unwrap_err();
            assert!(
                e.contains(&format!("'{t}'")) && e.contains("nothing resized"),
                "{e}"
            );
        }
    }

    #[test]
    fn target_disk_and_partition_from_sysfs() {
        let vda1 = "/sys/devices/pci0000:00/0000:00:04.0/virtio1/block/vda/vda1";
        assert_eq!(
            target(vda1, Some("1\n")).unwrap(),
            Target::Partition {
                disk: "/dev/vda".into(),
                number: 1,
                dev: "/dev/vda1".into()
            }
        );
        // nvme: the partition number comes from sysfs, not from the name
        let nvme = "/sys/devices/pci0000:00/0000:00:05.0/nvme/nvme0/nvme0n1/nvme0n1p3";
        assert_eq!(
            target(nvme, Some("3")).unwrap(),
            Target::Partition {
                disk: "/dev/nvme0n1".into(),
                number: 3,
                dev: "/dev/nvme0n1p3".into()
            }
        );
        // whole disk (the test image), device-mapper: the filesystem only
        let vda = "/sys/devices/pci0000:00/0000:00:04.0/virtio1/block/vda";
        assert_eq!(
            target(vda, None).unwrap(),
            Target::Whole {
                dev: "/dev/vda".into()
            }
        );
        assert_eq!(
            target("/sys/devices/virtual/block/dm-0", None).unwrap(),
            Target::Whole {
                dev: "/dev/dm-0".into()
            }
        );
        assert!(target(vda1, Some("x"))
            .unwrap_err()
            .contains("not a partition number"));
        assert!(target("/proc/1", None)
            .unwrap_err()
            .contains("not a block device"));
        assert!(target("/sys/devices/", Some("1")).is_err());
        assert!(target("/sys/devices/vda1", Some("1")).is_err());
    }

    #[test]
    fn growpart_exit_codes() {
        assert_eq!(
            growpart_outcome(
                Some(0),
                "CHANGED: partition=1 start=2048 old: size=1 end=2 new: size=3 end=4\n"
            ),
            Ok(Grown::Changed(
                "partition=1 start=2048 old: size=1 end=2 new: size=3 end=4".into()
            ))
        );
        assert_eq!(
            growpart_outcome(
                Some(1),
                "NOCHANGE: partition 1 is size 100. it cannot be grown\n"
            ),
            Ok(Grown::NoChange(
                "partition 1 is size 100. it cannot be grown".into()
            ))
        );
        // exit 1 without NOCHANGE is a usage error, 2 a failure
        assert!(growpart_outcome(Some(1), "").is_err());
        let e = growpart_outcome(Some(2), "FAILED: failed to resize\n").unwrap_err();
        assert_eq!(e, "exited with status 2: failed to resize");
        assert!(growpart_outcome(None, "").is_err());
    }

    #[test]
    fn partition_gap_from_sysfs() {
        let d = tempfile::tempdir().unwrap();
        let part = d.path().join("vda/vda1");
        fs::create_dir_all(&part).unwrap();
        fs::write(d.path().join("vda/size"), "20971520\n").unwrap();
        fs::write(part.join("start"), "2048\n").unwrap();
        fs::write(part.join("size"), "20967424\n").unwrap();
        assert_eq!(partition_gap(&part), Some(2048));
        // an image's partition on a drive cloned 10 GiB larger: growpart must run
        fs::write(d.path().join("vda/size"), "41943040\n").unwrap();
        assert_eq!(partition_gap(&part), Some(20973568));
        // unreadable or inconsistent: None (growpart runs)
        fs::write(part.join("size"), "99999999999\n").unwrap();
        assert_eq!(partition_gap(&part), None);
        fs::remove_file(part.join("start")).unwrap();
        assert_eq!(partition_gap(&part), None);
    }

    #[test]
    fn ext_superblock_against_the_device() {
        let mut sb = vec![0u8; 1024];
        sb[0x38..0x3a].copy_from_slice(&[0x53, 0xef]);
        sb[0x18..0x1c].copy_from_slice(&2u32.to_le_bytes()); // 4 KiB blocks
        sb[0x04..0x08].copy_from_slice(&262144u32.to_le_bytes()); // 1 GiB
        assert_eq!(ext_fills_device(&sb, 1 << 30), Some(262144));
        assert_eq!(
            ext_fills_device(&sb, (1 << 30) + 4095),
            Some(262144),
            "a partial block"
        );
        assert_eq!(
            ext_fills_device(&sb, (1 << 30) + 4096),
            None,
            "one more block"
        );
        assert_eq!(ext_fills_device(&sb, 10 << 30), None, "cloned larger");
        // 64bit: the high word counts
        sb[0x60..0x64].copy_from_slice(&0x80u32.to_le_bytes());
        sb[0x150..0x154].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(ext_fills_device(&sb, 10 << 30), Some((1 << 32) + 262144));
        // not ext, or nonsense
        sb[0x38] = 0;
        assert_eq!(ext_fills_device(&sb, 1 << 30), None);
        assert_eq!(ext_fills_device(&[0u8; 10], 1 << 30), None);
    }

    #[test]
    fn ext_superblock_as_mkfs_writes_it() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("fs.img");
        fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
        match std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&img)
            .output()
        {
            Ok(o) if o.status.success() => {}
            _ => {
                println!("mkfs.ext4 not usable here: skipping");
                return;
            }
        }
        use std::os::unix::fs::FileExt;
        let mut sb = [0u8; 1024];
        fs::File::open(&img)
            .unwrap()
            .read_exact_at(&mut sb, 1024)
            .unwrap();
        assert!(ext_fills_device(&sb, 64 << 20).is_some());
        assert_eq!(ext_fills_device(&sb, 128 << 20), None);
    }

    /// A fake booted root: mountinfo, /sys/dev/block links into /sys/devices, `partition`.
    fn fake_root(
        mountinfo: &str,
        devnum: &str,
        sys_dev: &str,
        partition: Option<&str>,
    ) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("proc/self")).unwrap();
        fs::write(r.join("proc/self/mountinfo"), mountinfo).unwrap();
        let dir = r.join(sys_dev.trim_start_matches('/'));
        fs::create_dir_all(&dir).unwrap();
        if let Some(p) = partition {
            fs::write(dir.join("partition"), p).unwrap();
        }
        fs::create_dir_all(r.join("sys/dev/block")).unwrap();
        // relative, as the kernel's links are
        symlink(
            format!("../../..{sys_dev}"),
            r.join("sys/dev/block").join(devnum),
        )
        .unwrap();
        d
    }

    #[test]
    fn plan_reads_the_booted_root() {
        let d = fake_root(
            DEBIAN_CLOUD,
            "254:1",
            "/sys/devices/pci0000:00/0000:00:04.0/virtio1/block/vda/vda1",
            Some("1\n"),
        );
        assert_eq!(skip(d.path()), None);
        let p = plan(d.path()).unwrap();
        assert_eq!(
            p.target,
            Target::Partition {
                disk: "/dev/vda".into(),
                number: 1,
                dev: "/dev/vda1".into()
            }
        );
        assert_eq!(p.resize, ["resize2fs", "/dev/vda1"]);

        // the e2e image: /dev/root over the whole disk, found by its device number
        let d = fake_root(
            "1 0 254:0 / / rw,relatime - ext4 /dev/root rw\n",
            "254:0",
            "/sys/devices/pci0000:00/0000:00:04.0/virtio1/block/vda",
            None,
        );
        let p = plan(d.path()).unwrap();
        assert_eq!(
            p.target,
            Target::Whole {
                dev: "/dev/vda".into()
            }
        );
        assert_eq!(p.resize, ["resize2fs", "/dev/vda"]);
    }

    #[test]
    fn plan_refuses_unknown_filesystem_before_touching_the_partition() {
        let d = fake_root(
            "28 1 254:1 / / rw - squashfs /dev/vda1 ro\n",
            "254:1",
            "/sys/devices/pci0000:00/0000:00:04.0/virtio1/block/vda/vda1",
            Some("1"),
        );
        let e = plan(d.path()).unwrap_err();
        assert!(e.contains("'squashfs'"), "{e}");
        // a container's root
        let d = fake_root(
            "9 1 0:33 / / rw - overlay overlay rw\n",
            "0:33",
            "/sys/devices/virtual/block/none",
            None,
        );
        assert!(plan(d.path()).unwrap_err().contains("'overlay'"));
        // a known type on an anonymous device that no /dev path names
        let d = fake_root(
            "9 1 0:33 / / rw - btrfs rootfs rw\n",
            "0:33",
            "/sys/devices/virtual/block/none",
            None,
        );
        assert!(plan(d.path())
            .unwrap_err()
            .contains("cannot tell the block device"));
        // no mountinfo under a test root: the step is skipped
        let empty = tempfile::tempdir().unwrap();
        assert!(skip(empty.path()).is_some());
        assert!(plan(empty.path()).is_err());
    }
}
