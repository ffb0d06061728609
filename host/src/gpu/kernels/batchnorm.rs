//! `shaders/batchnorm.wgsl`: batch normalisation over `(N, C, HW)`, training and eval forward, and backward.
//! CPU twins: [`elasticface_core::nn::batchnorm_forward_train`], [`elasticface_core::nn::batchnorm_forward_eval`],
//! [`elasticface_core::nn::batchnorm_backward`].
//!
//! Per-channel statistics are deterministic two-level reductions (chunks of [`BATCHNORM_CHUNK`] values, then a
//! fixed-order combine per channel) through a scratch tensor of [`BatchNormKernels::scratch_len`] floats; the
//! shader's header comment describes the scheme. Dispatches: training forward 3, eval forward 1, backward 3.

use anyhow::{anyhow, bail, Result};
use elasticface_core::nn::{BatchNorm, BatchNormShape};

use super::{check_len, Dispatch, ELEMENTWISE_WORKGROUP};
use crate::gpu::{Gpu, Tensor};

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

/// The batch norm kernels' pipelines. (Named `BatchNormKernels`, not `BatchNorm`, which is the core's
/// hyper-parameter struct.)
pub struct BatchNormKernels {
    train_partials: wgpu::ComputePipeline,
    train_combine: wgpu::ComputePipeline,
    normalize: wgpu::ComputePipeline,
    backward_partials: wgpu::ComputePipeline,
    backward_combine: wgpu::ComputePipeline,
    backward_combine_frozen: wgpu::ComputePipeline,
    backward_dx: wgpu::ComputePipeline,
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
    /// Compiles the kernels.
    pub fn new(gpu: &Gpu) -> Self {
        let m = gpu.shader("batchnorm.wgsl", include_str!("../../../../shaders/batchnorm.wgsl"));
        let p = |entry: &str| gpu.pipeline(entry, &m, entry);
        Self {
            train_partials: p("batchnorm_forward_train_partials"),
            train_combine: p("batchnorm_forward_train_combine"),
            normalize: p("batchnorm_forward_normalize"),
            backward_partials: p("batchnorm_backward_partials"),
            backward_combine: p("batchnorm_backward_combine"),
            backward_combine_frozen: p("batchnorm_backward_combine_frozen"),
            backward_dx: p("batchnorm_backward_dx"),
        }
    }

    /// Elements of the scratch tensor [`forward_train`](Self::forward_train) and [`backward`](Self::backward)
    /// need for shape `s`: two floats per (channel, chunk) and two per channel, `2 * C * (chunks + 1)` with
    /// `chunks = ceil(N*HW / BATCHNORM_CHUNK)`.
    pub fn scratch_len(s: &BatchNormShape) -> usize {
        2 * s.c * (s.count().div_ceil(BATCHNORM_CHUNK) + 1)
    }

    /// Training mode, as [`elasticface_core::nn::batchnorm_forward_train`]: writes `y`, `save_mean`, `save_var`
    /// (the batch mean and biased variance) and updates `running_mean`, `running_var`.
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
        running_mean: &Tensor,
        running_var: &Tensor,
        y: &Tensor,
        save_mean: &Tensor,
        save_var: &Tensor,
        scratch: &Tensor,
    ) -> Result<[Dispatch; 3]> {
        const K: &str = "batchnorm_forward_train";
        check_shape(K, s, true)?;
        check_len(K, x, s.len())?;
        for t in [gamma, beta, running_mean, running_var, save_mean, save_var] {
            check_len(K, t, s.c)?;
        }
        check_len(K, y, s.len())?;
        check_scratch(K, s, scratch)?;
        let params = BatchNormParams::new(s, bn);
        let chunk_grid = [params.chunks, params.c, 1];
        Ok([
            gpu.dispatch("batchnorm_forward_train_partials", &self.train_partials, &params, &[x, scratch], chunk_grid)?,
            gpu.dispatch(
                "batchnorm_forward_train_combine",
                &self.train_combine,
                &params,
                &[scratch, save_mean, save_var, running_mean, running_var],
                [params.c, 1, 1],
            )?,
            self.normalize(gpu, "batchnorm_forward_train", &params, x, save_mean, save_var, gamma, beta, y)?,
        ])
    }

    /// Eval mode, as [`elasticface_core::nn::batchnorm_forward_eval`]: `y = gamma * (x - running_mean) /
    /// sqrt(running_var + eps) + beta`. Shapes as [`forward_train`](Self::forward_train); any `N >= 1`.
    /// One element-wise dispatch. Errors: a zero size, a tensor of the wrong size (named).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_eval(
        &self,
        gpu: &Gpu,
        s: &BatchNormShape,
        bn: &BatchNorm,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        y: &Tensor,
    ) -> Result<Dispatch> {
        const K: &str = "batchnorm_forward_eval";
        check_shape(K, s, false)?;
        check_len(K, x, s.len())?;
        for t in [gamma, beta, running_mean, running_var] {
            check_len(K, t, s.c)?;
        }
        check_len(K, y, s.len())?;
        let params = BatchNormParams::new(s, bn);
        self.normalize(gpu, K, &params, x, running_mean, running_var, gamma, beta, y)
    }

    /// The element-wise normalisation with the given statistics (sizes already checked).
    #[allow(clippy::too_many_arguments)]
    fn normalize(
        &self,
        gpu: &Gpu,
        kernel: &str,
        params: &BatchNormParams,
        x: &Tensor,
        mean: &Tensor,
        var: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        y: &Tensor,
    ) -> Result<Dispatch> {
        let grid = gpu.grid_1d(params.len as usize, ELEMENTWISE_WORKGROUP);
        let label = format!("{kernel} (batchnorm_forward_normalize)");
        gpu.dispatch(&label, &self.normalize, params, &[x, mean, var, gamma, beta, y], grid)
    }

    /// Backward of [`forward_train`](Self::forward_train) from the saved batch statistics, as
    /// [`elasticface_core::nn::batchnorm_backward`]: writes `dx`, `dbeta` and, unless the weight is frozen
    /// (`dgamma = None`), `dgamma`.
    ///
    /// Shapes: `x`, `dy`, `dx` `(N, C, HW)`; `gamma`, `save_mean`, `save_var`, `dgamma`, `dbeta` `(C)`; `scratch`
    /// at least [`scratch_len`](Self::scratch_len). Three dispatches, to be run in order: chunk sums
    /// `(chunks, C)` workgroups, their combination `(C)` (which also leaves the dx coefficients in `scratch`),
    /// dx (element-wise). Errors: a zero size, `N*HW < 2`, a tensor of the wrong size (named).
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
            check_len(K, t, s.c)?;
        }
        check_len(K, dy, s.len())?;
        check_len(K, dx, s.len())?;
        if let Some(dgamma) = dgamma {
            check_len(K, dgamma, s.c)?;
        }
        check_len(K, dbeta, s.c)?;
        check_scratch(K, s, scratch)?;
        let params = BatchNormParams::new(s, bn);
        let chunk_grid = [params.chunks, params.c, 1];
        let combine = match dgamma {
            Some(dgamma) => gpu.dispatch(
                "batchnorm_backward_combine",
                &self.backward_combine,
                &params,
                &[scratch, save_var, dbeta, dgamma],
                [params.c, 1, 1],
            )?,
            None => gpu.dispatch(
                "batchnorm_backward_combine_frozen",
                &self.backward_combine_frozen,
                &params,
                &[scratch, save_var, dbeta],
                [params.c, 1, 1],
            )?,
        };
        Ok([
            gpu.dispatch(
                "batchnorm_backward_partials",
                &self.backward_partials,
                &params,
                &[x, dy, save_mean, scratch],
                chunk_grid,
            )?,
            combine,
            gpu.dispatch(
                "batchnorm_backward_dx",
                &self.backward_dx,
                &params,
                &[x, dy, gamma, save_mean, save_var, scratch, dx],
                gpu.grid_1d(s.len(), ELEMENTWISE_WORKGROUP),
            )?,
        ])
    }
}
