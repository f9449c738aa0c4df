//! The phases of a build: the one list of them. The pipeline (build.rs) enters each in this
//! order, progress output and errors name them, `--dry-run` (plan.rs) describes each and the
//! manifest records how long each took.
//!
//! Four phases are entered only by some builds: `provision-base` and `base-capture` by a build
//! that makes the recipe's base layer, `base-lookup` by one whose recipe has a base layer and
//! `verify` under `--verify`. A build from a cached base skips the base steps (`provision`
//! runs the rest).

use serde::Serialize;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    ResolveBase,
    CacheLookup,
    EnsureTags,
    BaseLookup,
    Clone,
    Resize,
    CreateServer,
    Start,
    WaitSsh,
    ProvisionBase,
    BaseCapture,
    Provision,
    CleanGuest,
    Shutdown,
    DeleteServer,
    Verify,
    Finalize,
}

impl Phase {
    /// Every phase, in the order a build runs them.
    pub const ALL: [Phase; 17] = [
        Phase::ResolveBase,
        Phase::CacheLookup,
        Phase::EnsureTags,
        Phase::BaseLookup,
        Phase::Clone,
        Phase::Resize,
        Phase::CreateServer,
        Phase::Start,
        Phase::WaitSsh,
        Phase::ProvisionBase,
        Phase::BaseCapture,
        Phase::Provision,
        Phase::CleanGuest,
        Phase::Shutdown,
        Phase::DeleteServer,
        Phase::Verify,
        Phase::Finalize,
    ];

    /// The name in messages, `--dry-run`, the manifest and docs/imgbuild.md.
    pub fn name(self) -> &'static str {
        match self {
            Phase::ResolveBase => "resolve-base",
            Phase::CacheLookup => "cache-lookup",
            Phase::BaseLookup => "base-lookup",
            Phase::EnsureTags => "ensure-tags",
            Phase::Clone => "clone",
            Phase::Resize => "resize",
            Phase::CreateServer => "create-server",
            Phase::Start => "start",
            Phase::WaitSsh => "wait-ssh",
            Phase::ProvisionBase => "provision-base",
            Phase::BaseCapture => "base-capture",
            Phase::Provision => "provision",
            Phase::CleanGuest => "clean-guest",
            Phase::Shutdown => "shutdown",
            Phase::DeleteServer => "delete-server",
            Phase::Verify => "verify",
            Phase::Finalize => "finalize",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_serialize_as_displayed() {
        let names: std::collections::BTreeSet<_> = Phase::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(names.len(), Phase::ALL.len());
        for p in Phase::ALL {
            assert_eq!(serde_json::to_value(p).unwrap(), p.name());
        }
    }
}
