//! `shaders/batchnorm.wgsl`: batch normalisation over `(N, C, HW)`, training and eval forward, and backward.
//! CPU twins: [`elasticface_core::nn::batchnorm_forward_train`], [`elasticface_core::nn::batchnorm_forward_eval`],
//! [`elasticface_core::nn::batchnorm_backward`].
//!
//! Per-channel statistics are deterministic two-level reductions (chunks of [`BATCHNORM_CHUNK`] values, then a
//! fixed-order combine per channel) through a scratch tensor of [`BatchNormKernels::scratch_len`] floats; the
//! shader's header comment describes the scheme. Dispatches: training forward 3, eval forward 1, backward 3.
//!
//! The fused forms take the layer next to a batch norm into the same passes, so the tensor between them is
//! never stored: a PReLU or a residual add after the forward ([`Epilogue`]; CPU twins
//! [`elasticface_core::nn::batchnorm_prelu_forward_train`] and its `eval` and `add` companions), and in the
//! backward the PReLU's gradient or the accumulation into a second gradient ([`BackwardFusion`]; twins
//! [`elasticface_core::nn::batchnorm_prelu_backward`], [`elasticface_core::nn::batchnorm_backward_accumulate`]).
//! They give the unfused kernels' results bit for bit (same operations, same order) with the same dispatch count
//! as the batch norm alone.

use anyhow::{anyhow, bail, Result};
use elasticface_core::nn::{BatchNorm, BatchNormShape};

use super::{check_f32, check_len, Dispatch, StorageVariants, ELEMENTWISE_WORKGROUP};
use crate::gpu::{Elem, Gpu, Tensor};

/// Values of one channel that one workgroup reduces in the statistics passes (must match `CHUNK` in
/// `shaders/batchnorm.wgsl`).
pub const BATCHNORM_CHUNK: usize = 2048;

/// Mirrors `Params` in `shaders/batchnorm.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BatchNormParams {
    /// Elements, `N*C*HW`.
    pub len: u32,
    /// Channels C.
    pub c: u32,
    /// Spatial size HW.
    pub hw: u32,
    /// Values per channel, `N*HW`.
    pub count: u32,
    /// Chunks per channel, `ceil(count / BATCHNORM_CHUNK)`.
    pub chunks: u32,
    /// `count` as `f32`, rounded as the core rounds it.
    pub count_f: f32,
    /// Added to the variance before the square root.
    pub eps: f32,
    /// Running statistics' momentum.
    pub momentum: f32,
    /// `1 - momentum`.
    pub keep: f32,
    /// `count / (count - 1)`, the unbiased variance's factor.
    pub unbias: f32,
}

impl BatchNormParams {
    /// The parameters of `s` under `bn`, computed in `f32` exactly as the core computes them.
    fn new(s: &BatchNormShape, bn: &BatchNorm) -> Self {
        let count_f = s.count() as f32;
        Self {
            len: s.len() as u32,
            c: s.c as u32,
            hw: s.hw as u32,
            count: s.count() as u32,
            chunks: s.count().div_ceil(BATCHNORM_CHUNK) as u32,
            count_f,
            eps: bn.eps,
            momentum: bn.momentum,
            keep: 1.0 - bn.momentum,
            unbias: count_f / (count_f - 1.0),
        }
    }
}

/// What the forward pass applies to the normalised value before storing it.
#[derive(Clone, Copy)]
pub enum Epilogue<'a> {
    /// `y = bn(x)`.
    None,
    /// `y = prelu(bn(x))` with these slopes `(C)`.
    Prelu(&'a Tensor),
    /// `y = bn(x) + residual`, `residual (N, C, HW)`.
    Add(&'a Tensor),
}

/// The layer next to a batch norm that its backward pass takes in.
#[derive(Clone, Copy)]
pub enum BackwardFusion<'a> {
    /// The batch norm alone: `dy` is its output's gradient.
    None,
    /// A PReLU after it: `dy` is the PReLU output's gradient, the batch norm's output is recomputed from `x`, its
    /// `beta` and the saved statistics, and `dalpha (C)` receives the slopes' gradient. Needs a trainable gamma.
    Prelu { beta: &'a Tensor, alpha: &'a Tensor, dalpha: &'a Tensor },
    /// `dx = bn_backward(dy) + other`, `other (N, C, HW)`: the input also reaches the loss another way.
    Accumulate(&'a Tensor),
}

/// The batch norm kernels' pipelines. (Named `BatchNormKernels`, not `BatchNorm`, which is the core's
/// hyper-parameter struct.)
///
/// The kernels read and write the activations and their gradients as their tensors hold them ([`Tensor::elem`]):
/// f32, or f16 for mixed precision's (the input `x` and a residual added to the output, the output `y`, the
/// backward pass's `dy`, and its `dx` with a gradient added to it, each either way); statistics, parameters and
/// their gradients are f32. `batchnorm.wgsl` is compiled once per combination of storages in use, the f32 one
/// when the kernels are made and the others on first use.
pub struct BatchNormKernels {
    /// By the storage of `x` (aliases `X`), `y` (`Y`), `dy` (`DY`) and `dx` (`DX`).
    modules: StorageVariants<Pipelines>,
}

/// The pipelines of one compilation of `batchnorm.wgsl`.
struct Pipelines {
    train_partials: wgpu::ComputePipeline,
    train_combine: wgpu::ComputePipeline,
    normalize: wgpu::ComputePipeline,
    backward_partials: wgpu::ComputePipeline,
    backward_combine: wgpu::ComputePipeline,
    backward_combine_frozen: wgpu::ComputePipeline,
    backward_dx: wgpu::ComputePipeline,
    prelu_normalize: wgpu::ComputePipeline,
    add_normalize: wgpu::ComputePipeline,
    prelu_backward_partials: wgpu::ComputePipeline,
    prelu_backward_combine: wgpu::ComputePipeline,
    prelu_backward_dx: wgpu::ComputePipeline,
    backward_accumulate_dx: wgpu::ComputePipeline,
}

/// Checks the shape (no zero size; indices fit `u32`) and, for training, `N*HW >= 2`, as the core does.
fn check_shape(kernel: &str, s: &BatchNormShape, train: bool) -> Result<()> {
    s.validate().map_err(|e| anyhow!("{kernel}: {e}"))?;
    if train && s.count() < 2 {
        bail!("{kernel}: batch norm training needs N*HW >= 2 values per channel, {s:?} has {}", s.count());
    }
    // The scratch tail index 2*(C*chunks + C) is the largest index any pass computes besides N*C*HW.
    let scratch = BatchNormKernels::scratch_len(s);
    if s.len() > u32::MAX as usize || scratch > u32::MAX as usize {
        bail!("{kernel}: {s:?} has more than 2^32 elements; the kernels index with u32");
    }
    Ok(())
}

/// Checks that the scratch tensor holds at least `scratch_len(s)` elements (it may be larger: one scratch tensor,
/// sized for the largest layer, can serve every batch norm layer of a network).
fn check_scratch(kernel: &str, s: &BatchNormShape, scratch: &Tensor) -> Result<()> {
    let need = BatchNormKernels::scratch_len(s);
    if scratch.len < need {
        bail!("{kernel}: {} has {} elements, the shape needs at least {need}", scratch.label, scratch.len);
    }
    Ok(())
}

impl BatchNormKernels {
    /// Compiles the kernels on f32 tensors (the others on first use).
    pub fn new(gpu: &Gpu) -> Self {
        let source = include_str!("../../../../shaders/batchnorm.wgsl");
        let kernels = Self { modules: StorageVariants::new("batchnorm.wgsl", source, &["X", "Y", "DY", "DX"]) };
        kernels.pipelines(gpu, Elem::F32, Elem::F32).expect("f32 needs no feature");
        kernels
    }

    /// The forward pipelines for input storage `x` and output storage `y`, compiled on first use. Errors where
    /// f16 is asked of an adapter without it.
    fn pipelines(&self, gpu: &Gpu, x: Elem, y: Elem) -> Result<&Pipelines> {
        self.modules.get(gpu, &[x, y, Elem::F32, Elem::F32], |m| Pipelines::compile(gpu, m))
    }

    /// The backward pipelines for input storage `x`, output gradient storage `dy` and input gradient storage
    /// `dx`, compiled on first use. Errors as [`Self::pipelines`].
    fn backward_pipelines(&self, gpu: &Gpu, x: Elem, dy: Elem, dx: Elem) -> Result<&Pipelines> {
        self.modules.get(gpu, &[x, x, dy, dx], |m| Pipelines::compile(gpu, m))
    }
}

impl Pipelines {
    fn compile(gpu: &Gpu, m: &wgpu::ShaderModule) -> Self {
        let p = |entry: &str| gpu.pipeline(entry, m, entry);
        Self {
            train_partials: p("batchnorm_forward_train_partials"),
            train_combine: p("batchnorm_forward_train_combine"),
            normalize: p("batchnorm_forward_normalize"),
            backward_partials: p("batchnorm_backward_partials"),
            backward_combine: p("batchnorm_backward_combine"),
            backward_combine_frozen: p("batchnorm_backward_combine_frozen"),
            backward_dx: p("batchnorm_backward_dx"),
            prelu_normalize: p("batchnorm_prelu_forward_normalize"),
            add_normalize: p("batchnorm_add_forward_normalize"),
            prelu_backward_partials: p("batchnorm_prelu_backward_partials"),
            prelu_backward_combine: p("batchnorm_prelu_backward_combine"),
            prelu_backward_dx: p("batchnorm_prelu_backward_dx"),
            backward_accumulate_dx: p("batchnorm_backward_accumulate_dx"),
        }
    }
}

impl BatchNormKernels {
    /// Elements of the scratch tensor [`forward_train`](Self::forward_train) and [`backward`](Self::backward)
    /// need for shape `s`: three floats per (channel, chunk) and three per channel, `3 * C * (chunks + 1)` with
    /// `chunks = ceil(N*HW / BATCHNORM_CHUNK)` (the third of each is the fused PReLU backward's).
    pub fn scratch_len(s: &BatchNormShape) -> usize {
        3 * s.c * (s.count().div_ceil(BATCHNORM_CHUNK) + 1)
    }

    /// Training mode, as [`elasticface_core::nn::batchnorm_forward_train`] (or with `then`, its fused
    /// companions): writes `y`, `save_mean`, `save_var` (the batch mean and biased variance) and updates
    /// `running_mean`, `running_var`.
    ///
    /// Shapes: `x`, `y` `(N, C, HW)`; `gamma`, `beta`, `running_mean`, `running_var`, `save_mean`, `save_var`
    /// `(C)`; `scratch` at least [`scratch_len`](Self::scratch_len). Three dispatches, to be run in order:
    /// chunk statistics `(chunks, C)` workgroups, their combination `(C)`, normalisation (element-wise).
    /// Running them again updates the running statistics again, as calling the core twice would.
    /// Errors: a zero size, `N*HW < 2`, a tensor of the wrong size (named).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_train(
        &self,
        gpu: &Gpu,
        s: &BatchNormShape,
        bn: &BatchNorm,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        then: Epilogue<'_>,
        running_mean: &Tensor,
        running_var: &Tensor,
        y: &Tensor,
        save_mean: &Tensor,
        save_var: &Tensor,
        scratch: &Tensor,
    ) -> Result<[Dispatch; 3]> {
        const K: &str = "batchnorm_forward_train";
        let pipelines = self.pipelines(gpu, x.elem, y.elem)?;
        // The statistics check the shape, x, the statistics tensors and the scratch.
        let stats = [running_mean, running_var, save_mean, save_var];
        let [partials, combine] = Self::statistics_with(pipelines, gpu, s, bn, x, stats, scratch)?;
        for t in [gamma, beta] {
            check_f32(K, t, s.c)?;
        }
        check_len(K, y, s.len())?;
        check_epilogue(K, s, x, then)?;
        let params = BatchNormParams::new(s, bn);
        let normalize = Self::normalize(
            pipelines,
            gpu,
            "batchnorm_forward_train",
            &params,
            [x, save_mean, save_var, gamma, beta],
            then,
            y,
        )?;
        Ok([partials, combine, normalize])
    }

    /// The first two dispatches of [`forward_train`](Self::forward_train): the batch statistics of `x` into
    /// `save_mean`, `save_var` and the running statistics, without the normalisation, for a consumer that
    /// normalises as it reads `x` (the Winograd convolutions' [`InputNorm`](super::winograd::InputNorm)). Shapes
    /// and errors as there.
    #[allow(clippy::too_many_arguments)]
    pub fn statistics(
        &self,
        gpu: &Gpu,
        s: &BatchNormShape,
        bn: &BatchNorm,
        x: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        save_mean: &Tensor,
        save_var: &Tensor,
        scratch: &Tensor,
    ) -> Result<[Dispatch; 2]> {
        let pipelines = self.pipelines(gpu, x.elem, x.elem)?;
        Self::statistics_with(pipelines, gpu, s, bn, x, [running_mean, running_var, save_mean, save_var], scratch)
    }

    /// [`Self::statistics`] with `pipelines`; `stats`: `[running_mean, running_var, save_mean, save_var]`.
    fn statistics_with(
        pipelines: &Pipelines,
        gpu: &Gpu,
        s: &BatchNormShape,
        bn: &BatchNorm,
        x: &Tensor,
        stats: [&Tensor; 4],
        scratch: &Tensor,
    ) -> Result<[Dispatch; 2]> {
        const K: &str = "batchnorm_forward_train";
        let [running_mean, running_var, save_mean, save_var] = stats;
        check_shape(K, s, true)?;
        check_len(K, x, s.len())?;
        for t in [running_mean, running_var, save_mean, save_var] {
            check_f32(K, t, s.c)?;
        }
        check_scratch(K, s, scratch)?;
        let params = BatchNormParams::new(s, bn);
        let chunk_grid = [params.chunks, params.c, 1];
        Ok([
            gpu.dispatch(
                "batchnorm_forward_train_partials",
                &pipelines.train_partials,
                &params,
                &[x, scratch],
                chunk_grid,
            )?,
            gpu.dispatch(
                "batchnorm_forward_train_combine",
                &pipelines.train_combine,
                &params,
                &[scratch, save_mean, save_var, running_mean, running_var],
                [params.c, 1, 1],
            )?,
        ])
    }

    /// Eval mode, as [`elasticface_core::nn::batchnorm_forward_eval`] (or with `then`, its fused companions):
    /// `y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta`. Shapes as
    /// [`forward_train`](Self::forward_train); any `N >= 1`. One element-wise dispatch. Errors: a zero size, a
    /// tensor of the wrong size (named).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_eval(
        &self,
        gpu: &Gpu,
        s: &BatchNormShape,
        bn: &BatchNorm,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        then: Epilogue<'_>,
        running_mean: &Tensor,
        running_var: &Tensor,
        y: &Tensor,
    ) -> Result<Dispatch> {
        const K: &str = "batchnorm_forward_eval";
        check_shape(K, s, false)?;
        check_len(K, x, s.len())?;
        for t in [gamma, beta, running_mean, running_var] {
            check_f32(K, t, s.c)?;
        }
        check_len(K, y, s.len())?;
        check_epilogue(K, s, x, then)?;
        let params = BatchNormParams::new(s, bn);
        let pipelines = self.pipelines(gpu, x.elem, y.elem)?;
        Self::normalize(pipelines, gpu, K, &params, [x, running_mean, running_var, gamma, beta], then, y)
    }

    /// The element-wise normalisation of `[x, mean, var, gamma, beta]`, then `then`, into `y` (sizes already
    /// checked).
    fn normalize(
        pipelines: &Pipelines,
        gpu: &Gpu,
        kernel: &str,
        params: &BatchNormParams,
        [x, mean, var, gamma, beta]: [&Tensor; 5],
        then: Epilogue<'_>,
        y: &Tensor,
    ) -> Result<Dispatch> {
        let grid = gpu.grid_1d(params.len as usize, ELEMENTWISE_WORKGROUP);
        let (entry, pipeline, with) = match then {
            Epilogue::None => ("batchnorm_forward_normalize", &pipelines.normalize, None),
            Epilogue::Prelu(alpha) => ("batchnorm_prelu_forward_normalize", &pipelines.prelu_normalize, Some(alpha)),
            Epilogue::Add(residual) => ("batchnorm_add_forward_normalize", &pipelines.add_normalize, Some(residual)),
        };
        let label = format!("{kernel} ({entry})");
        match with {
            None => gpu.dispatch(&label, pipeline, params, &[x, mean, var, gamma, beta, y], grid),
            Some(w) => gpu.dispatch(&label, pipeline, params, &[x, mean, var, gamma, beta, w, y], grid),
        }
    }

    /// Backward of [`forward_train`](Self::forward_train) from the saved batch statistics, as
    /// [`elasticface_core::nn::batchnorm_backward`] (or with `fusion`, its fused companions): writes `dx`, `dbeta`
    /// and, unless the weight is frozen (`dgamma = None`), `dgamma`.
    ///
    /// Shapes: `x`, `dy`, `dx` `(N, C, HW)`; `gamma`, `save_mean`, `save_var`, `dgamma`, `dbeta` `(C)`; `scratch`
    /// at least [`scratch_len`](Self::scratch_len). Three dispatches, to be run in order: chunk sums
    /// `(chunks, C)` workgroups, their combination `(C)` (which also leaves the dx coefficients in `scratch`),
    /// dx (element-wise). `dy` and `dx` may each be f32 or f16 (mixed precision's activation gradients); a
    /// gradient accumulated into `dx` is stored as `dx` is. Errors: a zero size, `N*HW < 2`, a tensor of the
    /// wrong size (named), an accumulated gradient stored otherwise than `dx`, a frozen gamma with a PReLU fused.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        gpu: &Gpu,
        s: &BatchNormShape,
        bn: &BatchNorm,
        x: &Tensor,
        gamma: &Tensor,
        save_mean: &Tensor,
        save_var: &Tensor,
        fusion: BackwardFusion<'_>,
        dy: &Tensor,
        dx: &Tensor,
        dgamma: Option<&Tensor>,
        dbeta: &Tensor,
        scratch: &Tensor,
    ) -> Result<[Dispatch; 3]> {
        const K: &str = "batchnorm_backward";
        check_shape(K, s, true)?;
        check_len(K, x, s.len())?;
        for t in [gamma, save_mean, save_var] {
            check_f32(K, t, s.c)?;
        }
        check_len(K, dy, s.len())?;
        check_len(K, dx, s.len())?;
        if let Some(dgamma) = dgamma {
            check_f32(K, dgamma, s.c)?;
        }
        check_f32(K, dbeta, s.c)?;
        match fusion {
            BackwardFusion::None => {}
            BackwardFusion::Prelu { beta, alpha, dalpha } => {
                for t in [beta, alpha, dalpha] {
                    check_f32(K, t, s.c)?;
                }
                if dgamma.is_none() {
                    bail!("{K}: a PReLU fused into the backward pass needs a trainable gamma (dgamma)");
                }
            }
            BackwardFusion::Accumulate(other) => {
                check_len(K, other, s.len())?;
                other.expect_elem(K, dx.elem)?;
            }
        }
        check_scratch(K, s, scratch)?;
        let pipelines = self.backward_pipelines(gpu, x.elem, dy.elem, dx.elem)?;
        let params = BatchNormParams::new(s, bn);
        let chunk_grid = [params.chunks, params.c, 1];
        let elements = gpu.grid_1d(s.len(), ELEMENTWISE_WORKGROUP);
        let combine =
            |name, pipeline, tensors: &[&Tensor]| gpu.dispatch(name, pipeline, &params, tensors, [params.c, 1, 1]);
        let partials = |name, pipeline, tensors: &[&Tensor]| gpu.dispatch(name, pipeline, &params, tensors, chunk_grid);
        let dx_pass = |name, pipeline, tensors: &[&Tensor]| gpu.dispatch(name, pipeline, &params, tensors, elements);
        let bn_dx = [x, dy, gamma, save_mean, save_var, scratch];
        Ok(match (fusion, dgamma) {
            (BackwardFusion::Prelu { beta, alpha, dalpha }, Some(dgamma)) => [
                partials(
                    "batchnorm_prelu_backward_partials",
                    &pipelines.prelu_backward_partials,
                    &[x, dy, save_mean, scratch, save_var, gamma, beta, alpha],
                )?,
                combine(
                    "batchnorm_prelu_backward_combine",
                    &pipelines.prelu_backward_combine,
                    &[scratch, save_var, dbeta, dgamma, dalpha, alpha],
                )?,
                dx_pass(
                    "batchnorm_prelu_backward_dx",
                    &pipelines.prelu_backward_dx,
                    &[&bn_dx[..], &[beta, dx]].concat(),
                )?,
            ],
            (BackwardFusion::Prelu { .. }, None) => unreachable!("refused above"),
            (_, dgamma) => [
                partials("batchnorm_backward_partials", &pipelines.backward_partials, &[x, dy, save_mean, scratch])?,
                match dgamma {
                    Some(dgamma) => combine(
                        "batchnorm_backward_combine",
                        &pipelines.backward_combine,
                        &[scratch, save_var, dbeta, dgamma],
                    )?,
                    None => combine(
                        "batchnorm_backward_combine_frozen",
                        &pipelines.backward_combine_frozen,
                        &[scratch, save_var, dbeta],
                    )?,
                },
                match fusion {
                    BackwardFusion::Accumulate(other) => dx_pass(
                        "batchnorm_backward_accumulate_dx",
                        &pipelines.backward_accumulate_dx,
                        &[&bn_dx[..], &[other, dx]].concat(),
                    )?,
                    _ => dx_pass("batchnorm_backward_dx", &pipelines.backward_dx, &[&bn_dx[..], &[dx]].concat())?,
                },
            ],
        })
    }
}

/// Checks the epilogue's operand: the slopes `(C)`, or the residual `(N, C, HW)`, stored as `x` is.
fn check_epilogue(kernel: &str, s: &BatchNormShape, x: &Tensor, then: Epilogue<'_>) -> Result<()> {
    match then {
        Epilogue::None => Ok(()),
        Epilogue::Prelu(alpha) => check_f32(kernel, alpha, s.c),
        Epilogue::Add(residual) => {
            check_len(kernel, residual, s.len())?;
            residual.expect_elem(kernel, x.elem)
        }
    }
}
