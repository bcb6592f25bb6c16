//! The configuration files exactly as written: `gateway.yaml` and one `workflows/*.yaml` per
//! workflow. Unknown keys are rejected so that a typo is an error rather than a silent default.
//! Nothing outside `config` uses these types; `config::load` validates them into the model.

use indexmap::IndexMap;
use serde::de::{Deserializer, Error as _, MapAccess, Visitor};
use serde::Deserialize;
use std::marker::PhantomData;

/// Reads a YAML mapping into an ordered map, refusing a key given twice: YAML parsers keep
/// the last one silently, which would hide half of what the author wrote.
fn unique_keys<'de, D, V>(deserializer: D) -> Result<IndexMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct UniqueKeys<V>(PhantomData<V>);

    impl<'de, V: Deserialize<'de>> Visitor<'de> for UniqueKeys<V> {
        type Value = IndexMap<String, V>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a mapping")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Self::Value, A::Error> {
            let mut map = IndexMap::new();
            while let Some((key, value)) = entries.next_entry::<String, V>()? {
                if map.contains_key(&key) {
                    return Err(A::Error::custom(format!("{key:?} is given twice")));
                }
                map.insert(key, value);
            }
            Ok(map)
        }
    }

    deserializer.deserialize_map(UniqueKeys(PhantomData))
}

/// `gateway.yaml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    #[serde(default)]
    pub server: ServerFile,
    #[serde(default)]
    pub admin: AdminFile,
    #[serde(default)]
    pub paths: PathsFile,
    /// Secret from which each workflow's URL token is derived. When absent, a random one is
    /// created once in the state directory, which keeps URLs stable across restarts.
    pub url_secret: Option<String>,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub scripts: SandboxFile,
    #[serde(default)]
    pub runs: RunsFile,
    #[serde(default)]
    pub samples: SamplesFile,
    #[serde(default)]
    pub reload: ReloadFile,
    #[serde(default)]
    pub idempotency: IdempotencyStoreFile,
    #[serde(default)]
    pub api_keys: Vec<ApiKeyFile>,
    /// Backend services that workflows forward to, by name.
    #[serde(default, deserialize_with = "unique_keys")]
    pub backends: IndexMap<String, BackendFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerFile {
    /// Address the webhook listener binds, `host:port`.
    pub listen: String,
    /// Base of the URLs printed by `webhook-gateway urls`, as callers reach the gateway.
    pub public_base_url: Option<String>,
    /// Worker threads for webhook traffic.
    pub threads: usize,
    /// How long an idle keep-alive connection stays open.
    pub idle_timeout_seconds: u64,
    /// How long one read of the request body may wait before the request fails with 408.
    pub body_read_timeout_ms: u64,
    /// How long the whole request body may take to arrive before the request fails with 408.
    pub body_total_timeout_ms: u64,
    /// Proxies (addresses or CIDR blocks) whose `X-Forwarded-For`, `-Proto` and `-Host` are
    /// believed. Nobody else's are.
    pub trusted_proxies: Vec<String>,
}

impl Default for ServerFile {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            public_base_url: None,
            threads: 2,
            idle_timeout_seconds: 60,
            body_read_timeout_ms: 10_000,
            body_total_timeout_ms: 60_000,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminFile {
    /// Address of the admin listener; keep it on loopback or a private network.
    pub listen: String,
    /// Bearer token every admin request must carry. Empty or absent turns the listener off.
    pub token: Option<String>,
}

impl Default for AdminFile {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9180".into(),
            token: None,
        }
    }
}

/// Folders, relative to the directory that holds `gateway.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathsFile {
    pub workflows: String,
    pub scripts: String,
    /// Where the gateway keeps what it creates itself (the URL secret).
    pub state: String,
}

impl Default for PathsFile {
    fn default() -> Self {
        Self {
            workflows: "workflows".into(),
            scripts: "scripts".into(),
            state: ".webhook-gateway".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsFile {
    /// Largest request body accepted, in bytes; a workflow may lower or raise it.
    pub max_body_bytes: usize,
    /// Deepest JSON nesting accepted (objects and arrays).
    pub max_json_depth: usize,
}

impl Default for LimitsFile {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_json_depth: 256,
        }
    }
}

/// The Rhai sandbox every script runs in.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxFile {
    /// Rhai operations one run may perform.
    pub max_operations: u64,
    /// Nested function calls.
    pub max_call_levels: usize,
    /// Longest string a script may build, in bytes.
    pub max_string_bytes: usize,
    /// Largest array a script may build.
    pub max_array_len: usize,
    /// Largest object map a script may build.
    pub max_map_len: usize,
    /// Heap memory one run may hold, in bytes.
    pub max_memory_bytes: usize,
    /// Wall-clock time one run may take; a workflow may lower or raise it.
    pub timeout_ms: u64,
}

impl Default for SandboxFile {
    fn default() -> Self {
        Self {
            max_operations: 1_000_000,
            max_call_levels: 32,
            max_string_bytes: 1024 * 1024,
            max_array_len: 100_000,
            max_map_len: 10_000,
            max_memory_bytes: 64 * 1024 * 1024,
            timeout_ms: 1_000,
        }
    }
}

/// The background pool that runs accepted (202) workflows.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunsFile {
    /// Runs that may execute at once (a run waiting to retry does not count).
    pub workers: usize,
    /// Threads of the runtime that executes accepted runs. Their work is mostly waiting on
    /// backends, and a script past its first 2 ms moves to a blocking thread, so one thread
    /// carries many runs; each more thread costs wake-ups that the request threads feel.
    pub threads: usize,
    /// Accepted runs that may be unfinished at once; past this, requests get 503.
    pub queue_capacity: usize,
    /// Ended runs kept in the journal; the oldest go first.
    pub max_records: u64,
    /// How long an ended run is kept in the journal.
    pub record_ttl_seconds: u64,
    /// How often the journal is trimmed to `max_records` and `record_ttl_seconds`.
    pub retention_interval_ms: u64,
}

impl Default for RunsFile {
    fn default() -> Self {
        Self {
            workers: 2,
            threads: 1,
            queue_capacity: 1024,
            max_records: 100_000,
            record_ttl_seconds: 7 * 24 * 3600,
            retention_interval_ms: 60_000,
        }
    }
}

/// Events kept for authors: what reached each workflow's test URL (and its production URL
/// when the workflow asks for it), for `GET /api/v1/workflows/{id}/samples` and field discovery.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplesFile {
    /// Most recent events kept per workflow.
    pub per_workflow: usize,
    /// Body bytes kept per event; a longer body is cut and left out of field discovery.
    pub max_body_bytes: usize,
    /// Body bytes kept over every workflow; past it, a workflow's oldest events go first.
    pub max_total_bytes: usize,
}

impl Default for SamplesFile {
    fn default() -> Self {
        Self {
            per_workflow: 20,
            max_body_bytes: 256 * 1024,
            max_total_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Picking up changed files without a restart.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadFile {
    /// Watch gateway.yaml, the workflows folder and the scripts folder for changes.
    pub watch: bool,
    /// How often the files are looked at.
    pub interval_ms: u64,
}

impl Default for ReloadFile {
    fn default() -> Self {
        Self {
            watch: true,
            interval_ms: 1_000,
        }
    }
}

/// A named backend service: one or more addresses behind round-robin load balancing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendFile {
    /// `http://host:port` or `https://host:port`, each one address of the service.
    pub addresses: Vec<String>,
    /// Time to establish a connection.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Time to wait for each read of the backend's answer.
    #[serde(default = "default_read_timeout_ms")]
    pub read_timeout_ms: u64,
    /// Time for a whole exchange, from connecting to the end of the answer's headers.
    #[serde(default = "default_total_timeout_ms")]
    pub total_timeout_ms: u64,
    #[serde(default)]
    pub health_check: HealthCheckFile,
}

fn default_connect_timeout_ms() -> u64 {
    2_000
}

fn default_read_timeout_ms() -> u64 {
    30_000
}

fn default_total_timeout_ms() -> u64 {
    60_000
}

/// How the gateway checks a backend address. Without `path`, a TCP connect is the check.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckFile {
    /// HTTP path answered with 200 by a healthy address, for example `/healthz`.
    pub path: Option<String>,
    pub interval_ms: u64,
}

impl Default for HealthCheckFile {
    fn default() -> Self {
        Self {
            path: None,
            interval_ms: 2_000,
        }
    }
}

/// Where idempotency keys are remembered: an in-memory cache bounded in bytes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencyStoreFile {
    /// Most bytes all remembered keys and first answers may take together; the oldest go
    /// first when it is full.
    pub max_bytes: usize,
    /// Largest first answer kept to be given again to a repeat; a larger one is answered
    /// with a plain duplicate notice instead.
    pub max_answer_bytes: usize,
}

impl Default for IdempotencyStoreFile {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024 * 1024,
            max_answer_bytes: 64 * 1024,
        }
    }
}

/// One API key: its SHA-256 as hex, or the key itself (normally `${ENV_VAR}`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyFile {
    pub name: String,
    pub sha256: Option<String>,
    pub key: Option<String>,
    /// Limits on what callers with this key may send, over every workflow.
    pub limits: Option<CallerLimitsFile>,
}

/// A rate and a concurrency limit; either may be left out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerLimitsFile {
    /// Sustained requests per second.
    pub rate_per_second: Option<f64>,
    /// Requests that may come at once after a quiet spell; `rate_per_second` rounded up
    /// (at least 1) when absent.
    pub burst: Option<u32>,
    /// Requests that may be in progress at once.
    pub max_concurrent: Option<usize>,
}

/// How repeats of one event are recognised: a header or a body pointer carrying an id the
/// sender keeps when it retries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyFile {
    /// Request header with the key, such as `X-GitHub-Delivery` or `Idempotency-Key`.
    pub header: Option<String>,
    /// RFC 6901 pointer to the key in the decoded body, such as `/id`.
    pub pointer: Option<String>,
    /// How long a key is remembered after it is first seen.
    #[serde(default = "default_idempotency_ttl")]
    pub ttl_seconds: u64,
    /// Refuse events that carry no key (400), rather than run them without the check.
    #[serde(default)]
    pub required: bool,
}

fn default_idempotency_ttl() -> u64 {
    24 * 60 * 60
}

/// One `workflows/*.yaml` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowFile {
    /// Stable id: lowercase letters, digits, `-` and `_`. Part of the URL.
    pub id: String,
    #[serde(default)]
    pub description: String,
    /// An inactive workflow answers 404 `workflow_inactive` and runs nothing.
    #[serde(default = "default_true")]
    pub active: bool,
    #[serde(default)]
    pub trigger: TriggerFile,
    /// JSON Schema, inline.
    pub schema: Option<serde_json::Value>,
    /// JSON Schema in a JSON or YAML file, relative to the workflow file.
    pub schema_file: Option<String>,
    /// Variable name → where its value comes from. Order is kept.
    #[serde(default, deserialize_with = "unique_keys")]
    pub mapping: IndexMap<String, MappingRuleFile>,
    /// Rhai script in the scripts folder. Without one, the result is the mapped variables.
    pub script: Option<String>,
    /// Overrides `scripts.timeout_ms` for this workflow.
    pub script_timeout_ms: Option<u64>,
    #[serde(default)]
    pub response: ResponseModeFile,
    /// Overrides `limits.max_body_bytes` for this workflow.
    pub max_body_bytes: Option<usize>,
    /// Sends the run on to a backend service.
    pub forward: Option<ForwardFile>,
    #[serde(default)]
    pub samples: WorkflowSamplesFile,
    /// The sender signs each request; the signature is checked over the bytes received.
    pub signature: Option<SignatureFile>,
    /// Repeats of an event are answered once, not run again.
    pub idempotency: Option<IdempotencyFile>,
    /// Rate and concurrency limits over every caller of this workflow.
    pub limits: Option<CallerLimitsFile>,
}

/// How a workflow's sender signs its requests: a preset, or `hmac` with its details.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    pub preset: SignaturePresetFile,
    /// The shared secret; normally `${ENV_VAR}`. Empty or missing refuses every request.
    pub secret: Option<String>,
    /// Several secrets at once, while one is being rotated.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// For `hmac`: the header holding the signature(s).
    pub header: Option<String>,
    /// For `hmac`: text before each signature in the header, such as `sha256=`.
    pub prefix: Option<String>,
    /// For `hmac`.
    pub algorithm: Option<SignatureAlgorithmFile>,
    /// For `hmac`.
    pub encoding: Option<SignatureEncodingFile>,
    /// For `hmac`: a header with a Unix timestamp that is signed as `<timestamp>.<body>`.
    pub timestamp_header: Option<String>,
    /// How far a signed timestamp may be from now.
    pub tolerance_seconds: Option<u64>,
    /// For `meta`: the token Meta's `GET ?hub.mode=subscribe` handshake must carry.
    pub verify_token: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignaturePresetFile {
    Github,
    Meta,
    Stripe,
    Shopify,
    Slack,
    Twilio,
    StandardWebhooks,
    Hmac,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureAlgorithmFile {
    Sha1,
    Sha256,
    Sha512,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureEncodingFile {
    Hex,
    Base64,
}

/// Which events of one workflow are kept as samples.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkflowSamplesFile {
    /// Also keep events sent to the production URL, not only the test URL.
    pub production: bool,
}

/// Where and how a workflow forwards its runs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardFile {
    /// A name from `backends` in gateway.yaml.
    pub backend: String,
    /// Method of the forwarded request; the caller's method when absent.
    pub method: Option<String>,
    /// Path (and query) on the backend; `{variable}` inserts a mapped variable, percent-encoded.
    pub path: String,
    /// What is sent: the body as received, the mapped variables, or the script's result.
    pub body: Option<ForwardBodyFile>,
    #[serde(default)]
    pub headers: ForwardHeadersFile,
    #[serde(default)]
    pub retry: RetryFile,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardBodyFile {
    Original,
    Variables,
    Script,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardHeadersFile {
    /// Caller headers passed on unchanged. Credentials and signatures are never passed.
    pub pass: Vec<String>,
    /// Headers added to every forwarded request.
    #[serde(deserialize_with = "unique_keys")]
    pub add: IndexMap<String, String>,
}

/// Background delivery of accepted runs: attempts and backoff between them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryFile {
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for RetryFile {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff_ms: 500,
            max_backoff_ms: 30_000,
        }
    }
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TriggerFile {
    /// HTTP methods that may call the workflow.
    pub methods: Vec<String>,
    pub api_key: ApiKeyPolicyFile,
    /// Body formats accepted; others get 415.
    pub formats: Vec<FormatFile>,
    /// Addresses or CIDR blocks that may call; empty lets any address call.
    pub allow_ips: Vec<String>,
}

impl Default for TriggerFile {
    fn default() -> Self {
        Self {
            methods: vec!["POST".into()],
            api_key: ApiKeyPolicyFile::default(),
            formats: vec![FormatFile::Json, FormatFile::Form],
            allow_ips: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FormatFile {
    /// `application/json` and `*/*+json`.
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
    /// `text/plain`.
    Text,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiKeyPolicyFile {
    /// Whether a caller must present an API key. On unless turned off.
    pub required: bool,
    /// Names of the keys (from `gateway.yaml`) that may call; empty means every key.
    pub keys: Vec<String>,
    /// A query parameter that may carry the key too, for senders that cannot set headers.
    /// Its value is redacted wherever the request is shown.
    pub query: Option<String>,
}

impl Default for ApiKeyPolicyFile {
    fn default() -> Self {
        Self {
            required: true,
            keys: Vec::new(),
            query: None,
        }
    }
}

/// Where one variable comes from: exactly one of `pointer`, `header`, `query`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingRuleFile {
    /// RFC 6901 JSON pointer into the payload.
    pub pointer: Option<String>,
    /// Request header name, case-insensitive.
    pub header: Option<String>,
    /// Query parameter name.
    pub query: Option<String>,
    #[serde(rename = "type", default)]
    pub value_type: ValueTypeFile,
    #[serde(default)]
    pub required: bool,
    pub default: Option<serde_json::Value>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueTypeFile {
    #[default]
    Any,
    String,
    Integer,
    Number,
    Boolean,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseModeFile {
    /// Answer 200 with the run's result.
    #[default]
    ReturnResults,
    /// Answer 202 with the run id at once; the run goes on in the background.
    Accept,
}
