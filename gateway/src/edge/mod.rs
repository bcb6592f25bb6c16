//! The webhook listener: a Pingora `ProxyHttp` service that answers every webhook request in
//! `request_filter`, cheap refusals first: route, active, method, API key, declared size, then
//! the body, the pipeline, and the answer: a reply built here, 202 for an accepted run, or the
//! backend's answer relayed for a forwarding workflow.
//!
//! A workflow's test URL goes through the same checks and then answers with a trace of the
//! pipeline instead (`test_url`).
//!
//! Scripts run inline on the Pingora worker thread, bounded by the sandbox's operation budget,
//! memory and wall-clock limits; the thread hands its other connections over while a script
//! runs. Forwarding uses Pingora's pooled upstream connections directly
//! rather than the proxy phases: the body must be read whole and validated before anything
//! is sent, which Pingora's proxy path only supports up to 64 KiB.

mod intake;
mod test_url;

use crate::authoring::samples::{Arrival, SampleSource};
use crate::config::{ResponseMode, Workflow};
use crate::error::GatewayError;
use crate::forward::client::{self, Exchange};
use crate::forward::{build_request, is_hop_by_hop, RequestIds};
use crate::handshake;
use crate::http_reply::Reply;
use crate::journal::RunInput;
use crate::metrics::{timed, Phase};
use crate::pipeline::{self, Prepared, RequestParts};
use crate::registry::LiveWorkflow;
use crate::routing::UrlKind;
use crate::runs::{new_run_id, Job};
use crate::script::Timing;
use crate::server::{GatewayState, Snapshot};
use crate::shared_state::{FirstAnswer, PendingKey};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use intake::{admit, claim_key, repeat_reply, Keyed};
use pingora::connectors::http::Connector;
use pingora::http::ResponseHeader;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one request leaves behind for its log line.
pub struct RequestContext {
    started: Instant,
    request_id: String,
    /// The configuration this request is served under, from its first byte to its last.
    snapshot: Option<Arc<Snapshot>>,
    live: Option<Arc<LiveWorkflow>>,
    url_kind: UrlKind,
    workflow_id: Option<String>,
    run_id: Option<String>,
    status: u16,
    error_code: Option<&'static str>,
    /// Whether the workflow's counters have this request yet.
    counted: bool,
    /// Places held under concurrency limits, given back when the request ends.
    permits: Vec<crate::limits::Permit>,
    /// The idempotency key of a relayed run, kept once the backend's answer is complete.
    pending_key: Option<crate::shared_state::PendingKey>,
    /// Whether the answer repeats the first answer to the same event.
    replayed: bool,
}

impl RequestContext {
    /// Counts the request against its workflow once its status is known, before the answer
    /// goes out, so that anyone who has the answer also sees it counted.
    fn count(&mut self) {
        if let (Some(live), false) = (&self.live, self.counted) {
            let test = self.url_kind == UrlKind::Test;
            live.counters.record(self.status, test, self.error_code);
            self.counted = true;
        }
    }
}

/// How a request is answered: a reply built here, or a backend's answer relayed as it arrives.
enum Answer {
    Reply(Reply),
    Relay(Box<Exchange>),
}

/// The webhook service.
pub struct Edge {
    state: Arc<GatewayState>,
    /// Pooled connections to backends, for synchronous forwarding.
    connector: Connector,
}

impl Edge {
    pub fn new(state: Arc<GatewayState>) -> Self {
        Self {
            state,
            connector: Connector::new(None),
        }
    }

    async fn process(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> Result<Answer, GatewayError> {
        let snapshot = ctx.snapshot.clone().ok_or(GatewayError::Internal)?;
        let Some(routed) = snapshot.router.route(session.req_header().uri.path()) else {
            self.state.unrouted_requests.fetch_add(1, Ordering::Relaxed);
            return Err(GatewayError::NotFound);
        };
        let workflow = Arc::clone(routed.workflow);
        let live = Arc::clone(routed.live);
        ctx.workflow_id = Some(workflow.id.clone());
        live.counters.begin();
        ctx.live = Some(Arc::clone(&live));
        ctx.url_kind = routed.kind;

        if routed.kind == UrlKind::Production && !live.is_active() {
            return Err(GatewayError::WorkflowInactive(workflow.id.clone()));
        }
        intake::check_address(session, &snapshot, &workflow)?;
        let request = session.req_header();
        if let Some(answer) =
            handshake::before_body(&workflow, &request.method, request.uri.query())
        {
            return answer.map(Answer::Reply);
        }

        // Test URLs run a traced pipeline of their own: their times would skew production's.
        let production = routed.kind == UrlKind::Production;
        let latency = production.then_some(&live.latency);
        let admitted = admit(session, &self.state, &snapshot, &workflow, &live, latency).await?;
        ctx.permits = admitted.permits;
        let body = admitted.body;
        if routed.kind == UrlKind::Test {
            if let Some(reply) = handshake::after_signature(&workflow, &body) {
                return Ok(Answer::Reply(reply));
            }
            let kept = keep_sample(session, &workflow, &live, SampleSource::Test, &body);
            // Boxed, like forwarding below: their futures would otherwise make every
            // request's future tens of kilobytes larger.
            let reply = Box::pin(self.trace(session, &snapshot, &workflow, &body, kept, ctx)).await;
            return Ok(Answer::Reply(reply));
        }

        if let Some(reply) = handshake::after_signature(&workflow, &body) {
            return Ok(Answer::Reply(reply));
        }
        if workflow.sample_production {
            keep_sample(session, &workflow, &live, SampleSource::Production, &body);
        }

        let request = session.req_header();
        let parts = RequestParts {
            headers: &request.headers,
            query: request.uri.query(),
            body: &body,
        };
        let limits = &snapshot.config.limits;
        let mut prepared = pipeline::prepare_timed(&workflow, limits, &parts, &live.latency)?;
        let caller_method = request.method.to_string();
        let pending_key = match claim_key(&self.state, &workflow, &request.headers, &prepared)? {
            Keyed::Unkeyed => None,
            Keyed::First(pending) => Some(pending),
            Keyed::Repeat(first) => {
                ctx.replayed = true;
                ctx.run_id.clone_from(&first.run_id);
                return Ok(Answer::Reply(repeat_reply(&first)));
            }
        };
        let max_kept = snapshot.config.idempotency.max_answer_bytes;

        let run_id = new_run_id();
        ctx.run_id = Some(run_id.clone());
        match workflow.response {
            ResponseMode::Accept => {
                if !pipeline::event_read_after_mapping(&workflow) {
                    // Freed here, by the thread that built it, rather than by the run pool's
                    // thread, where freeing costs more; the run never reads it.
                    prepared.event = serde_json::Value::Null;
                }
                let input = RunInput {
                    run_id: run_id.clone(),
                    workflow_id: workflow.id.clone(),
                    config_version: snapshot.version,
                    request_id: ctx.request_id.clone(),
                    method: caller_method.clone(),
                    headers: journaled_headers(&request.headers),
                    query: journaled_query(request.uri.query(), &workflow),
                    body: body.to_vec(),
                };
                let job = Job {
                    run_id,
                    request_id: ctx.request_id.clone(),
                    workflow,
                    prepared,
                    body,
                    caller_method,
                    engine: Arc::clone(&snapshot.config.engine),
                    backends: Arc::clone(&snapshot.backends),
                    attempts_recorded: 0,
                    attempts_counted: 0,
                    idempotency_key: None,
                };
                self.accept(job, input, pending_key, ctx).await
            }
            ResponseMode::ReturnResults if workflow.forward.is_some() => {
                let exchange = self
                    .forward(&snapshot, &workflow, &prepared, &body, &caller_method, ctx)
                    .await?;
                ctx.pending_key = pending_key;
                Ok(Answer::Relay(Box::new(exchange)))
            }
            ResponseMode::ReturnResults => {
                let result = timed(Some(&live.latency), Phase::Script, || {
                    run_script(&snapshot, &workflow, &prepared, &run_id)
                })?;
                let reply = Reply::json(200, &result);
                if let Some(pending) = pending_key {
                    pending.keep(FirstAnswer {
                        run_id: Some(run_id.clone()),
                        status: 200,
                        content_type: Some("application/json".into()),
                        content_encoding: None,
                        body: (reply.body.len() <= max_kept).then(|| reply.body.clone()),
                    });
                }
                Ok(Answer::Reply(reply.with_header("x-run-id", run_id)))
            }
        }
    }

    /// Writes the run to the journal, keeps its idempotency key, starts it and answers 202.
    /// Durable first; then the key is kept, and only then does the run start, so a repeat
    /// never hears of a run that is not written, and a run that fails at once finds its key
    /// to forget it. Nothing awaits between those last steps.
    async fn accept(
        &self,
        mut job: Job,
        input: RunInput,
        pending_key: Option<PendingKey>,
        ctx: &mut RequestContext,
    ) -> Result<Answer, GatewayError> {
        let run_id = job.run_id.clone();
        // A refused run never existed: its id must not reach the caller.
        ctx.run_id = None;
        self.state.runs.record(input).await?;

        job.idempotency_key = pending_key.map(|pending| {
            let key = pending.key().to_string();
            pending.keep(FirstAnswer {
                run_id: Some(run_id.clone()),
                status: 202,
                content_type: None,
                content_encoding: None,
                body: None,
            });
            key
        });
        self.state.runs.run(job);

        ctx.run_id = Some(run_id.clone());
        let accepted = json!({ "run_id": run_id, "status": "accepted" });
        Ok(Answer::Reply(
            Reply::json(202, &accepted).with_header("x-run-id", run_id),
        ))
    }

    /// Runs the script, if any, then sends the run to the backend and waits for its answer's
    /// header.
    async fn forward(
        &self,
        snapshot: &Snapshot,
        workflow: &Workflow,
        prepared: &Prepared,
        body: &Bytes,
        caller_method: &str,
        ctx: &RequestContext,
    ) -> Result<Exchange, GatewayError> {
        let run_id = ctx.run_id.as_deref().unwrap_or_default();
        let forward = workflow.forward.as_ref().ok_or(GatewayError::Internal)?;
        let pool = snapshot
            .backends
            .get(&forward.backend)
            .ok_or(GatewayError::Internal)?;

        let latency = ctx.live.as_ref().map(|live| &live.latency);
        let script_result = match workflow.script {
            Some(_) => Some(timed(latency, Phase::Script, || {
                run_script(snapshot, workflow, prepared, run_id)
            })?),
            None => None,
        };
        let ids = RequestIds {
            run_id,
            workflow_id: &workflow.id,
            request_id: &ctx.request_id,
        };
        let request = build_request(
            forward,
            caller_method,
            prepared,
            body,
            script_result.as_ref(),
            &ids,
        );
        let sending = Instant::now();
        let exchange = client::start(&self.connector, pool, &request).await;
        if let Some(latency) = latency {
            latency.observe(Phase::Forward, sending.elapsed());
        }
        exchange.map_err(|error| error.into_gateway_error(&forward.backend))
    }

    /// Relays a backend's answer: its status and end-to-end headers, then its body as it
    /// arrives, so a large answer is never held whole.
    async fn relay(
        &self,
        session: &mut Session,
        mut exchange: Exchange,
        ctx: &mut RequestContext,
    ) -> pingora::Result<()> {
        ctx.status = exchange.status();
        ctx.count();
        let header = relayed_header(&exchange, ctx)?;
        session
            .write_response_header(Box::new(header), false)
            .await?;

        // A successful answer is kept for repeats of the event, up to the configured size.
        let succeeded = (200..300).contains(&exchange.status());
        let max_kept = ctx
            .snapshot
            .as_ref()
            .map_or(0, |snapshot| snapshot.config.idempotency.max_answer_bytes);
        let mut kept = (ctx.pending_key.is_some() && succeeded).then(BytesMut::new);
        let mut too_large = false;
        loop {
            match exchange.next_chunk().await {
                Ok(Some(chunk)) => {
                    if let Some(buffer) = kept.as_mut().filter(|_| !too_large) {
                        too_large = buffer.len() + chunk.len() > max_kept;
                        if !too_large {
                            buffer.extend_from_slice(&chunk);
                        }
                    }
                    session.write_response_body(Some(chunk), false).await?
                }
                Ok(None) => break,
                Err(error) => {
                    // The status is already sent; all that is left is to cut the answer short.
                    ctx.error_code = Some("backend_unavailable");
                    return Err(Error::explain(ErrorType::ReadError, error.describe()));
                }
            }
        }
        session.write_response_body(None, true).await?;
        if let (Some(pending), Some(buffer)) = (ctx.pending_key.take(), kept) {
            let header = |name: http::header::HeaderName| {
                exchange
                    .response_header()
                    .and_then(|header| header.headers.get(name))
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_string)
            };
            pending.keep(FirstAnswer {
                run_id: ctx.run_id.clone(),
                status: exchange.status(),
                content_type: header(http::header::CONTENT_TYPE),
                content_encoding: header(http::header::CONTENT_ENCODING),
                body: (!too_large).then(|| buffer.freeze()),
            });
        }
        exchange.finish(&self.connector).await;
        Ok(())
    }
}

/// How long a script may run on the worker thread before it moves out of the way.
const INLINE_SLICE: Duration = Duration::from_millis(2);

/// Runs a workflow's script. It starts right on this worker thread, where nearly every script
/// finishes within microseconds; one still running after [`INLINE_SLICE`] is run again from
/// the start under `block_in_place`, which hands this thread's other connections to the rest
/// of the runtime, so a slow script delays only its own request.
fn run_script(
    snapshot: &Snapshot,
    workflow: &Workflow,
    prepared: &Prepared,
    run_id: &str,
) -> Result<serde_json::Value, GatewayError> {
    let engine = &snapshot.config.engine;
    let started = Instant::now();
    let inline = Timing {
        started,
        yield_after: Some(INLINE_SLICE),
    };
    if let Some(result) = pipeline::execute_timed(engine, workflow, prepared, run_id, inline)? {
        return Ok(result);
    }

    let whole = Timing {
        started,
        yield_after: None,
    };
    tokio::task::block_in_place(|| {
        pipeline::execute_timed(engine, workflow, prepared, run_id, whole)
    })?
    .ok_or(GatewayError::Internal)
}

/// The backend's status and end-to-end headers, plus the run and request ids.
fn relayed_header(exchange: &Exchange, ctx: &RequestContext) -> pingora::Result<ResponseHeader> {
    let mut header = ResponseHeader::build(exchange.status(), None)?;
    if let Some(upstream) = exchange.response_header() {
        let connection = upstream
            .headers
            .get("connection")
            .and_then(|v| v.to_str().ok());
        for (name, value) in upstream.headers.iter() {
            if !is_hop_by_hop(name.as_str(), connection) {
                header.append_header(name.clone(), value.clone())?;
            }
        }
    }
    // 1xx, 204 and 304 answers have no body to frame (RFC 9112 §6.3).
    let bodiless = matches!(exchange.status(), 100..=199 | 204 | 304);
    if header.headers.get("content-length").is_none() && !bodiless {
        header.insert_header("transfer-encoding", "chunked")?;
    }
    if let Some(run_id) = &ctx.run_id {
        header.insert_header("x-run-id", run_id.as_str())?;
    }
    header.insert_header("x-request-id", ctx.request_id.as_str())?;
    Ok(header)
}

/// The caller's `X-Request-Id` when it is a plain token of at most 128 characters,
/// otherwise a new one.
fn request_id(session: &Session) -> String {
    let offered = session
        .req_header()
        .headers
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .filter(|id| {
            (1..=128).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        });
    offered.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string)
}

/// The headers a journaled run keeps to run again after a restart: all but the caller's
/// credentials, which no run step may read.
fn journaled_headers(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| !pipeline::HIDDEN_HEADERS.contains(&name.as_str()))
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_string(), value)
        })
        .collect()
}

/// The query a journaled run keeps: without the parameter that carries the API key.
fn journaled_query(query: Option<&str>, workflow: &Workflow) -> Option<String> {
    let query = query?;
    let Some(credential) = workflow.key_policy.query_param() else {
        return Some(query.to_string());
    };
    let kept: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(
            form_urlencoded::parse(query.as_bytes()).filter(|(name, _)| name != credential),
        )
        .finish();
    Some(kept)
}

/// Keeps an authenticated event as a sample of its workflow; false when it was not kept.
fn keep_sample(
    session: &Session,
    workflow: &Workflow,
    live: &LiveWorkflow,
    source: SampleSource,
    body: &Bytes,
) -> bool {
    let request = session.req_header();
    live.samples.record(&Arrival {
        source,
        method: request.method.as_str(),
        headers: &request.headers,
        query: request.uri.query(),
        key_param: workflow.key_policy.query_param(),
        body,
    })
}

/// Writes `reply` with a Content-Length, so the connection can be kept alive.
async fn send(session: &mut Session, reply: Reply) -> pingora::Result<()> {
    let mut header = ResponseHeader::build(reply.status, Some(reply.headers.len() + 1))?;
    for (name, value) in &reply.headers {
        header.append_header(*name, value.as_str())?;
    }
    header.set_content_length(reply.body.len())?;

    // A HEAD answer carries the headers of the body it does not send (RFC 9110 §9.3.2).
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(header), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(reply.body), true).await?;
    }
    Ok(())
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = RequestContext;

    fn new_ctx(&self) -> Self::CTX {
        RequestContext {
            started: Instant::now(),
            request_id: String::new(),
            snapshot: None,
            live: None,
            url_kind: UrlKind::Production,
            workflow_id: None,
            run_id: None,
            status: 0,
            error_code: None,
            counted: false,
            permits: Vec::new(),
            pending_key: None,
            replayed: false,
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        ctx.request_id = request_id(session);
        let snapshot = self.state.snapshot();
        // Answer pipelined requests in order instead of closing after the first (RFC 9112 §9.3.2).
        session.set_pipelining_enabled(true);
        // Pingora keeps idle HTTP/1.1 connections open forever unless told otherwise.
        let server = &snapshot.config.server;
        session.set_keepalive(Some(server.idle_timeout.as_secs()));
        session.set_read_timeout(Some(server.body_read_timeout));
        ctx.snapshot = Some(snapshot);
        Ok(())
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<bool> {
        let reply = match self.process(session, ctx).await {
            Ok(Answer::Relay(exchange)) => {
                Box::pin(self.relay(session, *exchange, ctx)).await?;
                return Ok(true);
            }
            Ok(Answer::Reply(reply)) => reply,
            Err(error) => {
                ctx.error_code = Some(error.code());
                Reply::error(&error, ctx.run_id.as_deref(), Some(&ctx.request_id))
            }
        };
        ctx.status = reply.status;
        ctx.count();
        let reply = reply.with_header("x-request-id", ctx.request_id.clone());
        send(session, reply).await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora::Result<Box<HttpPeer>> {
        // Every webhook request is answered in request_filter; nothing reaches this phase.
        Err(Error::explain(
            ErrorType::HTTPStatus(502),
            "no upstream for webhook routes",
        ))
    }

    /// What Pingora writes about this request in its own error lines: the method and the
    /// workflow, never the path (its token is the URL's secret) or the query (it may carry an
    /// API key).
    fn request_summary(&self, session: &Session, ctx: &Self::CTX) -> String {
        format!(
            "{} workflow {} request {}",
            session.req_header().method,
            ctx.workflow_id.as_deref().unwrap_or("-"),
            ctx.request_id
        )
    }

    /// A client that hangs up or sends garbage is the client's doing: the request's own log
    /// line records it (`io.error`) without an error-level entry from Pingora.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, error: &Error) -> bool {
        matches!(error.esource(), pingora::ErrorSource::Downstream)
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut Self::CTX) {
        ctx.count();
        if let (Some(live), UrlKind::Production) = (&ctx.live, ctx.url_kind) {
            live.latency.observe(Phase::Total, ctx.started.elapsed());
        }
        let client = session
            .client_addr()
            .map(ToString::to_string)
            .unwrap_or_default();
        // The caller behind trusted proxies; the peer itself when there are none.
        let caller = ctx
            .snapshot
            .as_ref()
            .and_then(|snapshot| intake::caller_of(session, snapshot).address)
            .map_or_else(|| "-".to_string(), |address| address.to_string());
        tracing::info!(
            workflow.id = ctx.workflow_id.as_deref().unwrap_or("-"),
            url.kind = if ctx.url_kind == UrlKind::Test { "test" } else { "production" },
            run.id = ctx.run_id.as_deref().unwrap_or("-"),
            request.id = %ctx.request_id,
            http.method = %session.req_header().method,
            http.status = ctx.status,
            error.code = ctx.error_code.unwrap_or("-"),
            request.replayed = ctx.replayed,
            io.error = error.map(|e| e.etype().as_str()).unwrap_or("-"),
            client.addr = %client,
            client.ip = %caller,
            duration_ms = ctx.started.elapsed().as_micros() as f64 / 1000.0,
            "request"
        );
    }
}
