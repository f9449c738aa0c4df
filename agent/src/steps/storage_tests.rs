//! The storage steps on the document the kubeadm provider renders from a KubeadmConfig's
//! diskSetup and mounts: disk_setup, fs_setup and mounts are parsed and planned together there.

use super::devices::{parse_blkid_export, parse_lsblk_pairs, Probe};
use super::disk_setup::{sfdisk_json_layout, sfdisk_script, TableType};
use super::fs_setup::{force_flag, mkfs_command, PartSel};
use crate::cloudconfig::parse;
use crate::yaml::ConfigError;

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

/// The kubeadm provider's partition types 0c, 07 and 85 (KubeadmConfig diskSetup) on a GPT
/// disk: the data types are mapped, the extended one refused naming the key; on MBR all pass.
#[test]
fn capi_partition_types_on_gpt() {
    let gpt = |ty: &str| {
        format!(
            "disk_setup:\n  /dev/sdb:\n    table_type: gpt\n    layout: [[50, '{ty}'], [50, 83]]\n"
        )
    };
    for ty in ["0c", "07", "0C", "0700"] {
        let c = parse(&gpt(ty)).unwrap();
        assert_eq!(
            c.disk_setup[0].parts[0].sfdisk_type, "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
            "{ty}"
        );
        assert_eq!(c.disk_setup[0].parts[1].sfdisk_type, "L");
    }
    let e = err(&gpt("85"));
    assert!(
        e.starts_with("disk_setup./dev/sdb.layout[0]")
            && e.contains("extended")
            && e.contains("table_type: mbr"),
        "{e}"
    );
    for ty in ["0c", "07", "85"] {
        let c = parse(&format!(
            "disk_setup:\n  /dev/sdb:\n    table_type: mbr\n    layout: [[50, '{ty}'], 50]\n"
        ))
        .unwrap();
        assert_eq!(c.disk_setup[0].parts[0].sfdisk_type, ty);
    }
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
    assert!(
        err("disk_setup: {/dev/sdb: {layout: [0]}}").starts_with("disk_setup./dev/sdb.layout[0]")
    );
    assert!(err("disk_setup: {/dev/sdb: {layout: [[50, 82, 1]]}}").contains("[percent, type]"));
    assert!(
        err("disk_setup: {/dev/sdb: {table_type: gpt, layout: [[50, zz]]}}").contains("\"zz\"")
    );
    assert!(err("disk_setup: {/dev/sdb: {layout: [10, 10, 10, 10, 10]}}").contains("at most 4"));
    assert!(err("disk_setup: {/dev/sdb: {layout: remove}}").contains("not supported"));
    assert!(
        err("disk_setup: {/dev/sdb: {layout: true, overwrite: perhaps}}")
            .starts_with("disk_setup./dev/sdb.overwrite")
    );
    assert!(err("fs_setup: {a: 1}").starts_with("fs_setup: expected a list"));
    assert!(err("fs_setup: [{filesystem: ext4}]").starts_with("fs_setup[0]: missing 'device'"));
    assert!(err("fs_setup: [{device: /dev/sdb}]").starts_with("fs_setup[0]: missing 'filesystem'"));
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
    assert!(
        err("fs_setup: [{device: /dev/sdb, filesystem: ext4, cmd: 'mkfs -t %(filesystem)s'}]")
            .starts_with("fs_setup[0].cmd")
    );
    assert!(
        err("fs_setup: [{device: /dev/sdb, filesystem: ext4, extra_opts: [[a]]}]")
            .starts_with("fs_setup[0].extra_opts")
    );
    assert!(err("mounts: {a: b}").starts_with("mounts: expected a list"));
    assert!(err("mounts: [/dev/sdb]").starts_with("mounts[0]: expected a list"));
    assert!(err("mounts: [[/dev/sdb, relative/dir]]").starts_with("mounts[0][1]"));
    assert!(err("mounts: [[/dev/sdb, /a, ext4, 'defaults, nofail']]").starts_with("mounts[0][3]"));
    assert!(err("mounts: [[a, b, c, d, e, f, g]]").contains("1 to 6"));
    assert!(err("mounts: [[/dev/sdb, /a]]\nmount_default_fields: x")
        .starts_with("mount_default_fields"));
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
