//! Forwarding runs to backend services: what a workflow forwards (`Forward`, built from its
//! file at load), the named backends with their load balancing and health checks
//! (`backends`), and the HTTP exchange itself over Pingora's pooled connections (`client`).
//!
//! Both the edge (synchronous runs, answers streamed back to the caller) and the run pool
//! (accepted runs, delivered with retries) go through `client`.

pub mod backends;
pub mod client;

use crate::pipeline::Prepared;
use bytes::Bytes;
use client::UpstreamRequest;
use serde_json::{Map, Value};
use std::time::Duration;

/// Caller headers carrying credentials or provider signatures: never forwarded.
pub const CREDENTIAL_HEADERS: [&str; 12] = [
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "cookie",
    "x-hub-signature",
    "x-hub-signature-256",
    "stripe-signature",
    "x-shopify-hmac-sha256",
    "x-slack-signature",
    "x-twilio-signature",
    "webhook-signature",
    "svix-signature",
];

/// Caller headers about this one connection or exchange (RFC 9110 §7.6.1), and `Host`, which
/// names the gateway: never forwarded, and never added by a workflow.
pub const CONNECTION_HEADERS: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "expect",
];

/// Headers the gateway sets on every forwarded request. A caller or a workflow setting them too
/// could make a backend that deduplicates on them drop or merge other runs.
pub const GATEWAY_OWNED: [&str; 6] = [
    "x-run-id",
    "x-workflow-id",
    "x-request-id",
    "idempotency-key",
    "content-length",
    TEST_EVENT_HEADER,
];

/// Marks a forwarded request that came from a test URL, so a backend can tell a test event
/// from a real one.
pub const TEST_EVENT_HEADER: &str = "x-test-event";

/// Whether a header name looks like it carries a secret: a known credential header, or a name
/// with a credential's word in it (see [`crate::auth::looks_secret`]).
pub fn looks_secret(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    CREDENTIAL_HEADERS.contains(&lower.as_str()) || crate::auth::looks_secret(&lower)
}

/// Why a header cannot be passed on or added by a workflow, if it cannot.
pub fn refusal(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    if CONNECTION_HEADERS.contains(&lower.as_str()) {
        Some("is about the caller's own connection")
    } else if GATEWAY_OWNED.contains(&lower.as_str()) {
        Some("is set by the gateway")
    } else if looks_secret(&lower) {
        Some("looks like it carries credentials")
    } else {
        None
    }
}

/// What a workflow sends to its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardBody {
    /// The bytes the caller sent, unchanged.
    Original,
    /// The mapped variables as a JSON object.
    Variables,
    /// The script's result as JSON.
    Script,
}

/// How accepted runs are retried when delivery fails.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// The wait before attempt `next` (2, 3, ...): exponential, capped, with full jitter
    /// over its upper half so that retries from many runs do not arrive together.
    pub fn backoff(&self, next: u32) -> Duration {
        let exponent = next.saturating_sub(2).min(30);
        let ceiling = self
            .initial_backoff
            .saturating_mul(1u32 << exponent)
            .min(self.max_backoff);
        let jitter: f64 = rand::random::<f64>() * 0.5 + 0.5;
        ceiling.mul_f64(jitter)
    }
}

/// One piece of a backend path.
#[derive(Debug, Clone, PartialEq)]
enum PathPart {
    Literal(String),
    Variable(String),
}

/// A backend path with `{variable}` placeholders.
#[derive(Debug, Clone, PartialEq)]
pub struct PathTemplate {
    parts: Vec<PathPart>,
}

impl PathTemplate {
    /// Parses `/tickets/{ticket_id}`; the path must start with `/`, braces must pair.
    pub fn parse(template: &str) -> Result<Self, String> {
        if !template.starts_with('/') {
            return Err(format!("path {template:?} must start with '/'"));
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            let close = rest[open..]
                .find('}')
                .map(|at| open + at)
                .ok_or_else(|| format!("path {template:?} has an unclosed '{{'"))?;
            if open > 0 {
                parts.push(PathPart::Literal(rest[..open].to_string()));
            }
            parts.push(PathPart::Variable(rest[open + 1..close].to_string()));
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("path {template:?} has a '}}' without '{{'"));
        }
        if !rest.is_empty() {
            parts.push(PathPart::Literal(rest.to_string()));
        }
        Ok(Self { parts })
    }

    /// The variables the template names.
    pub fn variables(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|part| match part {
            PathPart::Variable(name) => Some(name.as_str()),
            PathPart::Literal(_) => None,
        })
    }

    /// Fills the placeholders, percent-encoding each value so it stays one path segment.
    pub fn render(&self, variables: &Map<String, Value>) -> String {
        let mut path = String::new();
        for part in &self.parts {
            match part {
                PathPart::Literal(text) => path.push_str(text),
                PathPart::Variable(name) => {
                    let value = match variables.get(name) {
                        Some(Value::String(text)) => text.clone(),
                        Some(Value::Null) | None => String::new(),
                        Some(other) => other.to_string(),
                    };
                    path.push_str(&encode_segment(&value));
                }
            }
        }
        path
    }
}

/// Percent-encodes a value so that it stays one path segment: `/` and every other reserved
/// character are encoded, and so are the dot segments `.` and `..`, which a backend would
/// otherwise resolve against the path (RFC 3986 §5.2.4).
fn encode_segment(value: &str) -> String {
    match value {
        "." => "%2E".to_string(),
        ".." => "%2E%2E".to_string(),
        _ => form_urlencoded::byte_serialize(value.as_bytes())
            .map(|piece| piece.replace('+', "%20"))
            .collect(),
    }
}

/// A workflow's forwarding, validated.
#[derive(Debug, Clone)]
pub struct Forward {
    pub backend: String,
    /// `None`: the caller's method.
    pub method: Option<String>,
    pub path: PathTemplate,
    pub body: ForwardBody,
    /// Lowercased names of caller headers passed on.
    pub pass_headers: Vec<String>,
    pub add_headers: Vec<(String, String)>,
    pub retry: RetryPolicy,
}

/// Identifiers every forwarded request carries, so a backend can correlate and deduplicate.
pub struct RequestIds<'a> {
    pub run_id: &'a str,
    pub workflow_id: &'a str,
    pub request_id: &'a str,
}

/// Builds the request for the backend from a prepared run.
pub fn build_request(
    forward: &Forward,
    caller_method: &str,
    prepared: &Prepared,
    original_body: &Bytes,
    script_result: Option<&Value>,
    ids: &RequestIds<'_>,
) -> UpstreamRequest {
    let (body, content_type) = match (forward.body, script_result) {
        (ForwardBody::Original, _) => (original_body.clone(), caller_content_type(prepared)),
        (ForwardBody::Script, Some(result)) => {
            (json_bytes(result), Some("application/json".into()))
        }
        _ => (
            json_bytes(&Value::Object(prepared.variables.clone())),
            Some("application/json".into()),
        ),
    };

    // Headers the caller's own `Connection` header names are hop-by-hop for this request.
    let nominated = prepared.headers.get("connection").and_then(Value::as_str);
    let mut headers: Vec<(String, String)> = forward
        .pass_headers
        .iter()
        .filter(|name| !is_hop_by_hop(name, nominated) && refusal(name).is_none())
        .filter(|name| name.as_str() != "content-type")
        .filter_map(|name| {
            let value = prepared.headers.get(name)?.as_str()?;
            Some((name.clone(), value.to_string()))
        })
        .collect();
    headers.extend(content_type.map(|value| ("content-type".to_string(), value)));
    headers.extend(forward.add_headers.iter().cloned());
    headers.push(("x-run-id".into(), ids.run_id.to_string()));
    headers.push(("x-workflow-id".into(), ids.workflow_id.to_string()));
    headers.push(("x-request-id".into(), ids.request_id.to_string()));
    // The run id stays the same across retries, so a backend can tell a retry from a new event.
    headers.push(("idempotency-key".into(), ids.run_id.to_string()));

    UpstreamRequest {
        method: forward
            .method
            .clone()
            .unwrap_or_else(|| caller_method.to_string()),
        path: forward.path.render(&prepared.variables),
        headers,
        body,
    }
}

fn caller_content_type(prepared: &Prepared) -> Option<String> {
    prepared.content_type.clone()
}

fn json_bytes(value: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// Whether a backend answer header is hop-by-hop and so not relayed (RFC 9110 §7.6.1),
/// including the headers the answer's own `Connection` header names.
pub fn is_hop_by_hop(name: &str, connection_header: Option<&str>) -> bool {
    const HOP_BY_HOP: [&str; 8] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];
    HOP_BY_HOP.contains(&name)
        || connection_header.is_some_and(|listed| {
            listed
                .split(',')
                .any(|token| token.trim().eq_ignore_ascii_case(name))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn path_template_fills_and_encodes_variables() {
        let template = PathTemplate::parse("/tickets/{id}/notes?by={who}").unwrap();
        assert_eq!(template.variables().collect::<Vec<_>>(), vec!["id", "who"]);
        let variables = json!({ "id": "a/b c", "who": 42 });
        assert_eq!(
            template.render(variables.as_object().unwrap()),
            "/tickets/a%2Fb%20c/notes?by=42"
        );
    }

    #[test]
    fn dot_segments_cannot_climb_out_of_the_path() {
        let template = PathTemplate::parse("/p/{a}/x").unwrap();
        for (value, expected) in [
            ("..", "/p/%2E%2E/x"),
            (".", "/p/%2E/x"),
            ("a.b", "/p/a.b/x"),
        ] {
            let variables = json!({ "a": value });
            assert_eq!(template.render(variables.as_object().unwrap()), expected);
        }
    }

    #[test]
    fn secret_looking_headers_are_recognised() {
        for name in [
            "X-Gitlab-Token",
            "x-amz-security-token",
            "X-Signature",
            "X-Webhook-Secret",
            "authorization",
        ] {
            assert!(looks_secret(name), "{name}");
        }
        assert!(!looks_secret("user-agent"));
    }

    #[test]
    fn path_template_refuses_broken_braces() {
        assert!(PathTemplate::parse("tickets").is_err());
        assert!(PathTemplate::parse("/t/{id").is_err());
        assert!(PathTemplate::parse("/t/id}").is_err());
    }

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
        };
        let second = policy.backoff(2);
        assert!(second >= Duration::from_millis(50) && second <= Duration::from_millis(100));
        let fourth = policy.backoff(4);
        assert!(fourth >= Duration::from_millis(200) && fourth <= Duration::from_millis(400));
        assert!(policy.backoff(30) <= Duration::from_millis(1000));
    }
}

#[cfg(test)]
mod hop_tests {
    use super::is_hop_by_hop;

    #[test]
    fn hop_by_hop_includes_headers_named_by_connection() {
        assert!(is_hop_by_hop("transfer-encoding", None));
        assert!(is_hop_by_hop("x-private", Some("close, X-Private")));
        assert!(!is_hop_by_hop("content-type", Some("close")));
    }
}
