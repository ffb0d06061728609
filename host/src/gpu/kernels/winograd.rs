//! `shaders/winograd.wgsl`: the 3x3 stride-1 convolutions as Winograd F(2x2, 3x3), 2.25x fewer multiply-adds
//! than the direct convolution. CPU twins: [`elasticface_core::nn::winograd_weight_transform`],
//! [`elasticface_core::nn::winograd_input_transform`], [`elasticface_core::nn::winograd_output_transform`],
//! [`elasticface_core::nn::winograd_output_grad_transform`], [`elasticface_core::nn::winograd_weight_grad_transform`];
//! the 16 products run on [`Conv2d::gemm_batched`] (twin [`elasticface_core::nn::gemm_batched`]). The whole
//! passes are the core's [`elasticface_core::nn::conv2d_winograd_forward`] and its two backward companions.
//!
//! Each pass is a few dispatches through three workspace tensors (see [`WinogradWorkspace`]):
//! - forward: weight -> U, x -> V, U V -> M, M -> y;
//! - backward_data: the forward pass of dy with the flipped, transposed weight and padding 2 - pad;
//! - backward_weight: dy -> W (in M's tensor), x -> V^T, W V^T -> dU (in U's tensor), dU -> dweight.
//!
//! The sums differ from the direct convolution's (they run over transformed operands), so the results agree
//! with it to rounding, not bit for bit; the bound is in the core's `winograd` module.

use anyhow::{bail, Result};
use elasticface_core::nn::{Conv2dShape, WinogradTiles};

use super::conv2d::Conv2d;
use super::{check_len, Dispatch, ELEMENTWISE_WORKGROUP};
use crate::gpu::{Gpu, Tensor};

/// Mirrors `Params` in `shaders/winograd.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct WinogradParams {
    /// Batch size N.
    pub n: u32,
    /// Channels of the tensor transformed.
    pub channels: u32,
    /// Input height.
    pub h: u32,
    /// Input width.
    pub w: u32,
    /// Zero padding.
    pub pad: u32,
    /// Output height.
    pub ho: u32,
    /// Output width.
    pub wo: u32,
    /// Tile rows, `ceil(HO / 2)`.
    pub tiles_h: u32,
    /// Tile columns, `ceil(WO / 2)`.
    pub tiles_w: u32,
    /// Tiles T, `N * tiles_h * tiles_w`.
    pub tiles: u32,
    /// The weight transforms' C_OUT.
    pub c_out: u32,
    /// The weight transforms' C_IN.
    pub c_in: u32,
    /// 1: the weight transform flips, the input transform transposes.
    pub flag: u32,
    /// Invocations with work.
    pub count: u32,
}

/// Elements of the workspace tensors one shape needs (see [`WinogradWorkspace`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WinogradLens {
    /// U and dU: `16 * C_OUT * C_IN`.
    pub u: usize,
    /// V: `16 * C * T` of the larger of the two transformed inputs (x, or dy for backward_data).
    pub v: usize,
    /// M and W: `16 * C * T` of the larger product.
    pub m: usize,
    /// The split products' partial sums ([`crate::gpu::kernels::conv2d::ConvPlan::scratch_len`]).
    pub scratch: usize,
}

impl WinogradLens {
    /// Elementwise maximum: lengths that serve both shapes.
    pub fn max(self, other: Self) -> Self {
        Self {
            u: self.u.max(other.u),
            v: self.v.max(other.v),
            m: self.m.max(other.m),
            scratch: self.scratch.max(other.scratch),
        }
    }
}

/// The tensors a Winograd pass works through: four distinct buffers (a dispatch may not read and write one
/// buffer), each at least as long as [`WinogradLens`] says; one workspace serves every layer of a network.
pub struct WinogradWorkspace {
    /// Transformed weights, and the weight gradient before its transform.
    pub u: Tensor,
    /// Transformed inputs.
    pub v: Tensor,
    /// Transformed outputs, and the transformed output gradient.
    pub m: Tensor,
    /// Partial sums of split products.
    pub scratch: Tensor,
}

impl WinogradWorkspace {
    /// The four tensors of `lens`, each made by `alloc(label, elements)` (at least one element each).
    pub fn allocate(lens: &WinogradLens, mut alloc: impl FnMut(&str, usize) -> Result<Tensor>) -> Result<Self> {
        Ok(Self {
            u: alloc("winograd U", lens.u.max(1))?,
            v: alloc("winograd V", lens.v.max(1))?,
            m: alloc("winograd M", lens.m.max(1))?,
            scratch: alloc("winograd scratch", lens.scratch.max(1))?,
        })
    }
}

/// The Winograd kernels' pipelines.
pub struct Winograd {
    weight: wgpu::ComputePipeline,
    input: wgpu::ComputePipeline,
    output: wgpu::ComputePipeline,
    output_grad: wgpu::ComputePipeline,
    weight_grad: wgpu::ComputePipeline,
}

/// Elements of a transformed operand: 16 planes of `rows * cols`.
fn planes(rows: usize, cols: usize) -> usize {
    16 * rows * cols
}

impl Winograd {
    /// Compiles the kernels.
    pub fn new(gpu: &Gpu) -> Self {
        let m = gpu.shader("winograd.wgsl", include_str!("../../../../shaders/winograd.wgsl"));
        Self {
            weight: gpu.pipeline("winograd_weight_transform", &m, "winograd_weight_transform"),
            input: gpu.pipeline("winograd_input_transform", &m, "winograd_input_transform"),
            output: gpu.pipeline("winograd_output_transform", &m, "winograd_output_transform"),
            output_grad: gpu.pipeline("winograd_output_grad_transform", &m, "winograd_output_grad_transform"),
            weight_grad: gpu.pipeline("winograd_weight_grad_transform", &m, "winograd_weight_grad_transform"),
        }
    }

    /// Whether `s` can run as Winograd: a 3x3 kernel, stride 1, padding at most 2.
    pub fn applies(s: &Conv2dShape) -> bool {
        WinogradTiles::forward_of(s).is_some() && s.validate().is_ok()
    }

    /// The workspace `s`'s three passes need. Errors when `s` does not apply or an operand exceeds `u32`.
    pub fn workspace_lens(gpu: &Gpu, conv: &Conv2d, s: &Conv2dShape) -> Result<WinogradLens> {
        let (fwd, bwd) = tilings(s)?;
        let (t, t_data) = (fwd.tiles(), bwd.tiles());
        let mut scratch = 0;
        for [m, k, cols] in [[s.c_out, s.c_in, t], [s.c_in, s.c_out, t_data], [s.c_out, t, s.c_in]] {
            scratch = scratch.max(conv.plan_batched(gpu, 16, m, k, cols)?.scratch_len());
        }
        Ok(WinogradLens {
            u: planes(s.c_out, s.c_in),
            v: planes(s.c_in, t).max(planes(s.c_out, t_data)),
            m: planes(s.c_out, t).max(planes(s.c_in, t_data)),
            scratch,
        })
    }

    /// `y = conv(x, weight)` (see [`Conv2d::forward`]): 4 dispatches, 5 when the product splits.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        gpu: &Gpu,
        conv: &Conv2d,
        s: &Conv2dShape,
        x: &Tensor,
        weight: &Tensor,
        y: &Tensor,
        ws: &WinogradWorkspace,
    ) -> Result<Vec<Dispatch>> {
        let (tiles, _) = tilings(s)?;
        check_len("winograd forward", x, s.input_len())?;
        check_len("winograd forward", weight, s.weight_len())?;
        check_len("winograd forward", y, s.output_len())?;
        self.convolve(gpu, conv, &tiles, [s.c_in, s.c_out], x, weight, false, y, ws)
    }

    /// `dx` from `dy` and `weight` (see [`Conv2d::backward_data`]): the forward pass of `dy` with the flipped,
    /// transposed weight and padding `2 - pad`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_data(
        &self,
        gpu: &Gpu,
        conv: &Conv2d,
        s: &Conv2dShape,
        dy: &Tensor,
        weight: &Tensor,
        dx: &Tensor,
        ws: &WinogradWorkspace,
    ) -> Result<Vec<Dispatch>> {
        let (_, tiles) = tilings(s)?;
        check_len("winograd backward_data", dy, s.output_len())?;
        check_len("winograd backward_data", weight, s.weight_len())?;
        check_len("winograd backward_data", dx, s.input_len())?;
        self.convolve(gpu, conv, &tiles, [s.c_out, s.c_in], dy, weight, true, dx, ws)
    }

    /// `dweight` from `dy` and `x` (see [`Conv2d::backward_weight`]).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_weight(
        &self,
        gpu: &Gpu,
        conv: &Conv2d,
        s: &Conv2dShape,
        dy: &Tensor,
        x: &Tensor,
        dweight: &Tensor,
        ws: &WinogradWorkspace,
    ) -> Result<Vec<Dispatch>> {
        let (tiles, _) = tilings(s)?;
        check_len("winograd backward_weight", dy, s.output_len())?;
        check_len("winograd backward_weight", x, s.input_len())?;
        check_len("winograd backward_weight", dweight, s.weight_len())?;
        let t = tiles.tiles();
        let w = ws.m.view("winograd W", &[16, s.c_out, t])?;
        let vt = ws.v.view("winograd V^T", &[16, t, s.c_in])?;
        let du = ws.u.view("winograd dU", &[16, s.c_out, s.c_in])?;
        let mut d = vec![self.tile_transform(
            gpu,
            "winograd_output_grad_transform",
            &self.output_grad,
            &tiles,
            s.c_out,
            false,
            dy,
            &w,
        )?];
        d.push(self.tile_transform(gpu, "winograd_input_transform", &self.input, &tiles, s.c_in, true, x, &vt)?);
        d.extend(conv.gemm_batched(gpu, [16, s.c_out, t, s.c_in], &w, &vt, &du, &ws.scratch)?);
        d.push(self.weight_kernel(gpu, "winograd_weight_grad_transform", &self.weight_grad, s, false, &du, dweight)?);
        Ok(d)
    }

    /// The forward convolution of `input` (channels `[c, c_next]`) on `tiles` into `output`, with the weight
    /// as stored (`flip` false) or flipped and transposed (backward_data).
    #[allow(clippy::too_many_arguments)]
    fn convolve(
        &self,
        gpu: &Gpu,
        conv: &Conv2d,
        tiles: &WinogradTiles,
        [c, c_next]: [usize; 2],
        input: &Tensor,
        weight: &Tensor,
        flip: bool,
        output: &Tensor,
        ws: &WinogradWorkspace,
    ) -> Result<Vec<Dispatch>> {
        let t = tiles.tiles();
        let u = ws.u.view("winograd U", &[16, c_next, c])?;
        let v = ws.v.view("winograd V", &[16, c, t])?;
        let m = ws.m.view("winograd M", &[16, c_next, t])?;
        // The weight's shape (C_OUT, C_IN) is (c_next, c) forward, (c, c_next) flipped.
        let (c_out, c_in) = if flip { (c, c_next) } else { (c_next, c) };
        let shape = Conv2dShape { n: 1, c_in, h: 3, w: 3, c_out, kh: 3, kw: 3, stride: 1, pad: 0 };
        let mut d =
            vec![self.weight_kernel(gpu, "winograd_weight_transform", &self.weight, &shape, flip, weight, &u)?];
        d.push(self.tile_transform(gpu, "winograd_input_transform", &self.input, tiles, c, false, input, &v)?);
        d.extend(conv.gemm_batched(gpu, [16, c_next, c, t], &u, &v, &m, &ws.scratch)?);
        d.push(self.tile_transform(
            gpu,
            "winograd_output_transform",
            &self.output,
            tiles,
            c_next,
            false,
            &m,
            output,
        )?);
        Ok(d)
    }

    /// A transform with one invocation per (channel, tile).
    #[allow(clippy::too_many_arguments)]
    fn tile_transform(
        &self,
        gpu: &Gpu,
        name: &str,
        pipeline: &wgpu::ComputePipeline,
        tiles: &WinogradTiles,
        channels: usize,
        flag: bool,
        src: &Tensor,
        dst: &Tensor,
    ) -> Result<Dispatch> {
        let count = u32_len(name, channels * tiles.tiles())?;
        let params = WinogradParams {
            n: tiles.n as u32,
            channels: channels as u32,
            h: tiles.h as u32,
            w: tiles.w as u32,
            pad: tiles.pad as u32,
            ho: tiles.out_h() as u32,
            wo: tiles.out_w() as u32,
            tiles_h: tiles.tiles_h() as u32,
            tiles_w: tiles.tiles_w() as u32,
            tiles: tiles.tiles() as u32,
            flag: flag as u32,
            count,
            ..Default::default()
        };
        let grid = gpu.grid_1d(count as usize, ELEMENTWISE_WORKGROUP);
        gpu.dispatch(name, pipeline, &params, &[src, dst], grid)
    }

    /// A transform with one invocation per (output channel, input channel) of `s`'s weight.
    #[allow(clippy::too_many_arguments)]
    fn weight_kernel(
        &self,
        gpu: &Gpu,
        name: &str,
        pipeline: &wgpu::ComputePipeline,
        s: &Conv2dShape,
        flag: bool,
        src: &Tensor,
        dst: &Tensor,
    ) -> Result<Dispatch> {
        let count = u32_len(name, s.c_out * s.c_in)?;
        let params = WinogradParams {
            c_out: s.c_out as u32,
            c_in: s.c_in as u32,
            flag: flag as u32,
            count,
            ..Default::default()
        };
        let grid = gpu.grid_1d(count as usize, ELEMENTWISE_WORKGROUP);
        gpu.dispatch(name, pipeline, &params, &[src, dst], grid)
    }
}

/// The tilings of `s`'s forward pass (and backward_weight) and of its backward_data pass.
fn tilings(s: &Conv2dShape) -> Result<(WinogradTiles, WinogradTiles)> {
    s.validate().map_err(|e| anyhow::anyhow!("winograd: {e}"))?;
    match (WinogradTiles::forward_of(s), WinogradTiles::backward_data_of(s)) {
        (Some(f), Some(b)) => {
            for len in [planes(s.c_in.max(s.c_out), f.tiles()), planes(s.c_in.max(s.c_out), b.tiles())] {
                u32_len("winograd", len)?;
            }
            Ok((f, b))
        }
        _ => bail!("winograd: {s:?} is not a 3x3 stride-1 convolution with padding at most 2"),
    }
}

fn u32_len(name: &str, len: usize) -> Result<u32> {
    u32::try_from(len).map_err(|_| anyhow::anyhow!("{name}: {len} elements exceed 2^32 - 1"))
}
