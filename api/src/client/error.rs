//! Typed errors of the REST client.

use crate::models::ApiErrorEntry;
use std::fmt;
use std::time::Duration;

/// Everything a client call can fail with.
///
/// HTTP errors are one variant, [`Error::Api`], with helpers ([`Error::is_not_found`],
/// [`Error::is_unauthorized`], [`Error::status`]) rather than one variant per status, so callers
/// match on what they care about and still see the API's own error entries and request id.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API answered with a non-success status.
    #[error(
        "{method} {path}: HTTP {status}{}{}",
        fmt_entries(errors, message),
        fmt_rid(request_id)
    )]
    Api {
        status: u16,
        method: String,
        path: String,
        /// The API's error body (a JSON array of entries); empty if the body was not one.
        errors: Vec<ApiErrorEntry>,
        /// The raw body (truncated) when it was not a CloudSigma error array, e.g. a proxy page.
        message: Option<String>,
        /// `X-REQUEST-ID` of the answer: quote it to CloudSigma support.
        request_id: Option<String>,
        /// `Retry-After` of the answer, if any (429/503).
        retry_after: Option<Duration>,
    },
    /// The request never got an answer (DNS, connect, TLS, reset).
    #[error("{method} {path}: transport error: {source}{}", fmt_cause(source))]
    Transport {
        method: String,
        path: String,
        #[source]
        source: reqwest::Error,
    },
    /// One attempt exceeded the per-request timeout.
    #[error(
        "{method} {path}: no answer within {:.1?} (per-request timeout)",
        after
    )]
    RequestTimeout {
        method: String,
        path: String,
        after: Duration,
    },
    /// A waiter's deadline passed before the object reached the wanted status.
    #[error(
        "timed out after {waited:.1?} waiting for {what} to become {want} (last status: {last})"
    )]
    Timeout {
        what: String,
        want: String,
        last: String,
        waited: Duration,
    },
    /// A 2xx answer whose body is not what the API documents.
    #[error("{method} {path}: cannot decode the answer: {message}")]
    Decode {
        method: String,
        path: String,
        message: String,
    },
    /// Missing or invalid configuration; the message says what to set and where.
    #[error("configuration error: {0}")]
    Config(String),
    /// A caller-supplied argument cannot be sent (e.g. an empty uuid).
    #[error("invalid argument: {0}")]
    InvalidInput(String),
}

fn fmt_entries(errors: &[ApiErrorEntry], message: &Option<String>) -> String {
    if errors.is_empty() {
        return message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
    }
    let parts: Vec<String> = errors
        .iter()
        .map(|e| match &e.error_point {
            Some(p) => format!("{} ({}): {}", e.error_type, p, e.error_message),
            None => format!("{}: {}", e.error_type, e.error_message),
        })
        .collect();
    format!(": {}", parts.join("; "))
}

/// The innermost cause of a transport error (reqwest's own message is only "error sending
/// request"), with a hint when it is an untrusted server certificate: the usual cause is a
/// private CA (an HTTPS emulator, a TLS-inspecting proxy) that needs `ca_file`.
fn fmt_cause(e: &reqwest::Error) -> String {
    let mut last: Option<&dyn std::error::Error> = None;
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        last = Some(c);
        cur = c.source();
    }
    let Some(root) = last else {
        return String::new();
    };
    let root = root.to_string();
    let hint = if root.contains("certificate") {
        "; TLS: the server's certificate is not trusted — for a private CA set ca_file in the \
         config file, $CLOUDSIGMA_CA_FILE or --ca-file"
    } else {
        ""
    };
    format!(" ({root}){hint}")
}

fn fmt_rid(rid: &Option<String>) -> String {
    rid.as_deref()
        .map(|r| format!(" [request id {r}]"))
        .unwrap_or_default()
}

impl Error {
    /// HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    pub fn is_unauthorized(&self) -> bool {
        self.status() == Some(401)
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. } | Error::RequestTimeout { .. })
    }

    /// The API's error entries (empty for non-API errors).
    pub fn api_errors(&self) -> &[ApiErrorEntry] {
        match self {
            Error::Api { errors, .. } => errors,
            _ => &[],
        }
    }

    pub fn request_id(&self) -> Option<&str> {
        match self {
            Error::Api { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }

    /// Worth retrying *if the request is idempotent*: 429, 5xx, connection problems, timeouts.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Api { status, .. } => *status == 429 || (500..=599).contains(status),
            Error::Transport { source, .. } => {
                source.is_connect()
                    || source.is_timeout()
                    || source.is_request()
                    || source.is_body()
            }
            Error::RequestTimeout { .. } => true,
            _ => false,
        }
    }

    /// `Retry-After` the server asked for.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Build an [`Error::Api`] from an error answer's parts.
pub(crate) fn api_error(
    status: u16,
    method: &str,
    path: &str,
    body: &[u8],
    request_id: Option<String>,
    retry_after: Option<Duration>,
) -> Error {
    let (errors, message) = parse_error_body(body);
    Error::Api {
        status,
        method: method.to_string(),
        path: path.to_string(),
        errors,
        message,
        request_id,
        retry_after,
    }
}

/// CloudSigma answers errors with a JSON array of entries; tolerate a single object too, and
/// keep a short excerpt of anything else (HTML from a proxy, plain text).
pub(crate) fn parse_error_body(body: &[u8]) -> (Vec<ApiErrorEntry>, Option<String>) {
    if let Ok(v) = serde_json::from_slice::<Vec<ApiErrorEntry>>(body) {
        return (v, None);
    }
    if let Ok(e) = serde_json::from_slice::<ApiErrorEntry>(body) {
        return (vec![e], None);
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return (Vec::new(), None);
    }
    const MAX: usize = 300;
    let excerpt: String = text.chars().take(MAX).collect();
    let excerpt = if text.chars().count() > MAX {
        format!("{excerpt}…")
    } else {
        excerpt
    };
    (Vec::new(), Some(excerpt))
}

/// `Retry-After` as the server sent it: delay-seconds (integer or decimal) or an HTTP-date
/// (RFC 9110 §10.2.3); a date in the past means "now". Unparseable values are ignored (the
/// exponential backoff applies). Not yet capped: see [`RetryAfter::capped`].
pub(crate) fn parse_retry_after(v: &str) -> Option<Duration> {
    parse_retry_after_at(v, std::time::SystemTime::now())
}

pub(crate) fn parse_retry_after_at(v: &str, now: std::time::SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<f64>() {
        if !(secs.is_finite() && secs >= 0.0) {
            return None;
        }
        // Absurdly large values saturate; the cap brings them down anyway.
        return Some(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A `Retry-After` brought down to the client's cap ([`super::RetryPolicy::max_retry_after`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryAfter {
    /// What the error carries and callers may wait: never more than the cap.
    pub(crate) wait: Duration,
    /// The server asked for more than the cap (the value it asked for).
    pub(crate) asked_beyond_cap: Option<Duration>,
}

impl RetryAfter {
    /// `asked` capped at `cap`. Why a cap at all: one `Retry-After: 86400` (a proxy's
    /// maintenance page, a clock-skewed HTTP-date) would otherwise park a caller that schedules
    /// its own retry from [`Error::retry_after`] — the controller's server listing — for a day.
    pub(crate) fn capped(asked: Duration, cap: Duration) -> RetryAfter {
        if asked > cap {
            RetryAfter {
                wait: cap,
                asked_beyond_cap: Some(asked),
            }
        } else {
            RetryAfter {
                wait: asked,
                asked_beyond_cap: None,
            }
        }
    }
}

impl fmt::Display for ApiErrorEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error_type, self.error_message)?;
        if let Some(p) = &self.error_point {
            write!(f, " ({p})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_error_array() {
        let body = br#"[{"error_point": null, "error_type": "notexist", "error_message": "Object with uuid 1 does not exist"}]"#;
        let e = api_error(
            404,
            "GET",
            "/api/2.0/drives/1/",
            body,
            Some("rid-1".into()),
            None,
        );
        assert!(e.is_not_found());
        assert!(!e.is_retryable());
        assert_eq!(e.api_errors()[0].error_type, "notexist");
        assert_eq!(e.request_id(), Some("rid-1"));
        let s = e.to_string();
        assert!(
            s.contains("GET /api/2.0/drives/1/: HTTP 404: notexist: Object with uuid 1")
                && s.contains("rid-1"),
            "{s}"
        );
    }

    #[test]
    fn parses_single_object_and_garbage() {
        let (v, m) = parse_error_body(
            br#"{"error_point":"size","error_type":"validation","error_message":"too small"}"#,
        );
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].error_point.as_deref(), Some("size"));
        assert!(m.is_none());
        let (v, m) = parse_error_body(b"<html>Bad gateway</html>");
        assert!(v.is_empty());
        assert_eq!(m.as_deref(), Some("<html>Bad gateway</html>"));
        let long = "x".repeat(1000);
        let (_, m) = parse_error_body(long.as_bytes());
        assert!(m.unwrap().chars().count() <= 301);
        assert_eq!(parse_error_body(b""), (Vec::new(), None));
    }

    #[test]
    fn retryable_statuses() {
        for (s, r) in [
            (429, true),
            (500, true),
            (503, true),
            (400, false),
            (401, false),
            (404, false),
            (409, false),
        ] {
            assert_eq!(
                api_error(s, "GET", "/", b"", None, None).is_retryable(),
                r,
                "{s}"
            );
        }
        assert!(!Error::Config("x".into()).is_retryable());
    }

    #[test]
    fn retry_after_values() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        // an HTTP-date in the past: retry now; in the future: wait until then
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(
            parse_retry_after_at("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("NaN"), None);
        assert_eq!(parse_retry_after("1e30"), Some(Duration::MAX));
    }

    /// A day, in either form, is brought down to the cap (and says what was asked).
    #[test]
    fn retry_after_of_a_day_is_capped_in_both_forms() {
        let cap = Duration::from_secs(60);
        let day = Duration::from_secs(86_400);
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        for header in ["86400", "Thu, 22 Oct 2015 07:28:00 GMT"] {
            let asked = parse_retry_after_at(header, now).expect(header);
            assert_eq!(asked, day, "{header}");
            let ra = RetryAfter::capped(asked, cap);
            assert_eq!(ra.wait, cap, "{header}");
            assert_eq!(ra.asked_beyond_cap, Some(day), "{header}");
        }
        let ra = RetryAfter::capped(Duration::from_secs(2), cap);
        assert_eq!(
            (ra.wait, ra.asked_beyond_cap),
            (Duration::from_secs(2), None)
        );
        assert_eq!(RetryAfter::capped(cap, cap).asked_beyond_cap, None);
    }
}
