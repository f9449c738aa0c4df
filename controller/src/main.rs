//! `cloudsigma-controller`: see docs/controller.md.

use std::sync::Arc;

use clap::Parser;
use cloudsigma_controller::{run, Metrics, Options};
use tokio::sync::watch;

// One thread: the controller waits on the network almost all the time, and a second worker
// thread only added wake-ups and cross-thread hand-offs. In the 1,000-Node bench the controller
// used 0.47–0.61 s of CPU against 0.55–0.75 s with the multi-threaded runtime, and on a node
// that shares its cores with the apiserver every one of those is taken from the apiserver.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let opts = Options::parse();
    if let Err(e) = opts.refuse_secret_flags() {
        // Before logging is set up, like clap's own usage errors (exit 2).
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    init_logging(&opts.log_format);
    if let Err(e) = real_main(opts).await {
        tracing::error!(error = %format!("{e:#}"), "cloudsigma-controller stopped");
        std::process::exit(1);
    }
}

async fn real_main(opts: Options) -> anyhow::Result<()> {
    let cs = opts.cloudsigma_client()?;
    let kube_cfg = match &opts.kubeconfig {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .map_err(|e| anyhow::anyhow!("reading kubeconfig {}: {e}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    let kube =
        cloudsigma_controller::apiserver::Connections::with_liveness(kube_cfg, opts.liveness())?;
    tracing::info!(
        api = %cs.base_url(), region = %opts.region_label(), sync_period = ?opts.sync_period,
        leader_elect = opts.leader_elect, "starting"
    );
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
        tracing::info!("signal received; shutting down");
        let _ = tx.send(true);
    });
    run(opts, kube, cs, Arc::new(Metrics::new()), rx).await
}

fn init_logging(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}
