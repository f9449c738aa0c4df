//! Helpers for tests that drive cloudsim through the typed `cloudsigma_api` client (the client the
//! builder and the controller use): one place that says how such a client is configured.

use cloudsigma_api::client::{Auth, Client, Config, RetryPolicy, WaitPolicy};
use cloudsigma_api::{Drive, DriveCreate, DriveStatus};
use cloudsim::{Emulator, EmulatorConfig, EmulatorHandle};
use reqwest::Method;
use serde_json::Value;
use std::time::Duration;

/// How long a test waits for a status before failing.
pub const WAIT: Duration = Duration::from_secs(10);

/// `attempts` tries with delays sized for a loopback emulator (5–50 ms, Retry-After up to 5 s).
pub fn retry(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts: attempts,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(50),
        max_retry_after: Duration::from_secs(5),
    }
}

/// The emulator's account as client credentials (HTTP Basic).
pub fn account(emu: &EmulatorHandle) -> Auth {
    Auth::Basic {
        username: emu.username().into(),
        password: emu.password().into(),
    }
}

/// A client for `emu`'s API with the given retry policy and request timeout; waiters poll every
/// 10–100 ms so status waits stay fast under instant timings.
pub fn client_for(emu: &EmulatorHandle, policy: RetryPolicy, timeout: Duration) -> Client {
    let cfg = Config::for_url(&emu.api_url(), account(emu))
        .unwrap()
        .with_timeout(timeout)
        .with_retry(policy);
    Client::new(cfg).unwrap().with_wait_policy(WaitPolicy {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(100),
    })
}

/// An emulator and a client for it (`attempts` tries, 10 s timeout).
pub async fn start(cfg: EmulatorConfig, attempts: u32) -> (EmulatorHandle, Client) {
    let emu = Emulator::start(cfg).await.expect("emulator starts");
    let c = client_for(&emu, retry(attempts), Duration::from_secs(10));
    (emu, c)
}

/// An admin call (`/admin/<path>`) that must succeed; its JSON answer (`null` when none).
pub async fn admin(emu: &EmulatorHandle, method: Method, path: &str, body: Option<Value>) -> Value {
    let (s, v) = emu.admin(method.as_str(), path, body).await;
    assert!((200..300).contains(&s), "admin {path}: {s} {v}");
    v
}

/// A drive created from `spec` and waited for until `unmounted` (ready to attach and boot).
pub async fn ready_drive(c: &Client, spec: &DriveCreate) -> Drive {
    let d = c.create_drive(spec).await.unwrap();
    c.wait_drive_status(&d.uuid, DriveStatus::Unmounted, WAIT)
        .await
        .unwrap()
}
