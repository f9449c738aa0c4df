//! The node paths the agent owns (docs/agent.md), all placed under `--root`.

pub const MARKER: &str = "/run/cluster-api/bootstrap-success.complete";
pub const STATE_DIR: &str = "/var/lib/cloudsigma-agent";
pub const STATUS_FILE: &str = "/run/cloudsigma/bootstrap.json";
pub const LOG_FILE: &str = "/var/log/cloudsigma-bootstrap.log";
/// Output of bootcmd/runcmd/scripts. Kept apart from the log (0600) because `kubeadm init` prints
/// the join command with its token: it must not reach the journal or the agent's log.
pub const OUTPUT_FILE: &str = "/var/log/cloudsigma-bootstrap-output.log";
