//! Server power actions: start (runtime NICs and IPs, the backend's [`StartSpec`]), stop,
//! shutdown, restart, and the guest powering off by itself.

use cloudsigma_api::{IpConfMode, Nic, NicRuntime, Ref, ServerRuntime, ServerStatus};
use serde_json::{json, Value};
use std::collections::BTreeMap;

use super::{guest_state, now_iso, StartPlan, State, Transition};
use crate::backend::{ShutdownMode, StartDrive, StartNic, StartSpec};
use crate::error::ApiError;

impl State {
    /// Validate and begin `start`: status `starting`, runtime with NAT IPs, a compute host
    /// chosen with `avoid` (the `?avoid=` server uuids, see placement.rs).
    pub fn begin_start(
        &mut self,
        uuid: &str,
        avoid: &[String],
        runtime_ip: &dyn Fn(usize) -> Option<String>,
        context_socket: std::path::PathBuf,
    ) -> Result<StartPlan, ApiError> {
        self.check_startable(uuid)?;
        let nics = self.get_server(uuid)?.nics.clone();
        let mut rt_nics = Vec::new();
        let mut new_nics = Vec::new();
        // [D] the NAT address belongs to the first public NIC wherever it is in the list
        // (`[VLAN, public]` too): runtime_ip gets the position among public NICs.
        let mut public_nic = 0;
        for mut n in nics {
            let addr = if n.vlan.is_some() {
                // a vlan set wins over ip_v4_conf: no address the cloud knows (docs/emulator.md)
                None
            } else {
                public_nic += 1;
                self.public_nic_address(uuid, &n, public_nic - 1, runtime_ip)?
            };
            let (rt, rtv) = nic_runtime(&n, addr);
            rt_nics.push(rtv);
            n.runtime = Some(rt);
            new_nics.push(n);
        }
        self.mark_starting(uuid, avoid, new_nics, rt_nics);
        let spec = self
            .current_spec(uuid, context_socket)
            .ok_or_else(|| ApiError::notexist("server", uuid))?;
        Ok(StartPlan { spec })
    }

    /// A start is allowed from `stopped` only, with every drive attachable.
    fn check_startable(&self, uuid: &str) -> Result<(), ApiError> {
        self.refuse_if_deleting(uuid, "start")?;
        let s = self.get_server(uuid)?;
        if s.status != ServerStatus::Stopped {
            // [V libcloud/Go SDK fixtures] exact wording; internal state name of running is "started"
            return Err(ApiError::permission(format!(
                "Cannot start guest in state \"{}\". Guest should be in state \"stopped\"",
                guest_state(s.status)
            )));
        }
        for d in &s.drives {
            self.check_attachable(uuid, d.drive.uuid())?;
        }
        Ok(())
    }

    /// The runtime address of a public NIC (`i`: its position among public NICs): the static
    /// IP, or a NAT address for DHCP (the backend's `runtime_ip`, else one from the pool).
    fn public_nic_address(
        &mut self,
        uuid: &str,
        n: &Nic,
        i: usize,
        runtime_ip: &dyn Fn(usize) -> Option<String>,
    ) -> Result<Option<String>, ApiError> {
        Ok(match n.ip_v4_conf.as_ref().map(|c| c.conf) {
            Some(IpConfMode::Static) => n
                .ip_v4_conf
                .as_ref()
                .and_then(|c| c.ip.as_ref())
                .map(|r| r.address().to_string()),
            // [V reference] a DHCP NIC without VLAN is a public NAT NIC: its address
            // appears in runtime.ip_v4 while running
            Some(IpConfMode::Dhcp) => match runtime_ip(i) {
                Some(a) => {
                    self.used_ips.insert(a.clone(), uuid.to_string());
                    Some(a)
                }
                None => Some(self.alloc_ip(uuid)?),
            },
            _ => None,
        })
    }

    /// Status `starting` with the runtime NICs, a host placed, `running` scheduled.
    fn mark_starting(
        &mut self,
        uuid: &str,
        avoid: &[String],
        new_nics: Vec<Nic>,
        rt_nics: Vec<Value>,
    ) {
        let gen = self.bump_gen(uuid);
        self.place_server(uuid, avoid);
        if let Some(s) = self.servers.get_mut(uuid) {
            s.status = ServerStatus::Starting;
            s.nics = new_nics;
            s.runtime = Some(ServerRuntime {
                active_since: Some(now_iso()),
                nics: rt_nics,
                extra: Default::default(),
            });
        }
        let after = self.timings.server_start;
        self.schedule(
            after,
            Transition::Server {
                uuid: uuid.to_string(),
                gen,
                to: ServerStatus::Running,
            },
        );
        self.touch();
    }

    /// A server's drive entry as a backend sees it (`None` when the drive does not exist).
    pub(super) fn start_drive(&self, d: &cloudsigma_api::ServerDrive) -> Option<StartDrive> {
        let drive = self.drives.get(d.drive.uuid())?;
        Some(StartDrive {
            uuid: drive.uuid.clone(),
            dev_channel: d.dev_channel.clone(),
            device: d.device.clone(),
            boot_order: d.boot_order,
            media: drive.media.clone(),
            size: drive.size,
        })
    }

    /// What a backend needs to boot the server as it is now (drives, NICs with runtime IPs).
    pub fn current_spec(
        &self,
        uuid: &str,
        context_socket: std::path::PathBuf,
    ) -> Option<StartSpec> {
        let s = self.servers.get(uuid)?;
        let drives: Vec<StartDrive> = s
            .drives
            .iter()
            .filter_map(|d| self.start_drive(d))
            .collect();
        let boot_drive = drives
            .iter()
            .filter(|d| d.boot_order.is_some())
            .min_by_key(|d| d.boot_order)
            .or_else(|| drives.first())
            .map(|d| d.uuid.clone());
        let nics = s
            .nics
            .iter()
            .map(|n| StartNic {
                mac: n.mac.clone().unwrap_or_default(),
                model: n.model.clone().unwrap_or_else(|| "virtio".into()),
                ip_v4: n.runtime_ipv4().map(str::to_string),
                vlan: n.vlan.as_ref().map(|v| v.uuid().to_string()),
            })
            .collect();
        Some(StartSpec {
            uuid: uuid.to_string(),
            name: s.name.clone(),
            cpu: s.cpu,
            mem: s.mem,
            smp: s.smp,
            boot_drive,
            drives,
            nics,
            context_socket,
        })
    }

    /// The backend refused to start: back to stopped.
    pub fn abort_start(&mut self, uuid: &str) {
        self.bump_gen(uuid);
        self.set_stopped(uuid);
        self.touch();
    }

    pub(super) fn set_stopped(&mut self, uuid: &str) {
        if let Some(s) = self.servers.get_mut(uuid) {
            s.status = ServerStatus::Stopped;
            s.runtime = None;
            for n in &mut s.nics {
                n.runtime = None;
            }
        }
        self.used_ips.retain(|_, s| s != uuid);
        self.unplace_server(uuid);
    }

    /// Guest powered off (backend event).
    pub fn power_off(&mut self, uuid: &str) {
        if self
            .servers
            .get(uuid)
            .map(|s| s.status != ServerStatus::Stopped)
            .unwrap_or(false)
        {
            self.bump_gen(uuid);
            self.set_stopped(uuid);
            self.touch();
        }
    }

    /// `stop` (hard power-off): running/starting/stopping → stopping → stopped.
    pub fn begin_stop(&mut self, uuid: &str) -> Result<(), ApiError> {
        self.refuse_if_deleting(uuid, "stop")?;
        let s = self.get_server(uuid)?;
        if matches!(s.status, ServerStatus::Stopped) {
            // [V Go SDK fixture] exact wording
            return Err(ApiError::permission(format!(
                "Cannot stop guest in state \"{}\". Guest should be in state \"['started', 'running_legacy']\"",
                guest_state(s.status)
            )));
        }
        let gen = self.bump_gen(uuid);
        if let Some(s) = self.servers.get_mut(uuid) {
            s.status = ServerStatus::Stopping;
        }
        let after = self.timings.server_stop;
        self.schedule(
            after,
            Transition::Server {
                uuid: uuid.into(),
                gen,
                to: ServerStatus::Stopped,
            },
        );
        self.touch();
        Ok(())
    }

    /// `shutdown` (ACPI): only from running. The app calls the backend, then
    /// [`State::schedule_shutdown`].
    pub fn begin_shutdown(&mut self, uuid: &str) -> Result<u64, ApiError> {
        self.refuse_if_deleting(uuid, "shutdown")?;
        let s = self.get_server(uuid)?;
        if s.status != ServerStatus::Running {
            // [D] wording modelled on the start/stop errors
            return Err(ApiError::permission(format!(
                "Cannot shutdown guest in state \"{}\". Guest should be in state \"started\"",
                guest_state(s.status)
            )));
        }
        let gen = self.bump_gen(uuid);
        if let Some(s) = self.servers.get_mut(uuid) {
            s.status = ServerStatus::Stopping;
        }
        self.touch();
        Ok(gen)
    }

    pub fn schedule_shutdown(&mut self, uuid: &str, gen: u64, mode: ShutdownMode) {
        let (after, to) = match mode {
            ShutdownMode::Timed => (self.timings.server_shutdown, ServerStatus::Stopped),
            // [V reference] back to running if the guest did not power off in time
            ShutdownMode::AwaitPowerOff => (self.timings.shutdown_timeout, ServerStatus::Running),
        };
        self.schedule(
            after,
            Transition::Server {
                uuid: uuid.into(),
                gen,
                to,
            },
        );
    }

    /// Backend refused the shutdown: back to running.
    pub fn abort_shutdown(&mut self, uuid: &str, gen: u64) {
        if self.gen(uuid) == gen {
            if let Some(s) = self.servers.get_mut(uuid) {
                s.status = ServerStatus::Running;
            }
        }
    }

    /// `restart`: only from running; `starting` → `running` (runtime and IPs kept).
    pub fn begin_restart(&mut self, uuid: &str) -> Result<(), ApiError> {
        self.refuse_if_deleting(uuid, "restart")?;
        let s = self.get_server(uuid)?;
        if s.status != ServerStatus::Running {
            return Err(ApiError::permission(format!(
                "Cannot restart guest in state \"{}\". Guest should be in state \"started\"",
                guest_state(s.status)
            )));
        }
        let gen = self.bump_gen(uuid);
        if let Some(s) = self.servers.get_mut(uuid) {
            s.status = ServerStatus::Starting;
        }
        let after = self.timings.server_start;
        self.schedule(
            after,
            Transition::Server {
                uuid: uuid.into(),
                gen,
                to: ServerStatus::Running,
            },
        );
        self.touch();
        Ok(())
    }
}

/// A running NIC's runtime: the model and its wire JSON (`runtime.nics[]` of the server).
fn nic_runtime(n: &Nic, addr: Option<String>) -> (NicRuntime, Value) {
    let interface_type = if n.vlan.is_some() {
        "private"
    } else {
        "public"
    };
    let mut extra = BTreeMap::new();
    extra.insert(
        "io".into(),
        json!({"bytes_recv": 0, "bytes_sent": 0, "packets_recv": 0, "packets_sent": 0}),
    );
    // [V dumps/response_server_get_running] "ip_v6": null is present (the model skips a
    // None field, so it rides in `extra`)
    extra.insert("ip_v6".into(), Value::Null);
    let rt = NicRuntime {
        interface_type: Some(interface_type.into()),
        ip_v4: addr.as_ref().map(|a| Ref::to_resource("ips", a)),
        ip_v6: None,
        extra,
    };
    let mut rtv = serde_json::to_value(&rt).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut rtv {
        m.insert("ip_v6".into(), Value::Null);
        m.insert("mac".into(), json!(n.mac));
    }
    (rt, rtv)
}
