//! Who may call the API: HTTP Basic (account e-mail + password) or a Bearer token.

use axum::http::{header, HeaderMap, StatusCode};
use base64::Engine;

use crate::app::App;
use crate::error::ApiError;

pub(crate) fn check_auth(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let unauthorized = || {
        let mut e = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "permission",
            "Authentication failed: wrong username/password or token. Use HTTP Basic auth with the account e-mail and password, or Authorization: Bearer <token>.",
            None,
        );
        e.headers
            .push(("www-authenticate", "Basic realm=\"api\"".into()));
        e
    };
    let Some(h) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(unauthorized());
    };
    if let Some(b64) = h
        .strip_prefix("Basic ")
        .or_else(|| h.strip_prefix("basic "))
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| unauthorized())?;
        let s = String::from_utf8(decoded).map_err(|_| unauthorized())?;
        let (u, p) = s.split_once(':').ok_or_else(unauthorized)?;
        if constant_eq(u, &app.username) & constant_eq(p, &app.password) {
            return Ok(());
        }
    } else if let Some(t) = h
        .strip_prefix("Bearer ")
        .or_else(|| h.strip_prefix("bearer "))
    {
        if let Some(tok) = &app.token {
            if constant_eq(t.trim(), tok) {
                return Ok(());
            }
        }
    }
    Err(unauthorized())
}

fn constant_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
