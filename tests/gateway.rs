//! Black-box tests: each starts the real `webhook-gateway` binary on free loopback ports and
//! speaks HTTP to it. Grouped by concern; `support` holds the harness.

mod support;

mod admin_and_runs;
mod auth;
mod authoring;
mod cli;
mod durability;
mod examples;
mod forward;
mod hardening;
mod intake;
mod intake_fuzz;
mod mapping_and_scripts;
mod payload;
mod reload_and_activation;
mod signatures;
