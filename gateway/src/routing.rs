//! Webhook URLs: each workflow is reachable at `/hooks/{id}/{token}`, where the token is an
//! HMAC of the id under the gateway's URL secret. The URL is therefore unique, cannot be
//! guessed from the id, and stays the same across restarts as long as the secret does.
//!
//! Each workflow also has a test URL, `/test-hooks/{id}/{test-token}`, whose token is a
//! different HMAC: knowing the production URL gives no way into the test URL, which runs
//! even inactive workflows and answers with a trace of the pipeline.

use crate::auth::secrets_equal;
use crate::config::Workflow;
use crate::registry::LiveWorkflow;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// Path prefix of every webhook URL.
pub const HOOK_PREFIX: &str = "/hooks/";

/// Path prefix of every test URL.
pub const TEST_HOOK_PREFIX: &str = "/test-hooks/";

const SECRET_FILE: &str = "url-secret";

/// The key URL tokens are derived from.
#[derive(Clone)]
pub struct UrlSecret(Vec<u8>);

impl UrlSecret {
    /// Uses the configured secret, or else the one kept in `state_dir`, created on first use.
    pub fn resolve(configured: Option<&str>, state_dir: &Path) -> std::io::Result<Self> {
        if let Some(secret) = configured {
            return Ok(Self(secret.as_bytes().to_vec()));
        }
        let path = state_dir.join(SECRET_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => Ok(Self(text.trim().as_bytes().to_vec())),
            Ok(_) => Err(std::io::Error::other(format!(
                "{} is empty",
                path.display()
            ))),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Self::create(state_dir),
            Err(error) => Err(error),
        }
    }

    /// Writes a new random secret. Several processes may start at once on a fresh state
    /// folder; the secret is written aside and hard-linked into place, so exactly one wins
    /// and every process reads a complete file.
    fn create(state_dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(state_dir)?;
        let candidate: [u8; 32] = rand::random();
        let staged = state_dir.join(format!(".{SECRET_FILE}.{}", std::process::id()));

        let mut file = std::fs::File::create(&staged)?;
        file.write_all(hex::encode(candidate).as_bytes())?;
        file.sync_all()?;
        restrict_to_owner(&staged)?;

        let linked = std::fs::hard_link(&staged, state_dir.join(SECRET_FILE));
        std::fs::remove_file(&staged)?;
        match linked {
            Ok(()) => Self::resolve(None, state_dir),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                Self::resolve(None, state_dir)
            }
            Err(error) => Err(error),
        }
    }

    /// The URL token of a workflow: 128 bits of HMAC-SHA256 over its id, as hex.
    pub fn token_for(&self, workflow_id: &str) -> String {
        self.derive(b"webhook-url:", workflow_id)
    }

    /// The token of a workflow's test URL, derived under another label.
    pub fn test_token_for(&self, workflow_id: &str) -> String {
        self.derive(b"webhook-test-url:", workflow_id)
    }

    /// The path of a workflow's URL.
    pub fn path_for(&self, workflow_id: &str) -> String {
        format!("{HOOK_PREFIX}{workflow_id}/{}", self.token_for(workflow_id))
    }

    /// The path of a workflow's test URL.
    pub fn test_path_for(&self, workflow_id: &str) -> String {
        format!(
            "{TEST_HOOK_PREFIX}{workflow_id}/{}",
            self.test_token_for(workflow_id)
        )
    }

    fn derive(&self, label: &[u8], workflow_id: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("hmac takes any key length");
        mac.update(label);
        mac.update(workflow_id.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }
}

#[cfg(unix)]
fn restrict_to_owner(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn restrict_to_owner(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Which of a workflow's two URLs a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlKind {
    Production,
    Test,
}

struct Route {
    token: String,
    test_token: String,
    workflow: Arc<Workflow>,
    live: Arc<LiveWorkflow>,
}

/// A request's workflow, its live state, and the URL it came in on.
pub struct Routed<'a> {
    pub workflow: &'a Arc<Workflow>,
    pub live: &'a Arc<LiveWorkflow>,
    pub kind: UrlKind,
}

/// Finds the workflow a request path belongs to.
pub struct Router {
    routes: HashMap<String, Route>,
}

impl Router {
    /// Routes every workflow that has live state; `live` comes from the registry.
    pub fn new(
        workflows: &[Arc<Workflow>],
        secret: &UrlSecret,
        live: &HashMap<String, Arc<LiveWorkflow>>,
    ) -> Self {
        let routes = workflows
            .iter()
            .filter_map(|workflow| {
                let route = Route {
                    token: secret.token_for(&workflow.id),
                    test_token: secret.test_token_for(&workflow.id),
                    workflow: Arc::clone(workflow),
                    live: Arc::clone(live.get(&workflow.id)?),
                };
                Some((workflow.id.clone(), route))
            })
            .collect();
        Self { routes }
    }

    /// The path of a workflow's URL.
    pub fn path_of(&self, workflow_id: &str) -> Option<String> {
        let route = self.routes.get(workflow_id)?;
        Some(format!("{HOOK_PREFIX}{workflow_id}/{}", route.token))
    }

    /// The path of a workflow's test URL.
    pub fn test_path_of(&self, workflow_id: &str) -> Option<String> {
        let route = self.routes.get(workflow_id)?;
        Some(format!(
            "{TEST_HOOK_PREFIX}{workflow_id}/{}",
            route.test_token
        ))
    }

    /// The workflow at `path` (without query). Unknown ids and wrong tokens look the same to
    /// the caller, so the router does not reveal which workflow ids exist.
    pub fn route(&self, path: &str) -> Option<Routed<'_>> {
        let (rest, kind) = match path.strip_prefix(HOOK_PREFIX) {
            Some(rest) => (rest, UrlKind::Production),
            None => (path.strip_prefix(TEST_HOOK_PREFIX)?, UrlKind::Test),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (id, token) = rest.split_once('/')?;

        let route = self.routes.get(id)?;
        let expected = match kind {
            UrlKind::Production => &route.token,
            UrlKind::Test => &route.test_token,
        };
        secrets_equal(expected.as_bytes(), token.as_bytes()).then_some(Routed {
            workflow: &route.workflow,
            live: &route.live,
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_stable_per_secret_and_differs_across_ids_and_secrets() {
        let secret = UrlSecret(b"0123456789abcdef".to_vec());
        assert_eq!(secret.token_for("a"), secret.token_for("a"));
        assert_ne!(secret.token_for("a"), secret.token_for("b"));
        assert_ne!(
            secret.token_for("a"),
            UrlSecret(b"another-secret!!".to_vec()).token_for("a")
        );
        assert_eq!(secret.token_for("a").len(), 32);
        assert_ne!(secret.token_for("a"), secret.test_token_for("a"));
    }

    #[test]
    fn generated_secret_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = UrlSecret::resolve(None, dir.path()).unwrap().token_for("x");
        let second = UrlSecret::resolve(None, dir.path()).unwrap().token_for("x");
        assert_eq!(first, second);
    }
}
