//! The command line: `run`, `check`, `urls`, `keys generate` and `test` work on the files;
//! `workflows`, `activate`, `deactivate`, `samples`, `fields` and `reload` ask a running
//! gateway through its admin API (`remote`).
//!
//! Every command loads the configuration the same way, so `check` passing means `run` will
//! start, and `test` runs exactly the pipeline a real request would.

mod remote;

use crate::auth;
use crate::config::{self, Config, ResponseMode};
use crate::error::GatewayError;
use crate::pipeline::{self, RequestParts};
use crate::routing::UrlSecret;
use crate::server;
use crate::telemetry::{self, LogFormat};
use clap::{Parser, Subcommand};
use http::{HeaderMap, HeaderName, HeaderValue};
use remote::{describe_failure, AdminEndpoint};
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

    /// The running gateway's admin API, as http://host:port; by default `admin.listen` from
    /// the configuration file.
    #[arg(long, global = true, env = "WEBHOOK_GATEWAY_ADMIN_URL")]
    pub admin_url: Option<String>,

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
    /// Print each workflow's id, active flag in its file, webhook URL and test URL.
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
    /// List the running gateway's workflows: state, URLs and request counts.
    Workflows {
        /// Print the admin API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Turn a workflow on in the running gateway; the choice survives restarts.
    Activate { workflow_id: String },
    /// Turn a workflow off in the running gateway; the choice survives restarts.
    Deactivate { workflow_id: String },
    /// Print the events kept for a workflow (secrets redacted).
    Samples {
        workflow_id: String,
        /// Forget the kept events instead.
        #[arg(long)]
        clear: bool,
    },
    /// Print the fields found in a workflow's samples, with a proposed schema and mapping.
    Fields {
        workflow_id: String,
        /// What to print.
        #[arg(long, value_enum, default_value = "table")]
        show: FieldsView,
    },
    /// Run a kept sample through the workflow as configured now, and print the trace.
    Replay {
        workflow_id: String,
        /// The sample's id, from `samples`; the newest by default.
        #[arg(long, default_value = "latest")]
        sample: String,
    },
    /// Make the running gateway load its files again; prints what changed or what is wrong.
    Reload,
    /// Inspect, replay and purge the running gateway's accepted runs.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// List runs, newest first.
    List {
        /// Only this workflow's runs.
        #[arg(long)]
        workflow: Option<String>,
        /// Only runs in this state: accepted, running, retrying, succeeded, rejected, failed,
        /// dead_lettered.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print the admin API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print one run: its input (credentials redacted), attempts, result or error.
    Show { run_id: String },
    /// Run an ended run again; its earlier attempts stay in its record.
    Replay { run_id: String },
    /// Run every dead-lettered run of a workflow again.
    ReplayDead { workflow_id: String },
    /// Delete ended runs that finished longer ago than a duration (90s, 12h, 7d).
    Purge {
        #[arg(long)]
        older_than: String,
        /// Only this workflow's runs.
        #[arg(long)]
        workflow: Option<String>,
    },
}

/// What `fields` prints.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FieldsView {
    /// Each field's pointer, types, presence and example.
    Table,
    /// The proposed JSON Schema.
    Schema,
    /// The mapping skeleton, ready to paste into the workflow file.
    Mapping,
    /// The admin API's whole answer.
    Json,
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
        remote => AdminEndpoint::find(&cli.config, cli.admin_url.as_deref())
            .and_then(|admin| ask_gateway(&admin, remote)),
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
    let base = &config.server.public_base_url;

    let listed: Vec<Value> = config
        .workflows
        .iter()
        .map(|workflow| {
            json!({
                "id": workflow.id,
                "active": workflow.active,
                "url": format!("{base}{}", secret.path_for(&workflow.id)),
                "test_url": format!("{base}{}", secret.test_path_for(&workflow.id)),
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
    emit!("{:<24} {:<7} URL / TEST URL", "ID", "ACTIVE");
    for entry in &listed {
        let active = if entry["active"] == true { "yes" } else { "no" };
        let id = entry["id"].as_str().unwrap_or_default();
        let url = entry["url"].as_str().unwrap_or_default();
        let test_url = entry["test_url"].as_str().unwrap_or_default();
        emit!("{id:<24} {active:<7} {url}");
        emit!("{:<24} {:<7} {test_url}", "", "");
    }
    emit!("ACTIVE is the file's flag; `webhook-gateway workflows` shows a running gateway's.");
    Ok(())
}

/// Runs a command that needs the running gateway.
fn ask_gateway(admin: &AdminEndpoint, command: Command) -> Result<(), String> {
    match command {
        Command::Workflows { json } => {
            let answer = call(admin, "GET", "/api/v1/workflows")?;
            print_workflows(&answer, json);
        }
        Command::Activate { workflow_id } => set_active(admin, &workflow_id, true)?,
        Command::Deactivate { workflow_id } => set_active(admin, &workflow_id, false)?,
        Command::Samples { workflow_id, clear } => {
            let path = format!("/api/v1/workflows/{}/samples", encode(&workflow_id));
            let method = if clear { "DELETE" } else { "GET" };
            let answer = call(admin, method, &path)?;
            emit!("{}", pretty(&answer));
        }
        Command::Fields { workflow_id, show } => {
            let path = format!("/api/v1/workflows/{}/fields", encode(&workflow_id));
            print_fields(&call(admin, "GET", &path)?, show);
        }
        Command::Replay {
            workflow_id,
            sample,
        } => {
            let path = format!(
                "/api/v1/workflows/{}/samples/{}/replay",
                encode(&workflow_id),
                encode(&sample)
            );
            let trace = call(admin, "POST", &path)?;
            emit!("{}", pretty(&trace));
            if trace["outcome"] != "succeeded" {
                return Err(String::new());
            }
        }
        Command::Reload => {
            let answer = call(admin, "POST", "/api/v1/reload")?;
            emit!("{}", pretty(&answer));
        }
        Command::Runs { command } => ask_about_runs(admin, command)?,
        _ => return Err("not a command for a running gateway".into()),
    }
    Ok(())
}

fn ask_about_runs(admin: &AdminEndpoint, command: RunsCommand) -> Result<(), String> {
    match command {
        RunsCommand::List {
            workflow,
            state,
            limit,
            json,
        } => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("limit", &limit.to_string());
            workflow.map(|id| query.append_pair("workflow", &id));
            state.map(|state| query.append_pair("state", &state));
            let answer = call(admin, "GET", &format!("/api/v1/runs?{}", query.finish()))?;
            print_runs(&answer, json);
        }
        RunsCommand::Show { run_id } => {
            let answer = call(admin, "GET", &format!("/api/v1/runs/{}", encode(&run_id)))?;
            emit!("{}", pretty(&answer));
        }
        RunsCommand::Replay { run_id } => {
            let path = format!("/api/v1/runs/{}/replay", encode(&run_id));
            call(admin, "POST", &path)?;
            emit!("{run_id} is accepted again");
        }
        RunsCommand::ReplayDead { workflow_id } => {
            let path = format!(
                "/api/v1/workflows/{}/dead-letters/replay",
                encode(&workflow_id)
            );
            let answer = call(admin, "POST", &path)?;
            emit!(
                "{} dead-lettered run(s) of {workflow_id} accepted again",
                answer["replayed"]
            );
        }
        RunsCommand::Purge {
            older_than,
            workflow,
        } => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("older_than", &older_than);
            workflow.map(|id| query.append_pair("workflow", &id));
            let answer = call(admin, "DELETE", &format!("/api/v1/runs?{}", query.finish()))?;
            emit!("{} run(s) deleted", answer["purged"]);
        }
    }
    Ok(())
}

fn print_runs(answer: &Value, json: bool) {
    if json {
        emit!("{}", pretty(answer));
        return;
    }
    emit!(
        "{:<38} {:<24} {:<14} {:<26} ERROR",
        "RUN ID",
        "WORKFLOW",
        "STATE",
        "ACCEPTED"
    );
    for run in answer["runs"].as_array().into_iter().flatten() {
        let text = |field: &str| run[field].as_str().unwrap_or("-").to_string();
        emit!(
            "{:<38} {:<24} {:<14} {:<26} {}",
            text("run_id"),
            text("workflow_id"),
            text("state"),
            text("accepted_at"),
            run["error"]["code"].as_str().unwrap_or("-")
        );
    }
}

/// Calls the admin API; a failure answer becomes the command's error, with its details.
fn call(admin: &AdminEndpoint, method: &str, path: &str) -> Result<Value, String> {
    let (status, answer) = admin.call(method, path)?;
    if (200..300).contains(&status) {
        return Ok(answer);
    }
    if let Some(problems) = answer["error"]["reload"]["problems"].as_array() {
        for problem in problems {
            let file = problem["file"].as_str().unwrap_or_default();
            let message = problem["message"].as_str().unwrap_or_default();
            match problem["location"].as_str().filter(|at| !at.is_empty()) {
                Some(location) => eprintln!("{file}: {location}: {message}"),
                None => eprintln!("{file}: {message}"),
            }
        }
    }
    let mut message = describe_failure(status, &answer);
    if status == 401 {
        message.push_str(
            "; the running gateway keeps the admin token it started with until it is restarted",
        );
    }
    Err(message)
}

fn set_active(admin: &AdminEndpoint, workflow_id: &str, active: bool) -> Result<(), String> {
    let verb = if active { "activate" } else { "deactivate" };
    let path = format!("/api/v1/workflows/{}/{verb}", encode(workflow_id));
    let answer = call(admin, "POST", &path)?;
    let state = if answer["active"] == true {
        "active"
    } else {
        "inactive"
    };
    emit!("{workflow_id} is {state}");
    Ok(())
}

/// A workflow id as one path segment. Ids are plain (`a-z0-9-_`), so this only guards
/// against a mistyped argument turning into another path.
fn encode(segment: &str) -> String {
    form_urlencoded::byte_serialize(segment.as_bytes()).collect()
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

fn print_workflows(answer: &Value, as_json: bool) {
    if as_json {
        emit!("{}", pretty(answer));
        return;
    }
    emit!(
        "{:<24} {:<7} {:>9} {:>8} TEST URL",
        "ID",
        "ACTIVE",
        "REQUESTS",
        "SAMPLES"
    );
    let empty = Vec::new();
    for workflow in answer["workflows"].as_array().unwrap_or(&empty) {
        let id = workflow["id"].as_str().unwrap_or_default();
        let active = if workflow["active"] == true {
            "yes"
        } else {
            "no"
        };
        let requests = workflow["counters"]["requests"].as_u64().unwrap_or(0);
        let samples = workflow["samples"]["count"].as_u64().unwrap_or(0);
        let test_url = workflow["test_url"].as_str().unwrap_or_default();
        emit!("{id:<24} {active:<7} {requests:>9} {samples:>8} {test_url}");
    }
}

fn print_fields(answer: &Value, show: FieldsView) {
    match show {
        FieldsView::Json => emit!("{}", pretty(answer)),
        FieldsView::Schema => emit!("{}", pretty(&answer["schema"])),
        FieldsView::Mapping => emit!("{}", answer["mapping"].as_str().unwrap_or_default()),
        FieldsView::Table => {
            let samples = answer["samples"].as_u64().unwrap_or(0);
            emit!("{samples} sample(s)");
            emit!(
                "{:<40} {:<20} {:>8}  EXAMPLE",
                "POINTER",
                "TYPES",
                "PRESENT"
            );
            let empty = Vec::new();
            for field in answer["fields"].as_array().unwrap_or(&empty) {
                // Keys come from senders: control characters must not reach the terminal.
                let pointer: String = field["pointer"]
                    .as_str()
                    .unwrap_or_default()
                    .chars()
                    .map(|c| match c.is_control() {
                        true => c.escape_default().to_string(),
                        false => c.to_string(),
                    })
                    .collect();
                let types: Vec<&str> = field["types"]
                    .as_array()
                    .unwrap_or(&empty)
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                let present = format!("{}/{samples}", field["present"].as_u64().unwrap_or(0));
                let example = field
                    .get("example")
                    .map(Value::to_string)
                    .unwrap_or_default();
                emit!(
                    "{pointer:<40} {:<20} {present:>8}  {example}",
                    types.join("|")
                );
            }
        }
    }
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
