//! The webhook listener: a Pingora `ProxyHttp` service that answers every webhook request in
//! `request_filter`, following the request path in the order cheap refusals first:
//! route, active, method, API key, declared size, then the body, the pipeline and the reply.
//!
//! Scripts run inline on the Pingora worker thread, bounded by the sandbox's operation
//! budget and wall-clock limit; accepted runs are handed to the background pool instead.

use crate::config::ResponseMode;
use crate::error::GatewayError;
use crate::http_reply::Reply;
use crate::pipeline::{self, RequestParts};
use crate::runs::new_run_id;
use crate::server::GatewayState;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

/// What one request leaves behind for its log line.
pub struct RequestContext {
    started: Instant,
    workflow_id: Option<String>,
    run_id: Option<String>,
    status: u16,
    error_code: Option<&'static str>,
}

/// The webhook service.
pub struct Edge {
    state: Arc<GatewayState>,
}

impl Edge {
    pub fn new(state: Arc<GatewayState>) -> Self {
        Self { state }
    }

    async fn process(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> Result<Reply, GatewayError> {
        let state = &self.state;
        let request = session.req_header();
        let workflow = state
            .router
            .route(request.uri.path())
            .ok_or(GatewayError::NotFound)?;
        let workflow = Arc::clone(workflow);
        ctx.workflow_id = Some(workflow.id.clone());

        if !workflow.active {
            return Err(GatewayError::WorkflowInactive(workflow.id.clone()));
        }
        let method = request.method.as_str();
        if !workflow.allows_method(method) {
            return Err(GatewayError::MethodNotAllowed {
                method: method.to_string(),
                allowed: workflow.methods.join(", "),
            });
        }
        state
            .config
            .keys
            .authenticate(&workflow.key_policy, &request.headers)?;
        let declared = declared_length(session, workflow.max_body_bytes)?;

        let body = read_body(session, workflow.max_body_bytes, declared).await?;
        let request = session.req_header();
        let parts = RequestParts {
            headers: &request.headers,
            query: request.uri.query(),
            body: &body,
        };
        let prepared = pipeline::prepare(&workflow, &state.config.limits, &parts)?;

        let run_id = new_run_id();
        ctx.run_id = Some(run_id.clone());
        match workflow.response {
            ResponseMode::ReturnResults => {
                let result =
                    pipeline::execute(&state.config.engine, &workflow, &prepared, &run_id)?;
                Ok(Reply::json(200, &result).with_header("x-run-id", run_id))
            }
            ResponseMode::Accept => {
                state.runs.submit(&run_id, workflow, prepared)?;
                let body = json!({ "run_id": run_id, "status": "accepted" });
                Ok(Reply::json(202, &body).with_header("x-run-id", run_id))
            }
        }
    }
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
/// buffered, and the connection is closed after the answer.
async fn read_body(
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
                return Err(GatewayError::BadRequest(
                    error.etype().as_str().to_lowercase(),
                ))
            }
        }
    }
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
            workflow_id: None,
            run_id: None,
            status: 0,
            error_code: None,
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        // Pingora keeps idle HTTP/1.1 connections open forever unless told otherwise.
        let server = &self.state.config.server;
        session.set_keepalive(Some(server.idle_timeout.as_secs()));
        session.set_read_timeout(Some(server.body_read_timeout));
        Ok(())
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<bool> {
        let reply = match self.process(session, ctx).await {
            Ok(reply) => reply,
            Err(error) => {
                ctx.error_code = Some(error.code());
                Reply::error(&error, ctx.run_id.as_deref())
            }
        };
        ctx.status = reply.status;
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

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut Self::CTX) {
        let client = session
            .client_addr()
            .map(ToString::to_string)
            .unwrap_or_default();
        tracing::info!(
            workflow.id = ctx.workflow_id.as_deref().unwrap_or("-"),
            run.id = ctx.run_id.as_deref().unwrap_or("-"),
            http.method = %session.req_header().method,
            http.status = ctx.status,
            error.code = ctx.error_code.unwrap_or("-"),
            io.error = error.map(|e| e.etype().as_str()).unwrap_or("-"),
            client.addr = %client,
            duration_ms = ctx.started.elapsed().as_micros() as f64 / 1000.0,
            "request"
        );
    }
}
