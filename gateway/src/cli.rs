//! The command line: `run`, `check`, `urls`, `keys generate` and `test`.
//!
//! Every command loads the configuration the same way, so `check` passing means `run` will
//! start, and `test` runs exactly the pipeline a real request would.

use crate::auth;
use crate::config::{self, Config, ResponseMode};
use crate::error::GatewayError;
use crate::pipeline::{self, RequestParts};
use crate::routing::{Router, UrlSecret};
use crate::server;
use crate::telemetry::{self, LogFormat};
use clap::{Parser, Subcommand};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Prints a line to stdout. A closed pipe (`webhook-gateway urls | head -1`) is not an error
/// worth a panic: the reader has what it wanted.
macro_rules! emit {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

#[derive(Debug, Parser)]
#[command(
    name = "webhook-gateway",
    version,
    about = "Turns webhook requests into workflow runs"
)]
pub struct Cli {
    /// The gateway configuration file.
    #[arg(
        long,
        global = true,
        default_value = "gateway.yaml",
        env = "WEBHOOK_GATEWAY_CONFIG"
    )]
    pub config: PathBuf,

    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve webhooks (and the admin API when an admin token is set).
    Run {
        /// Overrides `server.listen`.
        #[arg(long)]
        listen: Option<String>,
        /// Overrides `admin.listen`.
        #[arg(long)]
        admin_listen: Option<String>,
    },
    /// Validate every file, compile every script and schema, and list every problem.
    Check,
    /// Print each workflow's id, active flag and webhook URL.
    Urls {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Run one workflow's pipeline offline on an event file and print the variables and result.
    Test {
        workflow_id: String,
        /// JSON file holding the event body.
        #[arg(long)]
        event: PathBuf,
        /// A request header, as 'Name: value'. Repeatable.
        #[arg(long = "header")]
        headers: Vec<String>,
        /// A query string, as 'a=1&b=2'.
        #[arg(long)]
        query: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a new random API key and the line to paste into gateway.yaml.
    Generate {
        /// The name the key gets in the configuration.
        #[arg(long, default_value = "new-key")]
        name: String,
    },
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    telemetry::init(cli.log_format);
    let outcome = match cli.command {
        Command::Run {
            listen,
            admin_listen,
        } => serve(&cli.config, listen, admin_listen),
        Command::Check => check(&cli.config),
        Command::Urls { json } => urls(&cli.config, json),
        Command::Keys {
            command: KeysCommand::Generate { name },
        } => generate_key(&name),
        Command::Test {
            workflow_id,
            event,
            headers,
            query,
        } => test(
            &cli.config,
            &workflow_id,
            &event,
            &headers,
            query.as_deref(),
        ),
    };

    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("error: {message}");
            }
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> Result<Config, String> {
    config::load(path).map_err(|errors| {
        let count = errors.0.len();
        format!("{errors}{count} problem(s) in the configuration")
    })
}

fn serve(path: &Path, listen: Option<String>, admin_listen: Option<String>) -> Result<(), String> {
    let mut config = load(path)?;
    if let Some(listen) = listen {
        check_address(&listen, "--listen")?;
        config.server.listen = listen;
    }
    if let Some(admin_listen) = admin_listen {
        check_address(&admin_listen, "--admin-listen")?;
        if let Some(admin) = config.admin.as_mut() {
            admin.listen = admin_listen;
        }
    }
    server::run(config)
}

fn check_address(address: &str, flag: &str) -> Result<(), String> {
    address
        .parse::<std::net::SocketAddr>()
        .map(drop)
        .map_err(|_| format!("{flag} {address:?} is not an ip:port address"))
}

fn check(path: &Path) -> Result<(), String> {
    let config = load(path)?;
    let active = config.workflows.iter().filter(|w| w.active).count();
    let scripts = config
        .workflows
        .iter()
        .filter(|w| w.script.is_some())
        .count();
    let schemas = config
        .workflows
        .iter()
        .filter(|w| w.schema.is_some())
        .count();
    emit!(
        "ok: {} workflows ({active} active), {scripts} scripts and {schemas} schemas compiled",
        config.workflows.len()
    );
    Ok(())
}

fn urls(path: &Path, as_json: bool) -> Result<(), String> {
    let config = load(path)?;
    let secret = UrlSecret::resolve(config.url_secret.as_deref(), &config.state_dir)
        .map_err(|error| format!("url secret: {error}"))?;
    let router = Router::new(&config.workflows, &secret);

    let listed: Vec<Value> = config
        .workflows
        .iter()
        .map(|workflow| {
            let path = router.path_of(&workflow.id).unwrap_or_default();
            json!({
                "id": workflow.id,
                "active": workflow.active,
                "url": format!("{}{path}", config.server.public_base_url),
                "methods": workflow.methods,
                "response": match workflow.response {
                    ResponseMode::ReturnResults => "return_results",
                    ResponseMode::Accept => "accept",
                },
            })
        })
        .collect();

    if as_json {
        emit!("{}", Value::Array(listed));
        return Ok(());
    }
    emit!("{:<24} {:<7} URL", "ID", "ACTIVE");
    for entry in &listed {
        let active = if entry["active"] == true { "yes" } else { "no" };
        let id = entry["id"].as_str().unwrap_or_default();
        let url = entry["url"].as_str().unwrap_or_default();
        emit!("{id:<24} {active:<7} {url}");
    }
    Ok(())
}

fn generate_key(name: &str) -> Result<(), String> {
    let valid = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        return Err(format!(
            "key name {name:?} must be 1 to 64 of a-z, A-Z, 0-9, '-', '_' and '.'"
        ));
    }

    let key = auth::generate_key();
    let digest = hex::encode(auth::digest(&key));
    emit!("key: {key}");
    emit!(
        "Give the key to the caller; store only its hash. Add this under api_keys in gateway.yaml:"
    );
    emit!("  - name: {name}");
    emit!("    sha256: \"{digest}\"");
    Ok(())
}

fn test(
    path: &Path,
    workflow_id: &str,
    event: &PathBuf,
    header_lines: &[String],
    query: Option<&str>,
) -> Result<(), String> {
    let config = load(path)?;
    let workflow = config
        .workflow(workflow_id)
        .ok_or_else(|| format!("no workflow with id {workflow_id:?}"))?;
    let body = std::fs::read(event).map_err(|error| format!("{}: {error}", event.display()))?;
    if body.len() > workflow.max_body_bytes {
        let error = GatewayError::PayloadTooLarge {
            limit_bytes: workflow.max_body_bytes,
        };
        emit!("{}", failure_report(workflow_id, None, &error));
        return Err(String::new());
    }
    let headers = parse_headers(header_lines)?;

    let parts = RequestParts {
        headers: &headers,
        query,
        body: &body,
    };
    let run_id = crate::runs::new_run_id();
    let outcome = pipeline::prepare(workflow, &config.limits, &parts).map(|prepared| {
        let result = pipeline::execute(&config.engine, workflow, &prepared, &run_id);
        (prepared, result)
    });

    let report = match outcome {
        Ok((prepared, Ok(result))) => json!({
            "workflow": workflow.id, "variables": prepared.variables, "result": result
        }),
        Ok((prepared, Err(error))) => failure_report(workflow_id, Some(prepared.variables), &error),
        Err(error) => failure_report(workflow_id, None, &error),
    };
    emit!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    if report.get("error").is_some() {
        return Err(String::new());
    }
    Ok(())
}

fn failure_report(
    workflow_id: &str,
    variables: Option<serde_json::Map<String, Value>>,
    error: &GatewayError,
) -> Value {
    let mut report = error.to_json(None);
    report["workflow"] = json!(workflow_id);
    report["status"] = json!(error.status());
    if let Some(variables) = variables {
        report["variables"] = Value::Object(variables);
    }
    report
}

fn parse_headers(lines: &[String]) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("header {line:?} is not 'Name: value'"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("{:?} is not a header name", name.trim()))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("header {name} has an invalid value"))?;
        headers.append(name, value);
    }
    Ok(headers)
}
