//! The server context a guest reads over its serial port (served by [`crate::context`]).

use cloudsigma_api::{Ip, IpConfMode, IpRef, Meta};
use serde_json::Value;

use super::{State, NAMESERVERS};

impl State {
    /// The context a guest sees over its serial port ([V docs server_context.rst]):
    /// `GET /servers/{uuid}/` minus owner/subscriptions/status/runtime, plus `global_context`
    /// and `vendor_data` (when set); drives expanded; NICs without runtime and with
    /// `ip_v4_conf.ip` expanded to the IP object even for dhcp.
    pub fn server_context(&self, uuid: &str) -> Option<Value> {
        let s = self.servers.get(uuid)?;
        let rendered = self.render_server(s);
        let mut v = serde_json::to_value(&rendered).ok()?;
        let m = v.as_object_mut()?;
        for k in [
            "owner",
            "subscriptions",
            "status",
            "runtime",
            "resource_uri",
            "grantees",
            "permissions",
            "jobs",
            // [V dumps/response_context_all] the `context` flag itself is not in the context
            "context",
        ] {
            m.remove(k);
        }
        // drives expanded to drive details
        let drives: Vec<Value> = s
            .drives
            .iter()
            .map(|d| {
                let mut dv = serde_json::to_value(d).unwrap_or(Value::Null);
                if let (Some(obj), Some(drive)) =
                    (dv.as_object_mut(), self.drives.get(d.drive.uuid()))
                {
                    let mut full =
                        serde_json::to_value(self.render_drive(drive)).unwrap_or(Value::Null);
                    if let Some(f) = full.as_object_mut() {
                        // [V dumps/response_context_all] the expanded drive carries exactly these
                        const KEEP: [&str; 9] = [
                            "uuid",
                            "tags",
                            "media",
                            "name",
                            "meta",
                            "allow_multimount",
                            "licenses",
                            "affinities",
                            "size",
                        ];
                        f.retain(|k, _| KEEP.contains(&k.as_str()));
                    }
                    obj.insert("drive".into(), full);
                }
                dv
            })
            .collect();
        m.insert("drives".into(), Value::Array(drives));
        let nics: Vec<Value> = s
            .nics
            .iter()
            .map(|n| {
                let mut n = n.clone();
                let rt_addr = n.runtime_ipv4().map(str::to_string);
                n.runtime = None;
                if let Some(conf) = n.ip_v4_conf.as_mut() {
                    let addr = match conf.conf {
                        IpConfMode::Static => conf.ip.as_ref().map(|r| r.address().to_string()),
                        IpConfMode::Dhcp => rt_addr,
                        IpConfMode::Manual => None,
                    };
                    conf.ip = addr.map(|a| IpRef::Full(Box::new(self.context_ip(&a))));
                }
                let mut nv = serde_json::to_value(&n).unwrap_or(Value::Null);
                // [V docs] the expanded IP carries uuid, netmask, gateway, nameservers, tags, meta
                if let Some(ip) = nv
                    .pointer_mut("/ip_v4_conf/ip")
                    .and_then(Value::as_object_mut)
                {
                    ip.retain(|k, v| {
                        !(matches!(k.as_str(), "server" | "resource_uri" | "owner") && v.is_null())
                    });
                    ip.remove("owner");
                }
                if let Some(o) = nv.as_object_mut() {
                    // [V dumps/response_context_all] NICs: boot_order, vlan, ip_v4_conf, mac,
                    // model, ip_v6_conf — no runtime, no firewall_policy
                    o.remove("runtime");
                    o.remove("firewall_policy");
                }
                nv
            })
            .collect();
        m.insert("nics".into(), Value::Array(nics));
        m.insert(
            "global_context".into(),
            serde_json::to_value(&self.global_context).unwrap_or(Value::Null),
        );
        if let Some(vd) = &self.vendor_data {
            m.insert("vendor_data".into(), vd.clone());
        }
        Some(v)
    }

    pub(super) fn context_ip(&self, addr: &str) -> Ip {
        if let Some(ip) = self.ips.get(addr) {
            let mut ip = ip.clone();
            ip.tags = self.tag_refs(addr);
            ip.resource_uri = None;
            return ip;
        }
        // NAT address: /24 with .1 as gateway [D]
        let gw = match addr.rsplit_once('.') {
            Some((net, _)) => format!("{net}.1"),
            None => String::new(),
        };
        Ip {
            uuid: addr.to_string(),
            netmask: Some(24),
            gateway: Some(gw),
            nameservers: NAMESERVERS.iter().map(|s| s.to_string()).collect(),
            server: None,
            meta: Meta::new(),
            tags: Vec::new(),
            resource_uri: None,
            extra: Default::default(),
        }
    }
}
