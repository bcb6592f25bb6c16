//! Handshakes: requests with which a sender checks a webhook URL before, or between, real
//! deliveries. They are answered here, without running the workflow:
//!
//! - `HEAD` on the URL: 200 with no body, so probes see that the URL is live;
//! - Meta's `GET ?hub.mode=subscribe&hub.challenge=..&hub.verify_token=..`: the challenge
//!   echoed as plain text when the token is the workflow's `signature.verify_token`, else 403;
//! - Slack's `url_verification` event, once its signature has been verified: the challenge
//!   echoed back as `{"challenge": ...}`.

use crate::auth::secrets_equal;
use crate::config::Workflow;
use crate::error::GatewayError;
use crate::http_reply::Reply;
use serde_json::{json, Value};

/// A handshake answered before the body is read, if the request is one.
pub fn before_body(
    workflow: &Workflow,
    method: &http::Method,
    query: Option<&str>,
) -> Option<Result<Reply, GatewayError>> {
    if method == http::Method::HEAD {
        return Some(Ok(Reply::text(200, "")));
    }
    if method == http::Method::GET {
        return meta_subscription(workflow, query);
    }
    None
}

fn meta_subscription(
    workflow: &Workflow,
    query: Option<&str>,
) -> Option<Result<Reply, GatewayError>> {
    let expected = workflow.signature.as_ref()?.verify_token.as_deref()?;
    let parameters = crate::pipeline::parse_query(query);
    let value = |name: &str| {
        parameters
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    if value("hub.mode")? != "subscribe" {
        return None;
    }

    let token_matches = value("hub.verify_token")
        .is_some_and(|token| secrets_equal(token.as_bytes(), expected.as_bytes()));
    if !token_matches {
        return Some(Err(GatewayError::VerificationFailed));
    }
    Some(match value("hub.challenge") {
        Some(challenge) => Ok(Reply::text(200, challenge)),
        None => Err(GatewayError::BadRequest(
            "the subscription request has no hub.challenge".into(),
        )),
    })
}

/// A handshake answered once the body is read and its signature verified.
pub fn after_signature(workflow: &Workflow, body: &[u8]) -> Option<Reply> {
    let signature = workflow.signature.as_ref()?;
    if signature.scheme.name != "slack" {
        return None;
    }
    let event: Value = serde_json::from_slice(body).ok()?;
    if event.get("type")?.as_str()? != "url_verification" {
        return None;
    }
    let challenge = event.get("challenge")?.as_str()?;
    Some(Reply::json(200, &json!({ "challenge": challenge })))
}
