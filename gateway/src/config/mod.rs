//! Configuration: the files on disk (`file`), `${ENV}` expansion (`env`), and their validation
//! into the model the rest of the gateway uses (`settings` for `gateway.yaml`, `workflow` for
//! each workflow file).
//!
//! Loading never stops at the first problem: every error in every file is collected with its
//! file and location, so `webhook-gateway check` can list them all at once. Scripts and schemas
//! are compiled here, so a configuration that loads is one that can serve.

pub mod env;
pub mod file;
mod intake;
mod settings;
mod workflow;

pub use intake::{Idempotency, IdempotencySource};

use crate::auth::{ApiKeys, KeyPolicy};
use crate::forward::Forward;
use crate::mapping::Mapping;
use crate::schema::Schema;
use crate::script::{CompiledScript, ScriptEngine};
use serde::de::DeserializeOwned;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Largest body limit the configuration may set, for the gateway or one workflow.
pub const MAX_BODY_LIMIT_BYTES: usize = 100 * 1024 * 1024;

/// A validated configuration, ready to serve.
pub struct Config {
    /// The `gateway.yaml` this was loaded from.
    pub source: PathBuf,
    pub server: ServerSettings,
    /// `None` when no admin token is configured: the admin listener is then off.
    pub admin: Option<AdminSettings>,
    pub url_secret: Option<String>,
    pub state_dir: PathBuf,
    pub limits: Limits,
    pub sandbox: SandboxLimits,
    pub runs: RunSettings,
    pub samples: SampleSettings,
    pub reload: ReloadSettings,
    pub idempotency: IdempotencySettings,
    pub workflows_dir: PathBuf,
    pub scripts_dir: PathBuf,
    pub keys: ApiKeys,
    pub backends: Vec<BackendSettings>,
    pub engine: Arc<ScriptEngine>,
    /// Sorted by id.
    pub workflows: Vec<Arc<Workflow>>,
}

impl Config {
    pub fn workflow(&self, id: &str) -> Option<&Arc<Workflow>> {
        self.workflows.iter().find(|workflow| workflow.id == id)
    }
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: String,
    /// Without a trailing slash.
    pub public_base_url: String,
    pub threads: usize,
    pub idle_timeout: Duration,
    pub body_read_timeout: Duration,
    pub body_total_timeout: Duration,
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: Vec<crate::network::Cidr>,
}

/// The bounds of the idempotency store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencySettings {
    pub max_bytes: usize,
    pub max_answer_bytes: usize,
}

#[derive(Clone)]
pub struct AdminSettings {
    pub listen: String,
    pub token: String,
}

impl fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminSettings")
            .field("listen", &self.listen)
            .field("token", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
}

#[derive(Debug, Clone)]
pub struct SandboxLimits {
    pub max_operations: u64,
    pub max_call_levels: usize,
    pub max_string_bytes: usize,
    pub max_array_len: usize,
    pub max_map_len: usize,
    pub max_memory_bytes: usize,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunSettings {
    pub workers: usize,
    pub threads: usize,
    pub queue_capacity: usize,
    pub max_records: u64,
    pub record_ttl: Duration,
    pub retention_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleSettings {
    pub per_workflow: usize,
    pub max_body_bytes: usize,
    pub max_total_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadSettings {
    pub watch: bool,
    pub interval: Duration,
}

/// A named backend service.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendSettings {
    pub name: String,
    /// At least one.
    pub addresses: Vec<BackendAddress>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub total_timeout: Duration,
    /// HTTP path of the health check; `None` checks with a TCP connect.
    pub health_path: Option<String>,
    pub health_interval: Duration,
}

/// One address of a backend, resolved at load.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendAddress {
    pub tls: bool,
    pub host: String,
    /// `host:port`, for the `Host` header.
    pub authority: String,
    pub socket: std::net::SocketAddr,
}

/// How the caller is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseMode {
    /// 200 with the run's result.
    ReturnResults,
    /// 202 with the run id; the run goes on in the background.
    Accept,
}

/// One workflow, validated and compiled.
#[derive(Debug)]
pub struct Workflow {
    pub id: String,
    pub description: String,
    pub active: bool,
    /// Uppercase method names.
    pub methods: Vec<String>,
    /// Body formats accepted; at least one.
    pub formats: Vec<crate::payload::Format>,
    pub key_policy: KeyPolicy,
    pub schema: Option<Schema>,
    pub mapping: Mapping,
    pub script: Option<CompiledScript>,
    pub response: ResponseMode,
    pub max_body_bytes: usize,
    pub forward: Option<Forward>,
    /// Whether events sent to the production URL are kept as samples too.
    pub sample_production: bool,
    /// Checked over the body as received, before it is decoded.
    pub signature: Option<crate::signature::SignatureCheck>,
    /// Addresses that may call; empty for any.
    pub allow_ips: Vec<crate::network::Cidr>,
    /// Over every caller of the workflow.
    pub limits: crate::limits::CallerLimits,
    pub idempotency: Option<Idempotency>,
    /// The workflow file.
    pub source: PathBuf,
    /// Other files it was built from (schema file, script), watched for changes.
    pub dependencies: Vec<PathBuf>,
}

impl Workflow {
    pub fn allows_method(&self, method: &str) -> bool {
        self.methods.iter().any(|allowed| allowed == method)
    }
}

/// One problem in one file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// A line and column, or a dotted field path such as `mapping.order_id.pointer`.
    pub location: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.location.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                self.location,
                self.message
            )
        }
    }
}

/// Every problem found while loading.
#[derive(Debug, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for error in &self.0 {
            writeln!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects the problems of one file.
pub(crate) struct Problems<'a> {
    file: &'a Path,
    errors: &'a mut Vec<ConfigError>,
}

impl<'a> Problems<'a> {
    pub(crate) fn new(file: &'a Path, errors: &'a mut Vec<ConfigError>) -> Self {
        Self { file, errors }
    }

    pub(crate) fn add(&mut self, location: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            location: location.into(),
            message: without_credentials(&message.into()),
        });
    }

    /// Checks that `value` lies in `range`, reporting it at `location` otherwise.
    pub(crate) fn in_range<T>(
        &mut self,
        location: &str,
        value: T,
        range: std::ops::RangeInclusive<T>,
    ) where
        T: PartialOrd + fmt::Display,
    {
        if !range.contains(&value) {
            let (low, high) = range.into_inner();
            self.add(location, format!("{value} is outside {low}..={high}"));
        }
    }
}

/// Loads and validates `gateway.yaml` and every workflow it points at.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let gateway_file = read_yaml::<file::GatewayFile>(path, &mut errors)
        .ok_or_else(|| ConfigErrors(std::mem::take(&mut errors)))?;

    let base = path.parent().unwrap_or(Path::new("."));
    let gateway = settings::validate(path, base, gateway_file, &mut errors);
    let engine = Arc::new(ScriptEngine::new(&gateway.sandbox));
    let workflows = workflow::load_all(&gateway, &engine, &mut errors);

    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Config {
        source: path.to_path_buf(),
        server: gateway.server,
        admin: gateway.admin,
        url_secret: gateway.url_secret,
        state_dir: gateway.state_dir,
        limits: gateway.limits,
        sandbox: gateway.sandbox,
        runs: gateway.runs,
        samples: gateway.samples,
        reload: gateway.reload,
        idempotency: gateway.idempotency,
        workflows_dir: gateway.workflows_dir,
        scripts_dir: gateway.scripts_dir,
        keys: gateway.keys,
        backends: gateway.backends,
        engine,
        workflows,
    })
}

/// The admin listener's address and token, as written in `gateway.yaml` (after `${ENV}`
/// expansion). Reads only that file, so the CLI can reach a running gateway even while a
/// workflow file being edited does not load.
pub struct AdminEndpointSettings {
    pub listen: String,
    pub token: Option<String>,
}

pub fn admin_settings(path: &Path) -> Result<AdminEndpointSettings, String> {
    let mut errors = Vec::new();
    let file = read_yaml::<file::GatewayFile>(path, &mut errors)
        .ok_or_else(|| ConfigErrors(errors).to_string().trim_end().to_string())?;
    let token = file
        .admin
        .token
        .map(|token| token.trim().to_string())
        .filter(|token| !token.is_empty());
    Ok(AdminEndpointSettings {
        listen: file.admin.listen,
        token,
    })
}

/// Reads a YAML file, expanding `${ENV}` first; problems go to `errors`.
pub(crate) fn read_yaml<T: DeserializeOwned>(
    path: &Path,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    let mut problems = Problems::new(path, errors);
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => {
            problems.add("", format!("cannot read file: {error}"));
            return None;
        }
    };

    // Problems with placeholders are reported, and parsing goes on to find the others.
    let (expanded, placeholder_problems) = env::expand(&text, |name| std::env::var(name).ok());
    for (line, message) in placeholder_problems {
        problems.add(format!("line {line}"), message);
    }

    serde_yaml_ng::from_str(&expanded)
        .map_err(|error| {
            let location = error
                .location()
                .map(|at| format!("line {} column {}", at.line(), at.column()))
                .unwrap_or_default();
            let message = error.to_string();
            // The parser repeats the location at the end of its message.
            let message = message
                .strip_suffix(&format!(" at {location}"))
                .unwrap_or(&message);
            problems.add(location, in_plain_words(message));
        })
        .ok()
}

/// The parser names Rust types ("expected usize"); an operator reads the kind of value.
fn in_plain_words(message: &str) -> String {
    const TYPES: [(&str, &str); 8] = [
        ("expected usize", "expected a whole number, 0 or more"),
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected u32", "expected a whole number, 0 or more"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
    ];
    let mut message = message.to_string();
    for (rust, plain) in TYPES {
        message = message.replace(rust, plain);
    }
    message
}

/// Replaces what sits between a URL's `://` and an `@` of the same address (a user name,
/// perhaps a password) with `***`: problem texts quote values (a YAML type error quotes the
/// whole string), and none may repeat a credential.
pub(crate) fn without_credentials(text: &str) -> String {
    let mut kept = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        kept.push_str(before);
        let end = after
            .find(|c: char| c.is_whitespace() || "\"'`/?#,]".contains(c))
            .unwrap_or(after.len());
        let authority = &after[..end];
        match authority.rsplit_once('@') {
            Some((_, host)) => {
                kept.push_str("***@");
                kept.push_str(host);
            }
            None => kept.push_str(authority),
        }
        rest = &after[end..];
    }
    kept.push_str(rest);
    kept
}

#[cfg(test)]
mod credential_tests {
    use super::without_credentials;

    #[test]
    fn type_errors_name_kinds_of_values_not_rust_types() {
        assert_eq!(
            super::in_plain_words("runs.threads: invalid type: string \"x\", expected usize"),
            "runs.threads: invalid type: string \"x\", expected a whole number, 0 or more"
        );
    }

    #[test]
    fn credentials_in_quoted_urls_are_masked() {
        assert_eq!(
            without_credentials(
                r#"invalid type: string "http://al:pw@h:1/x", expected a sequence"#
            ),
            r#"invalid type: string "http://***@h:1/x", expected a sequence"#
        );
        assert_eq!(without_credentials("no url here"), "no url here");
        assert_eq!(without_credentials("a://h b://u@h2"), "a://h b://***@h2");
    }
}
