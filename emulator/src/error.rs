//! API errors in CloudSigma's wire form: a JSON array of `{error_type, error_message, error_point}`.

use axum::http::StatusCode;
use cloudsigma_api::ApiErrorEntry;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub entries: Vec<ApiErrorEntry>,
    /// Extra headers (e.g. `Retry-After` on 429).
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        error_type: &str,
        msg: impl Into<String>,
        point: Option<&str>,
    ) -> ApiError {
        ApiError {
            status,
            entries: vec![ApiErrorEntry {
                error_type: error_type.to_string(),
                error_message: msg.into(),
                error_point: point.map(str::to_string),
            }],
            headers: Vec::new(),
        }
    }
    /// 400 `validation`, `error_point` = offending field.
    pub fn validation(msg: impl Into<String>, point: Option<&str>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "validation", msg, point)
    }
    /// 404 `notexist`.
    /// [V Go SDK tests, pycloudsigma traces] exact wording; `_kind` is for readers only.
    pub fn notexist(_kind: &str, uuid: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "notexist",
            format!("Object with uuid {uuid} does not exist"),
            None,
        )
    }
    /// [V libcloud fixtures start_already_started/stop_already_stopped, Go SDK fixtures] refused
    /// state changes are 403 with `error_type` `permission`.
    pub fn permission(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "permission", msg, None)
    }
    pub fn backend(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "backend", msg, None)
    }
    pub fn body(&self) -> String {
        serde_json::to_string(&self.entries).unwrap_or_else(|_| "[]".into())
    }
}
