//! The fully connected layer: its products are the convolution kernels ([`Conv2d`]) run as a 1x1 convolution
//! on `(N, IN, 1, 1)` (the weight `(OUT, IN)` is a `(OUT, IN, 1, 1)` convolution weight, `y (N, OUT)` is the
//! output `(N, OUT, 1, 1)`); `shaders/linear.wgsl` adds the bias and sums its gradient.
//! CPU twins: [`elasticface_core::nn::linear_forward`], [`elasticface_core::nn::linear_backward`].

use anyhow::{anyhow, Result};
use elasticface_core::nn::{Conv2dShape, LinearShape};

use super::conv2d::{Conv2d, ConvPrecision, ConvTiling};
use super::{check_f32, check_len, Dispatch, ELEMENTWISE_WORKGROUP};
use crate::gpu::{Gpu, Tensor};

/// Mirrors `Params` in `shaders/linear.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LinearParams {
    /// Batch size N.
    pub n: u32,
    /// Output features OUT.
    pub outputs: u32,
}

/// The 1x1 convolution that computes the products of the linear layer `s`.
pub fn conv_shape(s: &LinearShape) -> Conv2dShape {
    Conv2dShape { n: s.n, c_in: s.inputs, h: 1, w: 1, c_out: s.outputs, kh: 1, kw: 1, stride: 1, pad: 0 }
}

/// Floating-point operations of the forward pass, `2 * N * IN * OUT` (the bias adds not counted). The backward
/// pass does twice as many (`dx` and `dweight`), plus `N * OUT` for the bias.
pub fn flops(s: &LinearShape) -> u64 {
    2 * s.n as u64 * s.inputs as u64 * s.outputs as u64
}

/// The linear layer's pipelines: the convolution kernels and the two bias kernels.
pub struct Linear {
    conv: Conv2d,
    forward_bias: wgpu::ComputePipeline,
    backward_bias: wgpu::ComputePipeline,
}

impl Linear {
    /// Compiles the kernels, the convolution with the adapter's tiling.
    pub fn new(gpu: &Gpu) -> Self {
        Self::with_tiling(gpu, ConvTiling::for_adapter(gpu)).expect("the adapter's tiling fits it")
    }

    /// Compiles the kernels, the convolution in f32 with `tiling`. Errors as [`Conv2d::build`].
    pub fn with_tiling(gpu: &Gpu, tiling: ConvTiling) -> Result<Self> {
        let m = gpu.shader("linear.wgsl", include_str!("../../../../shaders/linear.wgsl"));
        Ok(Self {
            conv: Conv2d::build(gpu, ConvPrecision::F32, tiling)?,
            forward_bias: gpu.pipeline("linear_forward_bias", &m, "linear_forward_bias"),
            backward_bias: gpu.pipeline("linear_backward_bias", &m, "linear_backward_bias"),
        })
    }

    /// Scratch elements the forward and backward passes of `s` need (0 when no product splits its reduction).
    pub fn scratch_len(&self, gpu: &Gpu, s: &LinearShape) -> Result<usize> {
        validate(s, "linear")?;
        self.conv.scratch_len(gpu, &conv_shape(s))
    }

    /// `y = x weight^T + bias`: `x (N, IN)`, `weight (OUT, IN)`, `bias (OUT)`, `y (N, OUT)`. `scratch`: at least
    /// [`Self::scratch_len`] elements, not one of the other tensors. Returns the dispatches to run in order.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        gpu: &Gpu,
        s: &LinearShape,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        y: &Tensor,
        scratch: &Tensor,
    ) -> Result<Vec<Dispatch>> {
        const NAME: &str = "linear_forward";
        validate(s, NAME)?;
        check_len(NAME, x, s.input_len())?;
        check_len(NAME, weight, s.weight_len())?;
        // The bias kernel reads and writes f32.
        check_f32(NAME, bias, s.outputs)?;
        check_f32(NAME, y, s.output_len())?;
        let mut dispatches = self.conv.forward(gpu, &conv_shape(s), x, weight, y, scratch)?;
        let params = LinearParams { n: s.n as u32, outputs: s.outputs as u32 };
        let grid = gpu.grid_1d(s.output_len(), ELEMENTWISE_WORKGROUP);
        dispatches.push(gpu.dispatch("linear_forward_bias", &self.forward_bias, &params, &[bias, y], grid)?);
        Ok(dispatches)
    }

    /// `dx = dy weight (N, IN)`, `dweight = dy^T x (OUT, IN)`, `dbias = sum_n dy (OUT)` from `x (N, IN)`,
    /// `weight (OUT, IN)`, `dy (N, OUT)`; all three overwritten. `phased`: a workspace of the weight's size (f32),
    /// overwritten with the weight laid out for `dx`'s product ([`Conv2d::phase_weights`]: here its transpose).
    /// `scratch` as in [`Self::forward`] (used by one product after the other). Returns the dispatches to run in
    /// order.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        gpu: &Gpu,
        s: &LinearShape,
        x: &Tensor,
        weight: &Tensor,
        dy: &Tensor,
        dx: &Tensor,
        dweight: &Tensor,
        dbias: &Tensor,
        phased: &Tensor,
        scratch: &Tensor,
    ) -> Result<Vec<Dispatch>> {
        const NAME: &str = "linear_backward";
        validate(s, NAME)?;
        check_len(NAME, x, s.input_len())?;
        check_len(NAME, weight, s.weight_len())?;
        check_f32(NAME, dy, s.output_len())?;
        check_len(NAME, dx, s.input_len())?;
        check_len(NAME, dweight, s.weight_len())?;
        check_f32(NAME, dbias, s.outputs)?;
        let conv = conv_shape(s);
        let mut dispatches = self.conv.backward_data(gpu, &conv, dy, weight, phased, dx, scratch)?;
        dispatches.extend(self.conv.backward_weight(gpu, &conv, dy, x, dweight, scratch)?);
        let params = LinearParams { n: s.n as u32, outputs: s.outputs as u32 };
        let grid = gpu.grid_1d(s.outputs, ELEMENTWISE_WORKGROUP);
        dispatches.push(gpu.dispatch("linear_backward_bias", &self.backward_bias, &params, &[dy, dbias], grid)?);
        Ok(dispatches)
    }
}

fn validate(s: &LinearShape, name: &str) -> Result<()> {
    s.validate().map_err(|e| anyhow!("{name}: {e}"))
}
