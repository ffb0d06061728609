//! `shaders/conv2d.wgsl`: 2-D convolution (NCHW, no bias) forward and both gradients, as tiled implicit GEMM.
//! CPU twins: [`elasticface_core::nn::conv2d_forward`], [`elasticface_core::nn::conv2d_backward_data`],
//! [`elasticface_core::nn::conv2d_backward_weight`].
//!
//! Each method returns the dispatches of one operation: the GEMM kernel, followed by `conv2d_reduce_splits`
//! when the reduction is split (see [`ConvTiling`]). Splits write partial sums into a caller-provided scratch
//! tensor of at least [`Conv2d::scratch_len`] elements; one scratch can serve every layer of a network, since
//! the dispatches of a step run one after the other.

use anyhow::{anyhow, bail, Result};
use elasticface_core::nn::Conv2dShape;

use super::{check_len, Dispatch, ELEMENTWISE_WORKGROUP};
use crate::gpu::{Gpu, Tensor};

/// Mirrors `Params` in `shaders/conv2d.wgsl` (see its header for the GEMM each kernel computes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Conv2dParams {
    /// Batch size N.
    pub n: u32,
    /// Input channels.
    pub c_in: u32,
    /// Input height.
    pub h: u32,
    /// Input width.
    pub w: u32,
    /// Output channels.
    pub c_out: u32,
    /// Kernel height.
    pub kh: u32,
    /// Kernel width.
    pub kw: u32,
    /// Stride.
    pub stride: u32,
    /// Zero padding.
    pub pad: u32,
    /// Output height.
    pub ho: u32,
    /// Output width.
    pub wo: u32,
    /// GEMM rows M.
    pub m: u32,
    /// GEMM columns.
    pub cols: u32,
    /// GEMM depth K (the reduction).
    pub k: u32,
    /// Depth per split, a multiple of [`DEPTH_STEP`].
    pub chunk: u32,
    /// Number of splits of the depth.
    pub splits: u32,
    /// Row tiles, `ceil(M / BM)`.
    pub tiles_m: u32,
    /// All tiles, row tiles times column tiles.
    pub tiles: u32,
    /// Elements of the output (`M * COLS`), the size of one split's slice of the scratch.
    pub out_len: u32,
}

/// Columns of C per workgroup tile (`BN` in the shader).
pub const TILE_COLS: u32 = 64;
/// Depth step (`BK` in the shader): the depth of the A and B slices staged in workgroup memory.
pub const DEPTH_STEP: u32 = 16;

/// The most splits of one reduction: bounds the scratch at `MAX_SPLITS` times the output.
const MAX_SPLITS: u32 = 64;

/// The line of `conv2d.wgsl` that [`Conv2d::with_tiling`] rewrites to set the rows per invocation.
const TM_LINE: &str = "const TM: u32 = 4u;";

/// One of the three convolution products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvOp {
    /// `y = conv(x, weight)`: M = C_OUT, COLS = N*HO*WO, K = C_IN*KH*KW.
    Forward,
    /// `dx` from `dy` and `weight`: M = C_IN, COLS = N*H*W, K = C_OUT*KH*KW.
    BackwardData,
    /// `dweight` from `dy` and `x`: M = C_OUT, COLS = C_IN*KH*KW, K = N*HO*WO.
    BackwardWeight,
}

impl ConvOp {
    /// All three.
    pub const ALL: [ConvOp; 3] = [ConvOp::Forward, ConvOp::BackwardData, ConvOp::BackwardWeight];

    /// The kernel's entry point, which is also the core twin's name.
    pub fn name(self) -> &'static str {
        match self {
            ConvOp::Forward => "conv2d_forward",
            ConvOp::BackwardData => "conv2d_backward_data",
            ConvOp::BackwardWeight => "conv2d_backward_weight",
        }
    }

    /// The GEMM `(M, COLS, K)` this operation computes for `s`.
    pub fn gemm(self, s: &Conv2dShape) -> (usize, usize, usize) {
        let (out_pos, in_pos, taps) = (s.n * s.out_h() * s.out_w(), s.n * s.h * s.w, s.kh * s.kw);
        match self {
            ConvOp::Forward => (s.c_out, out_pos, s.c_in * taps),
            ConvOp::BackwardData => (s.c_in, in_pos, s.c_out * taps),
            ConvOp::BackwardWeight => (s.c_out, s.c_in * taps, out_pos),
        }
    }
}

/// Multiply-adds of any of the three operations, times two: `2 * N*HO*WO * C_OUT * C_IN*KH*KW` floating-point
/// operations (what a benchmark divides by the time; `backward_data` also spends work on taps that stride
/// over, see the shader).
pub fn flops(s: &Conv2dShape) -> u64 {
    2 * (s.n * s.out_h() * s.out_w()) as u64 * s.c_out as u64 * (s.c_in * s.kh * s.kw) as u64
}

/// How the products are tiled and how far a reduction is split; chosen per adapter by
/// [`ConvTiling::for_adapter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTiling {
    /// Rows of C per invocation, 4 or 8: workgroup tiles of 64 x 64 or 128 x 64 (256 invocations each).
    /// Written into the shader's `TM` before compiling.
    pub rows_per_thread: u32,
    /// Where the output gives fewer workgroups than this, the reduction is split until it gives about this many.
    pub target_workgroups: u32,
    /// Fewest depth steps ([`DEPTH_STEP`]) per split, so a split is never mostly overhead.
    pub min_steps_per_split: u32,
    /// Most workgroups along x before the tiles fold into y (the adapter's limit applies as well): `u32::MAX`
    /// in production; tests set it small to exercise the folding.
    pub max_grid_x: u32,
}

impl ConvTiling {
    /// The tiling for `gpu`'s adapter. On a CPU adapter (lavapipe: each invocation is a SIMD lane, 8 x 4 blocks
    /// spill registers) 64 x 64 tiles, and splits only until the few cores are busy. On a GPU 128 x 64 tiles
    /// (twice the FMAs per staged element) and splits until about 1024 workgroups, enough to fill a large
    /// GPU several times over.
    pub fn for_adapter(gpu: &Gpu) -> Self {
        if gpu.info.device_type == wgpu::DeviceType::Cpu {
            Self { rows_per_thread: 4, target_workgroups: 64, min_steps_per_split: 16, max_grid_x: u32::MAX }
        } else {
            Self { rows_per_thread: 8, target_workgroups: 1024, min_steps_per_split: 16, max_grid_x: u32::MAX }
        }
    }

    /// Rows of C per workgroup tile (`BM` in the shader).
    pub fn tile_rows(&self) -> u32 {
        16 * self.rows_per_thread
    }

    /// Tiles, splits and grid of `op` on `s` (grid folded under `max_workgroups_per_dim`).
    ///
    /// Errors: an invalid shape, or a tensor of more than `u32::MAX` elements (the shader indexes with `u32`).
    pub fn plan(&self, op: ConvOp, s: &Conv2dShape, max_workgroups_per_dim: u32) -> Result<ConvPlan> {
        s.validate().map_err(|e| anyhow!("{}: {e}", op.name()))?;
        let (m, cols, k) = op.gemm(s);
        let fits = |n: usize| u32::try_from(n).ok();
        let too_large = || anyhow!("{}: {s:?} has a tensor of more than 2^32 elements", op.name());
        for len in [s.input_len(), s.weight_len(), s.output_len()] {
            fits(len).ok_or_else(too_large)?;
        }
        let (m, cols, k) = (m as u32, cols as u32, k as u32);
        let tiles_m = m.div_ceil(self.tile_rows());
        let tiles = fits(tiles_m as usize * cols.div_ceil(TILE_COLS) as usize).ok_or_else(too_large)?;
        // Split the depth only where the output alone gives too few workgroups, and never into splits of fewer
        // than `min_steps_per_split` steps; the chunk is a whole number of steps.
        let steps = k.div_ceil(DEPTH_STEP);
        let wanted = self.target_workgroups.div_ceil(tiles).min(steps / self.min_steps_per_split);
        let chunk = steps.div_ceil(wanted.clamp(1, MAX_SPLITS)) * DEPTH_STEP;
        let splits = k.div_ceil(chunk);
        let out_len = m * cols;
        if splits > 1 {
            fits(splits as usize * out_len as usize).ok_or_else(too_large)?;
        }
        let x = tiles.min(max_workgroups_per_dim).min(self.max_grid_x.max(1));
        let params = Conv2dParams {
            n: s.n as u32,
            c_in: s.c_in as u32,
            h: s.h as u32,
            w: s.w as u32,
            c_out: s.c_out as u32,
            kh: s.kh as u32,
            kw: s.kw as u32,
            stride: s.stride as u32,
            pad: s.pad as u32,
            ho: s.out_h() as u32,
            wo: s.out_w() as u32,
            m,
            cols,
            k,
            chunk,
            splits,
            tiles_m,
            tiles,
            out_len,
        };
        Ok(ConvPlan { params, grid: [x, tiles.div_ceil(x), splits] })
    }
}

/// How one product is launched: tiles, splits and the workgroup grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvPlan {
    /// The kernel's parameters.
    pub params: Conv2dParams,
    /// Workgroups of the GEMM kernel: tiles folded into (x, y), splits in z.
    pub grid: [u32; 3],
}

impl ConvPlan {
    /// Scratch elements this product needs: `splits * M * COLS`, or 0 without splits.
    pub fn scratch_len(&self) -> usize {
        if self.params.splits > 1 {
            self.params.splits as usize * self.params.out_len as usize
        } else {
            0
        }
    }
}

/// The convolution kernels' pipelines, compiled once with one [`ConvTiling`].
pub struct Conv2d {
    tiling: ConvTiling,
    forward: wgpu::ComputePipeline,
    backward_data: wgpu::ComputePipeline,
    backward_weight: wgpu::ComputePipeline,
    reduce: wgpu::ComputePipeline,
}

impl Conv2d {
    /// Compiles the kernels with the adapter's tiling ([`ConvTiling::for_adapter`]).
    pub fn new(gpu: &Gpu) -> Self {
        Self::with_tiling(gpu, ConvTiling::for_adapter(gpu))
    }

    /// Compiles the kernels with `tiling` (tests and benchmarks compare tilings).
    ///
    /// Panics if `tiling.rows_per_thread` is not 4 or 8, or `min_steps_per_split` is 0.
    pub fn with_tiling(gpu: &Gpu, tiling: ConvTiling) -> Self {
        assert!(
            matches!(tiling.rows_per_thread, 4 | 8),
            "rows_per_thread must be 4 or 8, not {}",
            tiling.rows_per_thread
        );
        assert!(tiling.min_steps_per_split > 0, "min_steps_per_split must be positive");
        let source = include_str!("../../../../shaders/conv2d.wgsl");
        assert!(source.contains(TM_LINE), "conv2d.wgsl no longer declares `{TM_LINE}`");
        let source = source.replace(TM_LINE, &format!("const TM: u32 = {}u;", tiling.rows_per_thread));
        let m = gpu.shader("conv2d.wgsl", &source);
        Self {
            tiling,
            forward: gpu.pipeline("conv2d_forward", &m, "conv2d_forward"),
            backward_data: gpu.pipeline("conv2d_backward_data", &m, "conv2d_backward_data"),
            backward_weight: gpu.pipeline("conv2d_backward_weight", &m, "conv2d_backward_weight"),
            reduce: gpu.pipeline("conv2d_reduce_splits", &m, "conv2d_reduce_splits"),
        }
    }

    /// The tiling these pipelines were compiled with.
    pub fn tiling(&self) -> ConvTiling {
        self.tiling
    }

    /// Tiles, splits and grid of `op` on `s` on `gpu` ([`ConvTiling::plan`] with the adapter's grid limit).
    pub fn plan(&self, gpu: &Gpu, op: ConvOp, s: &Conv2dShape) -> Result<ConvPlan> {
        self.tiling.plan(op, s, gpu.caps.max_workgroups_per_dim)
    }

    /// Scratch elements any of the three products of `s` needs (0 when none splits). Errors as [`Self::plan`].
    pub fn scratch_len(&self, gpu: &Gpu, s: &Conv2dShape) -> Result<usize> {
        let mut len = 0;
        for op in ConvOp::ALL {
            len = len.max(self.plan(gpu, op, s)?.scratch_len());
        }
        Ok(len)
    }

    /// `y = conv(x, weight)`: `x (N, C_IN, H, W)`, `weight (C_OUT, C_IN, KH, KW)`, `y (N, C_OUT, HO, WO)`.
    /// `scratch`: at least [`Self::scratch_len`] elements, not one of the other tensors.
    pub fn forward(
        &self,
        gpu: &Gpu,
        s: &Conv2dShape,
        x: &Tensor,
        weight: &Tensor,
        y: &Tensor,
        scratch: &Tensor,
    ) -> Result<Vec<Dispatch>> {
        let op = ConvOp::Forward;
        let plan = self.plan(gpu, op, s)?;
        check_len(op.name(), x, s.input_len())?;
        check_len(op.name(), weight, s.weight_len())?;
        check_len(op.name(), y, s.output_len())?;
        self.dispatches(gpu, op, &self.forward, &plan, [x, weight], y, scratch)
    }

    /// `dx` from `dy` and `weight`: `dy (N, C_OUT, HO, WO)`, `weight (C_OUT, C_IN, KH, KW)`, `dx (N, C_IN, H, W)`
    /// (overwritten). `scratch` as in [`Self::forward`].
    pub fn backward_data(
        &self,
        gpu: &Gpu,
        s: &Conv2dShape,
        dy: &Tensor,
        weight: &Tensor,
        dx: &Tensor,
        scratch: &Tensor,
    ) -> Result<Vec<Dispatch>> {
        let op = ConvOp::BackwardData;
        let plan = self.plan(gpu, op, s)?;
        check_len(op.name(), dy, s.output_len())?;
        check_len(op.name(), weight, s.weight_len())?;
        check_len(op.name(), dx, s.input_len())?;
        self.dispatches(gpu, op, &self.backward_data, &plan, [dy, weight], dx, scratch)
    }

    /// `dweight` from `dy` and `x`: `dy (N, C_OUT, HO, WO)`, `x (N, C_IN, H, W)`, `dweight (C_OUT, C_IN, KH, KW)`
    /// (overwritten). `scratch` as in [`Self::forward`].
    pub fn backward_weight(
        &self,
        gpu: &Gpu,
        s: &Conv2dShape,
        dy: &Tensor,
        x: &Tensor,
        dweight: &Tensor,
        scratch: &Tensor,
    ) -> Result<Vec<Dispatch>> {
        let op = ConvOp::BackwardWeight;
        let plan = self.plan(gpu, op, s)?;
        check_len(op.name(), dy, s.output_len())?;
        check_len(op.name(), x, s.input_len())?;
        check_len(op.name(), dweight, s.weight_len())?;
        self.dispatches(gpu, op, &self.backward_weight, &plan, [dy, x], dweight, scratch)
    }

    /// The GEMM dispatch of `plan` reading `inputs` (bindings 1, 2), writing `out` (binding 3) directly or, with
    /// splits, writing `scratch` and then reducing it into `out`.
    #[allow(clippy::too_many_arguments)]
    fn dispatches(
        &self,
        gpu: &Gpu,
        op: ConvOp,
        pipeline: &wgpu::ComputePipeline,
        plan: &ConvPlan,
        inputs: [&Tensor; 2],
        out: &Tensor,
        scratch: &Tensor,
    ) -> Result<Vec<Dispatch>> {
        let name = op.name();
        let [a, b] = inputs;
        if plan.params.splits == 1 {
            return Ok(vec![gpu.dispatch(name, pipeline, &plan.params, &[a, b, out], plan.grid)?]);
        }
        let needed = plan.scratch_len();
        if scratch.len < needed {
            bail!(
                "{name}: {} has {} elements, {} splits need {needed}",
                scratch.label,
                scratch.len,
                plan.params.splits
            );
        }
        if [a, b, out].iter().any(|t| t.buffer == scratch.buffer) {
            bail!("{name}: {} is the scratch and also an operand", scratch.label);
        }
        let gemm = gpu.dispatch(name, pipeline, &plan.params, &[a, b, scratch], plan.grid)?;
        let grid = gpu.grid_1d(plan.params.out_len as usize, ELEMENTWISE_WORKGROUP);
        let reduce = gpu.dispatch("conv2d_reduce_splits", &self.reduce, &plan.params, &[scratch, out], grid)?;
        Ok(vec![gemm, reduce])
    }
}
