//! Unit tests of the QEMU backend: drive files, runtime IPs, the QEMU command line.

use super::*;
use std::path::Path;

fn have_qemu_img() -> bool {
    std::process::Command::new("qemu-img")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn backend(dir: &Path) -> Option<QemuBackend> {
    backend_on(dir, "127.77.0")
}

/// A backend whose servers get `prefix.N`: tests that expect a freed address back use a prefix
/// of their own, since the addresses are held process-wide (run.rs `HELD`) and the tests run
/// in parallel.
fn backend_on(dir: &Path, prefix: &str) -> Option<QemuBackend> {
    if !have_qemu_img() {
        if std::env::var("CLOUDSIGMA_K8S_ALLOW_SKIP").as_deref() == Ok("1") {
            eprintln!("SKIPPED: qemu-img not installed");
            return None;
        }
        panic!("qemu-img not installed (scripts/install-deps); CLOUDSIGMA_K8S_ALLOW_SKIP=1 skips");
    }
    let mut c = QemuConfig::new(dir);
    c.accel = Accel::Tcg;
    c.ip_prefix = prefix.into();
    Some(QemuBackend::new(c).expect("backend"))
}

#[tokio::test]
async fn drive_files_follow_the_api() {
    let d = tempfile::tempdir().unwrap();
    let Some(b) = backend(d.path()) else { return };
    b.drive_created("a", 1 << 30, "disk").await.unwrap();
    assert_eq!(b.virtual_size(&b.drive_path("a")).await.unwrap(), 1 << 30);
    b.drive_resized("a", 2 << 30).await.unwrap();
    assert_eq!(b.virtual_size(&b.drive_path("a")).await.unwrap(), 2 << 30);
    let e = b.drive_resized("a", 1 << 30).await.unwrap_err();
    assert!(e.0.contains("shrinking"), "{e}");
    // account clone = full copy: deleting the source leaves a working clone
    b.drive_cloned("a", false, "c", 3 << 30).await.unwrap();
    b.drive_deleted("a").await.unwrap();
    assert!(!b.drive_path("a").exists());
    assert_eq!(b.virtual_size(&b.drive_path("c")).await.unwrap(), 3 << 30);
    let info = std::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(b.drive_path("c"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert!(
        v.get("backing-filename").is_none(),
        "clone must not depend on its source: {v}"
    );
    // a library drive without a local image: an empty disk of the asked size
    b.drive_cloned("lib", true, "l", 1 << 30).await.unwrap();
    assert_eq!(b.virtual_size(&b.drive_path("l")).await.unwrap(), 1 << 30);
    // deleting twice is fine (the API may retry a DELETE)
    b.drive_deleted("c").await.unwrap();
    b.drive_deleted("c").await.unwrap();
}

/// Two backends of one process (two emulators: the e2e location matrix) allocating at once get
/// different addresses, though no QEMU has bound either yet; freed, an address is free for both.
#[test]
fn two_backends_of_one_process_never_hand_out_the_same_address() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (Some(b1), Some(b2)) = (
        backend_on(d1.path(), "127.77.2"),
        backend_on(d2.path(), "127.77.2"),
    ) else {
        return;
    };
    let a1 = b1.runtime_ip("x1", 0).unwrap();
    let a2 = b2.runtime_ip("x2", 0).unwrap();
    assert_ne!(a1, a2, "both backends handed out {a1}");
    QemuBackend::release_ip(&b1.inner, "x1");
    QemuBackend::release_ip(&b2.inner, "x2");
    let again = b2.runtime_ip("x3", 0).unwrap();
    let again2 = b1.runtime_ip("x4", 0).unwrap();
    assert_ne!(again, again2);
    QemuBackend::release_ip(&b2.inner, "x3");
    QemuBackend::release_ip(&b1.inner, "x4");
}

#[test]
fn runtime_ips_are_per_server_loopback_and_reused() {
    let d = tempfile::tempdir().unwrap();
    let Some(b) = backend_on(d.path(), "127.77.1") else {
        return;
    };
    // the first free one (another emulator on this machine may hold 127.77.1.2)
    let a = b.runtime_ip("s1", 0).unwrap();
    assert!(a.starts_with("127.77.1."), "{a}");
    assert_eq!(b.runtime_ip("s1", 0).unwrap(), a, "stable while running");
    let a2 = b.runtime_ip("s2", 0).unwrap();
    assert!(a2.starts_with("127.77.1.") && a2 != a, "{a2}");
    assert_eq!(
        b.runtime_ip("s2", 1),
        None,
        "only the first NIC is forwarded"
    );
    QemuBackend::release_ip(&b.inner, "s1");
    assert_eq!(
        b.runtime_ip("s3", 0).unwrap(),
        a,
        "freed addresses are reused"
    );
}

/// The command line of `spec` as one string (pure: no QEMU, no files).
fn command_line(spec: &StartSpec, boot: Option<&Path>) -> Result<String, BackendError> {
    command_line_fds(spec, boot, &[])
}

fn command_line_fds(
    spec: &StartSpec,
    boot: Option<&Path>,
    vlan_fds: &[Option<i32>],
) -> Result<String, BackendError> {
    let cfg = QemuConfig::new("/data");
    args::qemu_args(&args::Launch {
        cfg: &cfg,
        accel: Accel::Tcg,
        host_cpus: 2,
        spec,
        ip: "127.77.0.9",
        dir: Path::new("/x"),
        boot,
        vlan_fds,
    })
    .map(|a| a.join(" "))
}

#[test]
fn qemu_command_line_wires_serials_smbios_and_ssh_forward() {
    let spec = StartSpec {
        uuid: "srv".into(),
        name: "n".into(),
        cpu: 2000,
        mem: 8 << 30,
        smp: 64,
        boot_drive: Some("boot".into()),
        drives: vec![
            crate::backend::StartDrive {
                uuid: "data".into(),
                dev_channel: "0:1".into(),
                device: "virtio".into(),
                boot_order: None,
                media: "disk".into(),
                size: 1,
            },
            crate::backend::StartDrive {
                uuid: "boot".into(),
                dev_channel: "0:0".into(),
                device: "virtio".into(),
                boot_order: Some(1),
                media: "disk".into(),
                size: 1,
            },
        ],
        nics: vec![crate::backend::StartNic {
            mac: "22:00:00:00:00:01".into(),
            model: "virtio".into(),
            ip_v4: None,
            vlan: None,
        }],
        context_socket: "/tmp/ctx/srv.sock".into(),
    };
    let a = command_line(&spec, Some(Path::new("/img"))).unwrap();
    assert!(a.contains("product=CloudSigma"), "{a}");
    assert!(
        a.contains("socket,id=ctx0,path=/tmp/ctx/srv.sock,server=off"),
        "{a}"
    );
    assert!(a.contains("hostfwd=tcp:127.77.0.9:22-:22"), "{a}");
    assert!(
        a.contains("hostfwd=tcp:127.77.0.9:10250-:10250"),
        "kubelet port: {a}"
    );
    assert!(a.contains("-m 2048"), "memory capped: {a}");
    let boot_pos = a.find("boot.qcow2").unwrap();
    assert!(
        boot_pos < a.find("data.qcow2").unwrap(),
        "boot drive must be /dev/vda: {a}"
    );
    assert!(a.contains("-kernel /img/vmlinuz"), "{a}");
    assert!(a.contains("-smp 2"), "smp capped to the host: {a}");
    assert!(a.contains("file=/data/drives/boot.qcow2"), "{a}");
}

#[test]
fn a_drive_without_its_image_file_is_named_before_qemu_starts() {
    let d = tempfile::tempdir().unwrap();
    let Some(b) = backend(d.path()) else { return };
    let mut spec = spec_with_nics(vec![]);
    spec.drives[0].uuid = "data".into();
    let e = b.check_drive_files(&spec).unwrap_err();
    assert!(e.0.contains("data") && e.0.contains("no image file"), "{e}");
    std::fs::write(b.drive_path("data"), b"x").unwrap();
    b.check_drive_files(&spec).unwrap();
}

/// A one-drive server with `nics`.
fn spec_with_nics(nics: Vec<crate::backend::StartNic>) -> StartSpec {
    StartSpec {
        uuid: "srv".into(),
        name: "n".into(),
        cpu: 2000,
        mem: 1 << 30,
        smp: 1,
        boot_drive: Some("boot".into()),
        drives: vec![crate::backend::StartDrive {
            uuid: "boot".into(),
            dev_channel: "0:0".into(),
            device: "virtio".into(),
            boot_order: Some(1),
            media: "disk".into(),
            size: 1,
        }],
        nics,
        context_socket: "/tmp/ctx/srv.sock".into(),
    }
}

fn nic(mac: &str, vlan: Option<&str>) -> crate::backend::StartNic {
    crate::backend::StartNic {
        mac: mac.into(),
        model: "virtio".into(),
        ip_v4: None,
        vlan: vlan.map(str::to_string),
    }
}

/// The netdev option of NIC `i` in a command line.
fn netdev(a: &str, i: usize) -> String {
    a.split("-netdev ")
        .skip(1)
        .map(|x| x.split(' ').next().unwrap_or_default().to_string())
        .find(|x| x.contains(&format!("id=n{i},")) || x.ends_with(&format!("id=n{i}")))
        .unwrap_or_else(|| panic!("no netdev n{i} in {a}"))
}

#[test]
fn nics_are_wired_by_kind_not_position() {
    // [VLAN, public]: the forwards are on the public NIC, the VLAN NIC is a switch port
    let spec = spec_with_nics(vec![
        nic("22:00:00:00:00:0a", Some("vlan-a")),
        nic("22:00:00:00:00:0b", None),
    ]);
    let a = command_line_fds(&spec, None, &[Some(41), None]).unwrap();
    assert_eq!(netdev(&a, 0), "socket,id=n0,fd=41", "{a}");
    let public = netdev(&a, 1);
    assert!(
        public.starts_with("user,id=n1,") && public.contains("hostfwd=tcp:127.77.0.9:22-:22"),
        "{a}"
    );
    assert!(
        a.contains("virtio-net-pci,netdev=n0,mac=22:00:00:00:00:0a"),
        "{a}"
    );
    assert!(
        a.contains("virtio-net-pci,netdev=n1,mac=22:00:00:00:00:0b"),
        "{a}"
    );
    assert_eq!(
        a.matches("hostfwd").count(),
        2,
        "forwards once, 22 and 10250: {a}"
    );
    // a VLAN NIC without its switch port is refused by name, not started unwired
    let e = command_line_fds(&spec, None, &[None, None]).unwrap_err();
    assert!(e.0.contains("NIC 0") && e.0.contains("vlan-a"), "{e}");
    // [public, VLAN, VLAN, public]: the first public NIC is the NAT one, the second is isolated
    let spec = spec_with_nics(vec![
        nic("22:00:00:00:00:01", None),
        nic("22:00:00:00:00:02", Some("vlan-a")),
        nic("22:00:00:00:00:03", Some("vlan-b")),
        nic("22:00:00:00:00:04", None),
    ]);
    let a = command_line_fds(&spec, None, &[None, Some(7), Some(8), None]).unwrap();
    assert!(netdev(&a, 0).contains("hostfwd"), "{a}");
    assert_eq!(netdev(&a, 1), "socket,id=n1,fd=7");
    assert_eq!(netdev(&a, 2), "socket,id=n2,fd=8");
    let iso = netdev(&a, 3);
    assert!(
        iso.contains("restrict=on") && !iso.contains("hostfwd"),
        "{a}"
    );
    assert_eq!(
        args::nic_wiring(&spec),
        vec![
            args::NicWiring::Nat,
            args::NicWiring::Vlan("vlan-a".into()),
            args::NicWiring::Vlan("vlan-b".into()),
            args::NicWiring::Isolated,
        ]
    );
}

#[test]
fn the_nat_address_is_for_the_first_public_nic() {
    let d = tempfile::tempdir().unwrap();
    let Some(b) = backend(d.path()) else { return };
    // `public_nic` counts public NICs only: 0 is the first one wherever it is
    assert!(b.runtime_ip("s", 0).is_some());
    assert_eq!(
        b.runtime_ip("s", 1),
        None,
        "a second public NIC has no NAT address"
    );
}

#[test]
fn qemu_command_line_refuses_a_mac_carrying_device_options() {
    let mut spec = StartSpec {
        uuid: "srv".into(),
        name: "n".into(),
        cpu: 2000,
        mem: 1 << 30,
        smp: 1,
        boot_drive: Some("boot".into()),
        drives: vec![crate::backend::StartDrive {
            uuid: "boot".into(),
            dev_channel: "0:0".into(),
            device: "virtio".into(),
            boot_order: Some(1),
            media: "disk".into(),
            size: 1,
        }],
        // e.g. from a hand-edited state file: the API never stores such a MAC
        nics: vec![crate::backend::StartNic {
            mac: "52:54:00:00:00:01,romfile=/etc/passwd".into(),
            model: "virtio".into(),
            ip_v4: None,
            vlan: None,
        }],
        context_socket: "/tmp/ctx/srv.sock".into(),
    };
    let e = command_line(&spec, None).unwrap_err();
    assert!(e.0.contains("invalid MAC") && e.0.contains("NIC 0"), "{e}");
    spec.nics[0].mac = "52:54:00:AB:00:01".into();
    let a = command_line(&spec, None).unwrap();
    assert!(a.contains("netdev=n0,mac=52:54:00:ab:00:01"), "{a}");
}

/// A real QEMU (TCG, no guest OS: SeaBIOS idles without a boot disk) takes a hot-plugged disk:
/// the backend's QMP `blockdev-add` + `device_add` put a virtio-blk device `vhp1` on the PCI
/// bus. (Unplugging needs a guest that answers the ACPI eject, so `device_del` is covered by the
/// QMP unit tests in `qmp.rs` against a fake QEMU, not here.)
#[tokio::test]
async fn hot_plug_reaches_a_running_qemu() {
    let d = tempfile::tempdir().unwrap();
    let Some(b) = backend(d.path()) else { return };
    b.drive_created("vol", 64 << 20, "disk").await.unwrap();
    let spec = StartSpec {
        uuid: "0f5c7a2e-1b1d-4a8e-9a3e-2d7c4f1b9e01".into(),
        name: "hp".into(),
        cpu: 1000,
        mem: 256 << 20,
        smp: 1,
        boot_drive: None,
        drives: vec![],
        nics: vec![],
        context_socket: d.path().join("ctx.sock"),
    };
    b.server_start(&spec).await.unwrap();
    let vol = StartDrive {
        uuid: "vol".into(),
        dev_channel: "0:1".into(),
        device: "virtio".into(),
        boot_order: None,
        media: "disk".into(),
        size: 64 << 20,
    };
    let res = b
        .server_drives_changed("0f5c7a2e-1b1d-4a8e-9a3e-2d7c4f1b9e01", &[vol], &[])
        .await;
    let sock = b
        .server_dir("0f5c7a2e-1b1d-4a8e-9a3e-2d7c4f1b9e01")
        .join("qmp.sock");
    let pci = qmp::run(&sock, &qmp::command("query-pci"), QMP_TIMEOUT).await;
    b.shutdown().await;
    res.unwrap();
    let pci = pci.unwrap().to_string();
    assert!(pci.contains("\"qdev_id\":\"vhp1\""), "{pci}");
    // a drive without an image file is refused by name, before QEMU is asked
    let ghost = StartDrive {
        uuid: "ghost".into(),
        dev_channel: "0:2".into(),
        device: "virtio".into(),
        boot_order: None,
        media: "disk".into(),
        size: 1,
    };
    let e = QemuBackend::hotplug(&b, "no-such-vm", &[ghost], &[]).await;
    assert!(e.is_ok(), "no VM: nothing to tell");
}

/// A real QEMU (TCG, no guest OS) with `[VLAN, public]` NICs: the VLAN NIC's socket is inherited
/// and speaks the switch's framing. QMP `announce-self` makes QEMU send a RARP broadcast from
/// the NIC's MAC, which another port of the VLAN receives; a port of another VLAN does not. When
/// the VM stops, its port goes.
#[tokio::test]
async fn a_vlan_nic_of_a_real_qemu_is_a_switch_port() {
    use tokio::io::AsyncReadExt;
    let d = tempfile::tempdir().unwrap();
    let Some(b) = backend(d.path()) else { return };
    let uuid = "0f5c7a2e-1b1d-4a8e-9a3e-2d7c4f1b9e02";
    let spec = StartSpec {
        uuid: uuid.into(),
        name: "vlan".into(),
        cpu: 1000,
        mem: 256 << 20,
        smp: 1,
        boot_drive: None,
        drives: vec![],
        nics: vec![
            nic("22:00:00:00:0a:01", Some("vlan-a")),
            nic("22:00:00:00:0a:02", None),
        ],
        context_socket: d.path().join("ctx.sock"),
    };
    let peer = |vlan: &'static str, last: u8| {
        let sw = b.switch.clone();
        async move {
            let fd = sw
                .attach(vlan, [0x52, 0x54, 0, 0, 0, last], "peer")
                .await
                .unwrap();
            let s = std::os::unix::net::UnixStream::from(fd);
            s.set_nonblocking(true).unwrap();
            tokio::net::UnixStream::from_std(s).unwrap()
        }
    };
    let mut same = peer("vlan-a", 1).await;
    let mut other = peer("vlan-b", 2).await;
    b.server_start(&spec).await.unwrap();
    let sock = b.server_dir(uuid).join("qmp.sock");
    let announce = vec![qmp::Step::Execute(serde_json::json!({
        "execute": "announce-self",
        "arguments": {"initial": 50, "max": 550, "rounds": 2, "step": 100}
    }))];
    let res = qmp::run(&sock, &announce, QMP_TIMEOUT).await;
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        let len = same.read_u32().await.unwrap() as usize;
        let mut f = vec![0u8; len];
        same.read_exact(&mut f).await.unwrap();
        f
    })
    .await;
    let heard_elsewhere = tokio::time::timeout(Duration::from_millis(500), other.read_u32()).await;
    let ports_running = b.switch.ports("vlan-a").await.len();
    b.server_stop(uuid).await.unwrap();
    let ports_stopped = b.switch.ports("vlan-a").await;
    b.shutdown().await;
    res.unwrap();
    let f = got.expect("the VM's announcement reaches a port of its VLAN");
    assert_eq!(&f[0..6], &[0xff; 6], "{f:02x?}");
    assert_eq!(&f[6..12], &[0x22, 0, 0, 0, 0x0a, 0x01], "{f:02x?}");
    assert!(heard_elsewhere.is_err(), "another VLAN heard it");
    assert_eq!(ports_running, 2);
    assert_eq!(
        ports_stopped,
        vec![[0x52, 0x54, 0, 0, 0, 1]],
        "the VM's port went"
    );
}
