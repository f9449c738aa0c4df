//! `/servers/`: listing, CRUD, power actions, runtime, and bringing a server to `stopped`.

use super::retry::Try;
use super::{check_id, Client, Error, RECURSE_VALUES};
use crate::models::{
    ActionResult, Server, ServerAction, ServerCreate, ServerRuntime, ServerStatus,
};
use std::time::Duration;
use tokio::time::Instant;

impl Client {
    pub async fn list_servers(&self) -> Result<Vec<Server>, Error> {
        self.list_unique(&["servers", "detail"], &[]).await
    }

    /// `GET servers/detail/` with filters, e.g. `[("tag", uuid)]`, `[("name__contains", "k8s")]`.
    pub async fn list_servers_filtered(
        &self,
        query: &[(&str, &str)],
    ) -> Result<Vec<Server>, Error> {
        self.list_unique(&["servers", "detail"], query).await
    }

    pub async fn get_server(&self, uuid: &str) -> Result<Server, Error> {
        check_id("server", uuid)?;
        self.get_json(&["servers", uuid], &[]).await
    }

    /// Create one server. Not retried: on a transport error the server may or may not exist;
    /// look it up by name before trying again.
    pub async fn create_server(&self, s: &ServerCreate) -> Result<Server, Error> {
        self.create_one("servers", s).await
    }

    /// `PUT servers/{uuid}/` with the full definition (while running, only name/meta/tags apply).
    pub async fn update_server(&self, s: &Server) -> Result<Server, Error> {
        check_id("server", &s.uuid)?;
        self.put_json(&["servers", &s.uuid], s).await
    }

    /// Read-modify-write of a server's `meta`, which a PUT replaces wholesale [V reference]: GET
    /// the server fresh, let `edit` change its meta (it returns false to leave it: nothing is
    /// written), PUT the full definition back with every other key as read. The PUT is sent once;
    /// after a retryable failure (429, 5xx, lost answer) the server is read again and `edit`
    /// runs on what the cloud holds then, so a change made in between is never overwritten by a
    /// resend, and a PUT that did land before its answer was lost is seen by `edit`. At most
    /// the client's `max_attempts` rounds. Returns the server as last read or written.
    pub async fn modify_server_meta(
        &self,
        uuid: &str,
        mut edit: impl FnMut(&mut crate::models::Meta) -> bool,
    ) -> Result<Server, Error> {
        check_id("server", uuid)?;
        let attempts = self.config().retry.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut s = self.get_server(uuid).await?;
            if !edit(&mut s.meta) {
                return Ok(s);
            }
            match self.put_json_once(&["servers", uuid], &s).await {
                Ok(written) => return Ok(written),
                Err(e) if e.is_retryable() && attempt < attempts => {
                    let d = self.config().retry.base_delay * attempt;
                    tracing::debug!(server = uuid, attempt, error = %e, "meta update failed; re-reading before trying again");
                    tokio::time::sleep(e.retry_after().unwrap_or(d).max(d)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `DELETE servers/{uuid}/[?recurse=all_drives|disks|cdroms]`.
    pub async fn delete_server(&self, uuid: &str, recurse: Option<&str>) -> Result<(), Error> {
        check_id("server", uuid)?;
        match recurse {
            None => self.delete_at(&["servers", uuid], &[]).await,
            Some(r) if RECURSE_VALUES.contains(&r) => {
                self.delete_at(&["servers", uuid], &[("recurse", r)]).await
            }
            Some(r) => Err(Error::InvalidInput(format!(
                "recurse={r:?}: expected one of all_drives, disks, cdroms"
            ))),
        }
    }

    /// `POST servers/{uuid}/action/?do={action}` with `{}`. Never retried automatically
    /// (except a 429 with [`Client::with_post_retry_on_429`]): re-sending `start` after a lost
    /// answer would be refused (already running) or, for `restart`, act twice. Check the server
    /// status instead, or use [`Client::ensure_server_stopped`].
    pub async fn server_action(
        &self,
        uuid: &str,
        action: ServerAction,
    ) -> Result<ActionResult, Error> {
        check_id("server", uuid)?;
        self.post_json(
            &["servers", uuid, "action"],
            &[("do", action.as_str())],
            &serde_json::json!({}),
        )
        .await
    }

    pub async fn start_server(&self, uuid: &str) -> Result<ActionResult, Error> {
        self.server_action(uuid, ServerAction::Start).await
    }

    /// Hard power-off.
    pub async fn stop_server(&self, uuid: &str) -> Result<ActionResult, Error> {
        self.server_action(uuid, ServerAction::Stop).await
    }

    /// ACPI shutdown (the guest may ignore it; wait for `stopped` with a deadline).
    pub async fn shutdown_server(&self, uuid: &str) -> Result<ActionResult, Error> {
        self.server_action(uuid, ServerAction::Shutdown).await
    }

    /// Reboot (ACPI-less reset of the VM).
    pub async fn restart_server(&self, uuid: &str) -> Result<ActionResult, Error> {
        self.server_action(uuid, ServerAction::Restart).await
    }

    /// `GET servers/{uuid}/runtime/`: `None` while the server is stopped.
    pub async fn server_runtime(&self, uuid: &str) -> Result<Option<ServerRuntime>, Error> {
        check_id("server", uuid)?;
        self.get_json(&["servers", uuid, "runtime"], &[]).await
    }

    /// Bring a server to `stopped` with a hard stop and return it; a 404 error when it does not
    /// exist (any more). `stop` is a POST, so it is never resent blindly: after a refused or
    /// failed stop (a server still `starting` refuses it; a 5xx may or may not have acted) the
    /// server is looked up again and stop is sent again only if it is still neither `stopping`
    /// nor `stopped` — at most [`RetryPolicy::max_attempts`](super::RetryPolicy) stops, with the
    /// retry backoff between them. Waits (polling) at most `timeout` overall.
    pub async fn ensure_server_stopped(
        &self,
        uuid: &str,
        timeout: Duration,
    ) -> Result<Server, Error> {
        let deadline = Instant::now() + timeout;
        // Each try looks first, then stops only what is neither stopped nor stopping: so a
        // retried try never sends a stop the last one may already have done.
        let stopped = self
            .inner
            .cfg
            .retry
            .retry(
                Some(deadline),
                |_| async {
                    let s = match self.get_server(uuid).await {
                        Ok(s) => s,
                        Err(e) => return Try::Stop(e),
                    };
                    match s.status {
                        ServerStatus::Stopped => Try::Done(Some(s)),
                        ServerStatus::Stopping => Try::Done(None),
                        _ => match self.server_action(uuid, ServerAction::Stop).await {
                            Ok(_) => Try::Done(None),
                            Err(e) if e.is_not_found() => Try::Stop(e),
                            Err(e) => Try::Again(e),
                        },
                    }
                },
                |stops, _, e| {
                    tracing::debug!(uuid, stops, error = %e, "stop refused or failed; looking again");
                },
                |_| {},
            )
            .await?;
        match stopped {
            Some(s) => Ok(s),
            None => {
                let left = deadline.saturating_duration_since(Instant::now());
                self.wait_server_status(uuid, ServerStatus::Stopped, left)
                    .await
            }
        }
    }
}
