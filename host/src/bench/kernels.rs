//! `elasticface bench --kernels`: throughput of each kernel on the shapes an iResNet trains with.
//!
//! Each case builds its tensors and dispatches once, runs them once to warm up, then records `reps` copies into
//! one compute pass and times the submission with the wall clock (so the figure includes the ~µs launch cost per
//! dispatch, as training does). GFLOP/s counts the multiply-adds as two operations; element-wise kernels count
//! one operation per element and are reported with their memory traffic in GB/s.
//!
//! With `--cpu`, the CPU reference's convolutions (the core's functions, on the host's threads) on the same shapes,
//! timed the same way: what `--device cpu` trains and embeds with.

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use elasticface_core::nn::{
    conv2d_backward_data_on, conv2d_backward_weight_on, conv2d_forward_on, BatchNorm, BatchNormShape, Conv2dShape,
    LinearShape, WinogradTile,
};
use elasticface_core::parallel::Executor;

use crate::gpu::kernels::batchnorm::{BackwardFusion, BatchNormKernels, Epilogue};
use crate::gpu::kernels::conv2d::{self, Conv2d, ConvOp, ConvPrecision, ConvTileChoice};
use crate::gpu::kernels::linear::{self, Linear};
use crate::gpu::kernels::prelu::Prelu;
use crate::gpu::kernels::residual::Residual;
use crate::gpu::kernels::winograd::{Winograd, WinogradWorkspace};
use crate::gpu::kernels::Dispatch;
use crate::gpu::{Elem, Gpu, Tensor};

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

impl KernelCase {
    /// An element-wise case over `len` elements: `ops` operations and `bytes` bytes of traffic per element.
    fn elementwise(kernel: &str, shape: &str, len: usize, ops: f64, bytes: f64, dispatches: Vec<Dispatch>) -> Self {
        let len = len as f64;
        Self { kernel: kernel.into(), shape: shape.into(), flops: ops * len, bytes: bytes * len, dispatches }
    }
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
    let work = (case.flops, case.bytes);
    KernelResult::timed(case.kernel.clone(), case.shape.clone(), work, (reps, rounds), || {
        gpu.run(&repeated).map(|_| ())
    })
}

impl KernelResult {
    /// The figures of `kernel` on `shape` doing `work` (FLOPs, bytes) a run, from the median of `rounds` timed calls
    /// of `round`, each `reps` runs.
    fn timed(
        kernel: String,
        shape: String,
        (flops, bytes): (f64, f64),
        (reps, rounds): (usize, usize),
        mut round: impl FnMut() -> Result<()>,
    ) -> Result<Self> {
        let mut times: Vec<f64> = (0..rounds.max(1))
            .map(|_| {
                let t = Instant::now();
                round().map(|_| t.elapsed().as_secs_f64() / reps.max(1) as f64)
            })
            .collect::<Result<_>>()?;
        times.sort_by(f64::total_cmp);
        let s = times[times.len() / 2];
        Ok(Self { kernel, shape, ms: s * 1e3, gflops: flops / s / 1e9, gbytes: bytes / s / 1e9 })
    }
}

/// The convolutions of an iResNet stage by stage: (C_in, C_out, input size, kernel, stride, pad).
const CONVS: [(usize, usize, usize, usize, usize, usize); 7] = [
    (3, 64, 112, 3, 1, 1),
    (64, 64, 56, 3, 1, 1),
    (64, 128, 56, 3, 2, 1),
    (64, 128, 56, 1, 2, 0),
    (128, 128, 28, 3, 1, 1),
    (256, 256, 14, 3, 1, 1),
    (512, 512, 7, 3, 1, 1),
];

/// The convolution shapes of the cases: [`CONVS`] for a batch of `n`, spatial sizes divided by `shrink`.
fn conv_shapes(n: usize, shrink: usize) -> impl Iterator<Item = Conv2dShape> {
    CONVS.into_iter().map(move |(c_in, c_out, hw, k, stride, pad)| {
        let hw = (hw / shrink.max(1)).max(k);
        Conv2dShape { n, c_in, h: hw, w: hw, c_out, kh: k, kw: k, stride, pad }
    })
}

/// A shape in words, e.g. `N=8 64->64 56x56 k3 s1`.
fn conv_words(s: &Conv2dShape) -> String {
    format!("N={} {}->{} {}x{} k{} s{}", s.n, s.c_in, s.c_out, s.h, s.w, s.kh, s.stride)
}

/// The cases for a batch of `n` (iResNet shapes at 112x112 scaled down by `shrink` in each spatial dimension, so
/// that a CPU adapter finishes in seconds), the convolutions (and Winograd's products) on `tile`.
pub fn kernel_cases(gpu: &Gpu, n: usize, shrink: usize, tile: ConvTileChoice) -> Result<Vec<KernelCase>> {
    let mut cases = Vec::new();
    // The f32 kernels, and the mixed-precision ones where the adapter has cooperative matrices.
    let mut kinds = vec![("", Conv2d::build(gpu, ConvPrecision::F32, tile.tiling(gpu))?)];
    let winograd = Winograd::new(gpu);
    if gpu.caps.cooperative_matrix.is_some() {
        kinds.push((" (mixed)", Conv2d::build(gpu, ConvPrecision::Mixed, tile.tiling(gpu))?));
    }
    for (s, (suffix, conv)) in conv_shapes(n, shrink).flat_map(|s| kinds.iter().map(move |kind| (s, kind))) {
        // The activations, their gradients and the weight the direct kernels read as the kernels store them (f16
        // in mixed precision); the weight gradient (and the weight Winograd transforms) in f32.
        let act = conv.activations();
        let (x, y) = (gpu.zeros_as("x", &[s.input_len()], act), gpu.zeros_as("y", &[s.output_len()], act));
        let (dx, dy) = (gpu.zeros_as("dx", &[s.input_len()], act), gpu.zeros_as("dy", &[s.output_len()], act));
        let (w, w_read) = (gpu.zeros("w", &[s.weight_len()]), gpu.zeros_as("w (as read)", &[s.weight_len()], act));
        let scratch = gpu.zeros("scratch", &[conv.scratch_len(gpu, &s)?.max(1)]);
        let shape = conv_words(&s);
        let flops = conv2d::flops(&s) as f64;
        let bytes = (x.bytes() + w_read.bytes() + y.bytes()) as f64;
        let mut ops = vec![("conv2d_forward", conv.forward(gpu, &s, &x, &w_read, &y, &scratch)?)];
        // Training never needs the input image's gradient: the stem runs no backward_data.
        if s.c_in != 3 {
            let phased = gpu.zeros_as("w (phased)", &[s.weight_len()], act);
            ops.push(("conv2d_backward_data", conv.backward_data(gpu, &s, &dy, &w_read, &phased, &dx, &scratch)?));
        }
        ops.push(("conv2d_backward_weight", conv.backward_weight(gpu, &s, &dy, &x, &w, &scratch)?));
        // The Winograd passes of the 3x3 stride-1 layers, F(2x2) (`winograd_*`) and F(4x4) (`winograd4_*`),
        // timed against the same FLOP count (the direct convolution's: an effective rate, comparable with the
        // direct kernels'). In mixed precision F(2x2) only, whose products run on the tensor cores (F(4x4)'s run
        // on the f32 kernels timed above).
        let tiles = [
            (WinogradTile::F2x2, ["winograd_forward", "winograd_backward_data", "winograd_backward_weight"]),
            (WinogradTile::F4x4, ["winograd4_forward", "winograd4_backward_data", "winograd4_backward_weight"]),
        ];
        let tiles = if conv.precision() == ConvPrecision::F32 { &tiles[..] } else { &tiles[..1] };
        if s.c_in != 3 && Winograd::applies(&s) {
            for &(tile, names) in tiles {
                let lens = Winograd::workspace_lens(gpu, conv, &s, tile)?;
                let ws = WinogradWorkspace::allocate(&lens, |label, len| Ok(gpu.zeros(label, &[len])))?;
                let run = |op, inputs: [&Tensor; 2], out: &Tensor| {
                    winograd.run(gpu, conv, op, &s, tile, inputs, None, out, &ws)
                };
                ops.push((names[0], run(ConvOp::Forward, [&x, &w], &y)?));
                ops.push((names[1], run(ConvOp::BackwardData, [&dy, &w], &dx)?));
                ops.push((names[2], run(ConvOp::BackwardWeight, [&dy, &x], &w)?));
            }
        }
        for (kernel, dispatches) in ops {
            let kernel = format!("{kernel}{suffix}");
            cases.push(KernelCase { kernel, shape: shape.clone(), flops, bytes, dispatches });
        }
    }
    // The embedding layer: fc (512 x 7 x 7 -> 512).
    let lin = Linear::new(gpu);
    let s = LinearShape { n, inputs: 512 * 49, outputs: 512 };
    let t = |name: &str, len: usize| gpu.zeros(name, &[len]);
    let (x, w, b, y) = (t("x", n * s.inputs), t("w", s.inputs * s.outputs), t("b", s.outputs), t("y", n * s.outputs));
    let (dx, dw, db) = (t("dx", n * s.inputs), t("dw", s.inputs * s.outputs), t("db", s.outputs));
    let phased = t("w (phased)", s.inputs * s.outputs);
    let scratch = t("scratch", lin.scratch_len(gpu, &s)?.max(1));
    let shape = format!("N={n} {}->{}", s.inputs, s.outputs);
    let (flops, bytes) = (linear::flops(&s) as f64, 4.0 * (s.inputs * s.outputs) as f64);
    cases.push(KernelCase {
        kernel: "linear_forward".into(),
        shape: shape.clone(),
        flops,
        bytes,
        dispatches: lin.forward(gpu, &s, &x, &w, &b, &y, &scratch)?,
    });
    cases.push(KernelCase {
        kernel: "linear_backward".into(),
        shape,
        flops: 2.0 * flops,
        bytes: 2.0 * bytes,
        dispatches: lin.backward(gpu, &s, &x, &w, &y, &dx, &dw, &db, &phased, &scratch)?,
    });

    let residual = Residual::new(gpu);
    for (c, hw) in [(64usize, 56usize), (512, 7)] {
        let hw = (hw / shrink).max(1);
        let len = n * c * hw * hw;
        let (a, b, y) = (gpu.zeros("a", &[len]), gpu.zeros("b", &[len]), gpu.zeros("y", &[len]));
        cases.push(KernelCase::elementwise(
            "residual_add_forward",
            &format!("N={n} C={c} {hw}x{hw}"),
            len,
            1.0,
            12.0,
            vec![residual.forward(gpu, &a, &b, &y)?],
        ));
    }
    let (bn, prelu) = (BatchNormKernels::new(gpu), Prelu::new(gpu));
    for (c, hw) in [(64usize, 112usize), (128, 28), (512, 7)] {
        let hw = (hw / shrink).max(1);
        let s = BatchNormShape { n, c, hw: hw * hw };
        let len = s.len();
        let t = |name: &str, len: usize| gpu.zeros(name, &[len]);
        let (x, y, dy, dx) = (t("x", len), t("y", len), t("dy", len), t("dx", len));
        let (gamma, beta, rm, rv, mean, var, dg, db) =
            (t("gamma", c), t("beta", c), t("rm", c), t("rv", c), t("mean", c), t("var", c), t("dg", c), t("db", c));
        let scratch = t("scratch", BatchNormKernels::scratch_len(&s).max(Prelu::scratch_len(&s)));
        let shape = format!("N={n} C={c} {hw}x{hw}");
        let cfg = BatchNorm::default();
        let forward =
            |then| bn.forward_train(gpu, &s, &cfg, &x, &gamma, &beta, then, &rm, &rv, &y, &mean, &var, &scratch);
        let backward =
            |fusion| bn.backward(gpu, &s, &cfg, &x, &gamma, &mean, &var, fusion, &dy, &dx, Some(&dg), &db, &scratch);
        let kernel = KernelCase::elementwise;
        cases.push(kernel("batchnorm_forward_train", &shape, len, 5.0, 12.0, forward(Epilogue::None)?.into()));
        // The fused forms (the PReLU or the add in the same passes): one more operand, the same passes.
        cases.push(kernel(
            "batchnorm_prelu_forward_train",
            &shape,
            len,
            6.0,
            12.0,
            forward(Epilogue::Prelu(&gamma))?.into(),
        ));
        cases.push(kernel("batchnorm_add_forward_train", &shape, len, 6.0, 16.0, forward(Epilogue::Add(&dy))?.into()));
        cases.push(kernel("batchnorm_backward", &shape, len, 8.0, 20.0, backward(BackwardFusion::None)?.into()));
        let fusion = BackwardFusion::Prelu { beta: &beta, alpha: &gamma, dalpha: &db };
        cases.push(kernel("batchnorm_prelu_backward", &shape, len, 16.0, 20.0, backward(fusion)?.into()));
        let fusion = BackwardFusion::Accumulate(&y);
        cases.push(kernel("batchnorm_backward_accumulate", &shape, len, 9.0, 24.0, backward(fusion)?.into()));
        cases.push(KernelCase::elementwise(
            "prelu_forward",
            &shape,
            len,
            1.0,
            8.0,
            vec![prelu.forward(gpu, &s, &x, &gamma, &y)?],
        ));
        let bwd = prelu.backward(gpu, &s, &x, &gamma, &dy, &dx, &dg, &scratch)?;
        cases.push(KernelCase::elementwise("prelu_backward", &shape, len, 3.0, 12.0, bwd.into()));
        // Mixed precision's batch norms: the activations (x, the residual, y) stored as f16.
        if gpu.caps.mixed_precision() {
            let half = |name: &str| gpu.zeros_as(name, &[len], Elem::F16);
            let (x, y, r) = (half("x"), half("y"), half("residual"));
            let forward =
                |then| bn.forward_train(gpu, &s, &cfg, &x, &gamma, &beta, then, &rm, &rv, &y, &mean, &var, &scratch);
            let prelu = forward(Epilogue::Prelu(&gamma))?.into();
            cases.push(kernel("batchnorm_prelu_forward_train (f16)", &shape, len, 6.0, 6.0, prelu));
            let add = forward(Epilogue::Add(&r))?.into();
            cases.push(kernel("batchnorm_add_forward_train (f16)", &shape, len, 6.0, 8.0, add));
            let fusion = BackwardFusion::Prelu { beta: &beta, alpha: &gamma, dalpha: &db };
            let bwd = bn.backward(gpu, &s, &cfg, &x, &gamma, &mean, &var, fusion, &dy, &dx, Some(&dg), &db, &scratch);
            cases.push(kernel("batchnorm_prelu_backward (f16)", &shape, len, 16.0, 16.0, bwd?.into()));
        }
    }
    Ok(cases)
}

/// The CPU reference's convolutions (the core's, on `exec`) on the shapes of [`kernel_cases`], in their order: each
/// runs once to warm up, then `rounds` rounds of `reps` runs; the median round. The inputs are fractions (no zeros,
/// no subnormals); the stem has no input gradient, as in training.
pub fn cpu_conv_results(
    exec: &dyn Executor,
    n: usize,
    shrink: usize,
    reps: usize,
    rounds: usize,
) -> Result<Vec<KernelResult>> {
    let mut results = Vec::new();
    for s in conv_shapes(n, shrink) {
        let frac = |len: usize, k: f32| -> Vec<f32> { (0..len).map(|i| (i as f32 * k).sin() / 3.0 + 0.5).collect() };
        let (x, w, dy) = (frac(s.input_len(), 0.37), frac(s.weight_len(), 1.3), frac(s.output_len(), 0.71));
        let (mut y, mut dx, mut dw) = (vec![0.0; s.output_len()], vec![0.0; s.input_len()], vec![0.0; s.weight_len()]);
        let flops = conv2d::flops(&s) as f64;
        let bytes = 4.0 * (s.input_len() + s.weight_len() + s.output_len()) as f64;
        type Run<'a> = Box<dyn FnMut() -> Result<()> + 'a>;
        let mut ops: Vec<(&str, Run)> =
            vec![("conv2d_forward (cpu)", Box::new(|| Ok(conv2d_forward_on(exec, &s, &x, &w, &mut y)?)))];
        if s.c_in != 3 {
            let run = || Ok(conv2d_backward_data_on(exec, &s, &dy, &w, &mut dx)?);
            ops.push(("conv2d_backward_data (cpu)", Box::new(run)));
        }
        let run = || Ok(conv2d_backward_weight_on(exec, &s, &dy, &x, &mut dw)?);
        ops.push(("conv2d_backward_weight (cpu)", Box::new(run)));
        for (kernel, run) in &mut ops {
            run()?;
            let (kernel, shape) = (kernel.to_string(), conv_words(&s));
            let round = || (0..reps.max(1)).try_for_each(|_| run());
            results.push(KernelResult::timed(kernel, shape, (flops, bytes), (reps, rounds), round)?);
        }
    }
    Ok(results)
}
