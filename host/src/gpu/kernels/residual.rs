//! `shaders/residual.wgsl`: the residual connection and gradient accumulation.
//! CPU twins: [`elasticface_core::nn::residual_add_forward`], [`elasticface_core::nn::accumulate`].

use anyhow::Result;

use super::{check_f32, Dispatch, ELEMENTWISE_WORKGROUP};
use crate::gpu::{Gpu, Tensor};

/// Mirrors `Params` in `shaders/residual.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ResidualParams {
    /// Elements.
    pub len: u32,
}

/// The residual kernels' pipelines.
pub struct Residual {
    add: wgpu::ComputePipeline,
    accumulate: wgpu::ComputePipeline,
}

impl Residual {
    /// Compiles the kernels.
    pub fn new(gpu: &Gpu) -> Self {
        let m = gpu.shader("residual.wgsl", include_str!("../../../../shaders/residual.wgsl"));
        Self {
            add: gpu.pipeline("residual_add_forward", &m, "residual_add_forward"),
            accumulate: gpu.pipeline("accumulate", &m, "accumulate"),
        }
    }

    /// `y = a + b`.
    pub fn forward(&self, gpu: &Gpu, a: &Tensor, b: &Tensor, y: &Tensor) -> Result<Dispatch> {
        for t in [a, b, y] {
            check_f32("residual_add_forward", t, a.len)?;
        }
        let params = ResidualParams { len: a.len as u32 };
        let grid = gpu.grid_1d(a.len, ELEMENTWISE_WORKGROUP);
        gpu.dispatch("residual_add_forward", &self.add, &params, &[a, b, y], grid)
    }

    /// `dst += src`.
    pub fn accumulate(&self, gpu: &Gpu, dst: &Tensor, src: &Tensor) -> Result<Dispatch> {
        check_f32("accumulate", src, dst.len)?;
        check_f32("accumulate", dst, dst.len)?;
        let params = ResidualParams { len: dst.len as u32 };
        let grid = gpu.grid_1d(dst.len, ELEMENTWISE_WORKGROUP);
        gpu.dispatch("accumulate", &self.accumulate, &params, &[src, dst], grid)
    }
}
