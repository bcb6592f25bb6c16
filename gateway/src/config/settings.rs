//! Validation of `gateway.yaml` into settings. Each field is checked where it is read, and a
//! bad value is reported and replaced by its default so that checking can go on.

use super::file::{ApiKeyFile, GatewayFile};
use super::{
    AdminSettings, ConfigError, Limits, Problems, RunSettings, SandboxLimits, ServerSettings,
    MAX_BODY_LIMIT_BYTES,
};
use crate::auth::{self, ApiKeys, KeyDigest};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `gateway.yaml`, validated. Workflows are loaded against it.
pub(super) struct GatewaySettings {
    pub server: ServerSettings,
    pub admin: Option<AdminSettings>,
    pub url_secret: Option<String>,
    pub state_dir: PathBuf,
    pub workflows_dir: PathBuf,
    pub scripts_dir: PathBuf,
    pub limits: Limits,
    pub sandbox: SandboxLimits,
    pub runs: RunSettings,
    pub keys: ApiKeys,
}

pub(super) fn validate(
    path: &Path,
    base: &Path,
    file: GatewayFile,
    errors: &mut Vec<ConfigError>,
) -> GatewaySettings {
    let mut problems = Problems::new(path, errors);

    GatewaySettings {
        server: server(&file, &mut problems),
        admin: admin(&file, &mut problems),
        url_secret: url_secret(&file, &mut problems),
        state_dir: base.join(&file.paths.state),
        workflows_dir: base.join(&file.paths.workflows),
        scripts_dir: base.join(&file.paths.scripts),
        limits: limits(&file, &mut problems),
        sandbox: sandbox(&file, &mut problems),
        runs: runs(&file, &mut problems),
        keys: api_keys(&file.api_keys, &mut problems),
    }
}

/// Checks a `host:port` listen address, naming the field on failure.
pub(super) fn check_listen(address: &str, location: &str, problems: &mut Problems<'_>) {
    if address.parse::<SocketAddr>().is_err() {
        problems.add(location, format!("{address:?} is not an ip:port address"));
    }
}

fn server(file: &GatewayFile, problems: &mut Problems<'_>) -> ServerSettings {
    let server = &file.server;
    check_listen(&server.listen, "server.listen", problems);
    problems.in_range("server.threads", server.threads, 1..=256);
    problems.in_range(
        "server.idle_timeout_seconds",
        server.idle_timeout_seconds,
        1..=3600,
    );
    problems.in_range(
        "server.body_read_timeout_ms",
        server.body_read_timeout_ms,
        100..=600_000,
    );

    let public_base_url = server
        .public_base_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", server.listen));
    if !(public_base_url.starts_with("http://") || public_base_url.starts_with("https://")) {
        problems.add(
            "server.public_base_url",
            format!("{public_base_url:?} must start with http:// or https://"),
        );
    }

    ServerSettings {
        listen: server.listen.clone(),
        public_base_url: public_base_url.trim_end_matches('/').to_string(),
        threads: server.threads.clamp(1, 256),
        idle_timeout: Duration::from_secs(server.idle_timeout_seconds),
        body_read_timeout: Duration::from_millis(server.body_read_timeout_ms),
    }
}

fn admin(file: &GatewayFile, problems: &mut Problems<'_>) -> Option<AdminSettings> {
    let token = file.admin.token.as_deref().map(str::trim).unwrap_or("");
    if token.is_empty() {
        return None;
    }
    check_listen(&file.admin.listen, "admin.listen", problems);
    Some(AdminSettings {
        listen: file.admin.listen.clone(),
        token: token.to_string(),
    })
}

fn url_secret(file: &GatewayFile, problems: &mut Problems<'_>) -> Option<String> {
    let secret = file
        .url_secret
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())?;
    if secret.len() < 16 {
        problems.add(
            "url_secret",
            "must be at least 16 characters; URLs derive from it",
        );
    }
    Some(secret.to_string())
}

fn limits(file: &GatewayFile, problems: &mut Problems<'_>) -> Limits {
    let limits = &file.limits;
    problems.in_range(
        "limits.max_body_bytes",
        limits.max_body_bytes,
        1..=MAX_BODY_LIMIT_BYTES,
    );
    problems.in_range("limits.max_json_depth", limits.max_json_depth, 1..=1024);
    Limits {
        max_body_bytes: limits.max_body_bytes,
        max_json_depth: limits.max_json_depth.clamp(1, 1024),
    }
}

fn sandbox(file: &GatewayFile, problems: &mut Problems<'_>) -> SandboxLimits {
    let scripts = &file.scripts;
    problems.in_range(
        "scripts.max_operations",
        scripts.max_operations,
        1..=u64::MAX,
    );
    problems.in_range("scripts.max_call_levels", scripts.max_call_levels, 1..=256);
    problems.in_range(
        "scripts.max_string_bytes",
        scripts.max_string_bytes,
        1..=MAX_BODY_LIMIT_BYTES,
    );
    problems.in_range(
        "scripts.max_array_len",
        scripts.max_array_len,
        1..=10_000_000,
    );
    problems.in_range("scripts.max_map_len", scripts.max_map_len, 1..=10_000_000);
    problems.in_range("scripts.timeout_ms", scripts.timeout_ms, 1..=60_000);
    SandboxLimits {
        max_operations: scripts.max_operations,
        max_call_levels: scripts.max_call_levels,
        max_string_bytes: scripts.max_string_bytes,
        max_array_len: scripts.max_array_len,
        max_map_len: scripts.max_map_len,
        timeout: Duration::from_millis(scripts.timeout_ms),
    }
}

fn runs(file: &GatewayFile, problems: &mut Problems<'_>) -> RunSettings {
    let runs = &file.runs;
    problems.in_range("runs.workers", runs.workers, 1..=256);
    problems.in_range("runs.queue_capacity", runs.queue_capacity, 1..=1_000_000);
    problems.in_range("runs.max_records", runs.max_records, 1..=10_000_000);
    problems.in_range(
        "runs.record_ttl_seconds",
        runs.record_ttl_seconds,
        1..=30 * 24 * 3600,
    );
    RunSettings {
        workers: runs.workers.clamp(1, 256),
        queue_capacity: runs.queue_capacity.clamp(1, 1_000_000),
        max_records: runs.max_records.max(1),
        record_ttl: Duration::from_secs(runs.record_ttl_seconds.max(1)),
    }
}

fn api_keys(keys: &[ApiKeyFile], problems: &mut Problems<'_>) -> ApiKeys {
    let mut seen_names = HashSet::new();
    let mut seen_digests = HashSet::new();
    let mut valid = Vec::new();

    for (index, key) in keys.iter().enumerate() {
        let location = format!("api_keys[{index}]");
        if key.name.trim().is_empty() {
            problems.add(format!("{location}.name"), "must not be empty");
        } else if !seen_names.insert(key.name.clone()) {
            problems.add(
                format!("{location}.name"),
                format!("{:?} is used twice", key.name),
            );
        }

        let Some(digest) = key_digest(key, &location, problems) else {
            continue;
        };
        if !seen_digests.insert(digest) {
            problems.add(&location, format!("key {:?} repeats another key", key.name));
        }
        valid.push((key.name.clone(), digest));
    }
    ApiKeys::new(valid)
}

fn key_digest(key: &ApiKeyFile, location: &str, problems: &mut Problems<'_>) -> Option<KeyDigest> {
    match (key.sha256.as_deref(), key.key.as_deref()) {
        (Some(hash), None) => {
            let decoded = hex::decode(hash.trim())
                .ok()
                .and_then(|b| KeyDigest::try_from(b).ok());
            if decoded.is_none() {
                problems.add(
                    format!("{location}.sha256"),
                    "must be 64 hexadecimal characters",
                );
            }
            decoded
        }
        (None, Some(plain)) if !plain.trim().is_empty() => Some(auth::digest(plain.trim())),
        (None, Some(_)) => {
            problems.add(
                format!("{location}.key"),
                "is empty (is its environment variable set?)",
            );
            None
        }
        _ => {
            problems.add(location, "needs exactly one of `sha256` or `key`");
            None
        }
    }
}
