//! The errors a webhook request can end with, and the one place that decides their HTTP
//! status, stable error code and JSON body.
//!
//! Every refusal the edge sends goes through [`GatewayError`]; nothing else in the crate picks
//! a status code for an error. Messages are lowercase, name the offending value where that is
//! safe, and never carry secrets or script internals.

use serde_json::{json, Value};

/// One schema violation: where in the payload, and what is wrong there.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// JSON pointer into the payload (`""` for the document itself).
    pub instance_path: String,
    pub message: String,
}

/// Why a webhook request did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no workflow is reachable at this url")]
    NotFound,

    #[error("workflow {0} is not active")]
    WorkflowInactive(String),

    #[error("method {method} is not allowed here; allowed: {allowed}")]
    MethodNotAllowed { method: String, allowed: String },

    #[error("{0}")]
    Unauthorized(&'static str),

    #[error("the request's signature does not hold: {0}")]
    InvalidSignature(&'static str),

    #[error("the subscription's verify token is not this workflow's")]
    VerificationFailed,

    #[error("requests from this address are not allowed for this workflow")]
    AddressNotAllowed,

    #[error("too many requests for this {scope}; retry in {retry_after_seconds} s")]
    RateLimited {
        /// `workflow` or `api key`: whose limit was reached.
        scope: &'static str,
        retry_after_seconds: u64,
    },

    #[error(
        "this event is being run for an earlier request with the same idempotency key; retry later"
    )]
    DuplicateInProgress,

    #[error("the idempotency key is missing: {0}")]
    IdempotencyKeyMissing(String),

    #[error("request body exceeds the limit of {limit_bytes} bytes")]
    PayloadTooLarge { limit_bytes: usize },

    #[error("content type {0:?} is not accepted; send application/json")]
    UnsupportedMediaType(String),

    #[error("request body is not valid json: {0}")]
    InvalidJson(String),

    #[error("json nesting is deeper than the limit of {limit} levels")]
    JsonTooDeep { limit: usize },

    #[error("payload does not match the workflow's schema: {total} violation(s){}", listed_note(*.total, .violations.len()))]
    SchemaViolation {
        total: usize,
        violations: Vec<Violation>,
    },

    #[error("required field {0:?} is missing")]
    MissingField(String),

    #[error("field {name:?} {reason}")]
    InvalidField { name: String, reason: String },

    #[error("{message}")]
    Rejected { status: u16, message: String },

    #[error("the workflow's script failed")]
    ScriptError,

    #[error("the workflow's script {0}")]
    ScriptTimeout(&'static str),

    #[error("too many runs are waiting; retry later")]
    Overloaded { retry_after_seconds: u64 },

    #[error("the run journal cannot be written, so the run was not accepted; retry later")]
    JournalUnavailable,

    #[error("the run had used its {attempts} attempt(s) before it could start again")]
    AttemptsExhausted { attempts: u32 },

    #[error("run {0:?} has not ended, so it cannot be replayed")]
    RunNotFinished(String),

    #[error("backend {backend} is unavailable: {reason}")]
    BackendUnavailable {
        backend: String,
        /// 502 when the backend failed, 503 when no address of it is healthy.
        status: u16,
        reason: String,
    },

    /// An accepted run's backend answered with a client error, or kept failing until the
    /// attempts ran out; `status` is its last answer.
    #[error("backend {backend} answered {status}")]
    BackendRejected { backend: String, status: u16 },

    #[error("backend {backend} did not answer in time: {reason}")]
    BackendTimeout { backend: String, reason: String },

    #[error("the request body did not arrive in time")]
    RequestTimeout,

    #[error("the request could not be read: {0}")]
    BadRequest(String),

    #[error("the gateway failed to answer")]
    Internal,

    #[error("no admin endpoint at {0:?}")]
    UnknownEndpoint(String),

    #[error("no workflow with id {0:?} is loaded")]
    UnknownWorkflow(String),

    #[error("no run {0:?} is known")]
    UnknownRun(String),

    #[error("no sample {0:?} is kept for this workflow")]
    UnknownSample(String),

    #[error("sample {0:?} kept only the start of its body, so it cannot be replayed")]
    SampleTruncated(String),

    #[error("query parameter {name:?} {reason}")]
    InvalidParameter { name: String, reason: String },

    #[error("the change could not be saved, so it was not made: {0}")]
    StateNotSaved(String),

    #[error("the configuration has {count} problem(s); the running configuration stays in force")]
    ConfigInvalid { count: usize },
}

fn listed_note(total: usize, listed: usize) -> String {
    if listed < total {
        format!(", the first {listed} listed")
    } else {
        String::new()
    }
}

impl GatewayError {
    /// The HTTP status a client expects for this error.
    pub fn status(&self) -> u16 {
        match self {
            Self::NotFound
            | Self::WorkflowInactive(_)
            | Self::UnknownEndpoint(_)
            | Self::UnknownWorkflow(_)
            | Self::UnknownRun(_)
            | Self::UnknownSample(_) => 404,
            Self::SampleTruncated(_) => 409,
            Self::InvalidParameter { .. } => 400,
            Self::StateNotSaved(_) => 500,
            Self::ConfigInvalid { .. } => 422,
            Self::MethodNotAllowed { .. } => 405,
            Self::Unauthorized(_) | Self::InvalidSignature(_) => 401,
            Self::VerificationFailed | Self::AddressNotAllowed => 403,
            Self::RateLimited { .. } => 429,
            Self::DuplicateInProgress => 409,
            Self::IdempotencyKeyMissing(_) => 400,
            Self::PayloadTooLarge { .. } => 413,
            Self::UnsupportedMediaType(_) => 415,
            Self::InvalidJson(_) | Self::JsonTooDeep { .. } | Self::BadRequest(_) => 400,
            Self::SchemaViolation { .. } | Self::MissingField(_) | Self::InvalidField { .. } => 422,
            Self::Rejected { status, .. } => *status,
            Self::ScriptError | Self::Internal => 500,
            Self::ScriptTimeout(_) => 504,
            Self::Overloaded { .. } | Self::JournalUnavailable => 503,
            Self::AttemptsExhausted { .. } => 502,
            Self::RunNotFinished(_) => 409,
            Self::RequestTimeout => 408,
            Self::BackendUnavailable { status, .. } => *status,
            Self::BackendTimeout { .. } => 504,
            Self::BackendRejected { status, .. } => *status,
        }
    }

    /// The stable, machine-readable code. Clients branch on this, so it never changes.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::WorkflowInactive(_) => "workflow_inactive",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::Unauthorized(_) => "unauthorized",
            Self::InvalidSignature(_) => "invalid_signature",
            Self::VerificationFailed => "verification_failed",
            Self::AddressNotAllowed => "address_not_allowed",
            Self::RateLimited { .. } => "rate_limited",
            Self::DuplicateInProgress => "duplicate_in_progress",
            Self::IdempotencyKeyMissing(_) => "idempotency_key_missing",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::InvalidJson(_) => "invalid_json",
            Self::JsonTooDeep { .. } => "json_too_deep",
            Self::SchemaViolation { .. } => "schema_violation",
            Self::MissingField(_) => "missing_field",
            Self::InvalidField { .. } => "invalid_field",
            Self::Rejected { .. } => "rejected",
            Self::ScriptError => "script_error",
            Self::ScriptTimeout(_) => "script_timeout",
            Self::Overloaded { .. } => "overloaded",
            Self::JournalUnavailable => "journal_unavailable",
            Self::AttemptsExhausted { .. } => "attempts_exhausted",
            Self::RunNotFinished(_) => "run_not_finished",
            Self::RequestTimeout => "request_timeout",
            Self::BadRequest(_) => "bad_request",
            Self::Internal => "internal_error",
            Self::BackendUnavailable { .. } => "backend_unavailable",
            Self::BackendTimeout { .. } => "backend_timeout",
            Self::BackendRejected { .. } => "backend_rejected",
            Self::UnknownEndpoint(_) => "not_found",
            Self::UnknownWorkflow(_) => "workflow_not_found",
            Self::UnknownRun(_) => "run_not_found",
            Self::UnknownSample(_) => "sample_not_found",
            Self::SampleTruncated(_) => "sample_truncated",
            Self::InvalidParameter { .. } => "invalid_parameter",
            Self::StateNotSaved(_) => "state_not_saved",
            Self::ConfigInvalid { .. } => "config_invalid",
        }
    }

    /// Headers the status calls for (`Allow` on 405, `Retry-After` on 503, ...).
    pub fn extra_headers(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::MethodNotAllowed { allowed, .. } => vec![("allow", allowed.clone())],
            Self::Overloaded {
                retry_after_seconds,
            }
            | Self::RateLimited {
                retry_after_seconds,
                ..
            } => vec![("retry-after", retry_after_seconds.to_string())],
            Self::DuplicateInProgress => vec![("retry-after", "1".to_string())],
            Self::JournalUnavailable => vec![("retry-after", "5".to_string())],
            Self::BackendUnavailable { status: 503, .. } => vec![("retry-after", "5".to_string())],
            Self::Unauthorized(_) | Self::Rejected { status: 401, .. } => vec![(
                "www-authenticate",
                "Bearer realm=\"webhook-gateway\"".to_string(),
            )],
            _ => Vec::new(),
        }
    }

    /// The JSON body: `{"error": {"code", "message", ...}}`, with the run id when there is one.
    pub fn to_json(&self, run_id: Option<&str>) -> Value {
        let mut error = json!({ "code": self.code(), "message": self.to_string() });

        match self {
            Self::SchemaViolation { violations, .. } => {
                let listed: Vec<Value> = violations
                    .iter()
                    .map(|v| json!({ "instance_path": v.instance_path, "message": v.message }))
                    .collect();
                error["violations"] = Value::Array(listed);
            }
            Self::MissingField(name) | Self::InvalidField { name, .. } => {
                error["field"] = Value::String(name.clone());
            }
            _ => {}
        }

        if let Some(run_id) = run_id {
            error["run_id"] = Value::String(run_id.to_string());
        }
        json!({ "error": error })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_a_client_status_or_a_documented_server_one() {
        let cases = [
            (GatewayError::NotFound, 404, "not_found"),
            (
                GatewayError::PayloadTooLarge { limit_bytes: 1 },
                413,
                "payload_too_large",
            ),
            (
                GatewayError::ScriptTimeout("timed out"),
                504,
                "script_timeout",
            ),
            (
                GatewayError::Overloaded {
                    retry_after_seconds: 1,
                },
                503,
                "overloaded",
            ),
        ];
        for (error, status, code) in cases {
            assert_eq!(error.status(), status);
            assert_eq!(error.code(), code);
        }
    }

    #[test]
    fn error_body_carries_run_id_and_violations() {
        let error = GatewayError::SchemaViolation {
            total: 1,
            violations: vec![Violation {
                instance_path: "/id".into(),
                message: "bad".into(),
            }],
        };
        let body = error.to_json(Some("run-1"));
        assert_eq!(body["error"]["run_id"], "run-1");
        assert_eq!(body["error"]["violations"][0]["instance_path"], "/id");
    }
}
