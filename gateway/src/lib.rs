//! webhook-gateway: an edge gateway that turns webhook requests into workflow runs.
//!
//! The request path, in order: route the URL to a workflow, check that it is active, check the
//! caller's API key, read the body under a cap, decode and validate it, map it to named
//! variables, run the workflow's script, then answer with the result or accept the run.
//! Each step lives in its own module; `edge` strings them together inside Pingora and
//! `pipeline` holds the part that does not depend on HTTP, so the CLI can run it offline.

#![deny(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod authoring;
pub mod background;
pub mod cli;
pub mod config;
pub mod edge;
pub mod error;
pub mod forward;
pub mod handshake;
pub mod http_reply;
#[cfg(test)]
mod intake_fuzz;
pub mod journal;
pub mod limits;
pub mod mapping;
pub mod memory;
pub mod metrics;
pub mod network;
pub mod payload;
pub mod pipeline;
pub mod registry;
pub mod reload;
pub mod routing;
pub mod runs;
pub mod schema;
pub mod script;
pub mod server;
pub mod shared_state;
pub mod signature;
pub mod telemetry;
