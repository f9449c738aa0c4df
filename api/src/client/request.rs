//! Sending requests: one attempt ([`Client::attempt`]), the retry rule per method (through the
//! crate's one retry loop, [`RetryPolicy::retry`]), JSON in and out, and listings with paging.
//! The endpoint wrappers (servers.rs, drives.rs, …) are built on the helpers here.

use super::error::{self, RetryAfter};
use super::retry::Try;
use super::{Auth, CallEvent, Client, Error, Identified};
use crate::models::{ListMeta, Objects};
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::time::Instant;
use url::Url;

/// One request to send.
pub(super) struct Req {
    pub(super) method: Method,
    pub(super) url: Url,
    pub(super) body: Option<Vec<u8>>,
    /// DELETE retried after a lost answer may find the object already gone: a 404 on a retry
    /// (not on the first attempt) then means success.
    pub(super) gone_ok_on_retry: bool,
    /// Sent exactly once whatever the method: a read-modify-write PUT must re-read before it is
    /// sent again (a blind resend could overwrite a change made in between).
    pub(super) once: bool,
}

/// A failed attempt: the error, and whether the server asked to wait longer than the cap
/// (such a refusal is returned at once with `retry_after` = the cap, never waited for inside
/// the call).
struct Failed {
    error: Error,
    beyond_cap: bool,
}

impl From<Error> for Failed {
    fn from(error: Error) -> Failed {
        Failed {
            error,
            beyond_cap: false,
        }
    }
}

/// A list page. `meta` is optional so endpoints that answer a bare `{"objects": [...]}` work too.
#[derive(Deserialize)]
struct Page<T> {
    #[serde(default)]
    meta: Option<ListMeta>,
    objects: Vec<T>,
}

/// Create/clone answers: `{"objects": [...]}`, or (tolerated) a bare object.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrObjects<T> {
    Objects(Objects<T>),
    One(T),
}

pub(super) fn path_of(url: &Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    }
}

/// Replace the contents of every double-quoted segment (backslash escapes honoured) with `…`.
fn scrub_quoted(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut chars = msg.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '"' {
            out.push('…');
            let mut escaped = false;
            for q in chars.by_ref() {
                if escaped {
                    escaped = false;
                } else if q == '\\' {
                    escaped = true;
                } else if q == '"' {
                    out.push('"');
                    break;
                }
            }
        }
    }
    out
}

/// Keep the first occurrence of every uuid, preserving order.
fn dedup_by_id<T: Identified>(items: Vec<T>) -> Vec<T> {
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    let mut out = Vec::with_capacity(items.len());
    for it in items {
        if seen.insert(it.id().to_string()) {
            out.push(it);
        }
    }
    out
}

impl Client {
    /// Send `req`; idempotent methods are retried, POSTs only on 429 and only when opted in.
    /// Returns the success status and body.
    pub(super) async fn execute(&self, req: Req) -> Result<(u16, Vec<u8>), Error> {
        let path = path_of(&req.url);
        let method = req.method.as_str();
        self.inner
            .cfg
            .retry
            .retry(
                None,
                |attempt| self.attempt(&req, &path, attempt),
                |attempt, d, _| {
                    tracing::debug!(%method, %path, attempt, delay_ms = d.as_millis() as u64,
                        "cloudsigma api: retrying");
                },
                |slept| {
                    self.observe(CallEvent::RetrySleep {
                        method,
                        path: &path,
                        slept,
                    })
                },
            )
            .await
    }

    /// Attempt number `attempt` of `req`: sent, observed, logged, and judged — whether another
    /// attempt may follow is the rule of this client, decided here: a POST may have run unless
    /// it was refused with 429 (answered before acting), so only idempotent methods are tried
    /// again, and POSTs only on 429 with [`Client::with_post_retry_on_429`].
    async fn attempt(&self, req: &Req, path: &str, attempt: u32) -> Try<(u16, Vec<u8>)> {
        let cfg = &self.inner.cfg;
        let method = req.method.as_str();
        let started = Instant::now();
        self.inner.calls.fetch_add(1, Ordering::Relaxed);
        let mut rb = self
            .inner
            .http
            .request(req.method.clone(), req.url.clone())
            .timeout(cfg.timeout)
            .header(ACCEPT, "application/json");
        rb = match &cfg.auth {
            Auth::Basic { username, password } => rb.basic_auth(username, Some(password)),
            Auth::Bearer(t) => rb.bearer_auth(t),
        };
        if let Some(b) = &req.body {
            rb = rb.header(CONTENT_TYPE, "application/json").body(b.clone());
        }
        let outcome = self.send_once(rb, method, path).await;
        let elapsed = started.elapsed();
        let elapsed_ms = elapsed.as_millis() as u64;
        self.observe(CallEvent::Attempt {
            method,
            path,
            status: match &outcome {
                Ok((status, _)) => Some(*status),
                Err(f) => f.error.status(),
            },
            elapsed,
            attempt,
        });
        let Failed { error, beyond_cap } = match outcome {
            Ok((status, body)) => {
                tracing::debug!(%method, %path, status, elapsed_ms, attempt, "cloudsigma api");
                return Try::Done((status, body));
            }
            Err(f) => f,
        };
        if error.is_not_found() && req.gone_ok_on_retry && attempt > 1 {
            tracing::debug!(%method, %path, status = 404, elapsed_ms, attempt,
                "cloudsigma api: already gone after a retried DELETE");
            return Try::Done((204, Vec::new()));
        }
        tracing::debug!(%method, %path, status = ?error.status(), elapsed_ms, attempt,
            error = %error, "cloudsigma api");
        let idempotent = matches!(req.method, Method::GET | Method::PUT | Method::DELETE);
        let retryable = if req.once {
            false
        } else if idempotent {
            error.is_retryable()
        } else {
            self.post_retry_on_429 && error.status() == Some(429)
        };
        if retryable && !beyond_cap {
            Try::Again(error)
        } else {
            Try::Stop(error)
        }
    }

    /// One HTTP exchange: a 2xx → `Ok((status, body))`; anything else → `Err`, an error status
    /// as [`Error::Api`] with its `Retry-After` capped at `max_retry_after`.
    async fn send_once(
        &self,
        rb: reqwest::RequestBuilder,
        method: &str,
        path: &str,
    ) -> Result<(u16, Vec<u8>), Failed> {
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                Error::RequestTimeout {
                    method: method.to_string(),
                    path: path.to_string(),
                    after: self.inner.cfg.timeout,
                }
            } else {
                Error::Transport {
                    method: method.to_string(),
                    path: path.to_string(),
                    source: e.without_url(),
                }
            }
        };
        let resp = rb.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let headers: HeaderMap = resp.headers().clone();
        let body = resp.bytes().await.map_err(transport)?.to_vec();
        if (200..300).contains(&status) {
            return Ok((status, body));
        }
        let request_id = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let cap = self.inner.cfg.retry.max_retry_after;
        let retry_after = headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(error::parse_retry_after)
            .map(|asked| RetryAfter::capped(asked, cap));
        if let Some(asked) = retry_after.and_then(|r| r.asked_beyond_cap) {
            tracing::warn!(%method, %path, status, asked_secs = asked.as_secs(), cap_secs = cap.as_secs(),
                "cloudsigma api: Retry-After capped (max_retry_after); not waited for inside this call");
        }
        Err(Failed {
            error: error::api_error(
                status,
                method,
                path,
                &body,
                request_id,
                retry_after.map(|r| r.wait),
            ),
            beyond_cap: retry_after.is_some_and(|r| r.asked_beyond_cap.is_some()),
        })
    }

    fn decode<T: DeserializeOwned>(method: &str, url: &Url, body: &[u8]) -> Result<T, Error> {
        serde_json::from_slice(body).map_err(|e| Error::Decode {
            method: method.to_string(),
            path: path_of(url),
            // serde's message names the field and position but may quote the offending value
            // ("invalid type: string \"...\""), which can be a secret from `meta`: drop it.
            message: scrub_quoted(&e.to_string()),
        })
    }

    fn encode<B: Serialize>(body: &B) -> Result<Vec<u8>, Error> {
        serde_json::to_vec(body)
            .map_err(|e| Error::InvalidInput(format!("cannot encode request body: {e}")))
    }

    /// `method` a JSON body (if any) to `segments`/`query` and decode the answer.
    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<T, Error> {
        self.json_sent(method, segments, query, body, false).await
    }

    /// [`Self::json`]; with `once`, never retried by the client (see [`Req::once`]).
    async fn json_sent<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<Vec<u8>>,
        once: bool,
    ) -> Result<T, Error> {
        let url = self.url(segments, query);
        let name = method.as_str().to_string();
        let (_, resp) = self
            .execute(Req {
                method,
                url: url.clone(),
                body,
                gone_ok_on_retry: false,
                once,
            })
            .await?;
        Self::decode(&name, &url, &resp)
    }

    /// `GET` a JSON document at `segments` (generic escape hatch for endpoints not wrapped here).
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<T, Error> {
        self.json(Method::GET, segments, query, None).await
    }

    pub(super) async fn put_json<B: Serialize, T: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: &B,
    ) -> Result<T, Error> {
        let body = Self::encode(body)?;
        self.json(Method::PUT, segments, &[], Some(body)).await
    }

    /// `PUT` sent exactly once (no retry inside the client): for read-modify-writes, whose
    /// caller re-reads before it tries again.
    pub(super) async fn put_json_once<B: Serialize, T: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: &B,
    ) -> Result<T, Error> {
        let body = Self::encode(body)?;
        self.json_sent(Method::PUT, segments, &[], Some(body), true)
            .await
    }

    /// `POST` (retried only on 429 when opted in) and decode the answer.
    pub(super) async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
        body: &B,
    ) -> Result<T, Error> {
        let body = Self::encode(body)?;
        self.json(Method::POST, segments, query, Some(body)).await
    }

    /// `POST` whose answer is `{"objects": [...]}` (or a bare object): the first object.
    /// Creates and clones answer so.
    pub(super) async fn post_first<B: Serialize, T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
        body: &B,
    ) -> Result<T, Error> {
        match self.post_json(segments, query, body).await? {
            OneOrObjects::One(t) => Ok(t),
            OneOrObjects::Objects(o) => o.objects.into_iter().next().ok_or_else(|| Error::Decode {
                method: "POST".into(),
                path: path_of(&self.url(segments, query)),
                message: "the answer's objects list is empty".into(),
            }),
        }
    }

    /// `POST {resource}/` with `{"objects": [item]}`; the first created object.
    pub(super) async fn create_one<B: Serialize, T: DeserializeOwned>(
        &self,
        resource: &str,
        item: &B,
    ) -> Result<T, Error> {
        let body = Objects {
            objects: vec![item],
        };
        self.post_first(&[resource], &[], &body).await
    }

    pub(super) async fn delete_at(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<(), Error> {
        let url = self.url(segments, query);
        self.execute(Req {
            method: Method::DELETE,
            url,
            body: None,
            gone_ok_on_retry: true,
            once: false,
        })
        .await
        .map(|_| ())
    }

    /// Read every page of a listing: `limit`/`offset` until `total_count` objects were read.
    /// Stops on an empty page too, so a server whose `total_count` overstates cannot loop us.
    /// Caller `limit`/`offset` parameters are ignored (the client owns paging).
    pub async fn list_all<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<Vec<T>, Error> {
        let filters: Vec<(&str, &str)> = query
            .iter()
            .copied()
            .filter(|(k, _)| *k != "limit" && *k != "offset")
            .collect();
        let limit = self.page_size.to_string();
        let mut all: Vec<T> = Vec::new();
        loop {
            let offset = all.len().to_string();
            let mut q = filters.clone();
            q.push(("limit", &limit));
            q.push(("offset", &offset));
            let page: Page<T> = self.get_json(segments, &q).await?;
            let n = page.objects.len();
            all.extend(page.objects);
            match page.meta {
                // A short page is not the end by itself (the server may cap `limit` lower than
                // asked); the end is total_count reached, or an empty page.
                Some(m) if n > 0 && (all.len() as u64) < m.total_count => continue,
                _ => return Ok(all),
            }
        }
    }

    /// [`Client::list_all`] without duplicate uuids.
    pub async fn list_unique<T: DeserializeOwned + Identified>(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<Vec<T>, Error> {
        Ok(dedup_by_id(self.list_all(segments, query).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_messages_drop_quoted_values() {
        assert_eq!(
            scrub_quoted(
                r#"invalid type: string "{\"meta\":{\"t\":\"secret\"}}", expected struct Server at line 1 column 9"#
            ),
            "invalid type: string \"…\", expected struct Server at line 1 column 9"
        );
        assert_eq!(scrub_quoted("missing field `uuid`"), "missing field `uuid`");
        // an unterminated quote drops the rest
        assert_eq!(scrub_quoted(r#"x "abc"#), "x \"…");
    }
}
