//! The in-process emulator and the shipped ubuntu-k8s recipe with a fake agent and unit, shared
//! by the build tests.
#![allow(dead_code)] // each includer uses part of it

use cloudsim::{Emulator, EmulatorConfig, EmulatorHandle};
use imgbuild::build::{self, BuildError, Builder, Options};
use imgbuild::cloud::{Auth, Cloud, Config};
use imgbuild::progress::{Mode, Reporter};
use imgbuild::recipe::Recipe;
use imgbuild::transport::LocalTransport;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub struct Fixture {
    pub emu: EmulatorHandle,
    pub dir: tempfile::TempDir,
    pub agent: PathBuf,
    pub unit: PathBuf,
}

pub fn cloud_for(emu: &EmulatorHandle) -> Cloud {
    let auth = Auth::Basic {
        username: emu.username().into(),
        password: emu.password().into(),
    };
    Cloud::new(
        Config::for_url(&emu.api_url(), auth)
            .unwrap()
            .with_timeout(Duration::from_secs(10)),
    )
    .unwrap()
}

pub fn recipe_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../image-recipes/ubuntu-k8s/recipe.yaml")
}

pub async fn fixture() -> Fixture {
    let emu = Emulator::start(EmulatorConfig::for_tests())
        .await
        .expect("emulator starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = dir.path().join("cloudsigma-agent");
    std::fs::write(&agent, b"#!/bin/sh\necho fake agent\n").unwrap();
    let unit = dir.path().join("cloudsigma-bootstrap.service");
    std::fs::write(&unit, b"[Unit]\nDescription=test\n").unwrap();
    Fixture {
        emu,
        dir,
        agent,
        unit,
    }
}

impl Fixture {
    pub fn vars(&self, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("agent_binary".into(), self.agent.display().to_string());
        m.insert("bootstrap_unit".into(), self.unit.display().to_string());
        for (k, v) in extra {
            m.insert(k.to_string(), v.to_string());
        }
        m
    }
    pub fn recipe(&self, extra: &[(&str, &str)]) -> Recipe {
        Recipe::load(&recipe_file(), &self.vars(extra)).expect("shipped recipe validates")
    }
    pub fn cloud(&self) -> Cloud {
        cloud_for(&self.emu)
    }
    pub fn transport(&self) -> LocalTransport {
        LocalTransport::new(self.dir.path().join("sandbox"))
    }
    /// A build of the recipe through `t` that must fail: its phase, error, cleanup report and
    /// whether it kept anything (`--keep-on-failure`).
    pub async fn failed_build(
        &self,
        t: LocalTransport,
        opts: Options,
    ) -> (build::Phase, String, build::CleanupReport, bool) {
        let r = self
            .builder(t, CancellationToken::new(), opts)
            .build(&self.recipe(&[]))
            .await;
        match r {
            Err(BuildError::Failed {
                phase,
                error,
                cleanup,
                kept,
            }) => (phase, error, cleanup, kept),
            other => panic!("expected a failed build, got {other:?}"),
        }
    }

    pub fn builder(&self, t: LocalTransport, cancel: CancellationToken, opts: Options) -> Builder {
        Builder::new(
            self.cloud(),
            Arc::new(t),
            Reporter::new(Mode::Quiet),
            cancel,
            opts,
        )
    }
    pub async fn build(
        &self,
        extra: &[(&str, &str)],
        opts: Options,
    ) -> Result<build::Manifest, BuildError> {
        self.builder(self.transport(), CancellationToken::new(), opts)
            .build(&self.recipe(extra))
            .await
    }
    /// (servers, drives, tags) as the emulator holds them.
    pub fn counts(&self) -> (usize, usize, usize) {
        let s = self.emu.snapshot();
        (s.servers.len(), s.drives.len(), s.tags.len())
    }
    pub fn posts(&self) -> u64 {
        posts(&self.emu)
    }
    /// The imgbuild binary set to build the recipe against the emulator, plain progress, the
    /// credentials in its environment and no config file.
    pub fn imgbuild(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_imgbuild"));
        c.arg(recipe_file())
            .arg("--api-url")
            .arg(self.emu.api_url())
            .arg("--plain");
        for (k, v) in self.vars(&[]) {
            c.arg("--var").arg(format!("{k}={v}"));
        }
        c.env("CLOUDSIGMA_USERNAME", self.emu.username())
            .env("CLOUDSIGMA_PASSWORD", self.emu.password())
            .env("CLOUDSIGMA_CONFIG", "");
        c
    }
}

/// How many POSTs the emulator has answered (since its counters were last reset).
pub fn posts(emu: &EmulatorHandle) -> u64 {
    emu.counters()
        .1
        .iter()
        .filter(|(k, _)| k.starts_with("POST "))
        .map(|(_, v)| v)
        .sum()
}

/// What a good ubuntu-k8s image answers to the `--verify` checks (built-in and the recipe's),
/// through the recording transport. An answer added before these wins (first match).
pub fn answer_good_image(t: &LocalTransport) {
    for (cmd, out) in [
        ("imgbuild-verify/marker", "imgbuild-verify-marker"),
        ("df -B1", "22548578304"),
        ("bootstrap.json", "\"result\": \"success\""),
        ("kubelet --version", "Kubernetes v1.34.1"),
        ("kubeadm version", "v1.34.1"),
        ("registry.k8s.io/kube-proxy:", "registry.k8s.io/kube-proxy:v1.34.1"),
        (
            "containerd --version",
            "containerd github.com/containerd/containerd v1.7.28 05044ec0a9a75232cad458027ca83437aae3f4da",
        ),
        ("/etc/machine-id", "1"),
        ("ssh_host_", "0"),
        ("/var/lib/cloud", "absent"),
    ] {
        t.answer(cmd, 0, out);
    }
}
