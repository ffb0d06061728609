//! `shaders/conv2d.wgsl`: 2-D convolution (NCHW, no bias) forward and both gradients, as tiled implicit GEMM, and
//! the batched matrix product of the Winograd convolutions ([`Conv2d::gemm_batched`]).
//! CPU twins: [`elasticface_core::nn::conv2d_forward`], [`elasticface_core::nn::conv2d_backward_data`],
//! [`elasticface_core::nn::conv2d_backward_weight`], [`elasticface_core::nn::gemm_batched`].
//!
//! Each method returns the dispatches of one operation: the GEMM kernel, followed by `conv2d_reduce_splits`
//! when the reduction is split (see [`ConvTiling`]). Splits write partial sums into a caller-provided scratch
//! tensor of at least [`Conv2d::scratch_len`] elements; one scratch can serve every layer of a network, since
//! the dispatches of a step run one after the other.
//!
//! Two arithmetics ([`ConvPrecision`]): f32 ([`Conv2d::new`]), and mixed ([`Conv2d::mixed`]), whose module is
//! `conv2d.wgsl` with the tile arithmetic of `shaders/conv2d_coop.wgsl.in` (f16 operands, f32 accumulation on
//! cooperative matrices) put in by `conv2d_compose.rs`; the index maps, bounds, splits and epilogues are shared.
//! The mixed kernels store the activations (`x` and the forward's `y`), their gradients (`dy`, and backward_data's
//! `dx`) and the weight of the forward and backward_data passes as f16 ([`ConvPrecision::activations`]); their twins
//! are the same core functions applied to operands rounded by [`elasticface_core::nn::round_to_f16`], with the
//! forward's and backward_data's outputs rounded by it too (`gemm_batched` reads f16 operands there and writes f32).
//! Without cooperative matrices, the mixed arithmetic can be emulated (`compose_emulated`: the f32 tiles with every
//! operand rounded to f16 as it enters them), so that the mixed-precision trainer is tested on any adapter; and the
//! cooperative-matrix layout itself can run with its fragment operations as plain loops
//! ([`Conv2d::mixed_fragments_as_loops`]), so that it is tested there too.
//!
//! Tiles: any [`TileShape`] (64 or 128 rows and columns, depth 16 or 32, one or two buffers) that fits the
//! adapter's workgroup memory, chosen by [`ConvTiling`]; `conv2d_compose.rs` writes the shape into the shader
//! before compiling.

use anyhow::{anyhow, bail, Result};
use elasticface_core::nn::Conv2dShape;

use super::{check_len, Dispatch, ELEMENTWISE_WORKGROUP};
use crate::gpu::{Elem, Gpu, Tensor};

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
    /// Depth per split, a multiple of the tile's depth step.
    pub chunk: u32,
    /// Number of splits of the depth.
    pub splits: u32,
    /// Row tiles, `ceil(M / BM)`.
    pub tiles_m: u32,
    /// All tiles, row tiles times column tiles.
    pub tiles: u32,
    /// Elements of the output tensor, the size of one split's slice of the scratch.
    pub out_len: u32,
    /// `backward_data`'s stride phase (0 for the other kernels): first input row of the phase.
    pub in_h0: u32,
    /// First input column of the phase.
    pub in_w0: u32,
    /// Input rows of the phase.
    pub ah: u32,
    /// Input columns of the phase.
    pub aw: u32,
    /// First kernel row of the phase.
    pub tap_h0: u32,
    /// First kernel column of the phase.
    pub tap_w0: u32,
    /// Kernel rows of the phase.
    pub taps_h: u32,
    /// Kernel columns of the phase.
    pub taps_w: u32,
    /// Output row of (phase row 0, phase tap 0).
    pub shift_h: u32,
    /// Output column of (phase column 0, phase tap 0).
    pub shift_w: u32,
    /// `backward_data`: the first element of the phase's matrix in the weight as [`Conv2d::phase_weights`] lays it
    /// out (0 for the other kernels).
    pub weight_offset: u32,
}

/// One dimension of a stride phase of `backward_data`: the input positions `in0 + a*stride` (`a < count`) with
/// `(position + pad) % stride == r`, the taps `r + t*stride` (`t < taps`) that reach them, and `shift`, the
/// output position of `a = 0, t = 0`, so that position `a` and tap `t` meet at output `a + shift - t`.
struct PhaseDim {
    in0: usize,
    count: usize,
    taps: usize,
    shift: usize,
}

fn phase_dim(r: usize, size: usize, k: usize, stride: usize, pad: usize) -> PhaseDim {
    let in0 = (r + stride - pad % stride) % stride;
    let count = if in0 < size { (size - in0).div_ceil(stride) } else { 0 };
    let taps = if r < k { (k - r).div_ceil(stride) } else { 0 };
    // in0 + pad = r (mod stride) and in0 + pad >= r: an exact, non-negative quotient.
    PhaseDim { in0, count, taps, shift: (in0 + pad - r) / stride }
}

/// `shaders/conv2d.wgsl`.
const SOURCE: &str = include_str!("../../../../shaders/conv2d.wgsl");

/// The most splits of one reduction: bounds the scratch at `MAX_SPLITS` times the output.
const MAX_SPLITS: u32 = 64;

pub(super) mod compose {
    include!("conv2d_compose.rs");
}
pub use compose::{FragmentSide, TileShape};

/// The label and WGSL text of the convolution module in `precision` on tiles of `shape`: the f32 tile arithmetic
/// (on f16-rounded operands in mixed precision) without `fragments`, else the cooperative-matrix layout with them.
/// The build script validates these compositions (and fails the build if one no longer applies); a test
/// translates them for every backend (`backends.rs`).
pub(super) fn module_source(
    precision: ConvPrecision,
    fragments: Option<(compose::Fragments, FragmentSide)>,
    shape: TileShape,
) -> (String, Result<String, String>) {
    let (label, source) = match (precision, fragments) {
        (ConvPrecision::F32, _) => (format!("conv2d.wgsl ({shape})"), compose::compose_f32(SOURCE, shape)),
        (ConvPrecision::Mixed, None) => {
            (format!("conv2d.wgsl (f16 operands, {shape})"), compose::compose_emulated(SOURCE, shape))
        }
        (ConvPrecision::Mixed, Some((fragments, side))) => {
            let fragment = include_str!("../../../../shaders/conv2d_coop.wgsl.in");
            let source = compose::compose_coop(SOURCE, fragment, shape, fragments, side);
            (format!("conv2d.wgsl (mixed precision, {shape}, {side} fragments, {fragments:?})"), source)
        }
    };
    let source = match precision {
        ConvPrecision::F32 => source,
        ConvPrecision::Mixed => source.and_then(|s| compose::act_f16(&s)),
    };
    (label, source)
}

/// Arithmetic of the products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvPrecision {
    /// f32 operands, f32 fused multiply-adds.
    F32,
    /// Operands rounded to f16, products accumulated in f32 on cooperative matrices (tensor cores):
    /// `shaders/conv2d_coop.wgsl.in`; activations stored as f16 ([`ConvPrecision::activations`]). Needs f16 in
    /// shaders and [`Capabilities::cooperative_matrix`](crate::gpu::Capabilities), or
    /// their emulation ([`Capabilities::emulated_tensor_cores`](crate::gpu::Capabilities)).
    Mixed,
}

impl ConvPrecision {
    /// How the convolutions in this precision store the activations they read and write, and the activations'
    /// gradients: f32, or f16 in mixed precision (as PyTorch's autocast keeps a convolution's output and its
    /// gradient). Weights and their gradients stay f32.
    pub fn activations(self) -> Elem {
        match self {
            ConvPrecision::F32 => Elem::F32,
            ConvPrecision::Mixed => Elem::F16,
        }
    }
}

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

    /// Elements of the two inputs and the output of this operation on `s`, in argument order: forward
    /// `[x, weight, y]`, backward_data `[dy, weight, dx]`, backward_weight `[dy, x, dweight]`.
    pub fn lens(self, s: &Conv2dShape) -> [usize; 3] {
        match self {
            ConvOp::Forward => [s.input_len(), s.weight_len(), s.output_len()],
            ConvOp::BackwardData => [s.output_len(), s.weight_len(), s.input_len()],
            ConvOp::BackwardWeight => [s.output_len(), s.input_len(), s.weight_len()],
        }
    }

    /// The GEMM `(M, COLS, K)` this operation computes for `s` (`backward_data` runs it as one product per
    /// stride phase, together this size less the taps that stride over).
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
/// operations (what a benchmark divides by the time).
pub fn flops(s: &Conv2dShape) -> u64 {
    2 * (s.n * s.out_h() * s.out_w()) as u64 * s.c_out as u64 * (s.c_in * s.kh * s.kw) as u64
}

/// How the products are tiled and how far a reduction is split; chosen per adapter by
/// [`ConvTiling::for_adapter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTiling {
    /// The workgroup tile (256 invocations each), written into the shader's `TM`, `TN` and `BK` before
    /// compiling.
    pub tile: TileShape,
    /// With 128-row tiles: products of at most 64 rows (M) run on 64-row tiles instead ([`TileShape::short`]),
    /// from a second compilation; a 128-row tile would spend half its multiply-adds on rows past M (the
    /// 64-channel layers of an iResNet).
    pub short_tiles: bool,
    /// Where the output gives fewer workgroups than this, the reduction is split until it gives about this many.
    pub target_workgroups: u32,
    /// Fewest depth steps (the tile's depth) per split (at least 1), so a split is never mostly overhead.
    pub min_steps_per_split: u32,
    /// Most workgroups along x before the tiles fold into y (the adapter's limit applies as well): `u32::MAX`
    /// in production; tests set it small to exercise the folding.
    pub max_grid_x: u32,
}

impl ConvTiling {
    /// The tiling for `gpu`'s adapter. On a CPU adapter (lavapipe: each invocation is a SIMD lane, 8 x 4 blocks
    /// spill registers) 64 x 64 x 16 tiles, and splits only until the few cores are busy. On a GPU 128 x 64 x 16
    /// tiles (twice the FMAs per staged element), 64-row tiles for products of at most 64 rows (the 64-channel
    /// layers ran at half the rate of the others on an H200: 17 against 33 TFLOP/s), and splits until about
    /// 1024 workgroups, enough to fill a large GPU several times over. (The f32 figures of an H200 were measured
    /// with 128 x 64 x 16; the other shapes are there for `bench --tune` to measure.)
    pub fn for_adapter(gpu: &Gpu) -> Self {
        if gpu.info.device_type == wgpu::DeviceType::Cpu {
            Self {
                tile: TileShape::new(64, 64, 16),
                short_tiles: false,
                target_workgroups: 64,
                min_steps_per_split: 16,
                max_grid_x: u32::MAX,
            }
        } else {
            Self {
                tile: TileShape::new(128, 64, 16),
                short_tiles: true,
                target_workgroups: 1024,
                min_steps_per_split: 16,
                max_grid_x: u32::MAX,
            }
        }
    }

    /// The tile of a product of `m` rows: `tile`, or its 64-row form for short products (see
    /// [`Self::short_tiles`]).
    pub fn tile_for(&self, m: usize) -> TileShape {
        if self.short_tiles && m <= 64 {
            self.tile.short()
        } else {
            self.tile
        }
    }

    /// Tiles, splits and grids of `op` on `s` (grids folded under `max_workgroups_per_dim`).
    ///
    /// Errors: an invalid shape, or a tensor of more than `u32::MAX` elements (the shader indexes with `u32`).
    pub fn plan(&self, op: ConvOp, s: &Conv2dShape, max_workgroups_per_dim: u32) -> Result<ConvPlan> {
        s.validate().map_err(|e| anyhow!("{}: {e}", op.name()))?;
        let too_large = || anyhow!("{}: {s:?} has a tensor of more than 2^32 - 1 elements", op.name());
        let fits = |n: usize| u32::try_from(n).map_err(|_| too_large());
        for len in [s.input_len(), s.weight_len(), s.output_len()] {
            fits(len)?;
        }
        let (ho, wo, taps) = (s.out_h(), s.out_w(), s.kh * s.kw);
        let base = Conv2dParams {
            n: s.n as u32,
            c_in: s.c_in as u32,
            h: s.h as u32,
            w: s.w as u32,
            c_out: s.c_out as u32,
            kh: s.kh as u32,
            kw: s.kw as u32,
            stride: s.stride as u32,
            pad: s.pad as u32,
            ho: ho as u32,
            wo: wo as u32,
            ..Default::default()
        };
        // The products as (M, COLS, K) with their parameters: one, or one per stride phase (rh, rw) of
        // backward_data that has input positions. All sizes are below the tensor sizes checked above.
        let gemm =
            |m: usize, cols: usize, k: usize| Conv2dParams { m: m as u32, cols: cols as u32, k: k as u32, ..base };
        let gemms = match op {
            ConvOp::Forward => vec![gemm(s.c_out, s.n * ho * wo, s.c_in * taps)],
            ConvOp::BackwardWeight => vec![gemm(s.c_out, s.c_in * taps, s.n * ho * wo)],
            ConvOp::BackwardData => {
                let mut phases = Vec::new();
                // Where each phase's matrix begins in the phase-major weight: the phases in the same order, those
                // without input positions included (their taps are laid out too).
                let mut weight_offset = 0;
                for rh in 0..s.stride {
                    let ph = phase_dim(rh, s.h, s.kh, s.stride, s.pad);
                    for rw in 0..s.stride {
                        let pw = phase_dim(rw, s.w, s.kw, s.stride, s.pad);
                        let offset = weight_offset as u32;
                        weight_offset += s.c_in * s.c_out * ph.taps * pw.taps;
                        if ph.count * pw.count == 0 {
                            continue;
                        }
                        phases.push(Conv2dParams {
                            weight_offset: offset,
                            in_h0: ph.in0 as u32,
                            in_w0: pw.in0 as u32,
                            ah: ph.count as u32,
                            aw: pw.count as u32,
                            tap_h0: rh as u32,
                            tap_w0: rw as u32,
                            taps_h: ph.taps as u32,
                            taps_w: pw.taps as u32,
                            shift_h: ph.shift as u32,
                            shift_w: pw.shift as u32,
                            ..gemm(s.c_in, s.n * ph.count * pw.count, s.c_out * ph.taps * pw.taps)
                        });
                    }
                }
                phases
            }
        };
        let out_len = fits(op.lens(s)[2])?;
        self.split(gemms, 1, out_len, max_workgroups_per_dim).map_err(|_| too_large())
    }

    /// Tiles, splits and grid of `gemm_batched`: `batch` products of `(m x k) * (k x cols)`.
    ///
    /// Errors: an operand of more than `u32::MAX` elements.
    pub fn plan_batched(
        &self,
        batch: usize,
        m: usize,
        k: usize,
        cols: usize,
        max_workgroups_per_dim: u32,
    ) -> Result<ConvPlan> {
        let too_large = || anyhow!("gemm_batched: {batch} x ({m} x {k}) * ({k} x {cols}) exceeds 2^32 - 1 elements");
        let fits = |n: Option<usize>| n.and_then(|n| u32::try_from(n).ok()).ok_or_else(too_large);
        let dims = |a: usize, b: usize| batch.checked_mul(a).and_then(|n| n.checked_mul(b));
        fits(dims(m, k))?;
        fits(dims(k, cols))?;
        let out_len = fits(dims(m, cols))?;
        let params =
            Conv2dParams { n: batch as u32, m: m as u32, cols: cols as u32, k: k as u32, ..Default::default() };
        self.split(vec![params], batch as u32, out_len, max_workgroups_per_dim).map_err(|_| too_large())
    }

    /// Tiles, splits of the depth and grids of `gemms` (run `batch` times each, every one writing an `out_len`
    /// slice). Errors when a count exceeds `u32`.
    fn split(
        &self,
        gemms: Vec<Conv2dParams>,
        batch: u32,
        out_len: u32,
        max_workgroups_per_dim: u32,
    ) -> Result<ConvPlan> {
        let fits = |n: usize| u32::try_from(n).map_err(|_| anyhow!("more than 2^32 - 1"));
        // Split the depth only where the output alone gives too few workgroups, and never into splits of fewer
        // than `min_steps_per_split` steps; the chunk is a whole number of steps. Phases share one chunk, sized
        // for the largest, so that every phase writes every slice and one reduction pass adds them.
        let tile = self.tile_for(gemms[0].m as usize);
        let tiles_m = gemms[0].m.div_ceil(tile.rows);
        let mut tiles = Vec::with_capacity(gemms.len());
        for g in &gemms {
            tiles.push(fits(tiles_m as usize * g.cols.div_ceil(tile.cols) as usize)?);
        }
        let (most_tiles, deepest) =
            (tiles.iter().max().copied().unwrap_or(1), gemms.iter().map(|g| g.k).max().unwrap_or(0));
        let steps = deepest.div_ceil(tile.depth);
        let workgroups = most_tiles.max(1).saturating_mul(batch.max(1));
        let wanted = self.target_workgroups.div_ceil(workgroups).min(steps / self.min_steps_per_split.max(1));
        let chunk = steps.div_ceil(wanted.clamp(1, MAX_SPLITS)).max(1) * tile.depth;
        let splits = deepest.div_ceil(chunk).max(1);
        if splits > 1 {
            fits(splits as usize * out_len as usize)?;
        }
        let max_x = max_workgroups_per_dim.min(self.max_grid_x).max(1);
        let gemms = gemms
            .into_iter()
            .zip(tiles)
            .map(|(g, tiles)| {
                let x = tiles.min(max_x);
                let params = Conv2dParams { chunk, splits, tiles_m, tiles, out_len, ..g };
                (params, [x, tiles.div_ceil(x), splits * batch.max(1)])
            })
            .collect();
        Ok(ConvPlan { gemms, tile, splits, out_len })
    }
}

/// The convolution tile `train` and `bench` run with (`--conv-tile`): the adapter's
/// ([`ConvTiling::for_adapter`]), or a given shape with the adapter's other choices. Written `auto`,
/// `ROWSxCOLSxDEPTH` or `ROWSxCOLSxDEPTHx2`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ConvTileChoice {
    /// The adapter's tile.
    #[default]
    Auto,
    /// This tile (with 64-row tiles for products of at most 64 rows where the adapter's tiling has them).
    Shape(TileShape),
}

impl ConvTileChoice {
    /// The tiling this choice gives on `gpu`.
    pub fn tiling(self, gpu: &Gpu) -> ConvTiling {
        let adapter = ConvTiling::for_adapter(gpu);
        match self {
            ConvTileChoice::Auto => adapter,
            ConvTileChoice::Shape(tile) => ConvTiling { tile, ..adapter },
        }
    }
}

impl std::str::FromStr for ConvTileChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(ConvTileChoice::Auto),
            shape => shape.parse().map(ConvTileChoice::Shape).map_err(|e| format!("{e} (or `auto`)")),
        }
    }
}

impl std::fmt::Display for ConvTileChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConvTileChoice::Auto => f.write_str("auto"),
            ConvTileChoice::Shape(tile) => write!(f, "{tile}"),
        }
    }
}

serde_as_text!(ConvTileChoice);

/// How one operation is launched: its products, tiles, splits and workgroup grids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvPlan {
    /// The GEMM dispatches: one, or for `backward_data` one per stride phase with input positions (`STRIDE^2`
    /// at most); each with its parameters and grid (tiles folded into x and y, splits in z).
    pub gemms: Vec<(Conv2dParams, [u32; 3])>,
    /// The tile of the pipelines that run them.
    pub tile: TileShape,
    /// Splits of the reduction, the same in every product.
    pub splits: u32,
    /// Elements of the output tensor.
    pub out_len: u32,
}

impl ConvPlan {
    /// Scratch elements this operation needs: `splits` times the output, or 0 without splits.
    pub fn scratch_len(&self) -> usize {
        if self.splits > 1 {
            self.splits as usize * self.out_len as usize
        } else {
            0
        }
    }
}

/// The kernels of one compiled module (cloned as handles: the compiled pipelines are shared).
#[derive(Clone)]
struct Pipelines {
    forward: wgpu::ComputePipeline,
    backward_data: wgpu::ComputePipeline,
    backward_weight: wgpu::ComputePipeline,
    gemm_batched: wgpu::ComputePipeline,
    /// The `_vec4` twins ([`Gemm::vec4`]).
    forward_vec4: wgpu::ComputePipeline,
    backward_data_vec4: wgpu::ComputePipeline,
    backward_weight_vec4: wgpu::ComputePipeline,
    gemm_batched_vec4: wgpu::ComputePipeline,
    /// The weight laid out for `backward_data`.
    phase_weights: wgpu::ComputePipeline,
    reduce: wgpu::ComputePipeline,
    /// The reduction into the output of `conv2d_forward` or `conv2d_backward_data`, stored as the activations
    /// are.
    reduce_act: wgpu::ComputePipeline,
}

impl Pipelines {
    fn compile(gpu: &Gpu, label: &str, source: &str) -> Self {
        let m = gpu.shader(label, source);
        let p = |op, vec4| {
            let name = Gemm { op, vec4 }.name();
            gpu.pipeline(name, &m, name)
        };
        Self {
            forward: p(Some(ConvOp::Forward), false),
            backward_data: p(Some(ConvOp::BackwardData), false),
            backward_weight: p(Some(ConvOp::BackwardWeight), false),
            gemm_batched: p(None, false),
            forward_vec4: p(Some(ConvOp::Forward), true),
            backward_data_vec4: p(Some(ConvOp::BackwardData), true),
            backward_weight_vec4: p(Some(ConvOp::BackwardWeight), true),
            gemm_batched_vec4: p(None, true),
            phase_weights: gpu.pipeline("conv2d_phase_weights", &m, "conv2d_phase_weights"),
            reduce: gpu.pipeline("conv2d_reduce_splits", &m, "conv2d_reduce_splits"),
            reduce_act: gpu.pipeline("conv2d_reduce_splits_act", &m, "conv2d_reduce_splits_act"),
        }
    }

    fn gemm(&self, kernel: Gemm) -> &wgpu::ComputePipeline {
        match (kernel.op, kernel.vec4) {
            (Some(ConvOp::Forward), false) => &self.forward,
            (Some(ConvOp::Forward), true) => &self.forward_vec4,
            (Some(ConvOp::BackwardData), false) => &self.backward_data,
            (Some(ConvOp::BackwardData), true) => &self.backward_data_vec4,
            (Some(ConvOp::BackwardWeight), false) => &self.backward_weight,
            (Some(ConvOp::BackwardWeight), true) => &self.backward_weight_vec4,
            (None, false) => &self.gemm_batched,
            (None, true) => &self.gemm_batched_vec4,
        }
    }
}

/// A tiled kernel of `conv2d.wgsl`: a convolution, or `gemm_batched` (`op` `None`).
#[derive(Clone, Copy)]
struct Gemm {
    op: Option<ConvOp>,
    /// Its `_vec4` twin, which loads an operand that is contiguous along the depth as vec4s (both of
    /// `gemm_batched`'s, the weight of the forward pass and, laid out by phase, of backward_data, the weight
    /// gradient's dy): the same sums in the same order. Only where every run of that operand along the depth starts
    /// on a vec4.
    vec4: bool,
}

impl Gemm {
    /// The kernel of `op` on `s`, with the vec4 loads where the sizes allow them: forward's weight rows of
    /// `C_IN*KH*KW`, backward_data's phase matrices of rows of `C_OUT*TH*TW` (all multiples of 4, and so are the
    /// phases' offsets, when `C_OUT` is), the weight gradient's runs of dy of `HO*WO` (the kernels index from the
    /// start of the tensor's binding, so only the sizes matter).
    fn conv(op: ConvOp, s: &Conv2dShape) -> Self {
        let vec4 = match op {
            ConvOp::Forward => (s.c_in * s.kh * s.kw).is_multiple_of(4),
            ConvOp::BackwardData => s.c_out.is_multiple_of(4),
            ConvOp::BackwardWeight => (s.out_h() * s.out_w()).is_multiple_of(4),
        };
        Self { op: Some(op), vec4 }
    }

    /// `gemm_batched` of depth `k` and `cols` columns, with the vec4 loads where both are multiples of 4.
    fn batched(k: usize, cols: usize) -> Self {
        Self { op: None, vec4: k.is_multiple_of(4) && cols.is_multiple_of(4) }
    }

    /// Its entry point.
    fn name(self) -> &'static str {
        match (self.op, self.vec4) {
            (Some(ConvOp::Forward), true) => "conv2d_forward_vec4",
            (Some(ConvOp::BackwardData), true) => "conv2d_backward_data_vec4",
            (Some(ConvOp::BackwardWeight), true) => "conv2d_backward_weight_vec4",
            (Some(op), _) => op.name(),
            (None, false) => "gemm_batched",
            (None, true) => "gemm_batched_vec4",
        }
    }
}

/// The convolution kernels' pipelines, compiled once with one [`ConvTiling`].
#[derive(Clone)]
pub struct Conv2d {
    tiling: ConvTiling,
    precision: ConvPrecision,
    /// Compiled with `tiling.tile`.
    tall: Pipelines,
    /// Compiled with its 64-row form, for short products ([`ConvTiling::short_tiles`]).
    short: Option<Pipelines>,
}

impl Conv2d {
    /// The f32 kernels with the adapter's tiling ([`ConvTiling::for_adapter`]).
    pub fn new(gpu: &Gpu) -> Self {
        Self::build(gpu, ConvPrecision::F32, ConvTiling::for_adapter(gpu)).expect("the adapter's tiling fits it")
    }

    /// The mixed-precision kernels (f16 operands, f32 accumulation on cooperative matrices) with the adapter's
    /// tiling ([`ConvTiling::for_adapter`]). Errors as [`Self::build`].
    pub fn mixed(gpu: &Gpu) -> Result<Self> {
        Self::build(gpu, ConvPrecision::Mixed, ConvTiling::for_adapter(gpu))
    }

    /// Compiles the kernels in `precision` with `tiling` (tests and benchmarks compare tilings). Mixed precision
    /// runs on cooperative matrices; where the adapter has none but
    /// [`Capabilities::emulated_tensor_cores`](crate::gpu::Capabilities) is on, the same tiles take the same
    /// f16-rounded operands and multiply them with the f32 tile arithmetic (`compose_emulated`).
    ///
    /// Errors: a tile shape the kernels are not written for, tiles larger than the adapter's workgroup memory, or
    /// mixed precision on an adapter with neither cooperative matrices nor their emulation.
    pub fn build(gpu: &Gpu, precision: ConvPrecision, tiling: ConvTiling) -> Result<Self> {
        let coop = precision == ConvPrecision::Mixed && !gpu.caps.emulated_tensor_cores;
        // The adapter's fragments; an adapter without any is refused in `compile`, naming what it lacks.
        let side = gpu.caps.cooperative_matrix.unwrap_or(FragmentSide::Sixteen);
        Self::compile(gpu, precision, tiling, coop.then_some((compose::Fragments::Cooperative, side)))
    }

    /// The mixed-precision kernels as [`Self::build`] composes them for cooperative matrices with fragments of
    /// `side`, with each fragment operation done by plain loops instead (each of a subgroup's 32 invocations
    /// computing 1/32 of an accumulator from the staged tiles): slower, for testing the cooperative-matrix layout
    /// generated for `tiling`'s tile and `side` (its fragment offsets, staging and epilogue) on an adapter without
    /// cooperative matrices (of that side). Errors as [`Self::build`], or where the adapter has no f16 in shaders.
    pub fn mixed_fragments_as_loops(gpu: &Gpu, tiling: ConvTiling, side: FragmentSide) -> Result<Self> {
        Self::compile(gpu, ConvPrecision::Mixed, tiling, Some((compose::Fragments::Loops, side)))
    }

    /// [`Self::build`]: the f32 tile arithmetic (on f16-rounded operands in mixed precision) without
    /// `fragments`, else the cooperative-matrix layout with them (and fragments of the side given).
    fn compile(
        gpu: &Gpu,
        precision: ConvPrecision,
        tiling: ConvTiling,
        fragments: Option<(compose::Fragments, FragmentSide)>,
    ) -> Result<Self> {
        let caps = &gpu.caps;
        tiling.tile.validate().map_err(|e| anyhow!(e))?;
        let coop = fragments.is_some();
        if precision == ConvPrecision::Mixed && !caps.f16 {
            bail!("{} has no f16 in shaders: mixed precision stores its activations in f16", gpu.info.name);
        }
        if let Some((compose::Fragments::Cooperative, side)) = fragments {
            if caps.cooperative_matrix != Some(side) {
                let why = caps.no_cooperative_matrix.as_deref().map(|w| format!(" ({w})")).unwrap_or_default();
                bail!(
                    "{} has no cooperative matrices with {side} f16 inputs, f32 accumulators and subgroups of 32 \
                     (16x16x16 with subgroups of exactly 32 on Vulkan, 8x8x8 on Metal){why}: mixed precision is not \
                     available on it (use f32)",
                    gpu.info.name
                );
            }
        }
        let shapes = [Some(tiling.tile), (tiling.short_tiles && tiling.tile.rows != 64).then(|| tiling.tile.short())];
        let mut compiled = shapes.into_iter().flatten().map(|shape| {
            let bytes = if coop { shape.coop_bytes() } else { shape.f32_bytes() };
            if bytes > caps.max_workgroup_memory {
                bail!(
                    "{}: {precision:?} tiles of {shape} need {bytes} bytes of workgroup memory, the adapter has {}",
                    gpu.info.name,
                    caps.max_workgroup_memory
                );
            }
            let (label, source) = module_source(precision, fragments, shape);
            let source = source.map_err(|e| anyhow!(e))?;
            gpu.capture_errors(&label, || Pipelines::compile(gpu, &label, &source))
        });
        let tall = compiled.next().expect("one shape at least")?;
        let short = compiled.next().transpose()?;
        Ok(Self { tiling, precision, tall, short })
    }

    /// The pipelines compiled for `tile` (a plan's).
    fn pipelines(&self, tile: TileShape) -> &Pipelines {
        match &self.short {
            Some(short) if tile.rows == 64 && self.tiling.tile.rows != 64 => short,
            _ => &self.tall,
        }
    }

    /// The arithmetic of these pipelines.
    pub fn precision(&self) -> ConvPrecision {
        self.precision
    }

    /// How these pipelines store activations (`x` of the forward pass and of the weight gradient, `y` of the
    /// forward pass), their gradients (`dy` of both backward passes, `dx`) and the weight the forward and
    /// backward_data passes read: f32, or f16 in mixed precision (the weight a copy rounded to f16, as the
    /// tensor cores would round it). The weight gradient is f32 either way.
    pub fn activations(&self) -> Elem {
        self.precision.activations()
    }

    /// The tiling these pipelines were compiled with.
    pub fn tiling(&self) -> ConvTiling {
        self.tiling
    }

    /// These pipelines, planned to split reductions until about `target_workgroups` workgroups
    /// ([`ConvTiling::target_workgroups`]) instead: the splits change, the kernels do not, so nothing is compiled
    /// (tests compare the same kernels split and not).
    pub fn with_target_workgroups(&self, target_workgroups: u32) -> Self {
        Self { tiling: ConvTiling { target_workgroups, ..self.tiling }, ..self.clone() }
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

    /// The products of `op` on `s`: read `inputs` (as [`ConvOp::lens`] orders them; backward_data's weight laid
    /// out by [`Self::phase_weights`]), overwrite `out`. `scratch`: at least [`Self::scratch_len`] elements, not one
    /// of the other tensors.
    fn products(
        &self,
        gpu: &Gpu,
        op: ConvOp,
        s: &Conv2dShape,
        inputs: [&Tensor; 2],
        out: &Tensor,
        scratch: &Tensor,
    ) -> Result<Vec<Dispatch>> {
        let plan = self.plan(gpu, op, s)?;
        let act = self.activations();
        let elems = match op {
            ConvOp::Forward | ConvOp::BackwardData => [act; 3],
            ConvOp::BackwardWeight => [act, act, Elem::F32],
        };
        for ((t, len), elem) in inputs.iter().chain([&out]).zip(op.lens(s)).zip(elems) {
            check_len(op.name(), t, len)?;
            t.expect_elem(op.name(), elem)?;
        }
        self.dispatches(gpu, Gemm::conv(op, s), &plan, inputs, out, scratch)
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
        self.products(gpu, ConvOp::Forward, s, [x, weight], y, scratch)
    }

    /// `dx` from `dy` and `weight`: `dy (N, C_OUT, HO, WO)`, `weight (C_OUT, C_IN, KH, KW)`, `dx (N, C_IN, H, W)`
    /// (overwritten). `phased`: a workspace of the weight's size and type, overwritten with the weight laid out as
    /// the products read it ([`Self::phase_weights`], the first dispatch). `scratch` as in [`Self::forward`].
    #[allow(clippy::too_many_arguments)]
    pub fn backward_data(
        &self,
        gpu: &Gpu,
        s: &Conv2dShape,
        dy: &Tensor,
        weight: &Tensor,
        phased: &Tensor,
        dx: &Tensor,
        scratch: &Tensor,
    ) -> Result<Vec<Dispatch>> {
        let mut dispatches = vec![self.phase_weights(gpu, s, weight, phased)?];
        dispatches.extend(self.products(gpu, ConvOp::BackwardData, s, [dy, phased], dx, scratch)?);
        Ok(dispatches)
    }

    /// `phased` = `weight (C_OUT, C_IN, KH, KW)` laid out as [`Self::backward_data`]'s products read it: one
    /// row-major matrix `A[ci, (co, t, u)]` per stride phase, contiguous along their depth (CPU twin
    /// [`elasticface_core::nn::conv2d_phase_weights`], which says more). Both as the kernels store weights
    /// ([`Self::activations`]), `phased` overwritten.
    pub fn phase_weights(&self, gpu: &Gpu, s: &Conv2dShape, weight: &Tensor, phased: &Tensor) -> Result<Dispatch> {
        const NAME: &str = "conv2d_phase_weights";
        let plan = self.plan(gpu, ConvOp::BackwardData, s)?;
        for t in [weight, phased] {
            check_len(NAME, t, s.weight_len())?;
            t.expect_elem(NAME, self.activations())?;
        }
        if weight.buffer == phased.buffer {
            bail!("{NAME}: {} and {} share a buffer", weight.label, phased.label);
        }
        // The plan's parameters hold the shape (validated, every size within u32).
        let params = plan.gemms.first().map_or_else(Conv2dParams::default, |g| g.0);
        // One invocation per (ci, co): the KH x KW taps of weight[co, ci].
        let grid = gpu.grid_1d(s.c_out * s.c_in, ELEMENTWISE_WORKGROUP);
        gpu.dispatch(NAME, &self.tall.phase_weights, &params, &[weight, phased], grid)
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
        self.products(gpu, ConvOp::BackwardWeight, s, [dy, x], dweight, scratch)
    }

    /// Tiles, splits and grid of [`Self::gemm_batched`] on `gpu`.
    pub fn plan_batched(&self, gpu: &Gpu, batch: usize, m: usize, k: usize, cols: usize) -> Result<ConvPlan> {
        self.tiling.plan_batched(batch, m, k, cols, gpu.caps.max_workgroups_per_dim)
    }

    /// `c[b] = a[b] * b[b]` for `b < batch`: `a (batch, m, k)`, `b (batch, k, cols)`, `c (batch, m, cols)`
    /// (overwritten), row-major. CPU twin [`elasticface_core::nn::gemm_batched`]. `scratch`: at least
    /// [`ConvPlan::scratch_len`] of [`Self::plan_batched`] elements, not one of the other tensors. `a` and `b`
    /// are stored as the activations are ([`Self::activations`]: f16 in mixed precision, whose kernels multiply
    /// them on tensor cores, or emulated, accumulating in f32), `c` in f32; so the twin of the mixed kernels is
    /// the core's on the f16 values. `dims`: `[batch, m, k, cols]`.
    pub fn gemm_batched(
        &self,
        gpu: &Gpu,
        dims: [usize; 4],
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        scratch: &Tensor,
    ) -> Result<Vec<Dispatch>> {
        let [batch, m, k, cols] = dims;
        let plan = self.plan_batched(gpu, batch, m, k, cols)?;
        let name = "gemm_batched";
        check_len(name, a, batch * m * k)?;
        check_len(name, b, batch * k * cols)?;
        check_len(name, c, batch * m * cols)?;
        a.expect_elem(name, self.activations())?;
        b.expect_elem(name, self.activations())?;
        c.expect_elem(name, Elem::F32)?;
        self.dispatches(gpu, Gemm::batched(k, cols), &plan, [a, b], c, scratch)
    }

    /// The GEMM dispatches of `plan` (of `kernel`) reading `inputs` (bindings 1, 2), writing `out` (binding 3)
    /// directly or, with splits, writing `scratch` (binding 3, or 4 for the forward and backward_data passes, whose
    /// outputs are stored as activations are) and then reducing it into `out`.
    fn dispatches(
        &self,
        gpu: &Gpu,
        kernel: Gemm,
        plan: &ConvPlan,
        inputs: [&Tensor; 2],
        out: &Tensor,
        scratch: &Tensor,
    ) -> Result<Vec<Dispatch>> {
        let name = kernel.name();
        let pipelines = self.pipelines(plan.tile);
        let [a, b] = inputs;
        scratch.expect_elem(name, Elem::F32)?;
        if plan.splits > 1 {
            if [a, b, out].iter().any(|t| t.buffer == scratch.buffer) {
                bail!("{name}: {} is the scratch and also an operand", scratch.label);
            }
            let needed = plan.scratch_len();
            if scratch.len < needed {
                bail!("{name}: {} has {} elements, {} splits need {needed}", scratch.label, scratch.len, plan.splits);
            }
        }
        let act_out = matches!(kernel.op, Some(ConvOp::Forward | ConvOp::BackwardData));
        let bound: Vec<&Tensor> = match (act_out, plan.splits > 1) {
            (true, _) => vec![a, b, out, scratch],
            (false, false) => vec![a, b, out],
            (false, true) => vec![a, b, scratch],
        };
        let mut dispatches = Vec::with_capacity(plan.gemms.len() + 1);
        for (params, grid) in &plan.gemms {
            dispatches.push(gpu.dispatch(name, pipelines.gemm(kernel), params, &bound, *grid)?);
        }
        if plan.splits > 1 {
            let grid = gpu.grid_1d(plan.out_len as usize, ELEMENTWISE_WORKGROUP);
            let params = &plan.gemms[0].0;
            let (entry, reduce) = match act_out {
                true => ("conv2d_reduce_splits_act", &pipelines.reduce_act),
                false => ("conv2d_reduce_splits", &pipelines.reduce),
            };
            dispatches.push(gpu.dispatch(entry, reduce, params, &[scratch, out], grid)?);
        }
        Ok(dispatches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_choices_parse_print_round_trip_and_refuse_other_shapes() {
        for tile in TileShape::ALL {
            let text = tile.to_string();
            assert_eq!(text.parse::<TileShape>(), Ok(tile));
            assert_eq!(text.parse::<ConvTileChoice>(), Ok(ConvTileChoice::Shape(tile)));
            assert_eq!(String::from(ConvTileChoice::Shape(tile)), text);
        }
        assert_eq!("auto".parse::<ConvTileChoice>(), Ok(ConvTileChoice::Auto));
        assert_eq!(ConvTileChoice::Auto.to_string(), "auto");
        let e = "128x96x16".parse::<ConvTileChoice>().unwrap_err();
        assert_eq!(
            e,
            "tile 128x96x16: rows and columns must be 64 or 128, the depth 16 or 32, the buffers 1 or 2 (or `auto`)"
        );
        let e = "128x64x16x3".parse::<TileShape>().unwrap_err();
        assert_eq!(e, "tile 128x64x16x3: rows and columns must be 64 or 128, the depth 16 or 32, the buffers 1 or 2");
        assert_eq!("128x64x16x1".parse::<TileShape>(), Ok(TileShape::new(128, 64, 16)));
        assert_eq!("64x128x32x2".parse::<TileShape>(), Ok(TileShape::new(64, 128, 32).double_buffered()));
        let e = "128x64".parse::<TileShape>().unwrap_err();
        assert_eq!(e, "tile `128x64`: expected ROWSxCOLSxDEPTH or ROWSxCOLSxDEPTHx2, e.g. 128x64x16");
        assert!("128x64x16x2x2".parse::<TileShape>().is_err());
        assert!("128x64xsixteen".parse::<TileShape>().is_err());
        assert!("big".parse::<ConvTileChoice>().is_err());
    }

    #[test]
    fn fragment_sides_cover_each_subgroups_blocks_and_depth() {
        use compose::{coop_sections, Fragments};
        let shape = TileShape::new(128, 64, 32);
        for (side, per_block, steps) in [(FragmentSide::Sixteen, 1, 2), (FragmentSide::Eight, 4, 4)] {
            let (clear, multiply, finish) = coop_sections(shape, Fragments::Cooperative, side);
            let n = side.n();
            // 2 x 2 blocks of 16 x 16 per subgroup (128 / 64 rows, 64 / 32 columns), each as `per_block` fragments.
            let accumulators = 2 * 2 * per_block;
            assert_eq!(clear.matches(&format!("coop_mat{n}x{n}<f32, C>()")).count(), accumulators, "{side}");
            // The depth 32 in steps of `n`, every accumulator multiplied once per step.
            assert_eq!(multiply.matches("        {\n").count(), steps, "{side}");
            assert_eq!(multiply.matches("coopMultiplyAdd").count(), steps * accumulators, "{side}");
            assert_eq!(
                multiply.matches(&format!("coopLoadT<coop_mat{n}x{n}<f16, A>>")).count(),
                steps * 2 * (16 / n as usize),
                "{side}"
            );
            let last = format!("* LDA + buf_row + {}u;", 32 - n);
            assert!(multiply.contains(&last), "{side}: the last step begins at depth row {}", 32 - n);
            // Every accumulator stored once, at its place in the staged 64 x 32 block.
            assert_eq!(finish.matches("coopStoreT").count(), accumulators, "{side}");
        }
        let (_, _, finish) = coop_sections(shape, Fragments::Cooperative, FragmentSide::Eight);
        for at in ["s0 + 0u", "s0 + 8u", "s0 + 256u", "s0 + 264u"] {
            assert!(finish.contains(&format!("&c_s[{at}]")), "an 8 x 8 fragment stored at {at}");
        }
    }

    /// The `_vec4` twins run exactly where every run of their operand along the depth starts on a vec4: on r100 at
    /// batch 128, every forward pass but the stem's, every input gradient, every weight gradient but the 7x7
    /// layers', every Winograd product; never a product of depth or columns off the vec4s.
    #[test]
    fn vec4_loads_are_picked_where_the_sizes_allow() {
        let conv = |c_in, hw, c_out, k, stride, pad| Conv2dShape {
            n: 128,
            c_in,
            h: hw,
            w: hw,
            c_out,
            kh: k,
            kw: k,
            stride,
            pad,
        };
        let picked = |op, s: &Conv2dShape| {
            let kernel = Gemm::conv(op, s);
            (kernel.vec4, kernel.name())
        };
        let stem = conv(3, 112, 64, 3, 1, 1);
        assert_eq!(picked(ConvOp::Forward, &stem), (false, "conv2d_forward"));
        assert_eq!(picked(ConvOp::BackwardWeight, &stem), (true, "conv2d_backward_weight_vec4"));
        let stage4 = conv(512, 7, 512, 3, 1, 1);
        assert_eq!(picked(ConvOp::Forward, &stage4), (true, "conv2d_forward_vec4"));
        assert_eq!(picked(ConvOp::BackwardWeight, &stage4), (false, "conv2d_backward_weight"));
        let into_stage4 = conv(256, 14, 512, 3, 2, 1);
        assert_eq!(picked(ConvOp::BackwardWeight, &into_stage4), (false, "conv2d_backward_weight"));
        // Every r100 input gradient (C_OUT a multiple of 4); the phase-major weight of another.
        for s in [stage4, into_stage4, conv(64, 56, 128, 1, 2, 0), conv(25088, 1, 512, 1, 1, 0)] {
            assert_eq!(picked(ConvOp::BackwardData, &s), (true, "conv2d_backward_data_vec4"));
        }
        assert_eq!(picked(ConvOp::BackwardData, &conv(64, 56, 130, 3, 1, 1)), (false, "conv2d_backward_data"));
        assert_eq!(Gemm::batched(256, 128 * 49).name(), "gemm_batched_vec4");
        for [k, cols] in [[27, 64], [64, 49], [3, 3]] {
            assert_eq!(Gemm::batched(k, cols).name(), "gemm_batched");
        }
    }

    #[test]
    fn tile_memory_is_what_the_shaders_declare() {
        // f32: a_tile BK x (BM/4 + 1) vec4s, b_tile BK x (BN/4 + 1) vec4s. (The build script also checks every
        // composed module's declarations against these formulas.)
        assert_eq!(TileShape::new(64, 64, 16).f32_bytes(), 16 * 16 * 17 + 16 * 16 * 17);
        // 128 x 128 x 32 in f32 exceeds 32 KiB (lavapipe), not 48 KiB (an H200).
        assert_eq!(TileShape::new(128, 128, 32).f32_bytes(), 33_792);
        // Cooperative matrices: f16 A (BM x (BK + 8)) and B (BK x (BN + 8)), and a 64 x 32 f32 staging block.
        assert_eq!(TileShape::new(128, 128, 32).coop_bytes(), 2 * 128 * 40 + 2 * 32 * 136 + 4 * 64 * 32);
        // Double buffers: A's rows twice as long, two copies of B, one staging block. The largest cooperative-matrix
        // tile fits 48 KiB (an H200) double-buffered; the largest f32 tiles that do are 128 x 128 x 16 and
        // 64 x 64 x 32.
        let double = TileShape::new(128, 128, 32).double_buffered();
        assert_eq!(double.coop_bytes(), 2 * 128 * 72 + 2 * (2 * 32 * 136) + 4 * 64 * 32);
        assert!(double.coop_bytes() <= 48 * 1024);
        assert_eq!(TileShape::new(128, 128, 16).double_buffered().f32_bytes(), 2 * 16_896);
        let fit: Vec<String> = TileShape::ALL
            .iter()
            .filter(|t| t.buffers == 2 && t.f32_bytes() <= 48 * 1024)
            .map(|t| t.to_string())
            .collect();
        assert_eq!(fit, ["64x64x16x2", "64x64x32x2", "64x128x16x2", "128x64x16x2", "128x128x16x2"]);
        let short = TileShape::new(128, 128, 32).double_buffered().short();
        assert_eq!(short, TileShape::new(64, 128, 32).double_buffered());
    }
}
