//! One HTTP exchange with a backend, over Pingora's pooled upstream connections.
//!
//! `start` picks an address, sends the request and reads the answer's header within the
//! backend's total timeout; the body is then read chunk by chunk, so a large answer can be
//! streamed on without being held whole. A connection taken from the pool may have been closed
//! by the backend while idle; such a failure before any answer is retried on another connection.

use super::backends::{BackendPool, Selected};
use crate::error::GatewayError;
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::ErrorType;
use std::sync::Arc;
use std::time::Duration;

/// Tries on pooled connections before giving up on a request that failed before any answer.
const STALE_CONNECTION_TRIES: usize = 3;

/// What is sent to the backend.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Lowercase names.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq)]
pub enum ForwardError {
    /// Every address is unhealthy or suspended.
    NoHealthyAddress,
    /// Connecting failed, or the connection broke.
    Unavailable(String),
    /// The backend did not answer in time.
    Timeout(String),
}

impl ForwardError {
    pub fn into_gateway_error(self, backend: &str) -> GatewayError {
        match self {
            Self::NoHealthyAddress => GatewayError::BackendUnavailable {
                backend: backend.to_string(),
                status: 503,
                reason: "no healthy address".into(),
            },
            Self::Unavailable(reason) => GatewayError::BackendUnavailable {
                backend: backend.to_string(),
                status: 502,
                reason,
            },
            Self::Timeout(reason) => GatewayError::BackendTimeout {
                backend: backend.to_string(),
                reason,
            },
        }
    }

    /// A short description for run records and logs.
    pub fn describe(&self) -> String {
        match self {
            Self::NoHealthyAddress => "no healthy address".into(),
            Self::Unavailable(reason) => format!("unavailable: {reason}"),
            Self::Timeout(reason) => format!("timed out: {reason}"),
        }
    }
}

fn classify(error: &pingora::Error) -> ForwardError {
    let kind = error.etype();
    let reason = kind.as_str().to_lowercase();
    match kind {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            ForwardError::Timeout(reason)
        }
        _ => ForwardError::Unavailable(reason),
    }
}

fn is_connect_failure(error: &pingora::Error) -> bool {
    matches!(
        error.etype(),
        ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::TLSHandshakeFailure
            | ErrorType::TLSHandshakeTimedout
            | ErrorType::InvalidCert
            | ErrorType::HandshakeError
    )
}

/// An exchange whose answer header has arrived; the body is still to be read.
pub struct Exchange {
    session: HttpSession,
    peer: HttpPeer,
}

impl Exchange {
    pub fn response_header(&self) -> Option<&ResponseHeader> {
        self.session.response_header()
    }

    /// The backend's status; one outside HTTP's 100–599 is treated as a broken answer, 502.
    pub fn status(&self) -> u16 {
        self.response_header()
            .map(|header| header.status.as_u16())
            .filter(|status| (100..600).contains(status))
            .unwrap_or(502)
    }

    /// The next piece of the answer's body; `None` at its end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, ForwardError> {
        self.session
            .read_response_body()
            .await
            .map_err(|error| classify(&error))
    }

    /// Returns the connection to the pool when the answer was read to its end.
    pub async fn finish(self, connector: &Connector) {
        let mut session = self.session;
        if session.response_done() {
            connector
                .release_http_session(session, &self.peer, self.peer.options.idle_timeout)
                .await;
        } else {
            session.shutdown().await;
        }
    }
}

/// Sends `request` to an address of `pool` and waits for the answer's header.
pub async fn start(
    connector: &Connector,
    pool: &Arc<BackendPool>,
    request: &UpstreamRequest,
) -> Result<Exchange, ForwardError> {
    // Pingora's connection futures take tens of kilobytes. Boxed here, they stay out of the
    // futures of everything that may forward, which every request and run would otherwise
    // allocate and copy whether it forwards or not.
    let work = Box::pin(start_within(connector, pool, request));
    within(pool.settings.total_timeout, "an answer", work).await
}

/// Runs `work` within `limit`; past it, a timeout naming what did not arrive.
pub async fn within<T>(
    limit: Duration,
    what: &str,
    work: impl std::future::Future<Output = Result<T, ForwardError>>,
) -> Result<T, ForwardError> {
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        Err(ForwardError::Timeout(format!(
            "no {what} within {} ms",
            limit.as_millis()
        )))
    })
}

async fn start_within(
    connector: &Connector,
    pool: &Arc<BackendPool>,
    request: &UpstreamRequest,
) -> Result<Exchange, ForwardError> {
    // A request that could not connect was never delivered, so the next address may take it.
    let mut last_error = ForwardError::NoHealthyAddress;
    for _ in 0..pool.settings.addresses.len() {
        let selected = pool.select().ok_or_else(|| last_error.clone())?;
        match send_to(connector, &selected, request, pool.settings.read_timeout).await {
            Err(Failure::Connect(error)) => {
                pool.suspend(selected.address);
                last_error = error;
            }
            Err(Failure::Exchange(error)) => return Err(error),
            Ok(exchange) => return Ok(exchange),
        }
    }
    Err(last_error)
}

enum Failure {
    Connect(ForwardError),
    Exchange(ForwardError),
}

async fn send_to(
    connector: &Connector,
    selected: &Selected,
    request: &UpstreamRequest,
    read_timeout: Duration,
) -> Result<Exchange, Failure> {
    let header = request_header(request, &selected.authority).map_err(Failure::Exchange)?;
    let mut last_error = None;

    for _ in 0..STALE_CONNECTION_TRIES {
        let (mut session, reused) =
            connector
                .get_http_session(&selected.peer)
                .await
                .map_err(|error| match is_connect_failure(&error) {
                    true => Failure::Connect(classify(&error)),
                    false => Failure::Exchange(classify(&error)),
                })?;
        session.set_read_timeout(Some(read_timeout));
        session.set_write_timeout(Some(read_timeout));

        // A pooled connection the backend closed while idle fails as the request is written;
        // nothing was delivered, so another connection may carry it. Once the request is out,
        // a failure is final: the backend may have acted on it.
        if let Err(error) = write_request(&mut session, header.clone(), &request.body).await {
            if reused {
                last_error = Some(classify(&error));
                continue;
            }
            return Err(Failure::Exchange(classify(&error)));
        }
        read_final_header(&mut session)
            .await
            .map_err(|error| Failure::Exchange(classify(&error)))?;
        return Ok(Exchange {
            session,
            peer: selected.peer.clone(),
        });
    }
    let error = last_error.unwrap_or_else(|| ForwardError::Unavailable("connection failed".into()));
    Err(Failure::Exchange(error))
}

async fn write_request(
    session: &mut HttpSession,
    header: RequestHeader,
    body: &Bytes,
) -> pingora::Result<()> {
    session.write_request_header(Box::new(header)).await?;
    if !body.is_empty() {
        session.write_request_body(body.clone(), false).await?;
    }
    session.finish_request_body().await
}

/// Reads answer headers until the final one: interim 1xx answers (100 Continue, 103 Early
/// Hints) come before it and are not relayed (RFC 9110 §15.2).
async fn read_final_header(session: &mut HttpSession) -> pingora::Result<()> {
    loop {
        session.read_response_header().await?;
        let interim = session
            .response_header()
            .is_some_and(|header| header.status.is_informational());
        if !interim {
            return Ok(());
        }
    }
}

fn request_header(
    request: &UpstreamRequest,
    authority: &str,
) -> Result<RequestHeader, ForwardError> {
    let build = || -> pingora::Result<RequestHeader> {
        let mut header = RequestHeader::build(
            request.method.as_str(),
            request.path.as_bytes(),
            Some(request.headers.len() + 2),
        )?;
        header.insert_header("host", authority)?;
        for (name, value) in &request.headers {
            header.append_header(name.clone(), value.as_str())?;
        }
        header.insert_header("content-length", request.body.len().to_string())?;
        Ok(header)
    };
    build().map_err(|error| {
        ForwardError::Unavailable(format!(
            "cannot build the request: {}",
            error.etype().as_str()
        ))
    })
}

/// Reads a whole answer, keeping at most `limit` bytes of its body.
pub async fn read_all(
    exchange: &mut Exchange,
    limit: usize,
) -> Result<(Bytes, bool), ForwardError> {
    let mut body = Vec::new();
    let mut truncated = false;
    while let Some(chunk) = exchange.next_chunk().await? {
        let room = limit.saturating_sub(body.len());
        truncated |= chunk.len() > room;
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    Ok((Bytes::from(body), truncated))
}
