//! Log (file + stdout for the journal) and the status file. Nothing secret is ever passed here:
//! callers log paths, sizes, modes and counts only (never file contents or command text).

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::fsutil;

pub struct Logger {
    file: Option<File>,
    pub open_error: Option<String>,
    quiet: bool,
    /// A step running on another thread logs here; the main log replays the lines (with their
    /// own timestamps) when the step is joined, so the log's lines never interleave mid-line.
    buffer: Option<Vec<String>>,
}

impl Logger {
    pub fn open(path: &Path, quiet: bool) -> Logger {
        let opened = fsutil::open_private_append(path);
        match opened {
            Ok(f) => Logger {
                file: Some(f),
                open_error: None,
                quiet,
                buffer: None,
            },
            Err(e) => Logger {
                file: None,
                open_error: Some(format!("cannot open log file {}: {e}", path.display())),
                quiet,
                buffer: None,
            },
        }
    }

    /// A logger that only keeps its lines, for [`Logger::replay`].
    pub fn buffered() -> Logger {
        Logger {
            file: None,
            open_error: None,
            quiet: true,
            buffer: Some(Vec::new()),
        }
    }

    /// Write the lines a [`Logger::buffered`] kept, as they were.
    pub fn replay(&mut self, from: Logger) {
        for line in from.buffer.unwrap_or_default() {
            self.write_line(&line);
        }
    }

    pub fn log(&mut self, level: &str, msg: &str) {
        let line = format!("{} {level:<5} {msg}\n", fsutil::now_rfc3339());
        self.write_line(&line);
    }

    fn write_line(&mut self, line: &str) {
        if let Some(b) = self.buffer.as_mut() {
            b.push(line.to_string());
            return;
        }
        if let Some(f) = self.file.as_mut() {
            let _ = f.write_all(line.as_bytes());
        }
        if !self.quiet {
            // stdout goes to the journal under systemd; the timestamp is redundant there but
            // harmless and keeps the two streams identical.
            let _ = std::io::stdout().write_all(line.as_bytes());
        }
    }
    pub fn info(&mut self, msg: &str) {
        self.log("INFO", msg)
    }
    pub fn warn(&mut self, msg: &str) {
        self.log("WARN", msg)
    }
    pub fn error(&mut self, msg: &str) {
        self.log("ERROR", msg)
    }
}

#[derive(Debug, Serialize, Clone)]
pub struct Phase {
    pub name: String,
    /// Milliseconds since the agent started.
    pub start_ms: u64,
    pub duration_ms: u64,
    /// "ok" | "failed" | "skipped"
    pub result: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Serialize, Clone)]
pub struct AddressInfo {
    pub address: String,
    pub prefix: Option<u8>,
}

#[derive(Debug, Serialize, Clone)]
pub struct InterfaceInfo {
    pub name: String,
    pub mac: Option<String>,
    pub addresses: Vec<AddressInfo>,
    /// "public" | "private" | "loopback" | "unknown"
    pub class: String,
    /// VLAN uuid of the matching context NIC (private interfaces).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<String>,
}

#[derive(Debug, Serialize, Clone)]
pub struct StepError {
    pub step: String,
    pub message: String,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub schema: u32,
    pub agent_version: &'static str,
    /// "running" | "success" | "failure" | "skipped"
    pub result: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub duration_ms: u64,
    pub instance_id: Option<String>,
    pub hostname: Option<String>,
    pub user_data_kind: Option<String>,
    pub phases: Vec<Phase>,
    pub interfaces: Vec<InterfaceInfo>,
    pub node_ip: Option<String>,
    /// Where `node_ip` came from: "interface" (DHCP or the operator's configuration) or
    /// "assignment" (the server meta's `k8s-ipv4-<mac>`, configured by the agent); null without.
    pub node_ip_source: Option<&'static str>,
    pub unsupported: Vec<String>,
    pub warnings: Vec<String>,
    pub marker: String,
    pub marker_present: bool,
    pub error: Option<StepError>,
    #[serde(skip)]
    pub t0: Option<Instant>,
}

impl Status {
    pub fn new(marker: &Path) -> Status {
        Status {
            schema: 1,
            agent_version: env!("CARGO_PKG_VERSION"),
            result: "running".into(),
            started_at: fsutil::now_rfc3339(),
            finished_at: None,
            duration_ms: 0,
            instance_id: None,
            hostname: None,
            user_data_kind: None,
            phases: Vec::new(),
            interfaces: Vec::new(),
            node_ip: None,
            node_ip_source: None,
            unsupported: Vec::new(),
            warnings: Vec::new(),
            marker: marker.display().to_string(),
            marker_present: false,
            error: None,
            t0: Some(Instant::now()),
        }
    }

    pub fn elapsed_ms(&self) -> u64 {
        self.t0.map(|t| t.elapsed().as_millis() as u64).unwrap_or(0)
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        json.push(b'\n');
        fsutil::atomic_write(
            path,
            &json,
            0o644,
            fsutil::Owner::default(),
            fsutil::WriteMode::Replace,
        )
        .map(|_| ())
    }
}
