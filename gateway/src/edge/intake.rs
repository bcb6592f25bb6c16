//! Admission of a request to a workflow, cheapest refusal first: caller address (checked
//! before handshakes too), method, API key, rate and concurrency limits, declared size; then the body, capped and timed, its
//! signature over the bytes received, and its content coding undone. Then, once the event
//! is decoded, its idempotency key: a repeat of an event already run is answered as it was
//! the first time, not run again.

use crate::auth::ApiKey;
use crate::config::{IdempotencySource, Workflow};
use crate::error::GatewayError;
use crate::http_reply::Reply;
use crate::limits::{rate_limited, Gauge, Permit};
use crate::metrics::{timed, Phase, PhaseLatency};
use crate::network::{self, Caller};
use crate::pipeline::Prepared;
use crate::registry::LiveWorkflow;
use crate::server::{GatewayState, Snapshot};
use crate::shared_state::{Claim, FirstAnswer, PendingKey};
use crate::signature::SignedRequest;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use pingora::proxy::Session;
use pingora::ErrorType;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Instant;

/// The header that marks an answer given again to a repeated event.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// A request let in, with its body, and the places it holds under concurrency limits until
/// it is answered.
pub struct Admitted {
    pub body: Bytes,
    pub permits: Vec<Permit>,
}

/// The checks every request to a workflow's URLs passes before its body is used. The time of
/// each goes to `latency`, when given (production URLs).
pub async fn admit(
    session: &mut Session,
    state: &GatewayState,
    snapshot: &Snapshot,
    workflow: &Workflow,
    live: &LiveWorkflow,
    latency: Option<&PhaseLatency>,
) -> Result<Admitted, GatewayError> {
    let request = session.req_header();
    let method = request.method.as_str();
    if !workflow.allows_method(method) {
        return Err(GatewayError::MethodNotAllowed {
            method: method.to_string(),
            allowed: workflow.methods.join(", "),
        });
    }
    let caller = caller_of(session, snapshot);
    let key = timed(latency, Phase::Auth, || {
        let keys = &snapshot.config.keys;
        keys.authenticate(&workflow.key_policy, &request.headers, request.uri.query())
    })?;
    let permits = enter(state, workflow, live, key)?;
    // A workflow that a signature authenticates counts its rate once the signature holds:
    // forged requests must not use up what the real sender may send.
    let by_signature = workflow.signature.is_some();
    if !by_signature {
        take_tokens(state, workflow, key)?;
    }
    let declared = declared_length(session, workflow.max_body_bytes)?;

    let total_timeout = snapshot.config.server.body_total_timeout;
    let reading = Instant::now();
    let body = read_body(session, workflow.max_body_bytes, declared, total_timeout).await;
    if let Some(latency) = latency {
        latency.observe(Phase::Body, reading.elapsed());
    }
    let body = body?;

    // Over the bytes exactly as received, before anything parses them.
    let request = session.req_header();
    if let Some(signature) = &workflow.signature {
        let url = public_url(snapshot, &caller, &request.uri);
        let signed = SignedRequest {
            headers: &request.headers,
            body: &body,
            url: &url,
        };
        timed(latency, Phase::Signature, || {
            signature.verify(&signed, crate::signature::now())
        })?;
        take_tokens(state, workflow, key)?;
    }
    let coding = request
        .headers
        .get(http::header::CONTENT_ENCODING)
        .map(|value| value.to_str().unwrap_or("(not text)"));
    let body = crate::payload::decompress(coding, body, workflow.max_body_bytes)?;
    Ok(Admitted { body, permits })
}

/// Refuses a caller outside the workflow's `allow_ips`, before anything else about the
/// request is looked at, handshakes and probes included.
pub fn check_address(
    session: &Session,
    snapshot: &Snapshot,
    workflow: &Workflow,
) -> Result<(), GatewayError> {
    if workflow.allow_ips.is_empty() {
        return Ok(());
    }
    let allowed = caller_of(session, snapshot)
        .address
        .is_some_and(|address| network::any_contains(&workflow.allow_ips, address));
    if allowed {
        Ok(())
    } else {
        Err(GatewayError::AddressNotAllowed)
    }
}

/// The caller of `session`, as far as the trusted proxies let the gateway see.
pub fn caller_of(session: &Session, snapshot: &Snapshot) -> Caller {
    let peer = session
        .client_addr()
        .and_then(|address| address.as_inet())
        .map(|address| address.ip());
    network::caller(
        peer,
        &session.req_header().headers,
        &snapshot.config.server.trusted_proxies,
    )
}

/// The URL as the sender called it: the scheme and host a trusted proxy reports, else the
/// configured `server.public_base_url`, then the path and query received.
fn public_url(snapshot: &Snapshot, caller: &Caller, uri: &http::Uri) -> String {
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    match &caller.forwarded_host {
        Some(host) => {
            let scheme = caller.forwarded_proto.as_deref().unwrap_or("https");
            format!("{scheme}://{host}{path_and_query}")
        }
        None => format!("{}{path_and_query}", snapshot.config.server.public_base_url),
    }
}

/// Takes a place under the workflow's and the key's concurrency limits; refuses with 429
/// when either is full. Places are held until the request ends.
fn enter(
    state: &GatewayState,
    workflow: &Workflow,
    live: &LiveWorkflow,
    key: Option<&ApiKey>,
) -> Result<Vec<Permit>, GatewayError> {
    let full = |scope| GatewayError::RateLimited {
        scope,
        retry_after_seconds: 1,
    };
    let mut permits = Vec::new();
    if let Some(max) = workflow.limits.max_concurrent {
        permits.push(live.gauge.enter(max).ok_or(full("workflow"))?);
    }
    if let Some((key, max)) = key.and_then(|key| Some((key, key.limits.max_concurrent?))) {
        let gauge: Arc<Gauge> = state.key_gauges.of(&key.name);
        permits.push(gauge.enter(max).ok_or(full("api key"))?);
    }
    Ok(permits)
}

/// Takes a token from the key's bucket, then the workflow's; refuses with 429 when either is
/// empty. A key refused spends nothing of the workflow's rate, and a request the workflow
/// refuses gets its key's token back, so one busy key cannot starve the others.
fn take_tokens(
    state: &GatewayState,
    workflow: &Workflow,
    key: Option<&ApiKey>,
) -> Result<(), GatewayError> {
    let shared = &state.shared;
    let key_bucket = key.and_then(|key| Some((format!("key:{}", key.name), key.limits.rate?)));
    if let Some((bucket, rate)) = &key_bucket {
        shared
            .take_token(bucket, *rate)
            .map_err(|wait| rate_limited("api key", wait))?;
    }
    if let Some(rate) = workflow.limits.rate {
        let bucket = format!("workflow:{}", workflow.id);
        if let Err(wait) = shared.take_token(&bucket, rate) {
            if let Some((bucket, rate)) = &key_bucket {
                shared.give_back_token(bucket, *rate);
            }
            return Err(rate_limited("workflow", wait));
        }
    }
    Ok(())
}

/// The declared Content-Length, refused with 413 before any byte of the body is read.
fn declared_length(session: &Session, limit: usize) -> Result<Option<usize>, GatewayError> {
    let Some(value) = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
    else {
        return Ok(None);
    };
    let length = value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .ok_or_else(|| GatewayError::BadRequest("content-length is not a number".into()))?;

    match usize::try_from(length) {
        Ok(length) if length <= limit => Ok(Some(length)),
        _ => Err(GatewayError::PayloadTooLarge { limit_bytes: limit }),
    }
}

/// Reads the whole body, failing with 413 as soon as it passes `limit`: the rest is never
/// buffered, and the connection is closed after the answer. Each read waits at most
/// `server.body_read_timeout_ms` and the whole body `server.body_total_timeout_ms`, so a
/// sender that trickles bytes cannot hold a connection open indefinitely.
async fn read_body(
    session: &mut Session,
    limit: usize,
    declared: Option<usize>,
    total_timeout: std::time::Duration,
) -> Result<Bytes, GatewayError> {
    let outcome = tokio::time::timeout(total_timeout, read_capped(session, limit, declared)).await;
    let outcome = outcome.unwrap_or(Err(GatewayError::RequestTimeout));
    if outcome.is_err() {
        // What is left of the request on the wire cannot be trusted to frame the next one.
        session.set_keepalive(None);
    }
    outcome
}

async fn read_capped(
    session: &mut Session,
    limit: usize,
    declared: Option<usize>,
) -> Result<Bytes, GatewayError> {
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0));
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(GatewayError::PayloadTooLarge { limit_bytes: limit });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(error) if matches!(error.etype(), ErrorType::ReadTimedout) => {
                return Err(GatewayError::RequestTimeout)
            }
            Err(error) => {
                let reason = error.etype().as_str().to_lowercase();
                return Err(GatewayError::BadRequest(reason));
            }
        }
    }
}

/// What the idempotency check found for one event.
pub enum Keyed {
    /// The workflow has no idempotency key, or this event carries none.
    Unkeyed,
    /// The first request with this key: it runs, and keeps the key when it succeeds.
    First(PendingKey),
    /// The event already ran: answer as the first time.
    Repeat(Arc<FirstAnswer>),
}

/// Claims the event's idempotency key, if the workflow has one.
pub fn claim_key(
    state: &GatewayState,
    workflow: &Workflow,
    headers: &HeaderMap,
    prepared: &Prepared,
) -> Result<Keyed, GatewayError> {
    let Some(idempotency) = &workflow.idempotency else {
        return Ok(Keyed::Unkeyed);
    };
    let Some(key) = event_key(&idempotency.source, headers, &prepared.event) else {
        if idempotency.required {
            let place = match &idempotency.source {
                IdempotencySource::Header(name) => format!("header {name}"),
                IdempotencySource::Pointer(pointer) => format!("body at {:?}", pointer.as_str()),
            };
            return Err(GatewayError::IdempotencyKeyMissing(place));
        }
        return Ok(Keyed::Unkeyed);
    };

    // Keys are the sender's text, of any length: stored as digests, per workflow.
    let stored = format!(
        "{}:{}",
        workflow.id,
        hex::encode(Sha256::digest(key.as_bytes()))
    );
    Ok(match state.shared.claim(&stored, idempotency.ttl) {
        Claim::Fresh(claim) => {
            Keyed::First(PendingKey::new(Arc::clone(&state.shared), stored, claim))
        }
        Claim::Done(answer) => Keyed::Repeat(answer),
        Claim::InProgress => return Err(GatewayError::DuplicateInProgress),
    })
}

/// The key's text: a header's value, or a string or number in the body. Empty counts as none.
fn event_key(source: &IdempotencySource, headers: &HeaderMap, event: &Value) -> Option<String> {
    let key = match source {
        IdempotencySource::Header(name) => headers.get(name)?.to_str().ok()?.trim().to_string(),
        IdempotencySource::Pointer(pointer) => match pointer.resolve(event)? {
            Value::String(text) => text.clone(),
            Value::Number(number) => number.to_string(),
            _ => return None,
        },
    };
    (!key.is_empty()).then_some(key)
}

/// The answer to a repeated event: the first answer again when it was kept, else a notice
/// naming the first run. Either way marked with [`REPLAYED_HEADER`].
pub fn repeat_reply(first: &FirstAnswer) -> Reply {
    let mut reply = match &first.body {
        Some(body) => Reply {
            status: first.status,
            headers: [
                ("content-type", &first.content_type),
                ("content-encoding", &first.content_encoding),
            ]
            .into_iter()
            .filter_map(|(name, value)| Some((name, value.clone()?)))
            .collect(),
            body: body.clone(),
        },
        None => Reply::json(
            200,
            &json!({ "run_id": first.run_id, "status": "duplicate" }),
        ),
    };
    if let Some(run_id) = &first.run_id {
        reply = reply.with_header("x-run-id", run_id.clone());
    }
    reply.with_header(REPLAYED_HEADER, "true")
}
