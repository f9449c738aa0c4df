//! The per-instance stamp `/var/lib/cloudsigma-agent/instance-<uuid>.done` (docs/agent.md,
//! "Success, idempotency"): what makes a reboot skip the bootstrap instead of joining again.
//!
//! It is written **before** the bootstrap commands run (`state=started`), the way cloud-init
//! writes a per-instance module's semaphore before running it (cloudinit/helpers.py
//! `FileSemaphores.lock`), and turned into `state=done` after the marker check. So no crash —
//! before, during or after `kubeadm join`, or between the data's marker and our stamp — can make
//! a reboot run the commands twice. A failure the agent sees removes it (the next boot retries,
//! as before).
//!
//! The stamp also records the machine it was written on (DMI `product_uuid`): on a disk cloned
//! to another server a stamp is only another instance's, and when the context cannot be read it
//! counts only if it was written on this very machine.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::fsutil::{self, atomic_write, under, Owner, WriteMode};
use crate::paths::STATE_DIR;

/// Where the firmware's machine UUID is (root-only readable on a node).
pub const DMI_PRODUCT_UUID: &str = "/sys/class/dmi/id/product_uuid";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The bootstrap commands were started and their end was not recorded.
    Started,
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub instance: String,
    pub state: State,
    pub machine: Option<String>,
    pub time: String,
}

/// Whether `s` has a UUID's shape (8-4-4-4-12 hexadecimal digits, either case): the only thing the
/// context's `uuid` may be before it becomes part of the stamp's file name (a `../` must not
/// move the stamp out of the state directory).
pub fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

pub fn path(root: &Path, uuid: &str) -> PathBuf {
    under(root, STATE_DIR).join(format!("instance-{uuid}.done"))
}

/// The firmware's machine UUID, None when unreadable or one of the placeholder values firmware
/// ships when nobody set it (then no stamp can be tied to this machine).
pub fn machine_id(root: &Path) -> Option<String> {
    let text = fs::read_to_string(under(root, DMI_PRODUCT_UUID)).ok()?;
    let id = text.trim().to_ascii_lowercase();
    let placeholder = id.is_empty()
        || id.chars().all(|c| c == '0' || c == '-')
        || id.chars().all(|c| c == 'f' || c == '-')
        || id == "03000200-0400-0500-0006-000700080009";
    (!placeholder).then_some(id)
}

/// Parse a stamp's body. A body without `state=` is an earlier version's (one timestamp line,
/// written only after success): done, on an unknown machine.
pub fn parse(file_uuid: &str, body: &str) -> Stamp {
    let field = |k: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .map(|v| v.trim().to_string())
    };
    Stamp {
        instance: field("instance").unwrap_or_else(|| file_uuid.to_string()),
        state: match field("state").as_deref() {
            Some("started") => State::Started,
            _ => State::Done,
        },
        machine: field("machine").filter(|m| m != "-"),
        time: field("time").unwrap_or_else(|| body.lines().next().unwrap_or("").trim().into()),
    }
}

/// This instance's stamp. A stamp naming another instance inside (a file copied or renamed by
/// hand) does not count.
pub fn read(root: &Path, uuid: &str) -> Option<Stamp> {
    let body = fs::read_to_string(path(root, uuid)).ok()?;
    Some(parse(uuid, &body)).filter(|s| s.instance == uuid)
}

pub fn write(root: &Path, uuid: &str, state: State) -> io::Result<PathBuf> {
    let p = path(root, uuid);
    let body = format!(
        "instance={uuid}\nstate={}\nmachine={}\ntime={}\n",
        match state {
            State::Started => "started",
            State::Done => "done",
        },
        machine_id(root).as_deref().unwrap_or("-"),
        fsutil::now_rfc3339()
    );
    atomic_write(
        &p,
        body.as_bytes(),
        0o644,
        Owner::default(),
        WriteMode::Replace,
    )?;
    // The stamp, and every file written before it, durable before the commands start.
    fsutil::sync_pending()?;
    Ok(p)
}

pub fn remove(root: &Path, uuid: &str) {
    let _ = fs::remove_file(path(root, uuid));
}

/// When the context cannot be read: the instance whose finished stamp was written on this
/// machine, if any. Another machine's stamp (a cloned disk), a stamp of unknown machine, or
/// an unfinished one does not count.
pub fn done_on_this_machine(root: &Path) -> Option<String> {
    let here = machine_id(root)?;
    let dir = fs::read_dir(under(root, STATE_DIR)).ok()?;
    dir.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        let uuid = name
            .strip_prefix("instance-")?
            .strip_suffix(".done")?
            .to_string();
        let s = read(root, &uuid)?;
        (s.state == State::Done && s.machine.as_deref() == Some(here.as_str())).then_some(uuid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_uuid_names_a_stamp() {
        for ok in [
            "1b5ea8f2-3a1c-4b7e-9f10-aabbccddeeff",
            "1B5EA8F2-3A1C-4B7E-9F10-AABBCCDDEEFF",
        ] {
            assert!(is_uuid(ok), "{ok}");
        }
        for bad in [
            "",
            "../../etc",
            "1b5ea8f2-3a1c-4b7e-9f10-aabbccddeef",
            "1b5ea8f2-3a1c-4b7e-9f10-aabbccddeeff0",
            "1b5ea8f2-3a1c-4b7e-9f10-aabbccddee/f",
            "1b5ea8f2-3a1c-4b7e-9f10-aabbccddeeg0",
            "1b5ea8f23a1c-4b7e-9f10-aabbccddeeff-",
            "1b5ea8f2-3a1c-4b7e-9f10-aabbccddeeff\n",
        ] {
            assert!(!is_uuid(bad), "{bad:?}");
        }
    }

    fn set_machine(root: &Path, id: &str) {
        let p = under(root, DMI_PRODUCT_UUID);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, format!("{id}\n")).unwrap();
    }

    #[test]
    fn stamps_record_instance_state_and_machine() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        set_machine(root, "5A3C0E9B-1111-2222-3333-444455556666");
        write(root, "u1", State::Started).unwrap();
        let s = read(root, "u1").unwrap();
        assert_eq!(s.state, State::Started);
        assert_eq!(
            s.machine.as_deref(),
            Some("5a3c0e9b-1111-2222-3333-444455556666")
        );
        assert_eq!(done_on_this_machine(root), None, "started is not done");
        write(root, "u1", State::Done).unwrap();
        assert_eq!(read(root, "u1").unwrap().state, State::Done);
        assert_eq!(done_on_this_machine(root).as_deref(), Some("u1"));
        remove(root, "u1");
        assert!(read(root, "u1").is_none());
    }

    #[test]
    fn a_cloned_disks_stamp_does_not_count() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        // Written on the original server...
        set_machine(root, "11111111-aaaa-bbbb-cccc-000000000001");
        write(root, "original", State::Done).unwrap();
        // ...and found on the clone's first boot, on another machine.
        set_machine(root, "22222222-aaaa-bbbb-cccc-000000000002");
        assert_eq!(done_on_this_machine(root), None);
        // The clone's own instance id never matches the original's stamp.
        assert!(read(root, "clone").is_none());
        // A firmware without a real UUID ties no stamp to itself.
        set_machine(root, "00000000-0000-0000-0000-000000000000");
        assert_eq!(machine_id(root), None);
        assert_eq!(done_on_this_machine(root), None);
        // A renamed stamp (the file says another instance) does not count either.
        fs::copy(path(root, "original"), path(root, "renamed")).unwrap();
        assert!(read(root, "renamed").is_none());
    }

    #[test]
    fn an_earlier_versions_stamp_is_done_on_an_unknown_machine() {
        let s = parse("u1", "2026-11-23T07:34:19Z\n");
        assert_eq!(s.state, State::Done);
        assert_eq!(s.instance, "u1");
        assert_eq!(s.machine, None);
        assert_eq!(s.time, "2026-11-23T07:34:19Z");
    }
}
