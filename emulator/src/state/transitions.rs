//! The deadline queue: every action schedules the end of its transition; `settle` applies the
//! due ones. A per-object generation makes a stale timer (e.g. `stop` during `starting`) a no-op.

use cloudsigma_api::{DriveStatus, ServerStatus};
use std::time::{Duration, Instant};

use super::{State, Transition};

impl State {
    pub(super) fn schedule(&mut self, after: Duration, t: Transition) {
        self.seq += 1;
        self.pending.insert((Instant::now() + after, self.seq), t);
    }

    pub(super) fn bump_gen(&mut self, uuid: &str) -> u64 {
        let g = self.gens.entry(uuid.to_string()).or_insert(0);
        *g += 1;
        *g
    }

    pub(super) fn gen(&self, uuid: &str) -> u64 {
        self.gens.get(uuid).copied().unwrap_or(0)
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.keys().next().map(|k| k.0)
    }

    /// Apply every transition whose time has come. Returns whether anything changed.
    pub fn settle(&mut self, now: Instant) -> bool {
        let mut changed = false;
        while let Some(entry) = self.pending.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let t = entry.remove();
            changed |= self.apply(t);
        }
        if changed {
            self.touch();
        }
        changed
    }

    fn apply(&mut self, t: Transition) -> bool {
        match t {
            Transition::Drive { uuid, gen, to } => {
                if self.gen(&uuid) != gen {
                    return false;
                }
                match self.drives.get_mut(&uuid) {
                    Some(d) => {
                        d.status = to;
                        true
                    }
                    None => false,
                }
            }
            Transition::CloneSrcDone { uuid, to } => {
                let n = self.clone_refs.entry(uuid.clone()).or_insert(1);
                *n = n.saturating_sub(1);
                if *n > 0 {
                    return false;
                }
                self.clone_refs.remove(&uuid);
                match self.drives.get_mut(&uuid) {
                    Some(d) if d.status == DriveStatus::CloningSrc => {
                        d.status = to;
                        true
                    }
                    _ => false,
                }
            }
            Transition::Server { uuid, gen, to } => {
                if self.gen(&uuid) != gen || !self.servers.contains_key(&uuid) {
                    return false;
                }
                if to == ServerStatus::Stopped {
                    self.set_stopped(&uuid);
                } else if let Some(s) = self.servers.get_mut(&uuid) {
                    s.status = to;
                }
                true
            }
        }
    }

    /// Resolve every transitional status at once (used when loading a state file: the timers
    /// did not survive the restart).
    pub fn settle_all_now(&mut self) {
        for d in self.drives.values_mut() {
            if matches!(
                d.status,
                DriveStatus::Creating
                    | DriveStatus::CloningDst
                    | DriveStatus::CloningSrc
                    | DriveStatus::Resizing
                    | DriveStatus::Mounted
            ) {
                d.status = DriveStatus::Unmounted;
            }
        }
        let ids: Vec<String> = self.servers.keys().cloned().collect();
        for id in ids {
            let st = self.servers[&id].status;
            match st {
                ServerStatus::Starting => self.servers[&id].status = ServerStatus::Running,
                ServerStatus::Stopping => self.set_stopped(&id),
                _ => {}
            }
        }
    }
}
