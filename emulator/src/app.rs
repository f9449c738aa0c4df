//! Shared emulator state: the account, fault injection, counters, contexts, backend.

use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use crate::backend::{Backend, BackendSink};
use crate::context::{ContextManager, ContextSource};
use crate::faults::{Counters, Faults};
use crate::state::State;

pub struct App {
    state: Mutex<State>,
    pub username: String,
    pub password: String,
    pub token: Option<String>,
    pub backend: Arc<dyn Backend>,
    pub faults: Mutex<Faults>,
    pub counters: Mutex<Counters>,
    pub contexts: ContextManager,
    /// library drive uuid → local image file (for VM backends)
    pub lib_images: Mutex<HashMap<String, PathBuf>>,
}

impl App {
    pub fn new(
        state: State,
        username: String,
        password: String,
        token: Option<String>,
        backend: Arc<dyn Backend>,
        faults: Faults,
        contexts: ContextManager,
    ) -> App {
        App {
            state: Mutex::new(state),
            username,
            password,
            token,
            backend,
            faults: Mutex::new(faults),
            counters: Mutex::new(Counters::default()),
            contexts,
            lib_images: Mutex::new(HashMap::new()),
        }
    }

    /// The account, with due transitions applied. Never hold it across an `.await`.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock must not take the whole emulator down.
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if st.next_deadline().map(|d| d <= now).unwrap_or(false) {
            st.settle(now);
        }
        st
    }

    pub fn power_off(&self, uuid: &str) {
        self.lock().power_off(uuid);
    }

    pub fn server_context(&self, uuid: &str) -> Option<Value> {
        self.lock().server_context(uuid)
    }
}

/// The serial context sockets ask the app for a server's context.
impl ContextSource for App {
    fn server_context(&self, uuid: &str) -> Option<Value> {
        App::server_context(self, uuid)
    }
    fn serial_fault(&self, uuid: &str) -> Option<crate::faults::SerialFault> {
        self.faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .serial_fault(uuid)
    }
}

/// What the backend gets in [`Backend::attach`]: weak, so a backend holding it does not keep a
/// shut-down emulator alive (the app owns the backend; a strong reference would be a cycle).
pub struct AppSink(pub Weak<App>);

impl BackendSink for AppSink {
    fn power_off(&self, server_uuid: &str) {
        if let Some(app) = self.0.upgrade() {
            app.power_off(server_uuid);
        }
    }

    fn library_image(&self, libdrive_uuid: &str) -> Option<PathBuf> {
        let app = self.0.upgrade()?;
        let images = app.lib_images.lock().unwrap_or_else(|p| p.into_inner());
        images.get(libdrive_uuid).cloned()
    }
}
