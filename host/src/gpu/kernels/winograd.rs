//! `shaders/winograd.wgsl`: the 3x3 stride-1 convolutions as Winograd F(2x2, 3x3)
//! (2.25x fewer multiply-adds than the direct convolution) or F(4x4, 3x3) (4x fewer), as the caller's
//! [`WinogradTile`] says. CPU twins: [`elasticface_core::nn::winograd_weight_transform`],
//! [`elasticface_core::nn::winograd_input_transform`], [`elasticface_core::nn::winograd_output_transform`],
//! [`elasticface_core::nn::winograd_output_grad_transform`], [`elasticface_core::nn::winograd_weight_grad_transform`]
//! (the F(4x4) kernels are named `winograd_f4_*`); the 16 or 36 products run on [`Conv2d::gemm_batched`] (twin
//! [`elasticface_core::nn::gemm_batched`]). The whole passes are the core's
//! [`elasticface_core::nn::conv2d_winograd_forward`] and its two backward companions.
//!
//! Each pass is a few dispatches through three workspace tensors (see [`WinogradWorkspace`]):
//! - forward: weight -> U, x -> V, U V -> M, M -> y;
//! - backward_data: the forward pass of dy with the flipped, transposed weight and padding 2 - pad;
//! - backward_weight: dy -> W (in M's tensor), x -> V^T, W V^T -> dU (in U's tensor), dU -> dweight.
//!
//! The sums differ from the direct convolution's (they run over transformed operands), so the results agree
//! with it to rounding, not bit for bit; the bound is in the core's `winograd` module.

use anyhow::{bail, Result};
use elasticface_core::nn::{Conv2dShape, WinogradTile, WinogradTiles};

use super::conv2d::{Conv2d, ConvOp};
use super::{check_f32, check_len, Dispatch, StorageVariants, ELEMENTWISE_WORKGROUP};
use crate::gpu::{Elem, Gpu, Tensor};

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
    /// Tile rows, `ceil(HO / m)` (`m` = 2 or 4, the output tile).
    pub tiles_h: u32,
    /// Tile columns, `ceil(WO / m)`.
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
    /// The normalised input transforms: the batch norm's eps.
    pub eps: f32,
    /// The normalised input transforms: 1 where a PReLU follows the batch norm.
    pub prelu: u32,
}

/// The batch norm (and the PReLU after it) whose output a Winograd convolution reads: its input transform reads
/// the batch norm's input and normalises each element as it goes (`winograd_normalized_input_transform`; CPU twin
/// [`elasticface_core::nn::winograd_normalized_input_transform`], described by
/// [`elasticface_core::nn::NormalizedInput`]), so the batch norm's output is never stored. The same bits as the
/// batch norm's own normalisation followed by the plain transform (where the driver rounds both alike).
#[derive(Clone, Copy)]
pub struct InputNorm<'a> {
    /// Added to the variance before the square root.
    pub eps: f32,
    /// The mean and the variance the input is normalised with (a training step's batch statistics, or the
    /// running ones), `(C)`.
    pub mean: &'a Tensor,
    /// See [`Self::mean`].
    pub var: &'a Tensor,
    /// The batch norm's weight `(C)`.
    pub gamma: &'a Tensor,
    /// The batch norm's bias `(C)`.
    pub beta: &'a Tensor,
    /// The slopes `(C)` of a PReLU after the batch norm, or none.
    pub alpha: Option<&'a Tensor>,
}

/// Elements of the workspace tensors one shape and tile need (see [`WinogradWorkspace`]); `P` is the tile's
/// planes, 16 or 36.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WinogradLens {
    /// U and dU: `P * C_OUT * C_IN`.
    pub u: usize,
    /// V: `P * C * T` of the larger of the two transformed inputs (x, or dy for backward_data).
    pub v: usize,
    /// M and W: `P * C * T` of the larger product.
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
/// buffer), each at least as long as [`WinogradLens`] says, of f32 elements; one workspace serves every layer of
/// a network. A pass whose products read f16 operands views U, V and W as f16 (in the first half of their bytes).
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

/// Which Winograd tile each convolution runs with. Written `auto`, `2` or `4`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum WinogradTileChoice {
    /// F(4x4) where its products are at least one column tile wide ([`AUTO_F4_MIN_COLUMNS`] tiles of the batch),
    /// F(2x2) elsewhere. F(4x4) needs 2.25 multiplications per output against F(2x2)'s 4 and moves fewer floats
    /// (36 per 16 outputs against 16 per 4), but a narrow product (a 7x7 layer at a small batch: 4 tiles per
    /// image) leaves most of each column tile idle. Measured on lavapipe at batch 8 (`bench --kernels`), each pass
    /// of F(4x4) is 1.15-1.8x faster than F(2x2)'s on the 56x56, 28x28 and 14x14 layers; at 7x7 (32 columns)
    /// forward and backward_data are 1.16x and 1.29x slower.
    #[default]
    Auto,
    /// F(2x2, 3x3) everywhere: the more accurate (its error is 5-9x smaller than F(4x4)'s on random data).
    F2x2,
    /// F(4x4, 3x3) everywhere.
    F4x4,
}

/// Columns (tiles of the batch) below which [`WinogradTileChoice::Auto`] takes F(2x2): one column tile of the
/// products of the default tiles, 64 columns wide (see [`crate::gpu::kernels::conv2d::ConvTiling`]).
pub const AUTO_F4_MIN_COLUMNS: usize = 64;

impl WinogradTileChoice {
    /// The tile `s` runs with (`s` a convolution Winograd applies to).
    pub fn tile_for(self, s: &Conv2dShape) -> WinogradTile {
        match self {
            WinogradTileChoice::F2x2 => WinogradTile::F2x2,
            WinogradTileChoice::F4x4 => WinogradTile::F4x4,
            WinogradTileChoice::Auto => {
                let wide =
                    WinogradTiles::forward_of(s, WinogradTile::F4x4).is_some_and(|t| t.tiles() >= AUTO_F4_MIN_COLUMNS);
                if wide {
                    WinogradTile::F4x4
                } else {
                    WinogradTile::F2x2
                }
            }
        }
    }
}

/// That tile everywhere.
impl From<WinogradTile> for WinogradTileChoice {
    fn from(tile: WinogradTile) -> Self {
        match tile {
            WinogradTile::F2x2 => WinogradTileChoice::F2x2,
            WinogradTile::F4x4 => WinogradTileChoice::F4x4,
        }
    }
}

impl std::str::FromStr for WinogradTileChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(WinogradTileChoice::Auto),
            "2" => Ok(WinogradTileChoice::F2x2),
            "4" => Ok(WinogradTileChoice::F4x4),
            other => Err(format!("`{other}`: a Winograd tile is `auto`, `2` (F(2x2, 3x3)) or `4` (F(4x4, 3x3))")),
        }
    }
}

impl std::fmt::Display for WinogradTileChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WinogradTileChoice::Auto => "auto",
            WinogradTileChoice::F2x2 => "2",
            WinogradTileChoice::F4x4 => "4",
        })
    }
}

serde_as_text!(WinogradTileChoice);

/// The F(2x2) kernels of `shaders/winograd.wgsl`, in [`Transform`] order.
const F2_KERNELS: [&str; 5] = [
    "winograd_weight_transform",
    "winograd_input_transform",
    "winograd_output_transform",
    "winograd_output_grad_transform",
    "winograd_weight_grad_transform",
];

/// The F(4x4) kernels of `shaders/winograd.wgsl`, in [`Transform`] order.
const F4_KERNELS: [&str; 5] = [
    "winograd_f4_weight_transform",
    "winograd_f4_input_transform",
    "winograd_f4_output_transform",
    "winograd_f4_output_grad_transform",
    "winograd_f4_weight_grad_transform",
];

/// The normalised input transforms of `shaders/winograd.wgsl`, F(2x2) then F(4x4).
const NORMALIZED_KERNELS: [&str; 2] = ["winograd_normalized_input_transform", "winograd_f4_normalized_input_transform"];

/// The Winograd kernels' pipelines, both tile sizes.
///
/// The transforms read and write the activations and their gradients as their tensors hold them
/// ([`Tensor::elem`]): an input transform's `x`, an output transform's `y` (or backward_data's `dx`) and the
/// output gradient transform's `dy` may be f32 or mixed precision's f16, and so may the transformed operands (U,
/// V, W: the products' operands, stored as the [`Conv2d::gemm_batched`] that multiplies them reads them: f32, or
/// f16 for mixed precision's, which multiplies f16 operands with f32 accumulation). Weights, their gradients, the
/// products and dU are f32.
/// `winograd.wgsl` is compiled once per pair of storages a dispatch reads and writes, f32 when the kernels are
/// made and the others on first use.
pub struct Winograd {
    /// By the storage of `src` (alias `Src`) and `dst` (`Dst`).
    modules: StorageVariants<Pipelines>,
}

/// The pipelines of one compilation of `winograd.wgsl`.
struct Pipelines {
    /// F(2x2, 3x3): [`F2_KERNELS`], in `Transform` order.
    f2: [wgpu::ComputePipeline; 5],
    /// F(4x4, 3x3): [`F4_KERNELS`], in `Transform` order.
    f4: [wgpu::ComputePipeline; 5],
    /// [`NORMALIZED_KERNELS`].
    normalized: [wgpu::ComputePipeline; 2],
}

/// Elements of a transformed operand: the tile's 16 or 36 planes of `rows * cols`.
fn planes(tile: WinogradTile, rows: usize, cols: usize) -> usize {
    tile.planes() * rows * cols
}

impl Winograd {
    /// Compiles the kernels of both tile sizes on f32 tensors (the others on first use).
    pub fn new(gpu: &Gpu) -> Self {
        let source = include_str!("../../../../shaders/winograd.wgsl");
        let kernels = Self { modules: StorageVariants::new("winograd.wgsl", source, &["Src", "Dst"]) };
        kernels.pipelines(gpu, Elem::F32, Elem::F32).expect("f32 needs no feature");
        kernels
    }

    /// The pipelines reading `src` and writing `dst` elements, compiled on first use. Errors where f16 is asked
    /// of an adapter without it.
    fn pipelines(&self, gpu: &Gpu, src: Elem, dst: Elem) -> Result<&Pipelines> {
        self.modules.get(gpu, &[src, dst], |m| Pipelines {
            f2: F2_KERNELS.map(|name| gpu.pipeline(name, m, name)),
            f4: F4_KERNELS.map(|name| gpu.pipeline(name, m, name)),
            normalized: NORMALIZED_KERNELS.map(|name| gpu.pipeline(name, m, name)),
        })
    }

    /// Whether `s` can run as Winograd (either tile): a 3x3 kernel, stride 1, padding at most 2.
    pub fn applies(s: &Conv2dShape) -> bool {
        WinogradTiles::forward_of(s, WinogradTile::F2x2).is_some() && s.validate().is_ok()
    }

    /// The workspace `s`'s three passes need with `tile`. Errors when `s` does not apply or an operand exceeds
    /// `u32`.
    pub fn workspace_lens(gpu: &Gpu, conv: &Conv2d, s: &Conv2dShape, tile: WinogradTile) -> Result<WinogradLens> {
        let (fwd, bwd) = tilings(s, tile)?;
        let (t, t_data) = (fwd.tiles(), bwd.tiles());
        let mut scratch = 0;
        for [m, k, cols] in [[s.c_out, s.c_in, t], [s.c_in, s.c_out, t_data], [s.c_out, t, s.c_in]] {
            scratch = scratch.max(conv.plan_batched(gpu, tile.planes(), m, k, cols)?.scratch_len());
        }
        Ok(WinogradLens {
            u: planes(tile, s.c_out, s.c_in),
            v: planes(tile, s.c_in, t).max(planes(tile, s.c_out, t_data)),
            m: planes(tile, s.c_out, t).max(planes(tile, s.c_in, t_data)),
            scratch,
        })
    }

    /// The operation `op` on `s` on the tensors [`ConvOp::lens`] lists (in that order), as Winograd with
    /// `tile`, through `ws` (at least [`Winograd::workspace_lens`] of the same tile), with `conv`'s
    /// `gemm_batched` for the products: 4 dispatches, 5 when the product splits. The transforms write the
    /// products' operands (U, V, W) as `conv` stores its operands ([`Conv2d::activations`]: f16 for mixed
    /// precision's kernels, rounded as those would round them, in half the bytes), the products and dU in f32.
    ///
    /// With `norm`, the convolution's input `x` (forward's first tensor, backward_weight's second) is a batch
    /// norm's input and the convolution reads `prelu(bn(x))` as `norm` describes (see [`InputNorm`]); same number
    /// of dispatches. Errors: a tensor of the wrong size (named), or `norm` with backward_data (whose input is an
    /// output gradient).
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        gpu: &Gpu,
        conv: &Conv2d,
        op: ConvOp,
        s: &Conv2dShape,
        tile: WinogradTile,
        inputs: [&Tensor; 2],
        norm: Option<InputNorm<'_>>,
        out: &Tensor,
        ws: &WinogradWorkspace,
    ) -> Result<Vec<Dispatch>> {
        let (fwd, bwd) = tilings(s, tile)?;
        let what = format!("winograd {}", op.name());
        // The activations and their gradients as the tensors hold them; the weight and its gradient f32.
        let activations = match op {
            ConvOp::Forward | ConvOp::BackwardData => [true, false, true],
            ConvOp::BackwardWeight => [true, true, false],
        };
        for ((t, len), activation) in inputs.iter().chain([&out]).zip(op.lens(s)).zip(activations) {
            check_len(&what, t, len)?;
            if !activation {
                t.expect_elem(&what, Elem::F32)?;
            }
        }
        if let Some(n) = &norm {
            let named = [("mean", n.mean), ("var", n.var), ("gamma", n.gamma), ("beta", n.beta)];
            for (name, t) in named.into_iter().chain(n.alpha.map(|a| ("alpha", a))) {
                check_f32(&format!("{what} (normalised input: {name})"), t, s.c_in)?;
            }
        }
        let [a, b] = inputs;
        match op {
            ConvOp::Forward => self.convolve(gpu, conv, &fwd, [s.c_in, s.c_out], a, norm, b, false, out, ws),
            // The forward pass of dy with the flipped, transposed weight and padding 2 - pad.
            ConvOp::BackwardData => match norm {
                Some(_) => bail!("{what}: its input is an output gradient; there is no batch norm to apply"),
                None => self.convolve(gpu, conv, &bwd, [s.c_out, s.c_in], a, None, b, true, out, ws),
            },
            ConvOp::BackwardWeight => self.weight_gradient(gpu, conv, s, &fwd, a, b, norm, out, ws),
        }
    }

    /// `dweight` from `dy` and `x` on the forward pass's `tiles`: W = A dY A^T, V^T, dU = W V^T, G^T dU G.
    #[allow(clippy::too_many_arguments)]
    fn weight_gradient(
        &self,
        gpu: &Gpu,
        conv: &Conv2d,
        s: &Conv2dShape,
        tiles: &WinogradTiles,
        dy: &Tensor,
        x: &Tensor,
        norm: Option<InputNorm<'_>>,
        dweight: &Tensor,
        ws: &WinogradWorkspace,
    ) -> Result<Vec<Dispatch>> {
        let (t, tile, p, operand) = (tiles.tiles(), tiles.tile, tiles.tile.planes(), conv.activations());
        let w = ws.m.view_as("winograd W", &[p, s.c_out, t], operand)?;
        let vt = ws.v.view_as("winograd V^T", &[p, t, s.c_in], operand)?;
        let du = ws.u.view_as("winograd dU", &[p, s.c_out, s.c_in], Elem::F32)?;
        let params = tile_params(tiles, s.c_out, false)?;
        let mut d = vec![self.transform(gpu, tile, Transform::OutputGrad, params, dy, &w)?];
        d.push(self.input_transform(gpu, tile, tile_params(tiles, s.c_in, true)?, x, norm, &vt)?);
        d.extend(conv.gemm_batched(gpu, [p, s.c_out, t, s.c_in], &w, &vt, &du, &ws.scratch)?);
        let params = weight_params(s.c_out, s.c_in, false)?;
        d.push(self.transform(gpu, tile, Transform::WeightGrad, params, &du, dweight)?);
        Ok(d)
    }

    /// The forward convolution of `input` (channels `[c, c_next]`; normalised by `norm`) on `tiles` into
    /// `output`, with the weight as stored (`flip` false) or flipped and transposed (backward_data).
    #[allow(clippy::too_many_arguments)]
    fn convolve(
        &self,
        gpu: &Gpu,
        conv: &Conv2d,
        tiles: &WinogradTiles,
        [c, c_next]: [usize; 2],
        input: &Tensor,
        norm: Option<InputNorm<'_>>,
        weight: &Tensor,
        flip: bool,
        output: &Tensor,
        ws: &WinogradWorkspace,
    ) -> Result<Vec<Dispatch>> {
        let (t, tile, p, operand) = (tiles.tiles(), tiles.tile, tiles.tile.planes(), conv.activations());
        let u = ws.u.view_as("winograd U", &[p, c_next, c], operand)?;
        let v = ws.v.view_as("winograd V", &[p, c, t], operand)?;
        let m = ws.m.view_as("winograd M", &[p, c_next, t], Elem::F32)?;
        // The weight's shape (C_OUT, C_IN) is (c_next, c) forward, (c, c_next) flipped.
        let (c_out, c_in) = if flip { (c, c_next) } else { (c_next, c) };
        let mut d =
            vec![self.transform(gpu, tile, Transform::Weight, weight_params(c_out, c_in, flip)?, weight, &u)?];
        d.push(self.input_transform(gpu, tile, tile_params(tiles, c, false)?, input, norm, &v)?);
        d.extend(conv.gemm_batched(gpu, [p, c_next, c, t], &u, &v, &m, &ws.scratch)?);
        d.push(self.transform(gpu, tile, Transform::Output, tile_params(tiles, c_next, false)?, &m, output)?);
        Ok(d)
    }

    /// One transform kernel of `tile` over `params.count` invocations, reading `src`, writing `dst`.
    fn transform(
        &self,
        gpu: &Gpu,
        tile: WinogradTile,
        which: Transform,
        params: WinogradParams,
        src: &Tensor,
        dst: &Tensor,
    ) -> Result<Dispatch> {
        let module = self.pipelines(gpu, src.elem, dst.elem)?;
        let (names, pipelines) = match tile {
            WinogradTile::F2x2 => (&F2_KERNELS, &module.f2),
            WinogradTile::F4x4 => (&F4_KERNELS, &module.f4),
        };
        let (name, pipeline) = (names[which as usize], &pipelines[which as usize]);
        let grid = gpu.grid_1d(params.count as usize, ELEMENTWISE_WORKGROUP);
        gpu.dispatch(name, pipeline, &params, &[src, dst], grid)
    }
}

impl Winograd {
    /// The input transform of `tile` reading `x`, normalised by `norm` where given (the normalised kernel, with
    /// the batch norm's tensors bound after `x` and `v`; beta again in alpha's place without a PReLU).
    fn input_transform(
        &self,
        gpu: &Gpu,
        tile: WinogradTile,
        params: WinogradParams,
        x: &Tensor,
        norm: Option<InputNorm<'_>>,
        v: &Tensor,
    ) -> Result<Dispatch> {
        let Some(n) = norm else {
            return self.transform(gpu, tile, Transform::Input, params, x, v);
        };
        let which = match tile {
            WinogradTile::F2x2 => 0,
            WinogradTile::F4x4 => 1,
        };
        let params = WinogradParams { eps: n.eps, prelu: n.alpha.is_some() as u32, ..params };
        let grid = gpu.grid_1d(params.count as usize, ELEMENTWISE_WORKGROUP);
        let bindings = [x, v, n.mean, n.var, n.gamma, n.beta, n.alpha.unwrap_or(n.beta)];
        let pipeline = &self.pipelines(gpu, x.elem, v.elem)?.normalized[which];
        gpu.dispatch(NORMALIZED_KERNELS[which], pipeline, &params, &bindings, grid)
    }
}

/// The five kernels of `shaders/winograd.wgsl` of each tile, numbered as in
/// [`F2_KERNELS`] and [`F4_KERNELS`].
#[derive(Clone, Copy)]
enum Transform {
    Weight,
    Input,
    Output,
    OutputGrad,
    WeightGrad,
}

/// Parameters of a transform with one invocation per (channel, tile) of `tiles` (either tile size: the kernels
/// know their own); `flag`: transposed input.
fn tile_params(tiles: &WinogradTiles, channels: usize, flag: bool) -> Result<WinogradParams> {
    Ok(WinogradParams {
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
        count: u32_len("winograd transform", channels * tiles.tiles())?,
        ..Default::default()
    })
}

/// Parameters of a transform with one invocation per (output channel, input channel) of a `(C_OUT, C_IN, 3, 3)`
/// weight; `flag`: flipped.
fn weight_params(c_out: usize, c_in: usize, flag: bool) -> Result<WinogradParams> {
    Ok(WinogradParams {
        c_out: c_out as u32,
        c_in: c_in as u32,
        flag: flag as u32,
        count: u32_len("winograd weight transform", c_out * c_in)?,
        ..Default::default()
    })
}

/// The tilings by `tile` of `s`'s forward pass (and backward_weight) and of its backward_data pass.
fn tilings(s: &Conv2dShape, tile: WinogradTile) -> Result<(WinogradTiles, WinogradTiles)> {
    s.validate().map_err(|e| anyhow::anyhow!("winograd: {e}"))?;
    match (WinogradTiles::forward_of(s, tile), WinogradTiles::backward_data_of(s, tile)) {
        (Some(f), Some(b)) => {
            let c = s.c_in.max(s.c_out);
            for len in [planes(tile, c, f.tiles()), planes(tile, c, b.tiles()), planes(tile, s.c_out, s.c_in)] {
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
