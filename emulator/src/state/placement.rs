//! Physical hosts: which compute host a running server is on, which storage host holds a drive,
//! the `availability_groups` listings and the `avoid` hint.
//!
//! [V docs availability_groups.rst]: `GET /servers/availability_groups/` answers an array of
//! arrays of server uuids sharing a host (non-running servers are on no host);
//! `GET /servers/availability_groups/{uuid}/` the uuids on the queried server's host including
//! itself (empty when it is not running); the same for drives on storage hosts. `avoid` (start;
//! drive create and clone) is best effort and ordered: it never fails, and when not all of it can
//! be honoured the left part of the list wins. A server uuid in a drive `avoid` means its drives.
//!
//! [D] The emulator has [`COMPUTE_HOSTS`] compute and [`STORAGE_HOSTS`] storage hosts. Without
//! `avoid` everything goes to host 0 (the real cloud packs "to maximize performance"; one host
//! makes the effect of `avoid` visible). The listings show hosts holding two or more resources
//! (they answer "which resources share a host"). Placements are saved in the state file
//! (`snapshot.rs`, `placements`), so a reload keeps which resources share a host.

use cloudsigma_api::ServerStatus;
use std::collections::BTreeMap;

use super::State;
use crate::error::ApiError;

pub const COMPUTE_HOSTS: usize = 4;
pub const STORAGE_HOSTS: usize = 4;

/// The lowest host not used by the longest possible prefix of `avoided` (host lists in
/// priority order), so the left part of an `avoid` list wins when not all of it can.
fn pick_host(avoided: &[Vec<usize>], hosts: usize) -> usize {
    for keep in (0..=avoided.len()).rev() {
        let taken: Vec<usize> = avoided[..keep].iter().flatten().copied().collect();
        if let Some(h) = (0..hosts).find(|h| !taken.contains(h)) {
            return h;
        }
    }
    0
}

/// Group `uuid → host` by host, in order of first appearance; groups of two or more.
fn groups<'a>(placed: impl Iterator<Item = (&'a String, usize)>) -> Vec<Vec<String>> {
    let mut by_host: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (u, h) in placed {
        by_host.entry(h).or_default().push(u.clone());
    }
    by_host.into_values().filter(|g| g.len() > 1).collect()
}

impl State {
    fn server_host_of(&self, uuid: &str) -> Option<usize> {
        let s = self.servers.get(uuid)?;
        if s.status == ServerStatus::Stopped {
            return None;
        }
        Some(self.server_host.get(uuid).copied().unwrap_or(0))
    }

    fn drive_host_of(&self, uuid: &str) -> Option<usize> {
        self.drives
            .contains_key(uuid)
            .then(|| self.drive_host.get(uuid).copied().unwrap_or(0))
    }

    /// Put a starting server on a compute host, honouring `avoid` (server uuids) best effort.
    pub(super) fn place_server(&mut self, uuid: &str, avoid: &[String]) {
        let avoided: Vec<Vec<usize>> = avoid
            .iter()
            .filter(|a| a.as_str() != uuid)
            .map(|a| self.server_host_of(a).into_iter().collect())
            .collect();
        let h = pick_host(&avoided, COMPUTE_HOSTS);
        self.server_host.insert(uuid.to_string(), h);
    }

    /// Placements read from a state file. Entries for objects the file does not hold are
    /// dropped; a host index beyond the emulator's hosts (a hand-edited file) is refused with a
    /// warning naming it, and that resource stays on host 0.
    pub(super) fn load_placements(&mut self, p: super::snapshot::Placements) {
        fn keep(
            what: &str,
            hosts: usize,
            known: impl Fn(&str) -> bool,
            from: std::collections::BTreeMap<String, usize>,
        ) -> std::collections::HashMap<String, usize> {
            from.into_iter()
                .filter(|(u, h)| {
                    if *h >= hosts {
                        tracing::warn!(
                            uuid = %u,
                            host = h,
                            "state file places a {what} on host {h}, but there are only {hosts} \
                             {what} hosts (0..{hosts}); it is put on host 0"
                        );
                    }
                    *h < hosts && known(u)
                })
                .collect()
        }
        self.server_host = keep(
            "server",
            COMPUTE_HOSTS,
            |u| self.servers.contains_key(u),
            p.servers,
        );
        self.drive_host = keep(
            "drive",
            STORAGE_HOSTS,
            |u| self.drives.contains_key(u),
            p.drives,
        );
    }

    pub(super) fn unplace_server(&mut self, uuid: &str) {
        self.server_host.remove(uuid);
    }

    /// Put a new drive on a storage host, honouring `avoid` (drive or server uuids) best effort.
    pub(super) fn place_drive(&mut self, uuid: &str, avoid: &[String]) {
        let avoided: Vec<Vec<usize>> = avoid
            .iter()
            .map(|a| match self.servers.get(a) {
                Some(s) => s
                    .drives
                    .iter()
                    .filter_map(|d| self.drive_host_of(d.drive.uuid()))
                    .collect(),
                None => self.drive_host_of(a).into_iter().collect(),
            })
            .collect();
        let h = pick_host(&avoided, STORAGE_HOSTS);
        self.drive_host.insert(uuid.to_string(), h);
    }

    /// `GET /servers/availability_groups/`
    pub fn server_groups(&self) -> Vec<Vec<String>> {
        groups(
            self.servers
                .keys()
                .filter_map(|u| self.server_host_of(u).map(|h| (u, h))),
        )
    }

    /// `GET /drives/availability_groups/`
    pub fn drive_groups(&self) -> Vec<Vec<String>> {
        groups(
            self.drives
                .keys()
                .filter_map(|u| self.drive_host_of(u).map(|h| (u, h))),
        )
    }

    /// `GET /servers/availability_groups/{uuid}/`: empty when the server is not running.
    pub fn server_group(&self, uuid: &str) -> Result<Vec<String>, ApiError> {
        self.get_server(uuid)?;
        let Some(h) = self.server_host_of(uuid) else {
            return Ok(Vec::new());
        };
        Ok(self
            .servers
            .keys()
            .filter(|u| self.server_host_of(u) == Some(h))
            .cloned()
            .collect())
    }

    /// `GET /drives/availability_groups/{uuid}/`
    pub fn drive_group(&self, uuid: &str) -> Result<Vec<String>, ApiError> {
        let h = self
            .drive_host_of(uuid)
            .ok_or_else(|| ApiError::notexist("drive", uuid))?;
        Ok(self
            .drives
            .keys()
            .filter(|u| self.drive_host_of(u) == Some(h))
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::pick_host;

    #[test]
    fn avoid_is_best_effort_and_left_part_wins() {
        assert_eq!(pick_host(&[], 4), 0);
        assert_eq!(pick_host(&[vec![0]], 4), 1);
        assert_eq!(pick_host(&[vec![0], vec![1], vec![2]], 4), 3);
        // four hosts all avoided: the last entry of the list is given up first
        assert_eq!(pick_host(&[vec![0], vec![1], vec![2], vec![3]], 4), 3);
        assert_eq!(pick_host(&[vec![1], vec![0, 2, 3]], 4), 0);
        // an avoided resource on no host (e.g. a stopped server) costs nothing
        assert_eq!(pick_host(&[vec![]], 4), 0);
    }
}
