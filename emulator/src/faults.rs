//! Fault injection and per-endpoint request counters.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

/// Runtime-adjustable fault injection (also `GET|PUT /admin/faults`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FaultConfig {
    /// Added to every `/api/2.0/` answer.
    pub latency_ms: u64,
    /// Fraction (0.0–1.0) of `/api/2.0/` requests answered with `error_status` instead.
    pub error_rate: f64,
    /// 500, 503 or 429 (429 carries `Retry-After`).
    pub error_status: u16,
    /// Requests per second accepted before answering 429 with `Retry-After`; 0 = unlimited.
    pub rate_limit_per_sec: u32,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            latency_ms: 0,
            error_rate: 0.0,
            error_status: 503,
            rate_limit_per_sec: 0,
        }
    }
}

/// A one-shot failure: the next `count` requests matching `method` + `path` get `status`.
///
/// `path` matches when it equals the request's normalized pattern (e.g.
/// `/api/2.0/drives/{uuid}/action/`), or is a prefix of the literal request path (e.g.
/// `/api/2.0/servers/` or `/api/2.0/servers/<uuid>/`). A `?query` part (e.g. `?do=clone`) must
/// appear in the request's query string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnceRule {
    /// HTTP method; `None` or `"*"` = any
    #[serde(default)]
    pub method: Option<String>,
    pub path: String,
    #[serde(default = "default_status")]
    pub status: u16,
    #[serde(default = "one")]
    pub count: u32,
}

fn default_status() -> u16 {
    500
}
fn one() -> u32 {
    1
}

impl OnceRule {
    pub fn matches(&self, method: &str, path: &str, pattern: &str, query: &str) -> bool {
        if let Some(m) = &self.method {
            if m != "*" && !m.eq_ignore_ascii_case(method) {
                return false;
            }
        }
        let (rp, rq) = match self.path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (self.path.as_str(), None),
        };
        if let Some(q) = rq {
            if !query.split('&').any(|kv| kv == q) && !query.contains(q) {
                return false;
            }
        }
        let rp_slash = if rp.ends_with('/') {
            rp.to_string()
        } else {
            format!("{rp}/")
        };
        let path_slash = if path.ends_with('/') {
            path.to_string()
        } else {
            format!("{path}/")
        };
        rp_slash == pattern || path_slash.starts_with(rp)
    }
}

/// [D] The line a not-ready serial context sends instead of the context. The real wording is
/// not captured anywhere we could read (cloud-init's `cloudinit/sources/helpers/cloudsigma.py`,
/// the `cepko` package, `cloudsigma/cepgo` and the server-context docs say nothing about it);
/// the reference only records that a stale non-JSON reply has been seen in the field. What
/// matters to clients is that it is one framed line that is not JSON: cloud-init keeps it as a
/// string and its datasource gives up (`server_context['meta']` raises), our agent retries.
pub const NOT_READY_REPLY: &str = "context not ready";

/// The serial context answers "not ready" (the early-boot reply) to the next `requests`
/// requests of a server, then the context again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextNotReady {
    /// Only this server; `None` = every server, each counted on its own.
    #[serde(default)]
    pub server: Option<String>,
    /// How many requests (per server) get the not-ready answer.
    pub requests: u32,
    /// The line sent instead of the context (framed like any answer: line, `\n`, EOT);
    /// default [`NOT_READY_REPLY`]. Printable ASCII only.
    #[serde(default)]
    pub reply: Option<String>,
    /// Answer nothing at all (the client's read times out), instead of a reply line.
    #[serde(default)]
    pub silent: bool,
}

impl ContextNotReady {
    /// Every server's next `requests` requests get [`NOT_READY_REPLY`].
    pub fn every_server(requests: u32) -> ContextNotReady {
        ContextNotReady {
            server: None,
            requests,
            reply: None,
            silent: false,
        }
    }

    /// Refuse replies that would break the framing or the clients' ASCII decoding.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(r) = &self.reply {
            if r.len() > 4096 || !r.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                return Err(
                    "reply must be printable ASCII without newlines, at most 4096 bytes".into(),
                );
            }
        }
        Ok(())
    }
}

/// What the serial context sends instead of the context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialFault {
    /// This line (then `\n` and EOT).
    Reply(String),
    /// Nothing.
    Silent,
}

/// A [`ContextNotReady`] rule and how many requests of each server it has answered.
#[derive(Debug, Clone, Serialize)]
pub struct ContextRule {
    #[serde(flatten)]
    pub rule: ContextNotReady,
    pub answered: BTreeMap<String, u32>,
}

#[derive(Default)]
pub struct Faults {
    pub cfg: FaultConfig,
    pub once: Vec<OnceRule>,
    /// Serial-context faults, first match wins.
    pub context: Vec<ContextRule>,
    window_start: Option<Instant>,
    window_count: u32,
}

/// What to do with a request before handling it.
pub enum Verdict {
    Pass,
    /// Answer this status (with `Retry-After` for 429).
    Fail {
        status: u16,
        reason: &'static str,
    },
    RateLimited {
        retry_after_secs: u64,
    },
}

impl Faults {
    pub fn new(cfg: FaultConfig) -> Faults {
        Faults {
            cfg,
            ..Default::default()
        }
    }

    pub fn add_context_rule(&mut self, rule: ContextNotReady) {
        self.context.push(ContextRule {
            rule,
            answered: BTreeMap::new(),
        });
    }

    /// Whether this serial request of `server` gets a fault instead of the context (and count it).
    pub fn serial_fault(&mut self, server: &str) -> Option<SerialFault> {
        let i = self.context.iter().position(|r| {
            r.rule.server.as_deref().is_none_or(|s| s == server)
                && r.answered.get(server).copied().unwrap_or(0) < r.rule.requests
        })?;
        let r = &mut self.context[i];
        *r.answered.entry(server.to_string()).or_insert(0) += 1;
        let fault = if r.rule.silent {
            SerialFault::Silent
        } else {
            SerialFault::Reply(
                r.rule
                    .reply
                    .clone()
                    .unwrap_or_else(|| NOT_READY_REPLY.to_string()),
            )
        };
        // a rule for one server is done once it answered its count
        if r.rule.server.is_some() && r.answered.get(server) == Some(&r.rule.requests) {
            self.context.remove(i);
        }
        Some(fault)
    }

    pub fn check(&mut self, method: &str, path: &str, pattern: &str, query: &str) -> Verdict {
        // request-rate limit: fixed one-second windows
        if self.cfg.rate_limit_per_sec > 0 {
            let now = Instant::now();
            let start = *self.window_start.get_or_insert(now);
            if now.duration_since(start).as_secs_f64() >= 1.0 {
                self.window_start = Some(now);
                self.window_count = 0;
            }
            self.window_count += 1;
            if self.window_count > self.cfg.rate_limit_per_sec {
                return Verdict::RateLimited {
                    retry_after_secs: 1,
                };
            }
        }
        if let Some(i) = self
            .once
            .iter()
            .position(|r| r.count > 0 && r.matches(method, path, pattern, query))
        {
            let status = self.once[i].status;
            self.once[i].count -= 1;
            if self.once[i].count == 0 {
                self.once.remove(i);
            }
            return Verdict::Fail {
                status,
                reason: "one-shot fault",
            };
        }
        if self.cfg.error_rate > 0.0 && rand::random::<f64>() < self.cfg.error_rate {
            return Verdict::Fail {
                status: self.cfg.error_status,
                reason: "random fault (error_rate)",
            };
        }
        Verdict::Pass
    }
}

/// Distinct `endpoints` keys kept; further new ones are counted under [`OVERFLOW_KEY`]. The
/// emulated API has far fewer (resources × methods × sub-paths), so only a flood of made-up
/// paths or methods reaches the cap.
pub const MAX_ENDPOINTS: usize = 256;
/// The `endpoints` key of requests past [`MAX_ENDPOINTS`].
pub const OVERFLOW_KEY: &str = "{other endpoints}";

/// Request counters (`GET /admin/counters`). Bounded whatever clients send: per-endpoint keys
/// only for authenticated requests, with normalized paths and methods, at most
/// [`MAX_ENDPOINTS`] of them; a request without valid credentials only counts in `total` and
/// `unauthenticated` ([issue 21 item 9] a flood before authentication must not grow memory).
#[derive(Default, Serialize)]
pub struct Counters {
    /// Every request, authenticated or not.
    pub total: u64,
    /// Requests answered 401.
    pub unauthenticated: u64,
    /// `"<METHOD> <normalized path>"` → authenticated requests.
    pub endpoints: BTreeMap<String, u64>,
}

impl Counters {
    /// An authenticated request: `method` (anything but the usual methods counts as `OTHER`)
    /// and `pattern` ([`normalize`]d path).
    pub fn hit(&mut self, method: &str, pattern: &str) {
        self.total += 1;
        let method = match method {
            "GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS" => method,
            _ => "OTHER",
        };
        let key = format!("{method} {pattern}");
        if let Some(n) = self.endpoints.get_mut(&key) {
            *n += 1;
        } else if self.endpoints.len() < MAX_ENDPOINTS {
            self.endpoints.insert(key, 1);
        } else {
            *self.endpoints.entry(OVERFLOW_KEY.to_string()).or_insert(0) += 1;
        }
    }

    /// A request refused with 401: no per-endpoint key.
    pub fn unauthenticated(&mut self) {
        self.total += 1;
        self.unauthenticated += 1;
    }
}

/// `/api/2.0/servers/<uuid>/action/` → `/api/2.0/servers/{uuid}/action/`: the second segment
/// after `/api/2.0/` is an id unless it is `detail`. Unknown resources and paths outside the API
/// collapse into `{other}` so random URLs cannot grow the counter map without bound.
pub fn normalize(path: &str) -> String {
    const KNOWN: [&str; 7] = [
        "servers",
        "drives",
        "libdrives",
        "ips",
        "vlans",
        "tags",
        "global_context",
    ];
    let Some(rest) = path.strip_prefix("/api/2.0") else {
        return "/{other}".to_string();
    };
    let mut out = String::from("/api/2.0/");
    for (i, seg) in rest.split('/').filter(|s| !s.is_empty()).enumerate() {
        if i == 0 && !KNOWN.contains(&seg) {
            out.push_str("{other}/");
            break;
        }
        if i == 1 && seg != "detail" {
            out.push_str("{uuid}");
        } else if i >= 2 && seg.len() > 32 {
            // an id in a sub-resource position (not emulated anyway)
            out.push_str("{uuid}");
        } else {
            out.push_str(seg);
        }
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn normalizes_ids() {
        assert_eq!(
            normalize("/api/2.0/servers/abc/action/"),
            "/api/2.0/servers/{uuid}/action/"
        );
        assert_eq!(
            normalize("/api/2.0/servers/detail"),
            "/api/2.0/servers/detail/"
        );
        assert_eq!(normalize("/api/2.0/ips/1.2.3.4/"), "/api/2.0/ips/{uuid}/");
        assert_eq!(normalize("/api/2.0/whatever123/x/y/"), "/api/2.0/{other}/");
        assert_eq!(normalize("/favicon.ico"), "/{other}");
        assert_eq!(
            normalize("/api/2.0/tags/t/servers/"),
            "/api/2.0/tags/{uuid}/servers/"
        );
    }
    #[test]
    fn context_rules_count_per_server_then_expire() {
        let mut f = Faults::default();
        f.add_context_rule(ContextNotReady::every_server(2));
        f.add_context_rule(ContextNotReady {
            server: Some("b".into()),
            requests: 1,
            reply: Some("busy".into()),
            silent: true,
        });
        let nr = Some(SerialFault::Reply(NOT_READY_REPLY.into()));
        assert_eq!(f.serial_fault("a"), nr);
        assert_eq!(f.serial_fault("a"), nr);
        assert_eq!(f.serial_fault("a"), None);
        assert_eq!(f.serial_fault("b"), nr, "the first matching rule wins");
        assert_eq!(f.serial_fault("b"), nr);
        assert_eq!(f.serial_fault("b"), Some(SerialFault::Silent));
        assert_eq!(f.serial_fault("b"), None);
        assert_eq!(f.context.len(), 1, "the one-server rule is used up");
        assert!(ContextNotReady {
            reply: Some("a\nb".into()),
            ..ContextNotReady::every_server(1)
        }
        .validate()
        .is_err());
    }

    #[test]
    fn once_rule_matching() {
        let r = OnceRule {
            method: Some("POST".into()),
            path: "/api/2.0/drives/{uuid}/action/?do=clone".into(),
            status: 500,
            count: 1,
        };
        assert!(r.matches(
            "POST",
            "/api/2.0/drives/x/action/",
            "/api/2.0/drives/{uuid}/action/",
            "do=clone"
        ));
        assert!(!r.matches(
            "POST",
            "/api/2.0/drives/x/action/",
            "/api/2.0/drives/{uuid}/action/",
            "do=resize"
        ));
        assert!(!r.matches(
            "GET",
            "/api/2.0/drives/x/action/",
            "/api/2.0/drives/{uuid}/action/",
            "do=clone"
        ));
        let p = OnceRule {
            method: None,
            path: "/api/2.0/servers/".into(),
            status: 503,
            count: 1,
        };
        assert!(p.matches(
            "GET",
            "/api/2.0/servers/detail/",
            "/api/2.0/servers/detail/",
            ""
        ));
        assert!(!p.matches("GET", "/api/2.0/drives/", "/api/2.0/drives/", ""));
    }
}
