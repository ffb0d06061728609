//! `shaders/prelu.wgsl`: PReLU with one slope per channel over `(N, C, HW)`.
//! CPU twins: [`elasticface_core::nn::prelu_forward`], [`elasticface_core::nn::prelu_backward`].
//!
//! `dalpha` is a deterministic two-level reduction (chunks of [`PRELU_CHUNK`] values of a channel, then a
//! fixed-order combine per channel) through a scratch tensor of [`Prelu::scratch_len`] floats; the shader's header
//! comment describes the scheme. Dispatches: forward 1, backward 2.

use anyhow::{anyhow, bail, Result};
use elasticface_core::nn::BatchNormShape;

use super::{check_f32, Dispatch, ELEMENTWISE_WORKGROUP};
use crate::gpu::{Gpu, Tensor};

/// Values of one channel that one workgroup reduces in the backward pass (must match `CHUNK` in
/// `shaders/prelu.wgsl`).
pub const PRELU_CHUNK: usize = 2048;

/// Mirrors `Params` in `shaders/prelu.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PreluParams {
    /// Elements, `N*C*HW`.
    pub len: u32,
    /// Channels C.
    pub c: u32,
    /// Spatial size HW.
    pub hw: u32,
    /// Values per channel, `N*HW`.
    pub count: u32,
    /// Chunks per channel, `ceil(count / PRELU_CHUNK)`.
    pub chunks: u32,
}

impl PreluParams {
    fn new(s: &BatchNormShape) -> Self {
        Self {
            len: s.len() as u32,
            c: s.c as u32,
            hw: s.hw as u32,
            count: s.count() as u32,
            chunks: s.count().div_ceil(PRELU_CHUNK) as u32,
        }
    }
}

/// The PReLU kernels' pipelines. Shapes are `(N, C, HW)` as the core's ([`BatchNormShape`]).
pub struct Prelu {
    forward: wgpu::ComputePipeline,
    backward_partials: wgpu::ComputePipeline,
    backward_combine: wgpu::ComputePipeline,
}

/// Checks the shape: no zero size, indices fit `u32`.
fn check_shape(kernel: &str, s: &BatchNormShape) -> Result<()> {
    s.validate().map_err(|e| anyhow!("{kernel}: {e}"))?;
    if s.len() > u32::MAX as usize {
        bail!("{kernel}: {s:?} has more than 2^32 elements; the kernels index with u32");
    }
    Ok(())
}

impl Prelu {
    /// Compiles the kernels.
    pub fn new(gpu: &Gpu) -> Self {
        let m = gpu.shader("prelu.wgsl", include_str!("../../../../shaders/prelu.wgsl"));
        let p = |entry: &str| gpu.pipeline(entry, &m, entry);
        Self {
            forward: p("prelu_forward"),
            backward_partials: p("prelu_backward_partials"),
            backward_combine: p("prelu_backward_combine"),
        }
    }

    /// Elements of the scratch tensor [`backward`](Self::backward) needs for shape `s`: one float per (channel,
    /// chunk), `C * ceil(N*HW / PRELU_CHUNK)`.
    pub fn scratch_len(s: &BatchNormShape) -> usize {
        s.c * s.count().div_ceil(PRELU_CHUNK)
    }

    /// `y = x` where `x > 0`, else `alpha[c] * x`, as [`elasticface_core::nn::prelu_forward`] (bit-identical).
    /// Shapes: `x`, `y` `(N, C, HW)`; `alpha (C)`. One element-wise dispatch.
    pub fn forward(&self, gpu: &Gpu, s: &BatchNormShape, x: &Tensor, alpha: &Tensor, y: &Tensor) -> Result<Dispatch> {
        const K: &str = "prelu_forward";
        check_shape(K, s)?;
        check_f32(K, x, s.len())?;
        check_f32(K, alpha, s.c)?;
        check_f32(K, y, s.len())?;
        let params = PreluParams::new(s);
        gpu.dispatch(K, &self.forward, &params, &[x, alpha, y], gpu.grid_1d(s.len(), ELEMENTWISE_WORKGROUP))
    }

    /// Backward, as [`elasticface_core::nn::prelu_backward`]: `dx = dy` where `x > 0`, else `alpha * dy`
    /// (bit-identical); `dalpha[c] = sum over x <= 0 of x * dy` (deterministic, equal to the core's up to
    /// summation order).
    ///
    /// Shapes: `x`, `dy`, `dx` `(N, C, HW)`; `alpha`, `dalpha` `(C)`; `scratch` at least
    /// [`scratch_len`](Self::scratch_len) (a larger one may be shared between layers). Two dispatches, to be run
    /// in order: dx and chunk partials `(chunks, C)` workgroups, then their combination `(C)`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        gpu: &Gpu,
        s: &BatchNormShape,
        x: &Tensor,
        alpha: &Tensor,
        dy: &Tensor,
        dx: &Tensor,
        dalpha: &Tensor,
        scratch: &Tensor,
    ) -> Result<[Dispatch; 2]> {
        const K: &str = "prelu_backward";
        check_shape(K, s)?;
        check_f32(K, x, s.len())?;
        check_f32(K, alpha, s.c)?;
        check_f32(K, dy, s.len())?;
        check_f32(K, dx, s.len())?;
        check_f32(K, dalpha, s.c)?;
        let need = Self::scratch_len(s);
        if scratch.len < need {
            bail!("{K}: {} has {} elements, the shape needs at least {need}", scratch.label, scratch.len);
        }
        let params = PreluParams::new(s);
        Ok([
            gpu.dispatch(
                "prelu_backward_partials",
                &self.backward_partials,
                &params,
                &[x, alpha, dy, dx, scratch],
                [params.chunks, params.c, 1],
            )?,
            gpu.dispatch(
                "prelu_backward_combine",
                &self.backward_combine,
                &params,
                &[scratch, dalpha],
                [params.c, 1, 1],
            )?,
        ])
    }
}
