//! `elasticface bench --kernels`: throughput of each kernel on the shapes an iResNet trains with.
//!
//! Each case builds its tensors and dispatches once, runs them once to warm up, then records `reps` copies into
//! one compute pass and times the submission with the wall clock (so the figure includes the ~µs launch cost per
//! dispatch, as training does). GFLOP/s counts the multiply-adds as two operations; element-wise kernels count
//! one operation per element and are reported with their memory traffic in GB/s.

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use crate::gpu::kernels::residual::Residual;
use crate::gpu::kernels::Dispatch;
use crate::gpu::Gpu;

/// One benchmark case: a kernel family on one shape.
pub struct KernelCase {
    /// Kernel, e.g. `conv2d_forward`.
    pub kernel: String,
    /// Shape in words, e.g. `N=8 64->64 56x56 k3 s1`.
    pub shape: String,
    /// Floating-point operations of one run.
    pub flops: f64,
    /// Bytes read and written by one run.
    pub bytes: f64,
    /// What one run records.
    pub dispatches: Vec<Dispatch>,
}

/// The measured figures of one case.
#[derive(Clone, Debug, Serialize)]
pub struct KernelResult {
    /// Kernel name.
    pub kernel: String,
    /// Shape in words.
    pub shape: String,
    /// Milliseconds per run (median of the timed rounds).
    pub ms: f64,
    /// GFLOP/s.
    pub gflops: f64,
    /// GB/s of memory traffic.
    pub gbytes: f64,
}

/// Times one case: one warm-up run, then `rounds` rounds of `reps` runs recorded in one pass; the median round.
pub fn time_case(gpu: &Gpu, case: &KernelCase, reps: usize, rounds: usize) -> Result<KernelResult> {
    let all: Vec<&Dispatch> = case.dispatches.iter().collect();
    gpu.run(&all)?;
    let repeated: Vec<&Dispatch> = (0..reps).flat_map(|_| all.iter().copied()).collect();
    let mut times: Vec<f64> = (0..rounds.max(1))
        .map(|_| {
            let t = Instant::now();
            gpu.run(&repeated).map(|_| t.elapsed().as_secs_f64() / reps as f64)
        })
        .collect::<Result<_>>()?;
    times.sort_by(f64::total_cmp);
    let s = times[times.len() / 2];
    Ok(KernelResult {
        kernel: case.kernel.clone(),
        shape: case.shape.clone(),
        ms: s * 1e3,
        gflops: case.flops / s / 1e9,
        gbytes: case.bytes / s / 1e9,
    })
}

/// The cases for a batch of `n` (iResNet shapes at 112x112 scaled down by `shrink` in each spatial dimension, so
/// that a CPU adapter finishes in seconds).
pub fn kernel_cases(gpu: &Gpu, n: usize, shrink: usize) -> Result<Vec<KernelCase>> {
    let mut cases = Vec::new();
    let residual = Residual::new(gpu);
    for (c, hw) in [(64usize, 56usize), (512, 7)] {
        let hw = (hw / shrink).max(1);
        let len = n * c * hw * hw;
        let (a, b, y) = (gpu.zeros("a", &[len]), gpu.zeros("b", &[len]), gpu.zeros("y", &[len]));
        cases.push(KernelCase {
            kernel: "residual_add_forward".into(),
            shape: format!("N={n} C={c} {hw}x{hw}"),
            flops: len as f64,
            bytes: 12.0 * len as f64,
            dispatches: vec![residual.forward(gpu, &a, &b, &y)?],
        });
    }
    Ok(cases)
}
