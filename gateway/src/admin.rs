//! The admin API, on its own listener: run records and health. Every request must carry
//! `Authorization: Bearer <admin token>`; without a configured token the listener is not
//! started at all. Answers use the same JSON error shape as the webhook listener.

use crate::auth::secrets_equal;
use crate::error::GatewayError;
use crate::http_reply::Reply;
use crate::server::GatewayState;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use std::sync::Arc;

const RUNS_PREFIX: &str = "/api/v1/runs/";

pub struct AdminApi {
    state: Arc<GatewayState>,
    token: String,
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

    fn route(&self, method: &http::Method, path: &str) -> Reply {
        if method != http::Method::GET {
            return Reply::error(
                &GatewayError::MethodNotAllowed {
                    method: method.to_string(),
                    allowed: "GET".into(),
                },
                None,
            );
        }
        if path == "/healthz" {
            return Reply::json(200, &json!({ "status": "ok" }));
        }
        match path.strip_prefix(RUNS_PREFIX) {
            Some(run_id) if !run_id.is_empty() && !run_id.contains('/') => self.run(run_id),
            _ => Reply::json(
                404,
                &json!({ "error": {
                    "code": "not_found",
                    "message": format!("no admin endpoint at {path:?}")
                } }),
            ),
        }
    }

    fn run(&self, run_id: &str) -> Reply {
        match self.state.runs.store().get(run_id) {
            Some(record) => Reply::json(200, &json!(*record)),
            None => Reply::json(
                404,
                &json!({ "error": { "code": "run_not_found", "message": format!("no run {run_id:?} is known") } }),
            ),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let reply = if self.authorized(session) {
            let request = session.req_header();
            self.route(&request.method, request.uri.path())
        } else {
            Reply::error(
                &GatewayError::Unauthorized("the admin token is missing or wrong"),
                None,
            )
        };
        into_response(reply)
    }
}

fn into_response(reply: Reply) -> Response<Vec<u8>> {
    let mut builder = Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        builder = builder.header(*name, value.as_str());
    }
    builder
        .header(http::header::CONTENT_LENGTH, reply.body.len())
        .body(reply.body.to_vec())
        .unwrap_or_else(|_| Response::new(Vec::new()))
}
