//! The command line (docs/agent.md): `bootstrap` (the default, what the systemd unit runs) and
//! `status` (the last run, from the status file).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::run;

/// Reads the CloudSigma server context (default: serial port /dev/ttyS1), renders and executes
/// the Cluster API bootstrap data in meta.cloudinit-user-data, and reports to
/// /run/cloudsigma/bootstrap.json and /var/log/cloudsigma-bootstrap.log. See docs/agent.md.
#[derive(Debug, Parser)]
#[command(
    name = "cloudsigma-agent",
    version = env!("CLOUDSIGMA_BUILD_VERSION"),
    // The flags without a subcommand are bootstrap's: the systemd unit runs
    // `cloudsigma-agent --serial /dev/ttyS1`.
    args_conflicts_with_subcommands = true,
    // A repeated flag: the last one wins, as it always did.
    args_override_self = true,
    after_help = "Exit status: 0 success or skipped, 1 a bootstrap step failed, 2 usage error."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub bootstrap: BootstrapArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Bootstrap the node (the default when no subcommand is given).
    Bootstrap(BootstrapArgs),
    /// Show the last run from the status file.
    #[command(
        after_help = "Exit status: 0 the last run succeeded or was skipped, 1 it failed, is still running or left no readable status file, 2 usage error."
    )]
    Status(StatusArgs),
}

#[derive(Debug, Clone, Args)]
pub struct BootstrapArgs {
    /// Read the context from a JSON file instead of the serial port (debugging).
    #[arg(long, value_name = "FILE")]
    pub context_file: Option<PathBuf>,
    /// Serial device of the server context (a unix socket path also works).
    #[arg(long, value_name = "DEV", default_value = cloudsigma_api::context::DEFAULT_PATH)]
    pub serial: PathBuf,
    /// Place every path the agent touches under DIR (tests).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Run again although this instance was already bootstrapped.
    #[arg(long)]
    pub force: bool,
    /// With a --root other than /: also run bootcmd/runcmd and the node tools (sfdisk, mkfs,
    /// mount, systemctl, apt-get) from PATH. Without it only files under --root are written.
    #[arg(long)]
    pub execute: bool,
    /// How long to keep asking the serial port.
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = seconds)]
    pub timeout: Duration,
    /// Status JSON [default: /run/cloudsigma/bootstrap.json under --root].
    #[arg(long, value_name = "FILE")]
    pub status_file: Option<PathBuf>,
    /// Log file [default: /var/log/cloudsigma-bootstrap.log under --root].
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Interfaces as JSON instead of getifaddrs (tests).
    #[arg(long, value_name = "FILE")]
    pub net_fixture: Option<PathBuf>,
    /// How long the node_ip step waits for an IPv4 address on the context's VLAN NIC (from DHCP,
    /// or assigned in the server meta k8s-ipv4-<mac>) before the join goes on without --node-ip
    /// (0: look once).
    #[arg(long, value_name = "SECONDS", env = "CLOUDSIGMA_AGENT_VLAN_ADDRESS_TIMEOUT",
          default_value = crate::steps::node_ip::DEFAULT_TIMEOUT_SECS, value_parser = seconds_or_zero)]
    pub vlan_address_timeout: Duration,
    /// Do not copy the log to stdout.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The root the bootstrap ran under.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Status JSON [default: /run/cloudsigma/bootstrap.json under --root].
    #[arg(long, value_name = "FILE")]
    pub status_file: Option<PathBuf>,
    /// How to print the status.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human readable.
    Text,
    /// The status file as written (schema 1, docs/agent.md).
    Json,
}

fn seconds(v: &str) -> Result<Duration, String> {
    let s: f64 = v
        .parse()
        .map_err(|_| format!("{v:?} is not a number of seconds"))?;
    if !(s.is_finite() && s > 0.0) {
        return Err(format!("{v:?} must be > 0"));
    }
    Ok(Duration::from_secs_f64(s))
}

/// As [`seconds`], and 0 allowed.
fn seconds_or_zero(v: &str) -> Result<Duration, String> {
    match v.parse::<f64>() {
        Ok(s) if (0.0..=86_400.0).contains(&s) => Ok(Duration::from_secs_f64(s)),
        Ok(_) => Err(format!("{v:?} must be between 0 and 86400")),
        Err(_) => Err(format!("{v:?} is not a number of seconds")),
    }
}

/// A relative --root is taken from the working directory, as every path under it is.
pub fn absolute(root: PathBuf) -> std::io::Result<PathBuf> {
    if root.is_absolute() {
        Ok(root)
    } else {
        Ok(std::env::current_dir()?.join(root))
    }
}

impl BootstrapArgs {
    pub fn into_opts(self) -> std::io::Result<run::Opts> {
        Ok(run::Opts {
            context_file: self.context_file,
            serial: self.serial,
            root: absolute(self.root)?,
            force: self.force,
            execute: self.execute,
            timeout: self.timeout,
            status_file: self.status_file,
            log_file: self.log_file,
            net_fixture: self.net_fixture,
            vlan_address_timeout: self.vlan_address_timeout,
            quiet: self.quiet,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("cloudsigma-agent").chain(args.iter().copied()))
    }

    #[test]
    fn no_subcommand_is_bootstrap_with_every_flag() {
        let c = parse(&[
            "--context-file",
            "ctx.json",
            "--root=/tmp/r",
            "--force",
            "--timeout",
            "2.5",
            "--status-file",
            "/s.json",
            "--log-file=/l.log",
            "--net-fixture",
            "net.json",
            "--quiet",
        ])
        .unwrap();
        assert!(c.command.is_none());
        let b = c.bootstrap;
        assert_eq!(b.context_file, Some("ctx.json".into()));
        assert_eq!(b.serial, PathBuf::from("/dev/ttyS1"));
        assert_eq!(b.root, PathBuf::from("/tmp/r"));
        assert!(b.force && b.quiet);
        assert_eq!(b.timeout, Duration::from_millis(2500));
        assert_eq!(b.status_file, Some("/s.json".into()));
        assert_eq!(b.log_file, Some("/l.log".into()));
        assert_eq!(b.net_fixture, Some("net.json".into()));
        // What the systemd unit runs.
        let c = parse(&["--serial", "/dev/ttyS1"]).unwrap();
        assert!(c.command.is_none());
        assert_eq!(c.bootstrap.timeout, Duration::from_secs(60));
        assert_eq!(c.bootstrap.root, PathBuf::from("/"));
        assert_eq!(c.bootstrap.vlan_address_timeout, Duration::from_secs(60));
        let c = parse(&["--vlan-address-timeout", "0"]).unwrap();
        assert_eq!(c.bootstrap.vlan_address_timeout, Duration::ZERO);
        let c = parse(&["--root", "/a", "--root", "/b"]).unwrap();
        assert_eq!(c.bootstrap.root, PathBuf::from("/b"), "the last one wins");
    }

    #[test]
    fn subcommands_and_usage_errors() {
        let c = parse(&["bootstrap", "--root", "/r", "--force"]).unwrap();
        assert!(
            matches!(c.command, Some(Command::Bootstrap(b)) if b.force && b.root == Path::new("/r"))
        );
        let c = parse(&["status", "--output", "json", "--root", "/r"]).unwrap();
        assert!(
            matches!(c.command, Some(Command::Status(s)) if s.output == Output::Json && s.root == Path::new("/r"))
        );
        for bad in [
            &["--bogus"][..],
            &["--timeout", "0"],
            &["--timeout", "soon"],
            &["--vlan-address-timeout", "-1"],
            &["--vlan-address-timeout", "inf"],
            &["--timeout"],
            &["--root", "/r", "status"],
            &["status", "--output", "yaml"],
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }
}
