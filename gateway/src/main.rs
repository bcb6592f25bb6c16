//! The `webhook-gateway` binary: parses the command line and hands over to the library.

use clap::Parser;
use std::process::ExitCode;
use webhook_gateway::cli::{self, Cli};
use webhook_gateway::memory::CountingAllocator;

// The request path allocates many small JSON values; mimalloc serves those markedly faster
// than the system allocator. The counting wrapper lets the script sandbox bound memory.
#[global_allocator]
static ALLOCATOR: CountingAllocator<mimalloc::MiMalloc> = CountingAllocator(mimalloc::MiMalloc);

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::run(cli)
}
