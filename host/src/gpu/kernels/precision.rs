//! `shaders/precision.wgsl`: f32 values rounded to f16 and stored as f16 (mixed precision's copy of the
//! convolution weights). CPU twin: [`elasticface_core::nn::round_to_f16`].

use anyhow::{bail, Result};

use super::{check_len, Dispatch, ELEMENTWISE_WORKGROUP};
use crate::gpu::{Elem, Gpu, Tensor};

/// Mirrors `Params` in `shaders/precision.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PrecisionParams {
    /// Elements.
    pub len: u32,
}

/// The rounding kernel's pipeline.
pub struct RoundToF16 {
    pipeline: wgpu::ComputePipeline,
}

impl RoundToF16 {
    /// Compiles the kernel (it needs no f16 in shaders: it writes the f16 bits as words).
    pub fn new(gpu: &Gpu) -> Self {
        let m = gpu.shader("precision.wgsl", include_str!("../../../../shaders/precision.wgsl"));
        Self { pipeline: gpu.pipeline("round_to_f16", &m, "round_to_f16") }
    }

    /// `dst = f16(src)`: `src` f32, `dst` f16 of the same length, rounded as the core's `round_to_f16` rounds
    /// (to nearest, ties to even; beyond the range to infinity). One dispatch, one invocation per pair.
    pub fn run(&self, gpu: &Gpu, src: &Tensor, dst: &Tensor) -> Result<Dispatch> {
        const K: &str = "round_to_f16";
        src.expect_elem(K, Elem::F32)?;
        dst.expect_elem(K, Elem::F16)?;
        check_len(K, dst, src.len)?;
        let Ok(len) = u32::try_from(src.len) else {
            bail!("{K}: {} has more than 2^32 - 1 elements", src.label);
        };
        let grid = gpu.grid_1d(src.len.div_ceil(2), ELEMENTWISE_WORKGROUP);
        gpu.dispatch(K, &self.pipeline, &PrecisionParams { len }, &[src, dst], grid)
    }
}
