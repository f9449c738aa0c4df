//! cloud-init's `ntp` module for the two time clients our images can carry (docs/agent.md).

use std::fs;
use std::path::Path;

use serde_yaml::Value;

use super::Cx;
use crate::error::{Error, IoContext, IoOp, Result};
use crate::fsutil::{atomic_write, under, Owner, WriteMode};
use crate::sys;
use crate::yaml::{boolish, string_list, type_name, ConfigError};

/// The timesyncd drop-in keeps cloud-init's file name: an image that ran cloud-init before has
/// the same file, which we then replace instead of adding a second, conflicting one.
pub const TIMESYNCD_DROPIN: &str = "/etc/systemd/timesyncd.conf.d/cloud-init.conf";
pub const CHRONY_SOURCES: &str = "/etc/chrony/sources.d/cloudsigma-agent.sources";
pub const CHRONY_CONF: &str = "/etc/chrony/chrony.conf";
pub const CHRONY_SOURCEDIR: &str = "/etc/chrony/sources.d";
const TIMESYNCD_MARKERS: &[&str] = &[
    "/usr/lib/systemd/systemd-timesyncd",
    "/lib/systemd/systemd-timesyncd",
    "/etc/systemd/timesyncd.conf",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    Auto,
    Chrony,
    Timesyncd,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Ntp {
    pub enabled: bool,
    pub servers: Vec<String>,
    pub pools: Vec<String>,
    pub client: Client,
}

const FIELDS: &[&str] = &["enabled", "servers", "pools", "ntp_client"];

/// `ntp: null` is absent for cloud-init (`cfg.get("ntp")` is None); `ntp: {}` enables the client.
pub fn parse(v: &Value, warnings: &mut Vec<String>) -> Result<Option<Ntp>, ConfigError> {
    let err = |key: &str, msg: String| ConfigError::Key {
        key: key.into(),
        msg,
    };
    let m = match v {
        Value::Null => return Ok(None),
        Value::Mapping(m) => m,
        other => {
            return Err(err(
                "ntp",
                format!("expected a mapping, got {}", type_name(other)),
            ))
        }
    };
    let get = |n: &str| m.get(Value::String(n.into()));
    // The kubeadm provider writes `enabled:` only when true: a missing key means enabled, as in
    // cloud-init.
    let enabled = match get("enabled") {
        None => true,
        Some(Value::Null) => true,
        Some(v) => boolish(v).map_err(|e| err("ntp.enabled", e))?,
    };
    let hosts = |n: &str| -> Result<Vec<String>, ConfigError> {
        let list = match get(n) {
            None => Vec::new(),
            Some(v) => string_list(v).map_err(|e| err(&format!("ntp.{n}"), e))?,
        };
        for (i, h) in list.iter().enumerate() {
            if !valid_host(h) {
                return Err(err(
                    &format!("ntp.{n}[{i}]"),
                    "not a host name or address (empty, or contains spaces or control characters)"
                        .into(),
                ));
            }
        }
        Ok(list)
    };
    let servers = hosts("servers")?;
    let pools = hosts("pools")?;
    let client = match get("ntp_client") {
        None | Some(Value::Null) => Client::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Client::Auto,
            "chrony" => Client::Chrony,
            "systemd-timesyncd" => Client::Timesyncd,
            other => {
                return Err(err(
                    "ntp.ntp_client",
                    format!("{other:?} is not supported (auto, chrony or systemd-timesyncd)"),
                ))
            }
        },
        Some(other) => {
            return Err(err(
                "ntp.ntp_client",
                format!("expected a string, got {}", type_name(other)),
            ))
        }
    };
    for (k, _) in m.iter() {
        let k = k.as_str().unwrap_or("<non-string key>");
        if !FIELDS.contains(&k) {
            warnings.push(format!("ntp: field '{k}' is not implemented: NOT applied"));
        }
    }
    Ok(Some(Ntp {
        enabled,
        servers,
        pools,
        client,
    }))
}

fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_:[]%".contains(c))
}

/// Which client is configured, from what exists under the root: chrony wins because Debian's
/// chrony package conflicts with systemd-timesyncd (only one of them runs).
pub fn detect(root: &Path, wanted: Client) -> Result<Client, String> {
    let chrony = under(root, "/etc/chrony").is_dir();
    let timesyncd = TIMESYNCD_MARKERS.iter().any(|p| under(root, p).exists());
    match wanted {
        Client::Auto if chrony => Ok(Client::Chrony),
        Client::Auto if timesyncd => Ok(Client::Timesyncd),
        Client::Auto => Err(format!(
            "no supported time client on the node (chrony: /etc/chrony/; systemd-timesyncd: {})",
            TIMESYNCD_MARKERS.join(", ")
        )),
        Client::Chrony if !chrony => {
            Err("ntp_client is chrony but /etc/chrony/ does not exist".into())
        }
        Client::Timesyncd if !timesyncd => Err(format!(
            "ntp_client is systemd-timesyncd but none of {} exists",
            TIMESYNCD_MARKERS.join(", ")
        )),
        c => Ok(c),
    }
}

/// timesyncd takes servers and pools alike in `NTP=` (space separated), as cloud-init writes it.
pub fn timesyncd_dropin(n: &Ntp) -> String {
    let hosts: Vec<&str> = n
        .servers
        .iter()
        .chain(n.pools.iter())
        .map(String::as_str)
        .collect();
    format!(
        "# Written by cloudsigma-agent from the bootstrap data's ntp\n[Time]\nNTP={}\n",
        hosts.join(" ")
    )
}

pub fn chrony_sources(n: &Ntp) -> String {
    let mut s = String::from("# Written by cloudsigma-agent from the bootstrap data's ntp\n");
    for h in &n.servers {
        s.push_str(&format!("server {h} iburst\n"));
    }
    for h in &n.pools {
        s.push_str(&format!("pool {h} iburst\n"));
    }
    s
}

/// Whether chrony.conf already reads our sources directory (Debian 12 and Ubuntu 22.04 do).
pub fn chrony_reads_sourcedir(conf: &str) -> bool {
    conf.lines().any(|l| {
        let mut w = l.split_whitespace();
        w.next() == Some("sourcedir") && w.next() == Some(CHRONY_SOURCEDIR)
    })
}

pub fn apply(cx: &mut Cx, n: &Ntp) -> Result<()> {
    let client = detect(cx.root, n.client).map_err(Error::Refused)?;
    let (unit, path, body) = match client {
        Client::Chrony => ("chrony", CHRONY_SOURCES, chrony_sources(n)),
        _ => ("systemd-timesyncd", TIMESYNCD_DROPIN, timesyncd_dropin(n)),
    };
    if n.servers.is_empty() && n.pools.is_empty() {
        // cloud-init would write its distro's default pools: the image's own defaults are
        // the same pools, so they are kept.
        cx.info(&format!(
            "ntp: no servers or pools in the data: {unit} keeps the image's configuration"
        ));
    } else {
        let target = cx.path(path);
        atomic_write(
            &target,
            body.as_bytes(),
            0o644,
            Owner {
                uid: Some(0),
                gid: Some(0),
            },
            WriteMode::Replace,
        )
        .at(IoOp::Write, &target)?;
        if client == Client::Chrony {
            chrony_sourcedir(cx)?;
        }
        cx.info(&format!(
            "ntp: {unit} uses {} (in {path})",
            n.servers
                .iter()
                .chain(n.pools.iter())
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !cx.execute {
        cx.info(&format!(
            "ntp: systemctl enable/restart {unit} not run (--root without --execute)"
        ));
        return Ok(());
    }
    sys::check("systemctl", &["enable", unit], None)?;
    sys::check("systemctl", &["restart", unit], None)?;
    Ok(())
}

/// Images whose chrony.conf predates `sourcedir` would never read our sources file.
fn chrony_sourcedir(cx: &mut Cx) -> Result<()> {
    let conf = cx.path(CHRONY_CONF);
    let text = match fs::read_to_string(&conf) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(IoOp::Access, conf, e)),
    };
    if chrony_reads_sourcedir(&text) {
        return Ok(());
    }
    let mut add = String::new();
    if !text.is_empty() && !text.ends_with('\n') {
        add.push('\n');
    }
    add.push_str(&format!(
        "# Added by cloudsigma-agent for the bootstrap data's ntp servers\nsourcedir {}\n",
        CHRONY_SOURCEDIR
    ));
    atomic_write(
        &conf,
        add.as_bytes(),
        0o644,
        Owner::default(),
        WriteMode::Append,
    )
    .at(IoOp::Update, &conf)?;
    cx.info(&format!(
        "ntp: added 'sourcedir {}' to {}",
        CHRONY_SOURCEDIR, CHRONY_CONF
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloudconfig;

    fn p(y: &str) -> Result<cloudconfig::CloudConfig, ConfigError> {
        cloudconfig::parse(y)
    }

    #[test]
    fn capi_shapes() {
        // Enabled: true as the kubeadm provider renders it.
        let c =
            p("ntp:\n  enabled: true\n  servers:\n    - 0.pool.ntp.org\n    - time.example.com\n")
                .unwrap();
        let n = c.ntp.unwrap();
        assert!(n.enabled);
        assert_eq!(n.servers, ["0.pool.ntp.org", "time.example.com"]);
        assert!(c.unsupported.is_empty());
        // Enabled omitted (the provider drops a false/unset `enabled`): cloud-init enables.
        let n = p("ntp:\n  servers:\n    - 10.0.0.1\n")
            .unwrap()
            .ntp
            .unwrap();
        assert!(n.enabled);
        let n = p("ntp: {enabled: false, pools: [pool.ntp.org]}")
            .unwrap()
            .ntp
            .unwrap();
        assert!(!n.enabled);
        assert_eq!(n.pools, ["pool.ntp.org"]);
        assert_eq!(p("ntp:\n").unwrap().ntp, None);
        assert_eq!(p("ntp: {}").unwrap().ntp.unwrap().client, Client::Auto);
        let c = p("ntp: {servers: [a], config: {confpath: /x}}").unwrap();
        assert_eq!(
            c.warnings,
            ["ntp: field 'config' is not implemented: NOT applied"]
        );
    }

    #[test]
    fn bad_input_names_the_key() {
        let key = |y: &str| match p(y) {
            Err(ConfigError::Key { key, msg }) => format!("{key}: {msg}"),
            other => panic!("{other:?}"),
        };
        assert!(key("ntp: [a]").starts_with("ntp: expected a mapping"));
        assert!(key("ntp: {enabled: maybe}").starts_with("ntp.enabled: expected a boolean"));
        assert!(key("ntp: {servers: [{a: 1}]}").starts_with("ntp.servers: expected a list"));
        assert!(key("ntp: {servers: ['a b']}").starts_with("ntp.servers[0]: not a host"));
        assert!(key("ntp: {pools: [ok, \"x\\ny\"]}").starts_with("ntp.pools[1]"));
        assert!(key("ntp: {ntp_client: ntpdate}").contains("not supported"));
    }

    #[test]
    fn rendering_and_detection() {
        let n = Ntp {
            enabled: true,
            servers: vec!["a.example".into()],
            pools: vec!["pool.example".into()],
            client: Client::Auto,
        };
        assert!(timesyncd_dropin(&n).ends_with("[Time]\nNTP=a.example pool.example\n"));
        assert!(chrony_sources(&n).ends_with("server a.example iburst\npool pool.example iburst\n"));
        assert!(chrony_reads_sourcedir(
            "pool x iburst\nsourcedir /etc/chrony/sources.d\n"
        ));
        assert!(!chrony_reads_sourcedir(
            "#sourcedir /etc/chrony/sources.d\n"
        ));

        let d = tempfile::tempdir().unwrap();
        assert!(detect(d.path(), Client::Auto).is_err());
        std::fs::create_dir_all(d.path().join("etc/systemd")).unwrap();
        std::fs::write(d.path().join("etc/systemd/timesyncd.conf"), "").unwrap();
        assert_eq!(detect(d.path(), Client::Auto), Ok(Client::Timesyncd));
        assert!(detect(d.path(), Client::Chrony).is_err());
        std::fs::create_dir_all(d.path().join("etc/chrony")).unwrap();
        assert_eq!(detect(d.path(), Client::Auto), Ok(Client::Chrony));
        assert_eq!(detect(d.path(), Client::Timesyncd), Ok(Client::Timesyncd));
    }
}
