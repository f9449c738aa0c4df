//! `--verify` (docs/imgbuild.md, "Verify before publish"): the finished build drive becomes the
//! candidate `imgbuild-<id>-candidate`; a clone of it one GiB larger boots on a server
//! `imgbuild-<id>-verifier` with bootstrap data that joins nothing (a marker file, and a host
//! key for imgbuild's pinned SSH — see [`HostKey::verify_user_data`]); the built-in checks and
//! the recipe's `verify.checks` run over SSH. Only a candidate that passes them all goes on to
//! finalize (its output name and tags). The verify server and clone are deleted when the checks
//! pass; when one fails the build fails, and the cleanup guard deletes them with the candidate
//! (unless `--keep-on-failure`).

use super::{Builder, Job, StepError};
use crate::cleanup::Created;
use crate::hostkey::{HostKey, USER_DATA_META};
use crate::naming;
use crate::phase::Phase;
use crate::transport::{Target, TransportError};
use cloudsigma_api::{Drive, DriveClone, DriveStatus, Nic, Server, ServerCreate, ServerDrive};
use serde::Serialize;
use serde_json::json;
use std::time::{Duration, Instant};

/// The verify clone is this much larger than the image: the root must grow into it.
const GROWTH: u64 = 1 << 30;
/// The file the verify bootstrap data writes, and what it writes there.
const MARKER_PATH: &str = "/var/lib/imgbuild-verify/marker";
const MARKER: &str = "imgbuild-verify-marker";
/// How long the built-in marker check waits for the agent to apply the data.
const AGENT_WAIT_SECS: u64 = 900;

/// What `--verify` checked (the manifest's `verify`).
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub candidate: String,
    pub checks: Vec<CheckResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub name: String,
    pub ok: bool,
    pub expected: String,
    pub got: String,
}

/// One check to run: a command and what its output must be.
struct Check {
    name: String,
    run: String,
    want: Want,
}

enum Want {
    Equals(String),
    Contains(String),
    /// The output is a number of bytes greater than this.
    MoreThan(u64),
    /// Exit code 0 is enough.
    Success,
}

impl Want {
    fn judge(&self, code: i32, out: &str) -> (bool, String) {
        let out = out.trim();
        match self {
            _ if code != 0 => (false, self.describe()),
            Want::Equals(w) => (out == w, self.describe()),
            Want::Contains(w) => (out.contains(w.as_str()), self.describe()),
            Want::MoreThan(n) => (out.parse::<u64>().is_ok_and(|v| v > *n), self.describe()),
            Want::Success => (true, self.describe()),
        }
    }
    fn describe(&self) -> String {
        match self {
            Want::Equals(w) => format!("{w:?}"),
            Want::Contains(w) => format!("output containing {w:?}"),
            Want::MoreThan(n) => format!("more than {n} bytes"),
            Want::Success => "exit code 0".into(),
        }
    }
}

impl Builder {
    /// Entered only under `--verify`; the checks' results, or the error naming each failed one.
    pub(super) async fn verify(
        &self,
        job: &Job<'_>,
        d: &Drive,
        created: &mut Created,
    ) -> Result<Option<VerifyReport>, StepError> {
        if !self.opts.verify {
            return Ok(None);
        }
        self.enter(Phase::Verify);
        let checks = self.checks(job)?;
        let mut cand = self.cancellable(self.cloud.get_drive(&d.uuid)).await?;
        cand.name = naming::candidate_name(&job.id);
        let cand = self.cancellable(self.cloud.update_drive(&cand)).await?;
        self.reporter
            .line(&format!("candidate {} ({})", cand.name, cand.uuid));
        let clone = self.verify_clone(job, &cand, created).await?;
        let host_key = HostKey::generate().map_err(StepError::HostKey)?;
        let server = self.verify_server(job, &clone, &host_key, created).await?;
        let ip = self.power_on(job, &server).await?;
        let target = self.target(job, ip, host_key.public().to_string());
        self.verify_login(job, &target).await?;
        let mut results = Vec::new();
        for c in &checks {
            let tmo = Duration::from_secs(AGENT_WAIT_SECS + 60);
            let (code, out) = self
                .on_guest(self.transport.run_check(&target, &c.run, tmo))
                .await?;
            let (ok, expected) = c.want.judge(code, &out);
            let got = match code {
                0 => format!("{:?}", out.trim()),
                n => format!("exit code {n}: {:?}", out.trim()),
            };
            let mark = if ok { "ok" } else { "FAILED" };
            self.reporter.line(&format!("verify: {} … {mark}", c.name));
            results.push(CheckResult {
                name: c.name.clone(),
                ok,
                expected,
                got,
            });
        }
        self.transport.close().await;
        let failed: Vec<String> = results
            .iter()
            .filter(|r| !r.ok)
            .map(|r| format!("check {:?}: expected {}, got {}", r.name, r.expected, r.got))
            .collect();
        if !failed.is_empty() {
            let m = format!(
                "candidate {} failed verification: {}",
                cand.name,
                failed.join("; ")
            );
            return Err(StepError::Verify(m));
        }
        self.verify_teardown(&server, &clone, created).await?;
        Ok(Some(VerifyReport {
            candidate: cand.uuid.clone(),
            checks: results,
        }))
    }

    /// The built-in checks (the bootstrap data applied, the root grown), then the recipe's,
    /// their expectations rendered with the variables and `meta`: the image's meta as finalize
    /// will write it.
    fn checks(&self, job: &Job<'_>) -> Result<Vec<Check>, StepError> {
        let meta = self.output_meta(job, naming::now_unix())?;
        let mut ctx: std::collections::BTreeMap<String, serde_json::Value> = job
            .recipe
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        ctx.insert("meta".into(), json!(meta));
        let ctx = minijinja::Value::from_serialize(&ctx);
        let render = |t: &str| crate::recipe::render(t, &ctx).map_err(StepError::Template);
        let mut v = vec![
            Check {
                name: "the agent applied the bootstrap data from the server context".into(),
                run: format!("for i in $(seq {n}); do [ -s {MARKER_PATH} ] && break; sleep 1; done; cat {MARKER_PATH}", n = AGENT_WAIT_SECS),
                want: Want::Equals(MARKER.into()),
            },
            Check {
                name: "the root file system grew to the larger drive".into(),
                run: "df -B1 --output=size / | tail -n 1".into(),
                want: Want::MoreThan(job.recipe.disk_size),
            },
        ];
        for c in &job.recipe.spec.verify.checks {
            let want = match (&c.expect, &c.contains) {
                (Some(e), _) => Want::Equals(render(e)?),
                (None, Some(w)) => Want::Contains(render(w)?),
                (None, None) => Want::Success,
            };
            v.push(Check {
                name: c.name.clone(),
                run: c.run.clone(),
                want,
            });
        }
        Ok(v)
    }

    /// `imgbuild-<id>-verify`: the candidate cloned one GiB larger.
    async fn verify_clone(
        &self,
        job: &Job<'_>,
        cand: &Drive,
        created: &mut Created,
    ) -> Result<Drive, StepError> {
        let name = naming::verify_drive_name(&job.id);
        created.add_extra("drive", &name);
        let req = DriveClone {
            name: Some(name.clone()),
            media: Some("disk".into()),
            size: Some(cand.size + GROWTH),
            ..Default::default()
        };
        let d = self
            .cancellable(self.cloud.clone_drive(&cand.uuid, &req))
            .await?;
        created.extra_created(&name, &d.uuid);
        let wait = Duration::from_secs(job.recipe.spec.timeouts.clone);
        self.cancellable(
            self.cloud
                .wait_drive_status(&d.uuid, DriveStatus::Unmounted, wait),
        )
        .await
    }

    /// `imgbuild-<id>-verifier`: boots the clone with our login key and the verify data.
    async fn verify_server(
        &self,
        job: &Job<'_>,
        clone: &Drive,
        host_key: &HostKey,
        created: &mut Created,
    ) -> Result<Server, StepError> {
        let name = naming::verify_server_name(&job.id);
        let mut meta = self.building_meta(job);
        meta.insert("ssh_public_key".into(), self.transport.public_key());
        let ud = host_key.verify_user_data(MARKER_PATH, MARKER);
        meta.insert(USER_DATA_META.into(), ud.to_string());
        let spec = &job.recipe.spec.server;
        let mut req = ServerCreate {
            name: name.clone(),
            cpu: spec.cpu,
            mem: job.recipe.mem,
            smp: spec.smp,
            vnc_password: super::random_password(),
            drives: vec![ServerDrive::boot_disk(&clone.uuid)],
            nics: vec![Nic::public_dhcp()],
            meta,
            tags: clone.tags.clone(),
            pubkeys: Vec::new(),
        };
        created.add_extra("server", &name);
        let s = self.cancellable(self.cloud.create_server(&req)).await;
        if let Some(v) = req.meta.get_mut(USER_DATA_META) {
            zeroize::Zeroize::zeroize(v);
        }
        let s = s?;
        created.extra_created(&name, &s.uuid);
        Ok(s)
    }

    /// Wait for the login. Until the agent has given sshd our host key the guest presents the
    /// one it generated: a mismatch is retried (nothing is sent to it) until the timeout.
    async fn verify_login(&self, job: &Job<'_>, target: &Target) -> Result<(), StepError> {
        let secs = job.recipe.spec.verify.timeout;
        let wait = Duration::from_secs(secs.unwrap_or(job.recipe.spec.timeouts.ssh));
        let start = Instant::now();
        loop {
            let left = wait.saturating_sub(start.elapsed());
            let r = self.transport.wait_ready(target, left, &self.cancel);
            match self.on_guest(r).await {
                Err(StepError::Transport(TransportError::HostKeyMismatch(_)))
                    if start.elapsed() < wait =>
                {
                    self.transport.close().await;
                    let pause = async {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        Ok::<_, StepError>(())
                    };
                    self.cancellable(pause).await?;
                }
                r => return r,
            }
        }
    }

    /// Delete the verify server and clone (the checks passed).
    async fn verify_teardown(
        &self,
        server: &Server,
        clone: &Drive,
        created: &mut Created,
    ) -> Result<(), StepError> {
        crate::cleanup::delete_server_stopping(&self.cloud, &server.uuid).await?;
        created.forget_extra(&server.name);
        crate::cleanup::delete_drive_when_idle(&self.cloud, &clone.uuid).await?;
        created.forget_extra(&clone.name);
        Ok(())
    }
}
