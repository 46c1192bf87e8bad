//! The `nhpatch` command line.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "nhpatch", version, about = "Train and run patch denoisers and the HardNet descriptor on the CPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the GEMM kernels this CPU can run and which one nhpatch uses.
    Kernels,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: nhpatch::Result<()> = match cli.command {
        Command::Kernels => {
            let best = nhpatch::gemm::best_kernel();
            for k in nhpatch::gemm::Kernel::ALL {
                let mark = if *k == best { " (used)" } else { "" };
                let avail = if k.is_available() { "available" } else { "not available on this CPU" };
                println!("{:<16} {avail}{mark}", k.name());
            }
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
