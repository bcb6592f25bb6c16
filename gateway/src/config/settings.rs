//! Validation of `gateway.yaml` into settings. Each field is checked where it is read, and a
//! bad value is reported and replaced by its default so that checking can go on.

use super::file::{ApiKeyFile, BackendFile, GatewayFile};
use super::{
    intake, AdminSettings, BackendAddress, BackendSettings, ConfigError, IdempotencySettings,
    Limits, Problems, ReloadSettings, RunSettings, SampleSettings, SandboxLimits, ServerSettings,
    MAX_BODY_LIMIT_BYTES,
};
use crate::auth::{self, ApiKeys, KeyDigest};
use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
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
    pub samples: SampleSettings,
    pub reload: ReloadSettings,
    pub idempotency: IdempotencySettings,
    pub keys: ApiKeys,
    pub backends: Vec<BackendSettings>,
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
        samples: samples(&file, &mut problems),
        reload: reload(&file, &mut problems),
        idempotency: idempotency(&file, &mut problems),
        keys: api_keys(&file.api_keys, &mut problems),
        backends: backends(&file, &mut problems),
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
        body_total_timeout: Duration::from_millis(server.body_total_timeout_ms),
        trusted_proxies: intake::cidrs(&server.trusted_proxies, "server.trusted_proxies", problems),
    }
}

fn idempotency(file: &GatewayFile, problems: &mut Problems<'_>) -> IdempotencySettings {
    let store = &file.idempotency;
    problems.in_range(
        "idempotency.max_bytes",
        store.max_bytes,
        64 * 1024..=16 * 1024 * 1024 * 1024,
    );
    problems.in_range(
        "idempotency.max_answer_bytes",
        store.max_answer_bytes,
        0..=16 * 1024 * 1024,
    );
    IdempotencySettings {
        max_bytes: store.max_bytes,
        max_answer_bytes: store.max_answer_bytes,
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
    problems.in_range(
        "scripts.max_memory_bytes",
        scripts.max_memory_bytes,
        1024 * 1024..=4096 * 1024 * 1024,
    );
    problems.in_range("scripts.timeout_ms", scripts.timeout_ms, 1..=60_000);
    SandboxLimits {
        max_operations: scripts.max_operations,
        max_call_levels: scripts.max_call_levels,
        max_string_bytes: scripts.max_string_bytes,
        max_array_len: scripts.max_array_len,
        max_map_len: scripts.max_map_len,
        max_memory_bytes: scripts.max_memory_bytes,
        timeout: Duration::from_millis(scripts.timeout_ms),
    }
}

fn runs(file: &GatewayFile, problems: &mut Problems<'_>) -> RunSettings {
    let runs = &file.runs;
    problems.in_range("runs.workers", runs.workers, 1..=256);
    problems.in_range("runs.threads", runs.threads, 1..=64);
    problems.in_range("runs.queue_capacity", runs.queue_capacity, 1..=1_000_000);
    problems.in_range("runs.max_records", runs.max_records, 1..=10_000_000);
    problems.in_range(
        "runs.record_ttl_seconds",
        runs.record_ttl_seconds,
        1..=365 * 24 * 3600,
    );
    problems.in_range(
        "runs.retention_interval_ms",
        runs.retention_interval_ms,
        50..=24 * 3600 * 1000,
    );
    RunSettings {
        workers: runs.workers.clamp(1, 256),
        threads: runs.threads.clamp(1, 64),
        queue_capacity: runs.queue_capacity.clamp(1, 1_000_000),
        max_records: runs.max_records.max(1),
        record_ttl: Duration::from_secs(runs.record_ttl_seconds.max(1)),
        retention_interval: Duration::from_millis(runs.retention_interval_ms.max(50)),
    }
}

fn samples(file: &GatewayFile, problems: &mut Problems<'_>) -> SampleSettings {
    let samples = &file.samples;
    problems.in_range("samples.per_workflow", samples.per_workflow, 0..=1_000);
    problems.in_range(
        "samples.max_body_bytes",
        samples.max_body_bytes,
        0..=MAX_BODY_LIMIT_BYTES,
    );
    problems.in_range(
        "samples.max_total_bytes",
        samples.max_total_bytes,
        0..=4 * 1024 * 1024 * 1024,
    );
    SampleSettings {
        per_workflow: samples.per_workflow.min(1_000),
        max_body_bytes: samples.max_body_bytes.min(MAX_BODY_LIMIT_BYTES),
        max_total_bytes: samples.max_total_bytes,
    }
}

fn reload(file: &GatewayFile, problems: &mut Problems<'_>) -> ReloadSettings {
    let reload = &file.reload;
    problems.in_range("reload.interval_ms", reload.interval_ms, 50..=3_600_000);
    ReloadSettings {
        watch: reload.watch,
        interval: Duration::from_millis(reload.interval_ms.max(50)),
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
        let limits =
            intake::caller_limits(key.limits.as_ref(), &format!("{location}.limits"), problems);
        valid.push((key.name.clone(), digest, limits));
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

fn backends(file: &GatewayFile, problems: &mut Problems<'_>) -> Vec<BackendSettings> {
    file.backends
        .iter()
        .filter_map(|(name, backend)| backend_settings(name, backend, problems))
        .collect()
}

fn backend_settings(
    name: &str,
    file: &BackendFile,
    problems: &mut Problems<'_>,
) -> Option<BackendSettings> {
    let location = format!("backends.{name}");
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid_name {
        problems.add(&location, "backend names are letters, digits, '-' and '_'");
    }
    if file.addresses.is_empty() {
        problems.add(format!("{location}.addresses"), "lists no address");
    }
    problems.in_range(
        &format!("{location}.connect_timeout_ms"),
        file.connect_timeout_ms,
        1..=60_000,
    );
    problems.in_range(
        &format!("{location}.read_timeout_ms"),
        file.read_timeout_ms,
        1..=600_000,
    );
    problems.in_range(
        &format!("{location}.total_timeout_ms"),
        file.total_timeout_ms,
        1..=3_600_000,
    );
    problems.in_range(
        &format!("{location}.health_check.interval_ms"),
        file.health_check.interval_ms,
        100..=3_600_000,
    );
    if let Some(path) = &file.health_check.path {
        if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
            problems.add(
                format!("{location}.health_check.path"),
                format!("{path:?} must be a percent-encoded path starting with '/'"),
            );
        }
    }

    let addresses: Vec<BackendAddress> = file
        .addresses
        .iter()
        .filter_map(|url| {
            backend_address(url)
                .map_err(|error| problems.add(format!("{location}.addresses"), error))
                .ok()
        })
        .collect();
    if addresses.len() != file.addresses.len() || addresses.is_empty() {
        return None;
    }

    Some(BackendSettings {
        name: name.to_string(),
        addresses,
        connect_timeout: Duration::from_millis(file.connect_timeout_ms.max(1)),
        read_timeout: Duration::from_millis(file.read_timeout_ms.max(1)),
        total_timeout: Duration::from_millis(file.total_timeout_ms.max(1)),
        health_path: file.health_check.path.clone(),
        health_interval: Duration::from_millis(file.health_check.interval_ms.max(100)),
    })
}

/// Parses `http://host:port` or `https://host:port` and resolves the host once, at load.
fn backend_address(url: &str) -> Result<BackendAddress, String> {
    // Checked first, and never echoed: before an '@' come a user name and perhaps a password.
    if let Some((_, after)) = url.rsplit_once('@') {
        let host = after.split(['/', '?', '#']).next().unwrap_or_default();
        return Err(format!(
            "the address of host {host:?} carries credentials (user:password@); backends take none in the URL"
        ));
    }
    // A query may carry a token: problems show the address without it.
    let shown = url.split(['?', '#']).next().unwrap_or_default();
    let scheme_end = url.find("://").map_or(0, |at| at + 3);
    let (tls, rest) = match url[..scheme_end].to_ascii_lowercase().as_str() {
        "http://" => (false, &url[scheme_end..]),
        "https://" => (true, &url[scheme_end..]),
        _ => return Err(format!("{shown:?} must start with http:// or https://")),
    };

    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#']) {
        return Err(format!(
            "{shown:?} must be scheme://host[:port], without a path or query"
        ));
    }
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:{}", if tls { 443 } else { 80 })
    };
    let host = with_port
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or_default();
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();

    let socket = with_port
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve {authority:?}: {error}"))?
        .next()
        .ok_or_else(|| format!("{authority:?} resolves to no address"))?;
    Ok(BackendAddress {
        tls,
        host,
        authority: authority.to_string(),
        socket,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_address_with_credentials_is_refused_without_echoing_them() {
        for url in [
            "http://user:s3cret@127.0.0.1:8080",
            "HTTP://user:s3cret@127.0.0.1:8080",
            "http:/user:s3cret@127.0.0.1:8080",
            " http://user:s3cret@127.0.0.1:8080",
            "ftp://user:s3cret@127.0.0.1:8080/x",
        ] {
            let error = backend_address(url).unwrap_err();
            assert!(error.contains("credentials"), "{url}: {error}");
            assert!(error.contains("127.0.0.1:8080"), "{url}: {error}");
            assert!(!error.contains("s3cret"), "{url}: {error}");
        }
        let error = backend_address("http://127.0.0.1:8080/?token=s3cret").unwrap_err();
        assert!(error.contains("without a path"), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
    }

    #[test]
    fn a_scheme_in_capitals_is_still_http() {
        let address = backend_address("HTTP://127.0.0.1:8080").unwrap();
        assert!(!address.tls);
        assert_eq!(address.socket.port(), 8080);
    }
}
