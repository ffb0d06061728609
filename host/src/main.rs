//! The `elasticface` command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use elasticface::gpu::{adapters, AdapterLine, Gpu, GpuOptions};
use elasticface::{bench, selftest};

/// ElasticFace: train and check face-recognition networks with elastic margin losses.
#[derive(Parser, Debug)]
#[command(name = "elasticface", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the GPU adapters, the one elasticface would use, its features and limits.
    ///
    /// `WGPU_BACKEND` (vulkan, metal, dx12) restricts the backends; `--adapter` or `WGPU_ADAPTER_NAME` picks an
    /// adapter by (part of) its name.
    Info {
        /// Use the first adapter whose name contains this (case-insensitive).
        #[arg(long, value_name = "NAME")]
        adapter: Option<String>,
    },
    /// Measure throughput. `--kernels`: GFLOP/s of each GPU kernel on iResNet shapes.
    ///
    /// Each kernel runs once to warm up, then in rounds of `--reps` launches recorded into one compute pass;
    /// the median round is reported.
    Bench {
        /// Time each kernel family (the whole-network benchmark needs the GPU trainer, not built yet).
        #[arg(long)]
        kernels: bool,
        /// Batch size N of the shapes.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Divide the spatial sizes of the 112x112 network by this (default: 4 on a CPU adapter, else 1).
        #[arg(long)]
        shrink: Option<usize>,
        /// Launches per timed round.
        #[arg(long, default_value_t = 10)]
        reps: usize,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
        /// Use the first adapter whose name contains this (case-insensitive).
        #[arg(long, value_name = "NAME")]
        adapter: Option<String>,
    },
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
    quiet_vulkan_loader();
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
        Command::Info { adapter } => {
            let found = adapters();
            println!("adapters ({}):", found.len());
            for a in &found {
                println!("  {}", AdapterLine(a.clone()));
            }
            let mut opts = GpuOptions::from_env();
            opts.adapter_name = adapter.or(opts.adapter_name);
            let gpu = Gpu::new(&opts)?;
            println!("chosen: {}", AdapterLine(gpu.info.clone()));
            println!("{}", gpu.caps);
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { kernels, batch, shrink, reps, json, adapter } => {
            if !kernels {
                bail!("the whole-network benchmark needs the GPU trainer, which this build does not have yet; run `elasticface bench --kernels`");
            }
            let mut opts = GpuOptions::from_env();
            opts.adapter_name = adapter.or(opts.adapter_name);
            let gpu = Gpu::new(&opts)?;
            let shrink = shrink.unwrap_or(if gpu.info.device_type == wgpu::DeviceType::Cpu { 4 } else { 1 });
            eprintln!("adapter: {} (shapes: batch {batch}, spatial / {shrink})", AdapterLine(gpu.info.clone()));
            if !json {
                println!("{:<28} {:<32} {:>10} {:>10} {:>9}", "kernel", "shape", "ms", "GFLOP/s", "GB/s");
            }
            for case in bench::kernel_cases(&gpu, batch, shrink.max(1))? {
                let r = bench::time_case(&gpu, &case, reps.max(1), 3)?;
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!("{:<28} {:<32} {:>10.3} {:>10.2} {:>9.2}", r.kernel, r.shape, r.ms, r.gflops, r.gbytes);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
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

/// The Vulkan loader complains on every start when `XDG_RUNTIME_DIR` is unset (containers, CI): give it a private
/// folder. Runs first in `main`, before any other thread exists.
fn quiet_vulkan_loader() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        return;
    }
    let dir = std::env::temp_dir().join("elasticface-runtime");
    if std::fs::create_dir_all(&dir).is_ok() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        std::env::set_var("XDG_RUNTIME_DIR", &dir);
    }
}
