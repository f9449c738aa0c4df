//! Fault injection and per-endpoint request counters.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

use crate::config::FaultConfig;

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

#[derive(Default)]
pub struct Faults {
    pub cfg: FaultConfig,
    pub once: Vec<OnceRule>,
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

#[derive(Default, Serialize)]
pub struct Counters {
    pub total: u64,
    pub endpoints: BTreeMap<String, u64>,
}

impl Counters {
    pub fn hit(&mut self, key: String) {
        self.total += 1;
        *self.endpoints.entry(key).or_insert(0) += 1;
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
