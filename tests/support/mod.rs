//! Test support: starts the real `webhook-gateway` binary on free loopback ports and talks
//! raw HTTP/1.1 to it, so tests see exactly the bytes a webhook sender would.

#![allow(dead_code)]

use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod backend;

pub const BINARY: &str = env!("CARGO_BIN_EXE_webhook-gateway");
pub const DEMO_KEY: &str = "demo-key-0001";
pub const TEST_KEY: &str = "test-key-0123456789";
pub const OTHER_KEY: &str = "other-key-9876543210";

/// How long a test waits for anything before failing instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The start of every custom `gateway.yaml`: ports come from the command line, secrets
/// from the environment the harness sets.
pub const BASE_CONFIG: &str = r#"
server:
  threads: 1
  body_read_timeout_ms: 2000
admin:
  token: "${WEBHOOK_GATEWAY_ADMIN_TOKEN:-}"
paths:
  state: "${WEBHOOK_GATEWAY_STATE_DIR}"
api_keys:
  - name: test
    key: "${TEST_API_KEY}"
  - name: other
    key: "${OTHER_API_KEY}"
"#;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the gateway crate sits in the repository")
        .to_path_buf()
}

/// A folder holding a configuration for one test.
pub struct ConfigDir {
    pub dir: tempfile::TempDir,
}

impl ConfigDir {
    /// Writes `files` (relative path, contents); `gateway.yaml` defaults to [`BASE_CONFIG`].
    pub fn new(files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
        std::fs::create_dir_all(dir.path().join("scripts")).unwrap();
        std::fs::write(dir.path().join("gateway.yaml"), BASE_CONFIG).unwrap();
        for (relative, contents) in files {
            let path = dir.path().join(relative);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
        }
        Self { dir }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("gateway.yaml")
    }
}

/// A running gateway process, killed on drop.
pub struct Gateway {
    child: Child,
    pub port: u16,
    pub admin_port: u16,
    pub admin_token: String,
    config: PathBuf,
    state: tempfile::TempDir,
    log_path: PathBuf,
    extra_env: Vec<(String, String)>,
    args: Vec<String>,
    admin: bool,
    // Keeps a custom configuration folder alive as long as the process.
    _config_dir: Option<ConfigDir>,
}

/// Options for starting a gateway.
pub struct Start {
    pub config: PathBuf,
    pub config_dir: Option<ConfigDir>,
    pub admin: bool,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
}

impl Start {
    pub fn shipped() -> Self {
        Self {
            config: repo_root().join("gateway.yaml"),
            config_dir: None,
            admin: true,
            env: Vec::new(),
            args: Vec::new(),
        }
    }

    pub fn custom(files: &[(&str, &str)]) -> Self {
        let dir = ConfigDir::new(files);
        Self {
            config: dir.config(),
            config_dir: Some(dir),
            admin: true,
            env: Vec::new(),
            args: Vec::new(),
        }
    }

    pub fn without_admin(mut self) -> Self {
        self.admin = false;
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn run(self) -> Gateway {
        Gateway::start(self)
    }
}

/// Polls `done` until it holds, failing the test after [`PATIENCE`].
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "waited too long: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

impl Gateway {
    pub fn shipped() -> Self {
        Start::shipped().run()
    }

    pub fn custom(files: &[(&str, &str)]) -> Self {
        Start::custom(files).run()
    }

    fn start(start: Start) -> Self {
        let state = tempfile::tempdir().expect("state dir");
        let admin_token = if start.admin {
            format!("admin-{}", free_port())
        } else {
            String::new()
        };
        let mut start = start;

        // A port picked free can be taken by another test before the gateway binds it;
        // the gateway then exits with "cannot listen", and we try fresh ports.
        for _ in 0..5 {
            let (port, admin_port) = (free_port(), free_port());
            let log_path = state.path().join(format!("gateway-{port}.log"));
            let mut gateway = Gateway {
                child: spawn(&start, &state, &admin_token, port, admin_port, &log_path),
                port,
                admin_port,
                admin_token: admin_token.clone(),
                config: start.config.clone(),
                state: tempfile::tempdir().unwrap(),
                log_path,
                extra_env: start.env.clone(),
                args: start.args.clone(),
                admin: start.admin,
                _config_dir: None,
            };
            match gateway.wait_ready(start.admin) {
                Ok(()) => {
                    gateway.state = state;
                    gateway._config_dir = start.config_dir.take();
                    return gateway;
                }
                Err(log) if log.contains("cannot listen") => continue,
                Err(log) => panic!("gateway did not start:\n{log}"),
            }
        }
        panic!("gateway could not find free ports");
    }

    /// Kills the process and starts it again on the same configuration and state folder,
    /// on fresh ports.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let start = Start {
            config: self.config.clone(),
            config_dir: None,
            admin: self.admin,
            env: self.extra_env.clone(),
            args: self.args.clone(),
        };
        for _ in 0..5 {
            let (port, admin_port) = (free_port(), free_port());
            let log_path = self.state.path().join(format!("gateway-{port}.log"));
            self.child = spawn(
                &start,
                &self.state,
                &self.admin_token,
                port,
                admin_port,
                &log_path,
            );
            (self.port, self.admin_port, self.log_path) = (port, admin_port, log_path);
            match self.wait_ready(start.admin) {
                Ok(()) => return,
                Err(log) if log.contains("cannot listen") => continue,
                Err(log) => panic!("gateway did not restart:\n{log}"),
            }
        }
        panic!("gateway could not find free ports to restart on");
    }

    /// Sends a signal (`HUP`, `TERM`, ...) to the gateway process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg("-s")
            .arg(name)
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name} failed");
    }

    /// Waits for the process to end on its own, after a `TERM` say.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut status = None;
        wait_until("the gateway to exit", || {
            status = self.child.try_wait().expect("ask after the gateway");
            status.is_some()
        });
        status.expect("an exit status")
    }

    /// The folder holding `gateway.yaml`, for tests that edit the configuration.
    pub fn config_dir(&self) -> PathBuf {
        self.config.parent().unwrap().to_path_buf()
    }

    /// Runs a CLI command that talks to this running gateway's admin API.
    pub fn remote(&self, args: &[&str]) -> Output {
        let admin_url = format!("http://127.0.0.1:{}", self.admin_port);
        let mut all = args.to_vec();
        all.extend(["--admin-url", admin_url.as_str()]);
        self.cli(&all)
    }

    /// The path (with token) of a workflow's test URL.
    pub fn test_path(&self, workflow_id: &str) -> String {
        self.listed_path(workflow_id, "test_url")
    }

    pub fn admin_send(&self, method: &str, path: &str) -> Response {
        send(self.admin_port, &self.admin_request(method, path))
    }

    /// Waits until both listeners answer and are this process's own. A port picked free can
    /// be bound by another test's gateway in the meantime; this process then cannot bind it,
    /// and Pingora keeps running without that listener. So the admin port must accept this
    /// gateway's token, and a probe on the webhook port must show up in this gateway's log.
    fn wait_ready(&mut self, admin: bool) -> Result<(), String> {
        let deadline = Instant::now() + PATIENCE;
        let probe_id = format!("readiness-probe-{}-{}", self.port, self.admin_port);
        let probe = Request::new("GET", "/hooks/-/-").header("x-request-id", &probe_id);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Err(self.log());
            }
            let admin_ready = !admin
                || matches!(
                    try_send(self.admin_port, &self.admin_request("GET", "/api/v1/config")),
                    Ok(response) if response.status == 200
                );
            if admin_ready && try_send(self.port, &probe).is_ok() {
                return self.wait_for_log(&probe_id, deadline);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("not ready after {PATIENCE:?}:\n{}", self.log()))
    }

    /// Waits for `marker` in the log; a listener answering for another process never logs it.
    fn wait_for_log(&mut self, marker: &str, deadline: Instant) -> Result<(), String> {
        let own_deadline = deadline.min(Instant::now() + Duration::from_secs(5));
        while Instant::now() < own_deadline {
            if self.log().contains(marker) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Err(format!(
            "cannot listen: the webhook port answered for another process\n{}",
            self.log()
        ))
    }

    /// Everything the gateway logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// Runs the CLI against the same configuration and environment.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut command = Command::new(BINARY);
        command.args(args).arg("--config").arg(&self.config);
        apply_env(
            &mut command,
            self.state.path(),
            &self.admin_token,
            &self.extra_env,
        );
        command.output().expect("run the cli")
    }

    /// Webhook URL paths by workflow id, from `webhook-gateway urls --json`.
    pub fn urls(&self) -> HashMap<String, Value> {
        let output = self.cli(&["urls", "--json"]);
        assert!(
            output.status.success(),
            "urls failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let listed: Vec<Value> =
            serde_json::from_slice(&output.stdout).expect("urls --json is json");
        listed
            .into_iter()
            .map(|entry| (entry["id"].as_str().unwrap().to_string(), entry))
            .collect()
    }

    /// The path (with token) of a workflow's URL.
    pub fn path(&self, workflow_id: &str) -> String {
        self.listed_path(workflow_id, "url")
    }

    /// The path part of one of the URLs `urls --json` lists for a workflow.
    fn listed_path(&self, workflow_id: &str, which: &str) -> String {
        let url = self.urls()[workflow_id][which]
            .as_str()
            .unwrap()
            .to_string();
        let after_scheme = url.split_once("://").unwrap().1;
        after_scheme[after_scheme.find('/').unwrap()..].to_string()
    }

    pub fn send(&self, request: &Request) -> Response {
        send(self.port, request)
    }

    /// POSTs a JSON body with the test key.
    pub fn post_json(&self, path: &str, body: &str) -> Response {
        self.send(&Request::post(path, body).header("x-api-key", TEST_KEY))
    }

    pub fn admin_request(&self, method: &str, path: &str) -> Request {
        Request::new(method, path).header("authorization", &format!("Bearer {}", self.admin_token))
    }

    pub fn admin_get(&self, path: &str) -> Response {
        send(self.admin_port, &self.admin_request("GET", path))
    }

    /// Polls the admin API until the run reaches a final state.
    pub fn wait_for_run(&self, run_id: &str) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let response = self.admin_get(&format!("/api/v1/runs/{run_id}"));
            assert_eq!(response.status, 200, "run {run_id}: {}", response.text());
            let record = response.json();
            let state = record["state"].as_str().unwrap_or_default().to_string();
            if !matches!(state.as_str(), "accepted" | "running" | "retrying") {
                return record;
            }
            assert!(Instant::now() < deadline, "run {run_id} stuck in {state}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn apply_env(command: &mut Command, state: &Path, admin_token: &str, extra: &[(String, String)]) {
    command
        .env("WEBHOOK_GATEWAY_STATE_DIR", state)
        .env("WEBHOOK_GATEWAY_ADMIN_TOKEN", admin_token)
        .env("TEST_API_KEY", TEST_KEY)
        .env("OTHER_API_KEY", OTHER_KEY)
        .env_remove("WEBHOOK_GATEWAY_CONFIG")
        .env_remove("RUST_LOG");
    for (name, value) in extra {
        command.env(name, value);
    }
}

fn spawn(
    start: &Start,
    state: &tempfile::TempDir,
    admin_token: &str,
    port: u16,
    admin_port: u16,
    log_path: &Path,
) -> Child {
    let log = std::fs::File::create(log_path).expect("log file");
    let mut command = Command::new(BINARY);
    command
        .arg("run")
        .arg("--config")
        .arg(&start.config)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--admin-listen")
        .arg(format!("127.0.0.1:{admin_port}"))
        .args(&start.args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    apply_env(&mut command, state.path(), admin_token, &start.env);
    command.spawn().expect("start the gateway binary")
}

/// An HTTP/1.1 request. `Host` and `Content-Length` are added when sent, unless given.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.into(),
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn post(path: &str, body: impl Into<Vec<u8>>) -> Self {
        Self::new("POST", path)
            .header("content-type", "application/json")
            .body(body)
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn without_header(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nhost: 127.0.0.1\r\n",
            self.method, self.path
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        let has = |wanted: &str| {
            self.headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(wanted))
        };
        if !has("content-length") && !has("transfer-encoding") {
            head.push_str(&format!("content-length: {}\r\n", self.body.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        // Answers may nest deeper than serde_json's default limit of 128 levels.
        let mut reader = serde_json::Deserializer::from_slice(&self.body);
        reader.disable_recursion_limit();
        serde::Deserialize::deserialize(&mut reader)
            .unwrap_or_else(|e| panic!("not json ({e}): {:?} {}", self.status, self.text()))
    }

    /// The stable error code of a JSON error response.
    pub fn error_code(&self) -> String {
        let body = self.json();
        assert!(
            body["error"]["message"].is_string(),
            "error without a message: {body}"
        );
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

pub fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the gateway");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
}

/// Opens a connection and sends only the head of a JSON POST, leaving the body to the test: for
/// bodies that arrive late, in pieces, malformed, or never.
pub fn send_head(port: u16, path: &str, headers: &[(&str, &str)]) -> TcpStream {
    let mut head = format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut stream = connect(port);
    stream
        .write_all(head.as_bytes())
        .expect("send the request head");
    stream
}

pub fn send(port: u16, request: &Request) -> Response {
    try_send(port, request).unwrap_or_else(|e| panic!("{} {}: {e}", request.method, request.path))
}

pub fn try_send(port: u16, request: &Request) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(PATIENCE))?;
    stream.write_all(&request.to_bytes())?;
    let mut reader = BufReader::new(stream);
    if request.method == "HEAD" {
        // The answer to HEAD describes a body it does not send (RFC 9110 §9.3.2).
        return read_head(&mut reader);
    }
    read_response(&mut reader)
}

/// Sends raw bytes on a new connection and reads one response.
pub fn send_raw(port: u16, bytes: &[u8]) -> std::io::Result<Response> {
    let mut stream = connect(port);
    stream.write_all(bytes)?;
    read_response(&mut BufReader::new(stream))
}

/// Reads one response: status line, headers, then a Content-Length, chunked or
/// close-delimited body.
pub fn read_response(reader: &mut BufReader<TcpStream>) -> std::io::Result<Response> {
    let mut response = read_head(reader)?;
    response.body = read_body(reader, &response)?;
    Ok(response)
}

/// Reads a response's status line and headers, leaving any body unread.
fn read_head(reader: &mut BufReader<TcpStream>) -> std::io::Result<Response> {
    let mut status_line = String::new();
    if reader.read_line(&mut status_line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;

    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }

    Ok(Response {
        status,
        headers,
        body: Vec::new(),
    })
}

fn read_body(reader: &mut BufReader<TcpStream>, response: &Response) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if let Some(length) = response.header("content-length") {
        let length: usize = length.parse().map_err(std::io::Error::other)?;
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    } else if response
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line)?;
            let size =
                usize::from_str_radix(size_line.trim(), 16).map_err(std::io::Error::other)?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        reader.read_to_end(&mut body)?;
    }
    Ok(body)
}

/// Whether the peer has closed the connection (reads EOF or a reset) within `PATIENCE`.
pub fn closed_by_peer(reader: &mut BufReader<TcpStream>) -> bool {
    let mut byte = [0u8; 1];
    matches!(reader.read(&mut byte), Ok(0) | Err(_))
}
