//! A real HTTP/1.1 backend on a loopback port, started by a test: it records every request it
//! receives, byte for byte, and answers as the test's script of replies says.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A request as the backend saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Lowercase names, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How the backend answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Status, extra headers, body (sent with a Content-Length).
    Respond(u16, Vec<(String, String)>, Vec<u8>),
    /// Status and a body sent chunked, in pieces of the given size.
    Chunked(u16, Vec<u8>, usize),
    /// Read the request and never answer.
    Hang,
    /// An interim `100 Continue` and `103 Early Hints`, then the reply.
    AfterInterim(Box<Reply>),
}

impl Reply {
    pub fn json(status: u16, body: &str) -> Self {
        Reply::Respond(
            status,
            vec![("content-type".into(), "application/json".into())],
            body.as_bytes().to_vec(),
        )
    }
}

type Responder = Box<dyn Fn(&Received, usize) -> Reply + Send + Sync>;

struct Shared {
    received: Mutex<Vec<Received>>,
    arrived: Condvar,
    responder: Responder,
    stopping: AtomicBool,
}

pub struct Backend {
    pub address: SocketAddr,
    shared: Arc<Shared>,
}

impl Backend {
    /// Starts a backend on a free port; `responder` gets each request and how many came before.
    pub fn start(responder: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a backend");
        Self::serve(listener, Box::new(responder))
    }

    /// Starts a backend on a given address (to bring a dead address back).
    pub fn start_on(
        address: SocketAddr,
        responder: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind(address).expect("bind the backend's old address");
        Self::serve(listener, Box::new(responder))
    }

    /// A backend that answers every request 200 with `{"ok":true}`.
    pub fn ok() -> Self {
        Self::start(|_, _| Reply::json(200, r#"{"ok":true}"#))
    }

    fn serve(listener: TcpListener, responder: Responder) -> Self {
        let address = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            received: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            responder,
            stopping: AtomicBool::new(false),
        });
        let accepting = Arc::clone(&shared);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if accepting.stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let connection = Arc::clone(&accepting);
                std::thread::spawn(move || serve_connection(stream, &connection));
            }
        });
        Self { address, shared }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Requests received so far, health checks (`GET /health`) left out.
    pub fn requests(&self) -> Vec<Received> {
        let received = self.shared.received.lock().unwrap();
        received
            .iter()
            .filter(|r| r.path != "/health")
            .cloned()
            .collect()
    }

    /// Waits until at least `count` requests (health checks left out) have arrived.
    pub fn wait_for(&self, count: usize) -> Vec<Received> {
        let deadline = Instant::now() + super::PATIENCE;
        let mut received = self.shared.received.lock().unwrap();
        loop {
            let requests: Vec<Received> = received
                .iter()
                .filter(|r| r.path != "/health")
                .cloned()
                .collect();
            if requests.len() >= count {
                return requests;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "backend got {} of {count} requests",
                requests.len()
            );
            received = self.shared.arrived.wait_timeout(received, left).unwrap().0;
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.address);
    }
}

fn serve_connection(stream: TcpStream, shared: &Shared) {
    let mut writer = match stream.try_clone() {
        Ok(writer) => writer,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    while let Some(request) = read_request(&mut reader) {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let reply = {
            let mut received = shared.received.lock().unwrap();
            let before = received.iter().filter(|r| r.path != "/health").count();
            let reply = if request.path == "/health" {
                Reply::json(200, "{}")
            } else {
                (shared.responder)(&request, before)
            };
            received.push(request);
            shared.arrived.notify_all();
            reply
        };
        if write_reply(&mut writer, reply).is_err() {
            return;
        }
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Received> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();

    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }

    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Received {
        method,
        path,
        headers,
        body,
        at: Instant::now(),
    })
}

fn write_reply(writer: &mut TcpStream, reply: Reply) -> std::io::Result<()> {
    match reply {
        Reply::Respond(status, headers, body) => {
            let mut head = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n", body.len());
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            writer.write_all(head.as_bytes())?;
            writer.write_all(&body)
        }
        Reply::Chunked(status, body, piece) => {
            writer.write_all(format!("HTTP/1.1 {status} X\r\ntransfer-encoding: chunked\r\ncontent-type: application/octet-stream\r\n\r\n").as_bytes())?;
            for chunk in body.chunks(piece.max(1)) {
                writer.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())?;
                writer.write_all(chunk)?;
                writer.write_all(b"\r\n")?;
            }
            writer.write_all(b"0\r\n\r\n")
        }
        Reply::AfterInterim(reply) => {
            writer.write_all(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n",
            )?;
            write_reply(writer, *reply)
        }
        Reply::Hang => {
            std::thread::sleep(Duration::from_secs(60));
            Err(std::io::Error::other("hung up"))
        }
    }
}
