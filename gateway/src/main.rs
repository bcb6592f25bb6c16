//! The `webhook-gateway` binary: parses the command line and hands over to the library.

use clap::Parser;
use std::process::ExitCode;
use webhook_gateway::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::run(cli)
}
