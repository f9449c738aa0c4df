//! Shared emulator state: the account, fault injection, counters, contexts, backend.

use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use crate::backend::{Backend, BackendSink};
use crate::context::{ContextManager, ContextSource};
use crate::faults::{Counters, Faults};
use crate::state::State;
use crate::vlan::{DhcpConfig, Lease};

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
    /// VLAN uuid → its DHCP server's configuration (`/admin/vlans/{uuid}/dhcp`)
    pub vlan_dhcp: Mutex<BTreeMap<String, DhcpConfig>>,
}

/// Why DHCP on a VLAN could not be set.
#[derive(Debug, thiserror::Error)]
pub enum VlanDhcpError {
    #[error("VLAN {0} does not exist in this account (GET /api/2.0/vlans/ lists them)")]
    NoVlan(String),
    #[error("DHCP on VLAN {0}: {1}")]
    Invalid(String, String),
    #[error("DHCP on VLAN {0}: {1}")]
    Backend(String, String),
}

/// `GET /admin/vlans/{uuid}/dhcp`: the configuration (or null) and the leases handed out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VlanDhcpStatus {
    pub vlan: String,
    pub dhcp: Option<DhcpConfig>,
    pub leases: Vec<Lease>,
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
            vlan_dhcp: Mutex::new(BTreeMap::new()),
        }
    }

    /// Runs (`Some`) or stops (`None`) the DHCP server of an existing VLAN.
    pub async fn set_vlan_dhcp(
        &self,
        vlan: &str,
        dhcp: Option<DhcpConfig>,
    ) -> Result<(), VlanDhcpError> {
        if !self.lock().vlans.contains_key(vlan) {
            return Err(VlanDhcpError::NoVlan(vlan.to_string()));
        }
        if let Some(d) = &dhcp {
            d.validate()
                .map_err(|e| VlanDhcpError::Invalid(vlan.to_string(), e))?;
        }
        self.backend
            .vlan_dhcp(vlan, dhcp.as_ref())
            .await
            .map_err(|e| VlanDhcpError::Backend(vlan.to_string(), e.0))?;
        let mut g = self.vlan_dhcp.lock().unwrap_or_else(|p| p.into_inner());
        match dhcp {
            Some(d) => g.insert(vlan.to_string(), d),
            None => g.remove(vlan),
        };
        Ok(())
    }

    /// The DHCP configuration and leases of an existing VLAN.
    pub async fn vlan_dhcp_status(&self, vlan: &str) -> Result<VlanDhcpStatus, VlanDhcpError> {
        if !self.lock().vlans.contains_key(vlan) {
            return Err(VlanDhcpError::NoVlan(vlan.to_string()));
        }
        let dhcp = self
            .vlan_dhcp
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(vlan)
            .cloned();
        Ok(VlanDhcpStatus {
            vlan: vlan.to_string(),
            dhcp,
            leases: self.backend.vlan_leases(vlan).await,
        })
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
