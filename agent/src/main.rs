//! cloudsigma-agent: turns a booting CloudSigma VM into a Kubernetes node (docs/agent.md).

use cloudsigma_agent::run;

use std::path::PathBuf;
use std::time::Duration;

const USAGE: &str =
    "usage: cloudsigma-agent [--context-file FILE | --serial DEV] [--root DIR] [--force]
                        [--timeout SECONDS] [--status-file FILE] [--log-file FILE] [--quiet]

Reads the CloudSigma server context (default: serial port /dev/ttyS1), renders and executes the
Cluster API bootstrap data in meta.cloudinit-user-data, and reports to
/run/cloudsigma/bootstrap.json and /var/log/cloudsigma-bootstrap.log. See docs/agent.md.

  --context-file FILE  read the context from a JSON file instead of the serial port (debugging)
  --serial DEV         serial device of the server context (default /dev/ttyS1)
  --root DIR           place every path the agent touches under DIR (tests; default /)
  --force              run again although this instance was already bootstrapped
  --timeout SECONDS    how long to keep asking the serial port (default 60)
  --status-file FILE   status JSON (default <root>/run/cloudsigma/bootstrap.json)
  --log-file FILE      log file (default <root>/var/log/cloudsigma-bootstrap.log)
  --net-fixture FILE   interfaces as JSON instead of getifaddrs (tests)
  --quiet              do not copy the log to stdout
Exit status: 0 success or skipped, 1 a bootstrap step failed, 2 usage error.";

fn parse_args(args: &[String]) -> Result<run::Opts, String> {
    let mut o = run::Opts {
        context_file: None,
        serial: PathBuf::from(cloudsigma_api::context::DEFAULT_PATH),
        root: PathBuf::from("/"),
        force: false,
        timeout: Duration::from_secs(60),
        status_file: None,
        log_file: None,
        net_fixture: None,
        quiet: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag {
            "--context-file" => o.context_file = Some(value(flag)?.into()),
            "--serial" => o.serial = value(flag)?.into(),
            "--root" => o.root = value(flag)?.into(),
            "--status-file" => o.status_file = Some(value(flag)?.into()),
            "--log-file" => o.log_file = Some(value(flag)?.into()),
            "--net-fixture" => o.net_fixture = Some(value(flag)?.into()),
            "--timeout" => {
                let v = value(flag)?;
                let s: f64 = v
                    .parse()
                    .map_err(|_| format!("--timeout {v:?} is not a number of seconds"))?;
                if !(s.is_finite() && s > 0.0) {
                    return Err(format!("--timeout {v:?} must be > 0"));
                }
                o.timeout = Duration::from_secs_f64(s);
            }
            "--force" => o.force = true,
            "--quiet" => o.quiet = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !o.root.is_absolute() {
        o.root = std::env::current_dir()
            .map_err(|e| e.to_string())?
            .join(&o.root);
    }
    Ok(o)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return;
    }
    if args.iter().any(|a| a == "--version" || a == "-V") {
        println!("cloudsigma-agent {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    let opts = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("cloudsigma-agent: {e}\n\n{USAGE}");
            std::process::exit(run::EXIT_USAGE);
        }
    };
    std::process::exit(run::run(&opts));
}
