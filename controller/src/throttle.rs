//! Standing-condition Warnings, throttled: the reconcile's Node Warnings and the VLAN allocator's
//! pool problems both repeat at most once per [`WARNING_REPEAT`] (its own module so that neither
//! of those two imports the other).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often a standing condition's Warning is repeated while it lasts. Events expire after an
/// hour (kube-apiserver `--event-ttl`), so this keeps one in `kubectl describe node`, at two
/// writes an hour per affected Node instead of one per sync period.
pub const WARNING_REPEAT: Duration = Duration::from_secs(30 * 60);

/// At most one Warning per Node and reason per interval, for conditions that the periodic re-sync
/// finds again and again (the failures of tainted Nodes are reported per failed reconcile, which
/// backs off; a healthy-looking initialized Node is seen every sync period). The recorder only
/// folds repeats into one Event's count: each repeat is still an apiserver write.
pub struct WarningThrottle {
    interval: Duration,
    last: std::sync::Mutex<HashMap<String, Instant>>,
}

impl WarningThrottle {
    pub fn new(interval: Duration) -> WarningThrottle {
        WarningThrottle {
            interval,
            last: Default::default(),
        }
    }

    /// Whether the Warning `key` is due at `now`; a due one counts as emitted.
    pub fn due(&self, key: &str, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last
            .get(key)
            .is_some_and(|t| now.saturating_duration_since(*t) < self.interval)
        {
            return false;
        }
        // Entries leave when their condition ends; a Node deleted while it lasts leaves one.
        // Forgetting all only repeats some Warnings early: bound it crudely.
        if last.len() >= 16384 {
            last.clear();
        }
        last.insert(key.to_string(), now);
        true
    }

    /// The condition ended: its next occurrence is reported at once.
    pub fn clear(&self, key: &str) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if !last.is_empty() {
            last.remove(key);
        }
    }
}

impl Default for WarningThrottle {
    fn default() -> WarningThrottle {
        WarningThrottle::new(WARNING_REPEAT)
    }
}
