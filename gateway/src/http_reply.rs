//! A complete HTTP answer built in memory: status, headers and a JSON body. The edge and the
//! admin API both answer with these, so every response carries a Content-Length (Pingora
//! does not add one, and without it the connection could not be kept alive).

use crate::error::GatewayError;
use bytes::Bytes;
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl Reply {
    pub fn json(status: u16, value: &Value) -> Self {
        let mut body = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
        body.push(b'\n');
        Self {
            status,
            headers: vec![("content-type", "application/json".to_string())],
            body: Bytes::from(body),
        }
    }

    /// A plain-text answer, for handshakes that expect a bare value back.
    pub fn text(status: u16, text: &str) -> Self {
        Self {
            status,
            headers: vec![("content-type", "text/plain; charset=utf-8".to_string())],
            body: Bytes::copy_from_slice(text.as_bytes()),
        }
    }

    /// The JSON error response for `error`, with its status and headers, naming the run and
    /// the request when there are some, so a caller can quote them when asking what happened.
    pub fn error(error: &GatewayError, run_id: Option<&str>, request_id: Option<&str>) -> Self {
        let mut body = error.to_json(run_id);
        if let Some(request_id) = request_id {
            body["error"]["request_id"] = Value::String(request_id.to_string());
        }
        let mut reply = Self::json(error.status(), &body);
        reply.headers.extend(error.extra_headers());
        if let Some(run_id) = run_id {
            reply.headers.push(("x-run-id", run_id.to_string()));
        }
        reply
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}
