//! cloudsigma-agent: turns a booting CloudSigma VM into a Kubernetes node (docs/agent.md).

use clap::Parser;
use cloudsigma_agent::cli::{self, Cli, Command};
use cloudsigma_agent::{fsutil, run, show};

fn main() {
    run::mark_main();
    run::prefetch_self();
    // clap exits with 2 on a usage error, 0 for --help/--version: the documented codes.
    let cli = Cli::parse();
    let code = match cli.command {
        None => bootstrap(cli.bootstrap),
        Some(Command::Bootstrap(args)) => bootstrap(args),
        Some(Command::Status(args)) => match cli::absolute(args.root) {
            Ok(root) => {
                let path = args
                    .status_file
                    .unwrap_or_else(|| fsutil::under(&root, run::STATUS_FILE));
                show::run(&path, args.output)
            }
            Err(e) => usage_error(e),
        },
    };
    std::process::exit(code);
}

fn bootstrap(args: cli::BootstrapArgs) -> i32 {
    match args.into_opts() {
        Ok(opts) => run::run(&opts),
        Err(e) => usage_error(e),
    }
}

/// Only the working directory (for a relative --root) can fail here.
fn usage_error(e: std::io::Error) -> i32 {
    eprintln!("cloudsigma-agent: cannot resolve --root: {e}");
    run::EXIT_USAGE
}
