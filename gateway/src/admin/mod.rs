//! The admin API, on its own listener: workflows (state, URLs, counters, samples, fields,
//! activation), runs, reloads, health and the OpenAPI document that describes all of it
//! (`docs/openapi.json`, served at `/api/v1/openapi.json`).
//!
//! Every `/api/v1` request but the OpenAPI document must carry
//! `Authorization: Bearer <admin token>`; without a configured token the listener is not
//! started at all. `/healthz` and `/readyz` answer without a token, for probes, and reveal
//! nothing. Answers use the same JSON error shape as the webhook listener.

mod metrics;
mod runs;
mod views;

use crate::auth::secrets_equal;
use crate::authoring::samples::Sample;
use crate::error::GatewayError;
use crate::http_reply::Reply;
use crate::journal::RunState;
use crate::reload::{self, Outcome, Trigger};
use crate::server::GatewayState;
use async_trait::async_trait;
use http::{Method, Response};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use std::sync::Arc;

/// The OpenAPI document of this API.
const OPENAPI: &str = include_str!("../../../docs/openapi.json");

pub struct AdminApi {
    state: Arc<GatewayState>,
    token: String,
}

/// One admin request, as the router needs it.
struct Call<'a> {
    method: &'a Method,
    /// Path segments after `/api/v1/`, percent-decoded.
    segments: Vec<String>,
    query: Option<&'a str>,
}

impl AdminApi {
    pub fn new(state: Arc<GatewayState>, token: String) -> Self {
        Self { state, token }
    }

    fn authorized(&self, session: &ServerSession) -> bool {
        let presented = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        presented.is_some_and(|token| secrets_equal(token.as_bytes(), self.token.as_bytes()))
    }

    async fn answer(&self, session: &ServerSession) -> Result<Reply, GatewayError> {
        let request = session.req_header();
        let path = request.uri.path();
        match path {
            "/healthz" => return only(&request.method, Method::GET, || self.health()),
            "/readyz" => return only(&request.method, Method::GET, || self.ready()),
            "/api/v1/openapi.json" => return only(&request.method, Method::GET, || Ok(openapi())),
            _ => {}
        }
        if !self.authorized(session) {
            return Err(GatewayError::Unauthorized(
                "the admin token is missing or wrong",
            ));
        }

        if path == "/metrics" {
            return only(&request.method, Method::GET, || {
                Ok(metrics::render(&self.state))
            });
        }
        let rest = path
            .strip_prefix("/api/v1/")
            .ok_or_else(|| GatewayError::UnknownEndpoint(path.to_string()))?;
        let call = Call {
            method: &request.method,
            segments: rest
                .trim_end_matches('/')
                .split('/')
                .map(|segment| {
                    percent_encoding::percent_decode_str(segment)
                        .decode_utf8_lossy()
                        .into_owned()
                })
                .collect(),
            query: request.uri.query(),
        };
        self.route(&call, path).await
    }

    async fn route(&self, call: &Call<'_>, path: &str) -> Result<Reply, GatewayError> {
        let method = call.method;
        let segments: Vec<&str> = call.segments.iter().map(String::as_str).collect();
        match segments.as_slice() {
            ["workflows"] => only(method, Method::GET, || self.workflows()),
            ["workflows", id] => only(method, Method::GET, || self.workflow(id)),
            ["workflows", id, "activate"] => {
                only(method, Method::POST, || self.set_active(id, true))
            }
            ["workflows", id, "deactivate"] => {
                only(method, Method::POST, || self.set_active(id, false))
            }
            ["workflows", id, "samples"] if method == Method::DELETE => self.clear_samples(id),
            ["workflows", id, "samples"] => only_either(method, "GET, DELETE", || self.samples(id)),
            ["workflows", id, "fields"] => only(method, Method::GET, || self.fields(id)),
            ["workflows", id, "samples", sample_id, "replay"] if method == Method::POST => {
                self.replay(id, sample_id).await
            }
            ["workflows", _, "samples", _, "replay"] => Err(not_allowed(method, "POST")),
            ["workflows", id, "dead-letters", "replay"] => only(method, Method::POST, || {
                runs::replay_dead_letters(&self.state, id)
            }),
            ["runs"] if method == Method::DELETE => self.purge(call.query).await,
            ["runs"] => only_either(method, "GET, DELETE", || {
                runs::list(&self.state, call.query)
            }),
            ["runs", run_id] => only(method, Method::GET, || runs::show(&self.state, run_id)),
            ["runs", run_id, "replay"] => {
                only(method, Method::POST, || runs::replay(&self.state, run_id))
            }
            ["config"] => only(method, Method::GET, || self.config()),
            ["reload"] if method == Method::POST => self.reload().await,
            ["reload"] => Err(not_allowed(method, "POST")),
            _ => Err(GatewayError::UnknownEndpoint(path.to_string())),
        }
    }

    fn health(&self) -> Result<Reply, GatewayError> {
        Ok(Reply::json(200, &json!({ "status": "ok" })))
    }

    /// Ready once a configuration is in force, which is from the first request on; the
    /// answer says which version serves and how the last reload went.
    fn ready(&self) -> Result<Reply, GatewayError> {
        let snapshot = self.state.snapshot();
        let body = json!({
            "status": "ready",
            "config_version": snapshot.version,
            "workflows": snapshot.config.workflows.len(),
        });
        Ok(Reply::json(200, &body))
    }

    fn workflows(&self) -> Result<Reply, GatewayError> {
        let snapshot = self.state.snapshot();
        let listed: Vec<_> = snapshot
            .config
            .workflows
            .iter()
            .map(|workflow| views::workflow(&self.state, &snapshot, workflow))
            .collect();
        let body = json!({ "config_version": snapshot.version, "workflows": listed });
        Ok(Reply::json(200, &body))
    }

    fn workflow(&self, id: &str) -> Result<Reply, GatewayError> {
        let snapshot = self.state.snapshot();
        let workflow = known_workflow(&snapshot, id)?;
        let body = views::workflow(&self.state, &snapshot, workflow);
        Ok(Reply::json(200, &body))
    }

    fn set_active(&self, id: &str, active: bool) -> Result<Reply, GatewayError> {
        let snapshot = self.state.snapshot();
        let workflow = known_workflow(&snapshot, id)?;
        self.state
            .registry
            .set_active(workflow, active)
            .map_err(GatewayError::StateNotSaved)?;
        tracing::info!(workflow.id = %workflow.id, workflow.active = active, "workflow activation changed");
        Ok(Reply::json(
            200,
            &views::workflow(&self.state, &snapshot, workflow),
        ))
    }

    fn samples(&self, id: &str) -> Result<Reply, GatewayError> {
        let snapshot = self.state.snapshot();
        let workflow = known_workflow(&snapshot, id)?;
        let live = self.live(&workflow.id)?;
        let samples = live.samples.list();
        let shown: Vec<&Sample> = samples.iter().map(|sample| sample.as_ref()).collect();
        let body = json!({ "workflow_id": workflow.id, "count": shown.len(), "samples": shown });
        Ok(Reply::json(200, &body))
    }

    fn clear_samples(&self, id: &str) -> Result<Reply, GatewayError> {
        let snapshot = self.state.snapshot();
        let workflow = known_workflow(&snapshot, id)?;
        self.live(&workflow.id)?.samples.clear();
        Ok(Reply::json(
            200,
            &json!({ "workflow_id": workflow.id, "count": 0 }),
        ))
    }

    fn fields(&self, id: &str) -> Result<Reply, GatewayError> {
        let snapshot = self.state.snapshot();
        let workflow = known_workflow(&snapshot, id)?;
        let live = self.live(&workflow.id)?;
        let body = views::fields(&workflow.id, &live.samples.list(), &snapshot.config.limits);
        Ok(Reply::json(200, &body))
    }

    /// Runs a kept sample through the workflow as it is configured now, as if it had been
    /// sent to the test URL again, and answers with the trace. Nothing is forwarded. The
    /// pipeline runs on the control runtime's blocking pool, off the admin thread.
    async fn replay(&self, id: &str, sample_id: &str) -> Result<Reply, GatewayError> {
        let snapshot = self.state.snapshot();
        let workflow = Arc::clone(known_workflow(&snapshot, id)?);
        let live = self.live(&workflow.id)?;
        let sample = views::find_sample(&live.samples.list(), sample_id)?;

        let trace = self
            .state
            .control
            .spawn_blocking(move || views::replay(&snapshot, &workflow, &live, &sample))
            .await
            .map_err(|_| GatewayError::Internal)?;
        Ok(Reply::json(200, &trace))
    }

    fn config(&self) -> Result<Reply, GatewayError> {
        let snapshot = self.state.snapshot();
        let last_reload = self
            .state
            .last_reload
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let body = json!({
            "config_version": snapshot.version,
            "loaded_at": humantime::format_rfc3339_millis(snapshot.loaded_at).to_string(),
            "source": snapshot.config.source.display().to_string(),
            "workflows": snapshot.config.workflows.len(),
            "watch": snapshot.config.reload.watch,
            "last_reload": last_reload,
        });
        Ok(Reply::json(200, &body))
    }

    /// Purges on the control runtime's blocking pool: finding what to delete reads the whole
    /// run table, which must not hold up the admin listener's only thread.
    async fn purge(&self, query: Option<&str>) -> Result<Reply, GatewayError> {
        let state = Arc::clone(&self.state);
        let query = query.map(str::to_string);
        self.state
            .control
            .spawn_blocking(move || runs::purge(&state, query.as_deref()))
            .await
            .map_err(|_| GatewayError::Internal)?
    }

    /// Reloads on the control runtime's blocking pool: compiling every script and schema
    /// must not hold up the admin listener's only thread.
    async fn reload(&self) -> Result<Reply, GatewayError> {
        let state = Arc::clone(&self.state);
        let report = self
            .state
            .control
            .spawn_blocking(move || reload::reload(&state, Trigger::Api))
            .await
            .map_err(|_| GatewayError::Internal)?;

        match report.outcome {
            Outcome::Applied => Ok(Reply::json(200, &json!(report))),
            Outcome::Refused => {
                let error = GatewayError::ConfigInvalid {
                    count: report.problems.len(),
                };
                let mut body = error.to_json(None);
                body["error"]["reload"] = json!(report);
                Ok(Reply::json(error.status(), &body))
            }
        }
    }

    fn live(&self, id: &str) -> Result<Arc<crate::registry::LiveWorkflow>, GatewayError> {
        self.state
            .registry
            .get(id)
            .ok_or_else(|| GatewayError::UnknownWorkflow(id.to_string()))
    }
}

fn known_workflow<'a>(
    snapshot: &'a crate::server::Snapshot,
    id: &str,
) -> Result<&'a Arc<crate::config::Workflow>, GatewayError> {
    snapshot
        .config
        .workflow(id)
        .ok_or_else(|| GatewayError::UnknownWorkflow(id.to_string()))
}

/// Runs `handler` when the method is `allowed`, otherwise refuses with 405.
fn only(
    method: &Method,
    allowed: Method,
    handler: impl FnOnce() -> Result<Reply, GatewayError>,
) -> Result<Reply, GatewayError> {
    if *method == allowed || (allowed == Method::GET && *method == Method::HEAD) {
        handler()
    } else {
        Err(not_allowed(method, allowed.as_str()))
    }
}

/// Like [`only`] for GET, where the endpoint also takes other methods, handled before.
fn only_either(
    method: &Method,
    allowed: &str,
    handler: impl FnOnce() -> Result<Reply, GatewayError>,
) -> Result<Reply, GatewayError> {
    if *method == Method::GET || *method == Method::HEAD {
        handler()
    } else {
        Err(not_allowed(method, allowed))
    }
}

fn not_allowed(method: &Method, allowed: &str) -> GatewayError {
    GatewayError::MethodNotAllowed {
        method: method.to_string(),
        allowed: allowed.into(),
    }
}

fn openapi() -> Reply {
    Reply {
        status: 200,
        headers: vec![("content-type", "application/json".to_string())],
        body: bytes::Bytes::from_static(OPENAPI.as_bytes()),
    }
}

#[async_trait]
impl ServeHttp for AdminApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let reply = self
            .answer(session)
            .await
            .unwrap_or_else(|error| Reply::error(&error, None, None));
        let head_only = session.req_header().method == Method::HEAD;
        into_response(reply, head_only)
    }
}

fn into_response(reply: Reply, head_only: bool) -> Response<Vec<u8>> {
    let mut builder = Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        builder = builder.header(*name, value.as_str());
    }
    let body = if head_only {
        Vec::new()
    } else {
        reply.body.to_vec()
    };
    builder
        .header(http::header::CONTENT_LENGTH, reply.body.len())
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

/// Names the run states a `state` filter accepts, for its error message.
pub(crate) const RUN_STATES: &str =
    "accepted, running, retrying, succeeded, rejected, failed, dead_lettered";

pub(crate) fn parse_run_state(text: &str) -> Option<RunState> {
    RunState::parse(text)
}
