//! `bench --peer CMD`: another trainer's benchmark, run by the same command right after ours, and the ratio.
//!
//! Figures from two runs on two days compare badly: clocks, drivers and other tenants change. So `bench` can run the
//! peer itself, on the same GPU, once our trainer has released its memory, and report ours against each of the
//! peer's configurations.
//!
//! The peer is any command (run by `sh -c`; `cmd /C` on Windows) that prints one JSON object per line for each
//! configuration it measured, with its throughput in `img_per_s` (or `images_per_s`). Lines that are not such
//! objects are ignored (a banner, a FLOP count). A line whose `arch` or `batch` differs from ours is left out of the
//! comparison; its `mode` and a true `channels_last` name the row, and `peak_mem_gib` gives its memory. PyTorch's
//! iResNet benchmark (`torch_iresnet_bench.py train`) prints exactly this. The peer's stderr goes to ours; its
//! stdout is kept (`--json` includes every line).

use std::fmt;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

/// One configuration the peer measured, against ours.
#[derive(Clone, Debug, Serialize)]
pub struct PeerRow {
    /// Its `mode` (`fp32`, `fp16`, ...) and `channels_last` when set; `line N` when it names neither.
    pub label: String,
    /// The peer's images/s.
    pub images_per_s: f64,
    /// Ours over the peer's: above 1, we are faster.
    pub ratio: f64,
    /// The peer's peak memory in GiB, where it reports `peak_mem_gib`.
    pub peak_memory_gib: Option<f64>,
}

/// Our figures against the peer's.
#[derive(Clone, Debug, Serialize)]
pub struct PeerComparison {
    /// The command that ran the peer.
    pub command: String,
    /// What of ours is compared (the setting, as flags of `train`).
    pub ours: String,
    /// Our images/s.
    pub ours_images_per_s: f64,
    /// The memory our trainer held, bytes.
    pub ours_memory: u64,
    /// The peer's configurations at our network and batch, in the order printed.
    pub rows: Vec<PeerRow>,
    /// Every line the peer printed to stdout.
    pub output: Vec<String>,
}

/// Runs `command` through the shell and returns its stdout; its stderr is passed through. Errors when it cannot
/// start or exits with a failure, with the end of its output.
pub fn run(command: &str) -> Result<String> {
    let mut shell = if cfg!(windows) { Command::new("cmd") } else { Command::new("sh") };
    shell.arg(if cfg!(windows) { "/C" } else { "-c" }).arg(command);
    let out = shell
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start the peer `{command}`"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let tail: Vec<&str> = stdout.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("the peer `{command}` failed ({}); the end of its output:\n{}", out.status, tail.join("\n"));
    }
    Ok(stdout)
}

/// The label of a peer line: its `mode`, and `channels_last` when true.
fn label(v: &Value, line: usize) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(mode) = v.get("mode").and_then(Value::as_str) {
        parts.push(mode.to_string());
    }
    if v.get("channels_last").and_then(Value::as_bool) == Some(true) {
        parts.push("channels_last".to_string());
    }
    if parts.is_empty() {
        format!("line {line}")
    } else {
        parts.join(" ")
    }
}

/// Compares `ours_images_per_s` (and `ours_memory` bytes) of `arch` at `batch` with every line of the peer's
/// `stdout` measured at the same network and batch (see the module's documentation). Errors when no line is.
pub fn compare(
    command: &str,
    ours: &str,
    ours_images_per_s: f64,
    ours_memory: u64,
    arch: &str,
    batch: usize,
    stdout: &str,
) -> Result<PeerComparison> {
    let mut rows = Vec::new();
    for (i, line) in stdout.lines().enumerate() {
        let Ok(v) = serde_json::from_str::<Value>(line.trim()) else { continue };
        let Some(images_per_s) = v.get("img_per_s").or_else(|| v.get("images_per_s")).and_then(Value::as_f64) else {
            continue;
        };
        let other_arch = v.get("arch").and_then(Value::as_str).is_some_and(|a| !a.eq_ignore_ascii_case(arch));
        let other_batch = v.get("batch").and_then(Value::as_u64).is_some_and(|b| b != batch as u64);
        if other_arch || other_batch || images_per_s <= 0.0 {
            continue;
        }
        rows.push(PeerRow {
            label: label(&v, i + 1),
            images_per_s,
            ratio: ours_images_per_s / images_per_s,
            peak_memory_gib: v.get("peak_mem_gib").and_then(Value::as_f64),
        });
    }
    if rows.is_empty() {
        bail!(
            "the peer `{command}` printed no JSON line with img_per_s for {arch} at batch {batch} ({} lines read)",
            stdout.lines().count()
        );
    }
    Ok(PeerComparison {
        command: command.to_string(),
        ours: ours.to_string(),
        ours_images_per_s,
        ours_memory,
        rows,
        output: stdout.lines().map(str::to_string).collect(),
    })
}

impl fmt::Display for PeerComparison {
    /// Ours, then each peer configuration with the ratio.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "peer         {}", self.command)?;
        writeln!(f, "{:<62} {:>10} {:>12} {:>12}", "", "images/s", "ours / peer", "memory")?;
        let ours_gib = self.ours_memory as f64 / (1u64 << 30) as f64;
        write!(
            f,
            "{:<62} {:>10.1} {:>12} {:>8.2} GiB",
            format!("ours ({})", self.ours),
            self.ours_images_per_s,
            "",
            ours_gib
        )?;
        for r in &self.rows {
            let memory = r.peak_memory_gib.map_or(String::from("-"), |m| format!("{m:.2} GiB"));
            write!(
                f,
                "\n{:<62} {:>10.1} {:>11.2}x {:>12}",
                format!("peer {}", r.label),
                r.images_per_s,
                r.ratio,
                memory
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = r#"torch 2.11 NVIDIA H200
{"gemm_fp32_8192_tflops": 51.2}
{"arch": "r100", "batch": 128, "mode": "fp32", "channels_last": false, "img_per_s": 600.0, "peak_mem_gib": 15.02}
{"arch": "r100", "batch": 128, "mode": "fp16", "channels_last": true, "img_per_s": 2400.0, "peak_mem_gib": 8.5}
{"arch": "r50", "batch": 128, "mode": "fp32", "channels_last": false, "img_per_s": 1100.0}
{"arch": "r100", "batch": 64, "mode": "fp32", "img_per_s": 590.0}
{"images_per_s": 300}"#;

    #[test]
    fn lines_of_our_network_and_batch_are_compared() {
        let c = compare("peer", "--winograd auto", 300.0, 12 << 30, "r100", 128, OUTPUT).unwrap();
        let rows: Vec<(&str, f64, f64, Option<f64>)> =
            c.rows.iter().map(|r| (r.label.as_str(), r.images_per_s, r.ratio, r.peak_memory_gib)).collect();
        assert_eq!(
            rows,
            [
                ("fp32", 600.0, 0.5, Some(15.02)),
                ("fp16 channels_last", 2400.0, 0.125, Some(8.5)),
                ("line 7", 300.0, 1.0, None)
            ]
        );
        assert_eq!(c.output.len(), 7);
        let text = c.to_string();
        assert!(text.contains("ours (--winograd auto)"), "{text}");
        assert!(text.contains("12.00 GiB") && text.contains("0.12x") && text.contains("15.02 GiB"), "{text}");
    }

    #[test]
    fn a_peer_without_a_matching_line_is_an_error() {
        // Without the last line, which names no network or batch and so matches any.
        let named = &OUTPUT[..OUTPUT.rfind('\n').unwrap()];
        let err = compare("peer", "", 1.0, 0, "r18", 128, named).unwrap_err().to_string();
        assert!(err.contains("no JSON line with img_per_s for r18 at batch 128 (6 lines read)"), "{err}");
        assert_eq!(compare("peer", "", 1.0, 0, "r50", 128, named).unwrap().rows.len(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn the_peer_runs_through_the_shell_and_its_failure_is_reported() {
        let out = run(r#"echo '{"img_per_s": 5}'; echo done"#).unwrap();
        assert_eq!(out, "{\"img_per_s\": 5}\ndone\n");
        let err = run("echo partial; exit 3").unwrap_err().to_string();
        assert!(err.contains("failed (exit status: 3)") && err.ends_with("partial"), "{err}");
        let err = run("exit 1").unwrap_err().to_string();
        assert!(err.contains("the peer `exit 1` failed"), "{err}");
    }
}
