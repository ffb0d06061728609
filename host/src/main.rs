//! The `elasticface` command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use elasticface::selftest;

/// ElasticFace: train and check face-recognition networks with elastic margin losses.
#[derive(Parser, Debug)]
#[command(name = "elasticface", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check this build against the PyTorch reference vectors, tensor by tensor.
    ///
    /// Prints each tensor's largest absolute error and its error relative to the tensor's scale, the
    /// tolerance, and PASS or FAIL; exits non-zero when anything fails.
    Selftest {
        /// Run the reference through the CPU reference implementation (the core). Required for now:
        /// the GPU trainer is not part of this build yet.
        #[arg(long)]
        cpu: bool,
        /// Check the reference files in DIR (margin_loss, iresnet_tiny, verification .safetensors) instead of
        /// the bundled ones.
        #[arg(long, value_name = "DIR")]
        reference: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Selftest { cpu, reference } => {
            if !cpu {
                bail!("the GPU selftest needs the GPU trainer, which this build does not have yet; run `elasticface selftest --cpu`");
            }
            let files = selftest::load(reference.as_deref())?;
            let report = selftest::run_cpu(&files);
            for section in &report.sections {
                println!("{}", section.file);
                for check in &section.checks {
                    println!("  {check}");
                }
            }
            let (all, failed) = report.counts();
            if report.passed() {
                println!("selftest (cpu): {all} checks, all passed");
                Ok(ExitCode::SUCCESS)
            } else {
                println!("selftest (cpu): {failed} of {all} checks FAILED");
                Ok(ExitCode::FAILURE)
            }
        }
    }
}
