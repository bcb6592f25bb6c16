//! Commands that talk to a running gateway through its admin API: activation, samples,
//! fields, reloads and the workflow list. The admin address and token come from
//! `gateway.yaml` (so `${WEBHOOK_GATEWAY_ADMIN_TOKEN}` works as it does for the gateway), or
//! from `--admin-url`.
//!
//! The client is a few lines of HTTP/1.1 over a plain socket: the admin listener is local,
//! speaks plain HTTP, and answers with a Content-Length.

use crate::config;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

/// How long the CLI waits for the admin API to answer; a reload compiles every script, so be
/// patient.
const TIMEOUT: Duration = Duration::from_secs(120);

/// How long the CLI waits to connect: the admin listener is local and accepts at once.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest admin answer the CLI reads.
const MAX_ANSWER_BYTES: u64 = 256 * 1024 * 1024;

/// Where the admin API listens, and the token it wants.
pub struct AdminEndpoint {
    address: SocketAddr,
    host: String,
    token: String,
}

impl AdminEndpoint {
    /// From `--admin-url` when given, else from `gateway.yaml`'s `admin` section.
    pub fn find(config_path: &Path, admin_url: Option<&str>) -> Result<Self, String> {
        let admin = config::admin_settings(config_path)?;
        let token = admin.token.ok_or(
            "no admin token: set admin.token in gateway.yaml (or WEBHOOK_GATEWAY_ADMIN_TOKEN)",
        )?;
        let authority = match admin_url {
            Some(url) => url
                .strip_prefix("http://")
                .ok_or_else(|| format!("--admin-url {url:?} must start with http://"))?
                .trim_end_matches('/')
                .to_string(),
            None => loopback_for(&admin.listen),
        };
        let address = authority
            .to_socket_addrs()
            .ok()
            .and_then(|mut addresses| addresses.next())
            .ok_or_else(|| format!("admin address {authority:?} is not a host:port"))?;
        Ok(Self {
            address,
            host: authority,
            token,
        })
    }

    /// Sends one request; returns the status and the JSON answer.
    pub fn call(&self, method: &str, path: &str) -> Result<(u16, Value), String> {
        let unreachable = |error: std::io::Error| {
            format!(
                "cannot reach the admin api at {}: {error}; is the gateway running?",
                self.address
            )
        };
        let mut stream =
            TcpStream::connect_timeout(&self.address, CONNECT_TIMEOUT).map_err(unreachable)?;
        stream
            .set_read_timeout(Some(TIMEOUT))
            .map_err(unreachable)?;
        stream
            .set_write_timeout(Some(TIMEOUT))
            .map_err(unreachable)?;

        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.host, self.token
        );
        stream.write_all(request.as_bytes()).map_err(unreachable)?;
        let mut answer = Vec::new();
        stream
            .take(MAX_ANSWER_BYTES)
            .read_to_end(&mut answer)
            .map_err(unreachable)?;
        parse_answer(&answer)
    }
}

/// A wildcard listen address is reached on loopback.
fn loopback_for(listen: &str) -> String {
    match listen.parse::<SocketAddr>() {
        Ok(address) if address.ip().is_unspecified() && address.is_ipv4() => {
            format!("127.0.0.1:{}", address.port())
        }
        Ok(address) if address.ip().is_unspecified() => format!("[::1]:{}", address.port()),
        _ => listen.to_string(),
    }
}

fn parse_answer(answer: &[u8]) -> Result<(u16, Value), String> {
    let split = answer
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or("the admin api sent an incomplete answer")?;
    let head = String::from_utf8_lossy(&answer[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or("the admin api sent no status")?;
    let body = &answer[split + 4..];
    let value = serde_json::from_slice(body).unwrap_or(Value::Null);
    Ok((status, value))
}

/// The error message of an admin API answer that is not a success.
pub fn describe_failure(status: u16, answer: &Value) -> String {
    let message = answer["error"]["message"].as_str().unwrap_or("no message");
    let code = answer["error"]["code"].as_str().unwrap_or("unknown");
    format!("the admin api answered {status} {code}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_addresses_are_reached_on_loopback() {
        assert_eq!(loopback_for("0.0.0.0:9180"), "127.0.0.1:9180");
        assert_eq!(loopback_for("[::]:9180"), "[::1]:9180");
        assert_eq!(loopback_for("10.0.0.2:9180"), "10.0.0.2:9180");
    }

    #[test]
    fn answers_are_split_into_status_and_json() {
        let answer = b"HTTP/1.1 404 Not Found\r\ncontent-length: 8\r\n\r\n{\"a\":1}\n";
        let (status, value) = parse_answer(answer).unwrap();
        assert_eq!(status, 404);
        assert_eq!(value["a"], 1);
        assert!(parse_answer(b"HTTP/1.1 200").is_err());
    }
}
