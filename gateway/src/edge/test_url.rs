//! Test URLs: the whole pipeline for an authenticated event, even for an inactive workflow,
//! answered with a trace instead of the workflow's result.
//!
//! Nothing goes to a backend unless the request carries `X-Test-Forward: true`; the author
//! decides when a test event may reach a real service. The answer's status is the one the
//! production URL would give (200 when everything passed), so a sender's "test delivery"
//! button shows the same outcome as a real delivery would.

use super::{Edge, RequestContext};
use crate::authoring::trace::{self, elapsed_ms, Arrived, Trace, Traced};
use crate::config::{ResponseMode, Workflow};
use crate::error::GatewayError;
use crate::forward::client;
use crate::forward::{build_request, RequestIds, TEST_EVENT_HEADER};
use crate::http_reply::Reply;
use crate::pipeline::Prepared;
use crate::runs::new_run_id;
use crate::server::Snapshot;
use bytes::Bytes;
use pingora::proxy::Session;
use serde_json::{json, Value};
use std::time::Instant;

/// The header that lets a test event reach the workflow's backend.
pub const FORWARD_HEADER: &str = "x-test-forward";

/// Most bytes of a backend's answer shown in a trace.
const SHOWN_ANSWER_BYTES: usize = 64 * 1024;

/// What a forwarded test event is built from.
struct Sent<'a> {
    prepared: &'a Prepared,
    body: &'a Bytes,
    caller_method: &'a str,
    script_result: Option<&'a Value>,
}

impl Edge {
    /// Runs the pipeline step by step and answers with the trace.
    pub(super) async fn trace(
        &self,
        session: &Session,
        snapshot: &Snapshot,
        workflow: &Workflow,
        body: &Bytes,
        sample_kept: bool,
        ctx: &mut RequestContext,
    ) -> Reply {
        let run_id = new_run_id();
        ctx.run_id = Some(run_id.clone());
        let request = session.req_header();
        let arrived = Arrived {
            method: request.method.as_str(),
            headers: &request.headers,
            query: request.uri.query(),
            body,
        };
        let active = ctx.live.as_ref().is_some_and(|live| live.is_active());
        // The script runs whole, off this worker's other connections: a test is for the
        // author, not a race.
        let Traced {
            mut trace,
            mut extra,
            prepared,
            result,
        } = tokio::task::block_in_place(|| {
            trace::run_steps(&snapshot.config, workflow, active, &arrived, &run_id)
        });
        if let (Some(prepared), Some(result)) = (&prepared, &result) {
            let script_result = workflow.script.as_ref().map(|_| result);
            let sent = Sent {
                prepared,
                body,
                caller_method: request.method.as_str(),
                script_result,
            };
            let forwarded = self
                .forward_traced(&mut trace, snapshot, workflow, &sent, ctx)
                .await;
            extra.insert("result".into(), forwarded.unwrap_or_else(|| result.clone()));
        }
        trace.skip_rest("an earlier step failed");

        let status = trace.status();
        ctx.error_code = trace.error_code();
        extra.insert("run_id".into(), json!(run_id));
        // False when samples are off or their budget is spent: `fields` will not see it.
        extra.insert("sample_kept".into(), json!(sample_kept));
        let value = trace.finish(extra);
        Reply::json(status, &value).with_header("x-run-id", run_id)
    }

    /// Sends the run to the backend when the author asked for it, and shows the answer.
    async fn forward_traced(
        &self,
        trace: &mut Trace,
        snapshot: &Snapshot,
        workflow: &Workflow,
        sent: &Sent<'_>,
        ctx: &RequestContext,
    ) -> Option<Value> {
        let Some(forward) = &workflow.forward else {
            trace.skip("forward", "the workflow does not forward");
            return None;
        };
        if !forward_requested(sent.prepared) {
            trace.skip(
                "forward",
                "test events reach no backend unless sent with X-Test-Forward: true",
            );
            return None;
        }

        let started = Instant::now();
        let ids = RequestIds {
            run_id: ctx.run_id.as_deref().unwrap_or_default(),
            workflow_id: &workflow.id,
            request_id: &ctx.request_id,
        };
        let mut request = build_request(
            forward,
            sent.caller_method,
            sent.prepared,
            sent.body,
            sent.script_result,
            &ids,
        );
        request
            .headers
            .push((TEST_EVENT_HEADER.to_string(), "true".to_string()));
        let answer = self
            .exchange_whole(snapshot, &forward.backend, &request)
            .await;

        // An accepted run's caller has its 202 before delivery; a synchronous caller gets
        // the backend's answer.
        let relayed = workflow.response == ResponseMode::ReturnResults;
        match answer {
            Ok(answer) => {
                trace.answered("forward", answer.clone(), relayed, elapsed_ms(started));
                Some(answer)
            }
            Err(error) => {
                trace.fail("forward", &error, None, elapsed_ms(started));
                if !relayed {
                    trace.set_status(202);
                }
                None
            }
        }
    }

    async fn exchange_whole(
        &self,
        snapshot: &Snapshot,
        backend: &str,
        request: &client::UpstreamRequest,
    ) -> Result<Value, GatewayError> {
        let pool = snapshot
            .backends
            .get(backend)
            .ok_or(GatewayError::Internal)?;
        let to_gateway_error = |error: client::ForwardError| error.into_gateway_error(backend);
        let work = async {
            let mut exchange = client::start(&self.connector, pool, request).await?;
            let status = exchange.status();
            let (answer, truncated) = client::read_all(&mut exchange, SHOWN_ANSWER_BYTES).await?;
            exchange.finish(&self.connector).await;
            Ok((status, answer, truncated))
        };
        let (status, answer, truncated) =
            client::within(pool.settings.total_timeout, "whole answer", work)
                .await
                .map_err(to_gateway_error)?;

        let body = serde_json::from_slice::<Value>(&answer)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&answer).into_owned()));
        Ok(
            json!({ "backend": backend, "status": status, "body": body, "body_truncated": truncated }),
        )
    }
}

fn forward_requested(prepared: &Prepared) -> bool {
    prepared
        .headers
        .get(FORWARD_HEADER)
        .and_then(Value::as_str)
        .is_some_and(|value| value.trim().eq_ignore_ascii_case("true"))
}
