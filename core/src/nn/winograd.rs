//! Winograd F(2x2, 3x3) and F(4x4, 3x3) for 3x3 stride-1 convolutions (Lavin & Gray 2016, "Fast Algorithms for
//! Convolutional Neural Networks"): the same results as [`conv2d_forward`](super::conv2d_forward),
//! [`conv2d_backward_data`](super::conv2d_backward_data) and [`conv2d_backward_weight`](super::conv2d_backward_weight)
//! up to rounding, with 16 multiplications per 2x2 output tile and input channel instead of 36 (F(2x2): 4 per
//! output), or 36 per 4x4 output tile instead of 144 (F(4x4): 2.25 per output; the direct convolution takes 9).
//! [`WinogradTile`] chooses between them.
//!
//! # The algorithm
//!
//! A 3x3 stride-1 convolution with padding `pad <= 2` maps `x (N, C_IN, H, W)` to `y (N, C_OUT, HO, WO)`,
//! `HO = H + 2*pad - 2`, `WO = W + 2*pad - 2`. The output is cut into `m x m` tiles (`m` = 2 or 4, the tile's
//! [`WinogradTile::out_size`]), `TH = ceil(HO/m)` by `TW = ceil(WO/m)` per sample, `T = N*TH*TW` tiles numbered
//! `t = (n*TH + th)*TW + tw`. Tile `t` reads the `a x a` input patch (`a = m + 2`, [`WinogradTile::in_size`])
//! `d[i][j] = x[n, c, m*th - pad + i, m*tw - pad + j]` (0 outside the input) and gives `y[n, co, m*th + i, m*tw + j]`
//! for `i, j < m` (positions past `HO`/`WO` are dropped):
//!
//! ```text
//! y_tile = A^T [ sum_c (G g_c G^T) (.) (B^T d_c B) ] A          (.) elementwise, g_c = weight[co, c]
//!
//! F(2x2, 3x3), points 0, 1, -1, inf:
//!       | 1  0 -1  0 |         | 1    0    0  |
//! B^T = | 0  1  1  0 |     G = | 1/2  1/2  1/2|     A^T = | 1  1  1  0 |
//!       | 0 -1  1  0 |         | 1/2 -1/2  1/2|           | 0  1 -1 -1 |
//!       | 0  1  0 -1 |         | 0    0    1  |
//!
//! F(4x4, 3x3), points 0, 1, -1, 2, -2, inf:
//!       | 4  0 -5  0  1  0 |         | 1/4    0     0  |
//!       | 0 -4 -4  1  1  0 |         |-1/6  -1/6  -1/6 |           | 1  1  1  1  1  0 |
//! B^T = | 0  4 -4 -1  1  0 |     G = |-1/6   1/6  -1/6 |     A^T = | 0  1 -1  2 -2  0 |
//!       | 0 -2 -1  2  1  0 |         | 1/24  1/12  1/6 |           | 0  1  1  4  4  0 |
//!       | 0  2 -1 -2  1  0 |         | 1/24 -1/12  1/6 |           | 0  1 -1  8 -8  1 |
//!       | 0  4  0 -5  0  1 |         | 0     0     1   |
//! ```
//!
//! F(4x4)'s `G` is evaluated as `G = D G'`, `G'` the integer matrix of the rows `(1, 0, 0)`, `(1, 1, 1)`,
//! `(1, -1, 1)`, `(1, 2, 4)`, `(1, -2, 4)`, `(0, 0, 1)` and `D = diag(1/4, -1/6, -1/6, 1/24, 1/24, 1)`, so that
//! `G g G^T = S (.) (G' g G'^T)` with `S = diag(D) diag(D)^T`: the weight transform runs on integer coefficients
//! (exact for small integer weights, as `B^T` and `A^T` are for small integer data) and ends with one
//! multiplication by the f32 constant `S[i][j]` per element (36 constants, each the correctly rounded
//! `±1 / (D_i^-1 D_j^-1)`, e.g. `1/576`), one rounding instead of a rounded constant in each of the two passes;
//! the adjoint, the weight-gradient transform `G^T dU G = G'^T (S (.) dU) G'`, starts with it.
//!
//! Element `e = i*a + j` of every `a x a` transform is its own matrix product over the channels, so a convolution
//! is a weight transform, an input transform, `P = a*a` (16 or 36, [`WinogradTile::planes`]) independent matrix
//! products ([`gemm_batched`]) and an output transform. The two backward passes reuse the same pieces:
//!
//! - backward_data is the forward convolution of `dy` with the weight rotated by 180 degrees, channels swapped,
//!   and padding `2 - pad` (tiles over `dy`, output `(H, W)`): [`WinogradTiles::backward_data_of`] and the
//!   `flip` of [`winograd_weight_transform`];
//! - backward_weight is the adjoint: `W = A dY A^T` ([`winograd_output_grad_transform`], the adjoint of the output
//!   transform), `dU[e] = W[e] V[e]^T` summed over tiles, `dg = G^T dU G` ([`winograd_weight_grad_transform`], the
//!   adjoint of the weight transform).
//!
//! # Layouts (row-major, `e` outermost, `P` planes)
//!
//! - `U (P, R, S)`, `u[(e*R + r)*S + s]`: `(R, S) = (C_OUT, C_IN)` from `g = weight[co, ci]`, or flipped
//!   `(R, S) = (C_IN, C_OUT)` from `g[a][b] = weight[co, ci, 2-a, 2-b]`.
//! - `V (P, C, T)`, `v[(e*C + c)*T + t]`, or transposed `(P, T, C)`, `v[(e*T + t)*C + c]`.
//! - `M (P, C, T)` (the products), read by the output transform, which writes `(N, C, HO, WO)`.
//! - `W (P, C_OUT, T)`, the output-gradient transform of `dy (N, C_OUT, HO, WO)`.
//! - `dU (P, C_OUT, C_IN)`, read by the weight-gradient transform, which writes `dweight (C_OUT, C_IN, 3, 3)`.
//!
//! # Bit-exact twins
//!
//! Every transform and [`gemm_batched`] has a WGSL twin: the F(2x2) transforms of the same name in
//! `shaders/winograd.wgsl`, the F(4x4) ones in the same file named with `f4` after `winograd`
//! (`winograd_f4_input_transform` is [`winograd_input_transform`] with [`WinogradTile::F4x4`]), [`gemm_batched`]
//! in `shaders/conv2d.wgsl` (the three `conv2d_winograd_*` composites, which exist for tests and as the
//! documentation of how the pieces fit, and [`winograd_workspace_len`] have none). The twins compute the same f32
//! operations in the same order (in the private per-tile helpers below every parenthesis, every `+`, `-` and
//! `*`, is one rounding; no fused multiply-add), so their results agree bit for bit. Multiplying by 0.5, 2, 4 or
//! 8 and negating are exact (barring subnormal results and overflow).
//!
//! # Accuracy
//!
//! Winograd is not the direct convolution's sum in another order: the transforms add and subtract inputs before
//! multiplying, so the error is relative to the magnitude of those intermediate terms, not of the result. The
//! tests accept `|winograd - direct| <= (K + 16) * 16 * f32::EPSILON * P` (F(2x2)) and
//! `(K + 17) * 64 * f32::EPSILON * P` (F(4x4)) per output element, `K` the length of the reduction (`C_IN`
//! forward, `C_OUT` backward_data, `N*TH*TW` backward_weight) and `P` the magnitude the terms can reach (for
//! forward, `P = sum_c (sum |g_c|) (sum of |d_c| over the element's input patch)`). F(4x4)'s larger constant
//! comes from its larger transform entries (`B^T` up to 5, `A^T` up to 8): a term's coefficients multiply to at
//! most `(32/3)^2` per unit of `|g| |d|`, against 4 for F(2x2); the derivation is in the tests. In practice
//! F(4x4)'s error is 5 to 9 times F(2x2)'s: on a 64-channel layer with N(0, 1) data, up to 7e-6 of the result's
//! largest magnitude against 1e-6 (test `error_relative_to_scale_on_a_64_channel_layer`).
//!
//! No function panics: sizes and every slice length are checked before any element is touched, and outputs are
//! overwritten. Non-finite values are not scanned for; note that where the direct convolution skips padding,
//! Winograd multiplies it (`0 * inf = NaN`), so non-finite inputs may spread differently.

use crate::error::{check_len, Error};

use super::batchnorm::{normalised_value, prelu};
use super::{BatchNorm, Conv2dShape};

/// A 4x4 tile, `[row][column]`.
type Tile4 = [[f32; 4]; 4];

/// A 6x6 tile, `[row][column]`.
type Tile6 = [[f32; 6]; 6];

/// The Winograd algorithm: the output tile a 3x3 kernel's transforms produce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WinogradTile {
    /// F(2x2, 3x3): 2x2 output tiles from 4x4 input patches, 16 planes (4 multiplications per output).
    #[default]
    F2x2,
    /// F(4x4, 3x3): 4x4 output tiles from 6x6 input patches, 36 planes (2.25 multiplications per output).
    F4x4,
}

impl WinogradTile {
    /// Both tiles.
    pub const ALL: [Self; 2] = [Self::F2x2, Self::F4x4];

    /// Output tile size `m`: 2 or 4.
    pub const fn out_size(self) -> usize {
        match self {
            Self::F2x2 => 2,
            Self::F4x4 => 4,
        }
    }

    /// Input patch (and transform) size `m + 2`: 4 or 6.
    pub const fn in_size(self) -> usize {
        self.out_size() + 2
    }

    /// Planes of a transformed operand, `(m + 2)^2`: 16 or 36.
    pub const fn planes(self) -> usize {
        self.in_size() * self.in_size()
    }

    /// `"F(2x2, 3x3)"` or `"F(4x4, 3x3)"`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::F2x2 => "F(2x2, 3x3)",
            Self::F4x4 => "F(4x4, 3x3)",
        }
    }
}

/// The output tiles of a 3x3 stride-1 convolution of an input `(N, ·, H, W)` with zero padding `pad <= 2`:
/// output `(HO, WO) = (H + 2*pad - 2, W + 2*pad - 2)`, `TH = ceil(HO/m)` by `TW = ceil(WO/m)` tiles per sample, `m`
/// the `tile`'s [`WinogradTile::out_size`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WinogradTiles {
    /// Batch size N.
    pub n: usize,
    /// Input height H.
    pub h: usize,
    /// Input width W.
    pub w: usize,
    /// Zero padding, both directions, both sides (at most 2).
    pub pad: usize,
    /// The algorithm, which sets the tile size.
    pub tile: WinogradTile,
}

/// `size + 2*pad - 2`, or 0 where that is below 1 (saturating, never panics).
const fn out_size(size: usize, pad: usize) -> usize {
    size.saturating_add(pad.saturating_mul(2)).saturating_sub(2)
}

/// The product of `dims`, or `None` on overflow.
fn product(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

const OVERFLOW: Error = Error::Shape { what: "winograd: a size overflows usize" };

impl WinogradTiles {
    /// Output height `HO = H + 2*pad - 2` (0 for tiles [`WinogradTiles::validate`] rejects).
    pub const fn out_h(&self) -> usize {
        out_size(self.h, self.pad)
    }
    /// Output width `WO = W + 2*pad - 2` (0 for tiles [`WinogradTiles::validate`] rejects).
    pub const fn out_w(&self) -> usize {
        out_size(self.w, self.pad)
    }
    /// Tile rows per sample, `TH = ceil(HO/m)`.
    pub const fn tiles_h(&self) -> usize {
        self.out_h().div_ceil(self.tile.out_size())
    }
    /// Tile columns per sample, `TW = ceil(WO/m)`.
    pub const fn tiles_w(&self) -> usize {
        self.out_w().div_ceil(self.tile.out_size())
    }
    /// Tiles in all, `T = N*TH*TW` (saturating at `usize::MAX`, which no slice can match).
    pub const fn tiles(&self) -> usize {
        self.n.saturating_mul(self.tiles_h()).saturating_mul(self.tiles_w())
    }

    /// Checks that `N`, `H`, `W` are non-zero, `pad <= 2`, the output is at least 1x1 and no size overflows.
    ///
    /// Errors: [`Error::Shape`].
    pub fn validate(&self) -> Result<(), Error> {
        if [self.n, self.h, self.w].contains(&0) {
            return Err(Error::Shape { what: "winograd: a size (N, H or W) is zero" });
        }
        if self.pad > 2 {
            return Err(Error::Shape { what: "winograd: padding above 2" });
        }
        self.h.checked_add(2 * self.pad).ok_or(OVERFLOW)?;
        self.w.checked_add(2 * self.pad).ok_or(OVERFLOW)?;
        if self.out_h() == 0 || self.out_w() == 0 {
            return Err(Error::Shape { what: "winograd: the 3x3 kernel is larger than the padded input" });
        }
        product(&[self.n, self.h, self.w]).ok_or(OVERFLOW)?;
        product(&[self.n, self.out_h(), self.out_w()]).ok_or(OVERFLOW)?;
        product(&[self.n, self.tiles_h(), self.tiles_w()]).ok_or(OVERFLOW)?;
        Ok(())
    }

    /// The tiling of the forward pass (and of backward_weight) of `s`: `(N, H, W, pad)`; `None` unless `s` is
    /// 3x3, stride 1, `pad <= 2`. Does not validate `s`.
    pub fn forward_of(s: &Conv2dShape, tile: WinogradTile) -> Option<Self> {
        eligible(s).then_some(Self { n: s.n, h: s.h, w: s.w, pad: s.pad, tile })
    }

    /// The tiling of the backward_data pass of `s`, a forward convolution over `dy`: `(N, HO, WO, 2 - pad)`,
    /// whose output is `(H, W)`; `None` unless `s` is 3x3, stride 1, `pad <= 2`. Does not validate `s`.
    pub fn backward_data_of(s: &Conv2dShape, tile: WinogradTile) -> Option<Self> {
        eligible(s).then(|| Self { n: s.n, h: s.out_h(), w: s.out_w(), pad: 2 - s.pad, tile })
    }

    /// Validates the tiles and `channels`, then returns the element counts `(N*C*H*W, N*C*HO*WO, P*C*T)`.
    fn lens(&self, channels: usize) -> Result<(usize, usize, usize), Error> {
        self.validate()?;
        if channels == 0 {
            return Err(Error::Shape { what: "winograd: zero channels" });
        }
        let input = product(&[self.n, channels, self.h, self.w]).ok_or(OVERFLOW)?;
        let output = product(&[self.n, channels, self.out_h(), self.out_w()]).ok_or(OVERFLOW)?;
        let transformed = product(&[self.tile.planes(), channels, self.tiles()]).ok_or(OVERFLOW)?;
        Ok((input, output, transformed))
    }

    /// Every tile as `(t, n, th, tw)`, `t = (n*TH + th)*TW + tw` ascending.
    fn each(&self) -> impl Iterator<Item = (usize, usize, usize, usize)> {
        let (th_n, tw_n) = (self.tiles_h(), self.tiles_w());
        (0..self.n * th_n * tw_n).map(move |t| (t, t / (th_n * tw_n), t / tw_n % th_n, t % tw_n))
    }
}

/// 3x3 kernel, stride 1, `pad <= 2`.
fn eligible(s: &Conv2dShape) -> bool {
    s.kh == 3 && s.kw == 3 && s.stride == 1 && s.pad <= 2
}

// ---- F(2x2, 3x3) per-tile helpers ------------------------------------------------------------------------------

/// `U = G g G^T`.
fn weight_tile(g: &[[f32; 3]; 3]) -> Tile4 {
    // tmp = G g (4x3), column by column.
    let mut tmp = [[0.0f32; 3]; 4];
    for j in 0..3 {
        let (g0, g1, g2) = (g[0][j], g[1][j], g[2][j]);
        tmp[0][j] = g0;
        tmp[1][j] = 0.5 * ((g0 + g1) + g2);
        tmp[2][j] = 0.5 * ((g0 - g1) + g2);
        tmp[3][j] = g2;
    }
    // U = tmp G^T, row by row.
    tmp.map(|[t0, t1, t2]| [t0, 0.5 * ((t0 + t1) + t2), 0.5 * ((t0 - t1) + t2), t2])
}

/// `V = B^T d B`.
fn input_tile(d: &Tile4) -> Tile4 {
    // tmp = B^T d, column by column.
    let mut tmp = [[0.0f32; 4]; 4];
    for j in 0..4 {
        let (d0, d1, d2, d3) = (d[0][j], d[1][j], d[2][j], d[3][j]);
        tmp[0][j] = d0 - d2;
        tmp[1][j] = d1 + d2;
        tmp[2][j] = d2 - d1;
        tmp[3][j] = d1 - d3;
    }
    // V = tmp B, row by row.
    tmp.map(|[t0, t1, t2, t3]| [t0 - t2, t1 + t2, t2 - t1, t1 - t3])
}

/// `Y = A^T M A` (4x4 -> 2x2).
fn output_tile(m: &Tile4) -> [[f32; 2]; 2] {
    // tmp = A^T M (2x4), column by column.
    let mut tmp = [[0.0f32; 4]; 2];
    for j in 0..4 {
        let (m0, m1, m2, m3) = (m[0][j], m[1][j], m[2][j], m[3][j]);
        tmp[0][j] = (m0 + m1) + m2;
        tmp[1][j] = (m1 - m2) - m3;
    }
    // Y = tmp A, row by row.
    tmp.map(|[t0, t1, t2, t3]| [(t0 + t1) + t2, (t1 - t2) - t3])
}

/// `W = A dY A^T` (2x2 -> 4x4), the adjoint of [`output_tile`].
fn output_grad_tile(dy: &[[f32; 2]; 2]) -> Tile4 {
    // tmp = A dY (4x2), column by column.
    let mut tmp = [[0.0f32; 2]; 4];
    for j in 0..2 {
        let (y0, y1) = (dy[0][j], dy[1][j]);
        tmp[0][j] = y0;
        tmp[1][j] = y0 + y1;
        tmp[2][j] = y0 - y1;
        tmp[3][j] = -y1;
    }
    // W = tmp A^T, row by row.
    tmp.map(|[t0, t1]| [t0, t0 + t1, t0 - t1, -t1])
}

/// `dg = G^T dU G` (4x4 -> 3x3), the adjoint of [`weight_tile`].
fn weight_grad_tile(du: &Tile4) -> [[f32; 3]; 3] {
    // tmp = G^T dU (3x4), column by column.
    let mut tmp = [[0.0f32; 4]; 3];
    for j in 0..4 {
        let (u0, u1, u2, u3) = (du[0][j], du[1][j], du[2][j], du[3][j]);
        tmp[0][j] = u0 + 0.5 * (u1 + u2);
        tmp[1][j] = 0.5 * (u1 - u2);
        tmp[2][j] = 0.5 * (u1 + u2) + u3;
    }
    // dg = tmp G, row by row.
    tmp.map(|[t0, t1, t2, t3]| [t0 + 0.5 * (t1 + t2), 0.5 * (t1 - t2), 0.5 * (t1 + t2) + t3])
}

// ---- F(4x4, 3x3) per-tile helpers ------------------------------------------------------------------------------

/// `S = diag(D) diag(D)^T`, `D = (1/4, -1/6, -1/6, 1/24, 1/24, 1)`: `G g G^T = S (.) (G' g G'^T)` (module docs).
/// Each entry is the correctly rounded f32 of `±1/k` (the WGSL twin spells the same bits as hex literals).
const F4_SCALE: Tile6 = [
    [1.0 / 16.0, -1.0 / 24.0, -1.0 / 24.0, 1.0 / 96.0, 1.0 / 96.0, 1.0 / 4.0],
    [-1.0 / 24.0, 1.0 / 36.0, 1.0 / 36.0, -1.0 / 144.0, -1.0 / 144.0, -1.0 / 6.0],
    [-1.0 / 24.0, 1.0 / 36.0, 1.0 / 36.0, -1.0 / 144.0, -1.0 / 144.0, -1.0 / 6.0],
    [1.0 / 96.0, -1.0 / 144.0, -1.0 / 144.0, 1.0 / 576.0, 1.0 / 576.0, 1.0 / 24.0],
    [1.0 / 96.0, -1.0 / 144.0, -1.0 / 144.0, 1.0 / 576.0, 1.0 / 576.0, 1.0 / 24.0],
    [1.0 / 4.0, -1.0 / 6.0, -1.0 / 6.0, 1.0 / 24.0, 1.0 / 24.0, 1.0],
];

/// `G' (g0, g1, g2)^T`: `(g0, (g0 + g2) + g1, (g0 + g2) - g1, (g0 + 4 g2) + 2 g1, (g0 + 4 g2) - 2 g1, g2)`.
fn f4_g(g0: f32, g1: f32, g2: f32) -> [f32; 6] {
    let (p, q, r) = (g0 + g2, g0 + 4.0 * g2, 2.0 * g1);
    [g0, p + g1, p - g1, q + r, q - r, g2]
}

/// `B^T (d0, ..., d5)^T`: `c = d4 - d2`, `a = d4 - 4 d2`, `b = d3 - 4 d1`, `e = 2 (d3 - d1)`;
/// `(c + 4 (d0 - d2), a + b, a - b, c + e, c - e, (d5 - d3) + 4 (d1 - d3))`.
fn f4_bt([d0, d1, d2, d3, d4, d5]: [f32; 6]) -> [f32; 6] {
    let (c, a, b, e) = (d4 - d2, d4 - 4.0 * d2, d3 - 4.0 * d1, 2.0 * (d3 - d1));
    [c + 4.0 * (d0 - d2), a + b, a - b, c + e, c - e, (d5 - d3) + 4.0 * (d1 - d3)]
}

/// `A^T (m0, ..., m5)^T`: `a = m1 + m2`, `b = m1 - m2`, `c = m3 + m4`, `e = m3 - m4`;
/// `((m0 + a) + c, b + 2 e, a + 4 c, (b + 8 e) + m5)`.
fn f4_at([m0, m1, m2, m3, m4, m5]: [f32; 6]) -> [f32; 4] {
    let (a, b, c, e) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
    [(m0 + a) + c, b + 2.0 * e, a + 4.0 * c, (b + 8.0 * e) + m5]
}

/// `A (y0, ..., y3)^T`: `p = y0 + y2`, `q = y1 + y3`, `r = y0 + 4 y2`, `s = 2 (y1 + 4 y3)`;
/// `(y0, p + q, p - q, r + s, r - s, y3)`.
fn f4_a([y0, y1, y2, y3]: [f32; 4]) -> [f32; 6] {
    let (p, q, r, s) = (y0 + y2, y1 + y3, y0 + 4.0 * y2, 2.0 * (y1 + 4.0 * y3));
    [y0, p + q, p - q, r + s, r - s, y3]
}

/// `G'^T (u0, ..., u5)^T`: `a = u1 + u2`, `b = u1 - u2`, `c = u3 + u4`, `e = u3 - u4`;
/// `((u0 + a) + c, b + 2 e, (a + 4 c) + u5)`.
fn f4_gt([u0, u1, u2, u3, u4, u5]: [f32; 6]) -> [f32; 3] {
    let (a, b, c, e) = (u1 + u2, u1 - u2, u3 + u4, u3 - u4);
    [(u0 + a) + c, b + 2.0 * e, (a + 4.0 * c) + u5]
}

/// `U = G g G^T = S (.) (G' g G'^T)` (3x3 -> 6x6).
fn weight_tile_f4(g: &[[f32; 3]; 3]) -> Tile6 {
    // tmp = G' g (6x3), column by column.
    let mut tmp = [[0.0f32; 3]; 6];
    for j in 0..3 {
        for (row, val) in tmp.iter_mut().zip(f4_g(g[0][j], g[1][j], g[2][j])) {
            row[j] = val;
        }
    }
    // U = S (.) (tmp G'^T), row by row.
    core::array::from_fn(|i| {
        let [t0, t1, t2] = tmp[i];
        let row = f4_g(t0, t1, t2);
        core::array::from_fn(|j| F4_SCALE[i][j] * row[j])
    })
}

/// `V = B^T d B` (6x6).
fn input_tile_f4(d: &Tile6) -> Tile6 {
    // tmp = B^T d, column by column.
    let mut tmp = [[0.0f32; 6]; 6];
    for j in 0..6 {
        for (row, val) in tmp.iter_mut().zip(f4_bt(d.map(|r| r[j]))) {
            row[j] = val;
        }
    }
    // V = tmp B, row by row.
    tmp.map(f4_bt)
}

/// `Y = A^T M A` (6x6 -> 4x4).
fn output_tile_f4(m: &Tile6) -> Tile4 {
    // tmp = A^T M (4x6), column by column.
    let mut tmp = [[0.0f32; 6]; 4];
    for j in 0..6 {
        for (row, val) in tmp.iter_mut().zip(f4_at(m.map(|r| r[j]))) {
            row[j] = val;
        }
    }
    // Y = tmp A, row by row.
    tmp.map(f4_at)
}

/// `W = A dY A^T` (4x4 -> 6x6), the adjoint of [`output_tile_f4`].
fn output_grad_tile_f4(dy: &Tile4) -> Tile6 {
    // tmp = A dY (6x4), column by column.
    let mut tmp = [[0.0f32; 4]; 6];
    for j in 0..4 {
        for (row, val) in tmp.iter_mut().zip(f4_a(dy.map(|r| r[j]))) {
            row[j] = val;
        }
    }
    // W = tmp A^T, row by row.
    tmp.map(f4_a)
}

/// `dg = G^T dU G = G'^T (S (.) dU) G'` (6x6 -> 3x3), the adjoint of [`weight_tile_f4`].
fn weight_grad_tile_f4(du: &Tile6) -> [[f32; 3]; 3] {
    // tmp = G'^T (S (.) dU) (3x6), column by column.
    let mut tmp = [[0.0f32; 6]; 3];
    for j in 0..6 {
        let col: [f32; 6] = core::array::from_fn(|i| F4_SCALE[i][j] * du[i][j]);
        for (row, val) in tmp.iter_mut().zip(f4_gt(col)) {
            row[j] = val;
        }
    }
    // dg = tmp G', row by row.
    tmp.map(f4_gt)
}

// ---- The transforms --------------------------------------------------------------------------------------------

/// The checked `C_OUT*C_IN*9` and `P*C_OUT*C_IN` of the weight transforms.
fn weight_lens(tile: WinogradTile, c_out: usize, c_in: usize) -> Result<(usize, usize), Error> {
    if c_out == 0 || c_in == 0 {
        return Err(Error::Shape { what: "winograd: a size (C_OUT or C_IN) is zero" });
    }
    Ok((product(&[c_out, c_in, 9]).ok_or(OVERFLOW)?, product(&[tile.planes(), c_out, c_in]).ok_or(OVERFLOW)?))
}

/// `U = G g G^T` of every kernel of `weight (C_OUT, C_IN, 3, 3)` for `tile`: `u (P, C_OUT, C_IN)`, or with `flip`
/// `u (P, C_IN, C_OUT)` from each kernel rotated by 180 degrees (`g[a][b] = weight[co, ci, 2-a, 2-b]`), the `U`
/// of backward_data.
///
/// Overwrites `u`. Errors: a zero size or overflow ([`Error::Shape`]), a slice of the wrong length
/// ([`Error::Length`] naming `weight` or `u`).
pub fn winograd_weight_transform(
    tile: WinogradTile,
    c_out: usize,
    c_in: usize,
    weight: &[f32],
    flip: bool,
    u: &mut [f32],
) -> Result<(), Error> {
    let (weight_len, u_len) = weight_lens(tile, c_out, c_in)?;
    check_len("weight", weight, weight_len)?;
    check_len("u", u, u_len)?;
    match tile {
        WinogradTile::F2x2 => weight_transform_with(c_out, c_in, weight, flip, u, weight_tile),
        WinogradTile::F4x4 => weight_transform_with(c_out, c_in, weight, flip, u, weight_tile_f4),
    }
    Ok(())
}

/// [`winograd_weight_transform`] with the per-tile transform `f` (`I x I` planes); sizes checked by the caller.
fn weight_transform_with<const I: usize>(
    c_out: usize,
    c_in: usize,
    weight: &[f32],
    flip: bool,
    u: &mut [f32],
    f: fn(&[[f32; 3]; 3]) -> [[f32; I]; I],
) {
    for co in 0..c_out {
        for ci in 0..c_in {
            let k = &weight[(co * c_in + ci) * 9..][..9];
            let g: [[f32; 3]; 3] = core::array::from_fn(|a| {
                core::array::from_fn(|b| if flip { k[(2 - a) * 3 + (2 - b)] } else { k[a * 3 + b] })
            });
            // Element (e, r, s) of U (P, R, S).
            let (r, s, rows, cols) = if flip { (ci, co, c_in, c_out) } else { (co, ci, c_out, c_in) };
            for (e, &val) in f(&g).iter().flatten().enumerate() {
                u[(e * rows + r) * cols + s] = val;
            }
        }
    }
}

/// `V = B^T d B` of every tile's input patch of `x (N, C, H, W)`: `v (P, C, T)`, or with `transposed`
/// `v (P, T, C)` (the right operand of backward_weight's products). `C` is `channels`.
///
/// Overwrites `v`. Errors: invalid tiles or a zero size ([`Error::Shape`], see [`WinogradTiles::validate`]), a
/// slice of the wrong length ([`Error::Length`] naming `x` or `v`).
pub fn winograd_input_transform(
    t: &WinogradTiles,
    channels: usize,
    x: &[f32],
    transposed: bool,
    v: &mut [f32],
) -> Result<(), Error> {
    let (x_len, _, v_len) = t.lens(channels)?;
    check_len("x", x, x_len)?;
    check_len("v", v, v_len)?;
    match t.tile {
        WinogradTile::F2x2 => input_transform_with(t, channels, x, transposed, v, input_tile, |_, xv| xv),
        WinogradTile::F4x4 => input_transform_with(t, channels, x, transposed, v, input_tile_f4, |_, xv| xv),
    }
    Ok(())
}

/// The batch norm, and optionally the PReLU after it, that [`winograd_normalized_input_transform`] applies to
/// each element of its input as it reads it: `prelu(gamma[c] * (x - mean[c]) / sqrt(var[c] + eps) + beta[c],
/// alpha[c])`, rounded as [`batchnorm_forward_eval`](super::batchnorm_forward_eval) (with `mean`, `var` as its
/// running statistics, or a training step's saved batch statistics) and
/// [`batchnorm_prelu_forward_eval`](super::batchnorm_prelu_forward_eval) round it. Every slice has one value per
/// channel.
#[derive(Clone, Copy, Debug)]
pub struct NormalizedInput<'a> {
    /// The batch norm's `eps` (its momentum is not used).
    pub bn: BatchNorm,
    /// The mean and the variance the input is normalised with.
    pub mean: &'a [f32],
    /// See [`Self::mean`].
    pub var: &'a [f32],
    /// The batch norm's weight.
    pub gamma: &'a [f32],
    /// The batch norm's bias.
    pub beta: &'a [f32],
    /// The slopes of a PReLU applied after the batch norm, or none.
    pub alpha: Option<&'a [f32]>,
}

impl NormalizedInput<'_> {
    /// Errors unless every slice holds `channels` values ([`Error::Length`] naming it).
    fn check(&self, channels: usize) -> Result<(), Error> {
        for (name, t) in [("mean", self.mean), ("var", self.var), ("gamma", self.gamma), ("beta", self.beta)] {
            check_len(name, t, channels)?;
        }
        if let Some(alpha) = self.alpha {
            check_len("alpha", alpha, channels)?;
        }
        Ok(())
    }
}

/// [`winograd_input_transform`] of `norm` applied to `x`: `V = B^T d B` of the patches of
/// `prelu(bn(x))` (zero padding outside `x`, as the convolution pads its input), without storing that tensor.
/// The same bits as [`batchnorm_forward_eval`](super::batchnorm_forward_eval) (or
/// [`batchnorm_prelu_forward_eval`](super::batchnorm_prelu_forward_eval)) followed by
/// [`winograd_input_transform`].
///
/// Overwrites `v`. Errors: as [`winograd_input_transform`], and a per-channel slice of `norm` of the wrong
/// length ([`Error::Length`] naming it).
pub fn winograd_normalized_input_transform(
    t: &WinogradTiles,
    channels: usize,
    x: &[f32],
    norm: &NormalizedInput<'_>,
    transposed: bool,
    v: &mut [f32],
) -> Result<(), Error> {
    let (x_len, _, v_len) = t.lens(channels)?;
    check_len("x", x, x_len)?;
    norm.check(channels)?;
    check_len("v", v, v_len)?;
    let load = |c: usize, xv: f32| {
        let z = normalised_value(xv, norm.mean[c], norm.var[c], norm.gamma[c], norm.beta[c], norm.bn.eps);
        match norm.alpha {
            Some(alpha) => prelu(z, alpha[c]),
            None => z,
        }
    };
    match t.tile {
        WinogradTile::F2x2 => input_transform_with(t, channels, x, transposed, v, input_tile, load),
        WinogradTile::F4x4 => input_transform_with(t, channels, x, transposed, v, input_tile_f4, load),
    }
    Ok(())
}

/// [`winograd_input_transform`] with the per-tile transform `f` (`I x I` patches), each element of `x` read
/// through `load(channel, value)`; sizes checked by the caller.
fn input_transform_with<const I: usize>(
    t: &WinogradTiles,
    channels: usize,
    x: &[f32],
    transposed: bool,
    v: &mut [f32],
    f: fn(&[[f32; I]; I]) -> [[f32; I]; I],
    load: impl Fn(usize, f32) -> f32,
) {
    let (h, w, pad, count, step) = (t.h, t.w, t.pad, t.tiles(), I - 2);
    for (tile, n, th, tw) in t.each() {
        for c in 0..channels {
            let plane = &x[(n * channels + c) * h * w..][..h * w];
            // Padded coordinates (m*th + i, m*tw + j) are input (m*th + i - pad, m*tw + j - pad).
            let d: [[f32; I]; I] = core::array::from_fn(|i| {
                core::array::from_fn(|j| {
                    let (r, q) = (step * th + i, step * tw + j);
                    if r < pad || q < pad || r - pad >= h || q - pad >= w {
                        0.0
                    } else {
                        load(c, plane[(r - pad) * w + (q - pad)])
                    }
                })
            });
            for (e, &val) in f(&d).iter().flatten().enumerate() {
                let at = if transposed { (e * count + tile) * channels + c } else { (e * channels + c) * count + tile };
                v[at] = val;
            }
        }
    }
}

/// `Y = A^T M A` of every tile of the products `m (P, C, T)`: `y (N, C, HO, WO)` (a tile's positions past
/// `HO`/`WO` are dropped). `C` is `channels`.
///
/// Overwrites `y`. Errors: invalid tiles or a zero size ([`Error::Shape`]), a slice of the wrong length
/// ([`Error::Length`] naming `m` or `y`).
pub fn winograd_output_transform(t: &WinogradTiles, channels: usize, m: &[f32], y: &mut [f32]) -> Result<(), Error> {
    let (_, y_len, m_len) = t.lens(channels)?;
    check_len("m", m, m_len)?;
    check_len("y", y, y_len)?;
    match t.tile {
        WinogradTile::F2x2 => output_transform_with(t, channels, m, y, output_tile),
        WinogradTile::F4x4 => output_transform_with(t, channels, m, y, output_tile_f4),
    }
    Ok(())
}

/// [`winograd_output_transform`] with the per-tile transform `f` (`I x I` to `O x O`); sizes checked by the
/// caller.
fn output_transform_with<const I: usize, const O: usize>(
    t: &WinogradTiles,
    channels: usize,
    m: &[f32],
    y: &mut [f32],
    f: fn(&[[f32; I]; I]) -> [[f32; O]; O],
) {
    let (ho, wo, count) = (t.out_h(), t.out_w(), t.tiles());
    for (tile, n, th, tw) in t.each() {
        for c in 0..channels {
            let mt: [[f32; I]; I] =
                core::array::from_fn(|i| core::array::from_fn(|j| m[((i * I + j) * channels + c) * count + tile]));
            let plane = &mut y[(n * channels + c) * ho * wo..][..ho * wo];
            for (i, row) in f(&mt).iter().enumerate() {
                for (j, &val) in row.iter().enumerate() {
                    let (oh, ow) = (O * th + i, O * tw + j);
                    if oh < ho && ow < wo {
                        plane[oh * wo + ow] = val;
                    }
                }
            }
        }
    }
}

/// `W = A dY A^T` of every tile of `dy (N, C, HO, WO)` (zeros past `HO`/`WO`): `w (P, C, T)`, the gradient of
/// the products `M` (the adjoint of [`winograd_output_transform`]). `C` is `channels`.
///
/// Overwrites `w`. Errors: invalid tiles or a zero size ([`Error::Shape`]), a slice of the wrong length
/// ([`Error::Length`] naming `dy` or `w`).
pub fn winograd_output_grad_transform(
    t: &WinogradTiles,
    channels: usize,
    dy: &[f32],
    w: &mut [f32],
) -> Result<(), Error> {
    let (_, dy_len, w_len) = t.lens(channels)?;
    check_len("dy", dy, dy_len)?;
    check_len("w", w, w_len)?;
    match t.tile {
        WinogradTile::F2x2 => output_grad_transform_with(t, channels, dy, w, output_grad_tile),
        WinogradTile::F4x4 => output_grad_transform_with(t, channels, dy, w, output_grad_tile_f4),
    }
    Ok(())
}

/// [`winograd_output_grad_transform`] with the per-tile transform `f` (`O x O` to `I x I`); sizes checked by the
/// caller.
fn output_grad_transform_with<const O: usize, const I: usize>(
    t: &WinogradTiles,
    channels: usize,
    dy: &[f32],
    w: &mut [f32],
    f: fn(&[[f32; O]; O]) -> [[f32; I]; I],
) {
    let (ho, wo, count) = (t.out_h(), t.out_w(), t.tiles());
    for (tile, n, th, tw) in t.each() {
        for c in 0..channels {
            let plane = &dy[(n * channels + c) * ho * wo..][..ho * wo];
            let dyt: [[f32; O]; O] = core::array::from_fn(|i| {
                core::array::from_fn(|j| {
                    let (oh, ow) = (O * th + i, O * tw + j);
                    if oh < ho && ow < wo {
                        plane[oh * wo + ow]
                    } else {
                        0.0
                    }
                })
            });
            for (e, &val) in f(&dyt).iter().flatten().enumerate() {
                w[(e * channels + c) * count + tile] = val;
            }
        }
    }
}

/// `dg = G^T dU G` of every `(co, ci)` of `du (P, C_OUT, C_IN)`: `dweight (C_OUT, C_IN, 3, 3)` (the adjoint of
/// the unflipped [`winograd_weight_transform`] of the same `tile`).
///
/// Overwrites `dweight`. Errors: a zero size or overflow ([`Error::Shape`]), a slice of the wrong length
/// ([`Error::Length`] naming `du` or `dweight`).
pub fn winograd_weight_grad_transform(
    tile: WinogradTile,
    c_out: usize,
    c_in: usize,
    du: &[f32],
    dweight: &mut [f32],
) -> Result<(), Error> {
    let (dweight_len, du_len) = weight_lens(tile, c_out, c_in)?;
    check_len("du", du, du_len)?;
    check_len("dweight", dweight, dweight_len)?;
    match tile {
        WinogradTile::F2x2 => weight_grad_transform_with(c_out, c_in, du, dweight, weight_grad_tile),
        WinogradTile::F4x4 => weight_grad_transform_with(c_out, c_in, du, dweight, weight_grad_tile_f4),
    }
    Ok(())
}

/// [`winograd_weight_grad_transform`] with the per-tile transform `f` (`I x I` planes); sizes checked by the
/// caller.
fn weight_grad_transform_with<const I: usize>(
    c_out: usize,
    c_in: usize,
    du: &[f32],
    dweight: &mut [f32],
    f: fn(&[[f32; I]; I]) -> [[f32; 3]; 3],
) {
    for co in 0..c_out {
        for ci in 0..c_in {
            let dut: [[f32; I]; I] =
                core::array::from_fn(|i| core::array::from_fn(|j| du[((i * I + j) * c_out + co) * c_in + ci]));
            let k = &mut dweight[(co * c_in + ci) * 9..][..9];
            for (dst, &val) in k.iter_mut().zip(f(&dut).iter().flatten()) {
                *dst = val;
            }
        }
    }
}

/// `c[b] = a[b] b[b]` for every `b < batch`: `a (BATCH, M, K)`, `b (BATCH, K, COLS)`, `c (BATCH, M, COLS)`.
///
/// Each element is summed over `k = 0, 1, ..., K-1` in order from `+0.0` as `acc = acc + a*b` (the product
/// rounded, then the sum), the order of the WGSL twin. Overwrites `c`. Errors: a zero size or overflow
/// ([`Error::Shape`]), a slice of the wrong length ([`Error::Length`] naming `a`, `b` or `c`).
pub fn gemm_batched(
    batch: usize,
    m: usize,
    k: usize,
    cols: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
) -> Result<(), Error> {
    if [batch, m, k, cols].contains(&0) {
        return Err(Error::Shape { what: "gemm_batched: a size (BATCH, M, K or COLS) is zero" });
    }
    let a_len = product(&[batch, m, k]).ok_or(OVERFLOW)?;
    let b_len = product(&[batch, k, cols]).ok_or(OVERFLOW)?;
    let c_len = product(&[batch, m, cols]).ok_or(OVERFLOW)?;
    check_len("a", a, a_len)?;
    check_len("b", b, b_len)?;
    check_len("c", c, c_len)?;
    for ((a_mat, b_mat), c_mat) in a.chunks_exact(m * k).zip(b.chunks_exact(k * cols)).zip(c.chunks_exact_mut(m * cols))
    {
        for (a_row, c_row) in a_mat.chunks_exact(k).zip(c_mat.chunks_exact_mut(cols)) {
            // Row at a time, k outermost: each c[m][j] still sees its products in the order k = 0, 1, ...
            c_row.fill(0.0);
            for (&a_mk, b_row) in a_row.iter().zip(b_mat.chunks_exact(cols)) {
                for (acc, &b_kj) in c_row.iter_mut().zip(b_row) {
                    *acc += a_mk * b_kj; // acc + (a*b): two roundings, never fused in Rust
                }
            }
        }
    }
    Ok(())
}

/// Checks that `s` is Winograd-eligible and valid, returning its forward and backward_data tilings by `tile`.
fn winograd_shape(s: &Conv2dShape, tile: WinogradTile) -> Result<(WinogradTiles, WinogradTiles), Error> {
    match (WinogradTiles::forward_of(s, tile), WinogradTiles::backward_data_of(s, tile)) {
        (Some(fwd), Some(bwd)) => {
            s.validate()?;
            Ok((fwd, bwd))
        }
        _ => Err(Error::Shape { what: "winograd: needs a 3x3 kernel, stride 1 and pad <= 2" }),
    }
}

/// Elements of the workspace the three composite passes ([`conv2d_winograd_forward`],
/// [`conv2d_winograd_backward_data`], [`conv2d_winograd_backward_weight`]) need for shape `s` with `tile`: the
/// largest `u + v + m` of the three, namely `P*(C_OUT*C_IN + C_IN*T + C_OUT*T)` (forward, backward_weight) and
/// `P*(C_IN*C_OUT + C_OUT*T' + C_IN*T')` (backward_data, `T'` its tiles over `dy`), `P` the tile's
/// [`WinogradTile::planes`].
///
/// `None` if `s` is not a valid 3x3 stride-1 convolution with `pad <= 2`, or the count overflows `usize`.
pub fn winograd_workspace_len(s: &Conv2dShape, tile: WinogradTile) -> Option<usize> {
    let (fwd, bwd) = winograd_shape(s, tile).ok()?;
    fwd.validate().ok()?;
    bwd.validate().ok()?;
    let sum = |parts: [usize; 3]| parts.iter().try_fold(0usize, |acc, &p| acc.checked_add(p));
    let planes = tile.planes();
    let u = product(&[planes, s.c_out, s.c_in])?;
    let forward = sum([u, product(&[planes, s.c_in, fwd.tiles()])?, product(&[planes, s.c_out, fwd.tiles()])?])?;
    let backward = sum([u, product(&[planes, s.c_out, bwd.tiles()])?, product(&[planes, s.c_in, bwd.tiles()])?])?;
    Some(forward.max(backward))
}

/// Checks that `workspace` holds at least [`winograd_workspace_len`] elements (which also proves that every
/// `u`, `v`, `m` length of the three passes fits `usize`).
fn check_workspace(s: &Conv2dShape, tile: WinogradTile, workspace: &[f32]) -> Result<(), Error> {
    let needed = winograd_workspace_len(s, tile).ok_or(OVERFLOW)?;
    if workspace.len() < needed {
        return Err(Error::Length { what: "workspace", expected: needed, got: workspace.len() });
    }
    Ok(())
}

/// `workspace` split into `[u, v, m]` of the given lengths, whose sum [`check_workspace`] has checked.
fn carve(workspace: &mut [f32], lens: [usize; 3]) -> (&mut [f32], &mut [f32], &mut [f32]) {
    let (u, rest) = workspace.split_at_mut(lens[0]);
    let (v, rest) = rest.split_at_mut(lens[1]);
    (u, v, &mut rest[..lens[2]])
}

/// `y = conv(x, weight)` by Winograd with `tile`, as [`conv2d_forward`](super::conv2d_forward) up to rounding:
/// `U = weight_transform(weight)`, `V = input_transform(x)`, `M = gemm_batched(P, C_OUT, C_IN, T, U, V)`,
/// `y = output_transform(M)`. Shapes: `x (N, C_IN, H, W)`, `weight (C_OUT, C_IN, 3, 3)`, `y (N, C_OUT, HO, WO)`,
/// `workspace` at least [`winograd_workspace_len`] elements (its contents are scratch).
///
/// Overwrites `y`. Errors: `s` not a valid 3x3 stride-1 convolution with `pad <= 2` ([`Error::Shape`]), a slice
/// of the wrong length or a short workspace ([`Error::Length`] naming `x`, `weight`, `y` or `workspace`).
pub fn conv2d_winograd_forward(
    s: &Conv2dShape,
    tile: WinogradTile,
    x: &[f32],
    weight: &[f32],
    y: &mut [f32],
    workspace: &mut [f32],
) -> Result<(), Error> {
    let (t, _) = winograd_shape(s, tile)?;
    check_len("x", x, s.input_len())?;
    check_len("weight", weight, s.weight_len())?;
    check_len("y", y, s.output_len())?;
    check_workspace(s, tile, workspace)?;
    convolve(&t, [s.c_in, s.c_out], x, weight, false, y, workspace)
}

/// The forward convolution of `input` (channels `[c, c_next]`) on the tiles `t` into `output`, with `weight` as
/// stored or, with `flip`, rotated and transposed (backward_data); the sizes are checked by the caller.
fn convolve(
    t: &WinogradTiles,
    [c, c_next]: [usize; 2],
    input: &[f32],
    weight: &[f32],
    flip: bool,
    output: &mut [f32],
    workspace: &mut [f32],
) -> Result<(), Error> {
    let (count, planes) = (t.tiles(), t.tile.planes());
    let (u, v, m) = carve(workspace, [planes * c_next * c, planes * c * count, planes * c_next * count]);
    // The weight's shape (C_OUT, C_IN) is (c_next, c) forward, (c, c_next) flipped.
    let (c_out, c_in) = if flip { (c, c_next) } else { (c_next, c) };
    winograd_weight_transform(t.tile, c_out, c_in, weight, flip, u)?;
    winograd_input_transform(t, c, input, false, v)?;
    gemm_batched(planes, c_next, c, count, u, v, m)?;
    winograd_output_transform(t, c_next, m, output)
}

/// `dx` by Winograd with `tile`, as [`conv2d_backward_data`](super::conv2d_backward_data) up to rounding: the
/// forward convolution of `dy` with the flipped weight and padding `2 - pad` ([`WinogradTiles::backward_data_of`]):
/// `U' = weight_transform(weight, flip)`, `V' = input_transform(dy)`, `M' = gemm_batched(P, C_IN, C_OUT, T', U',
/// V')`, `dx = output_transform(M')`. Shapes: `dy (N, C_OUT, HO, WO)`, `weight (C_OUT, C_IN, 3, 3)`,
/// `dx (N, C_IN, H, W)`, `workspace` at least [`winograd_workspace_len`] elements.
///
/// Overwrites `dx`. Errors as [`conv2d_winograd_forward`] ([`Error::Length`] naming `dy`, `weight`, `dx` or
/// `workspace`).
pub fn conv2d_winograd_backward_data(
    s: &Conv2dShape,
    tile: WinogradTile,
    dy: &[f32],
    weight: &[f32],
    dx: &mut [f32],
    workspace: &mut [f32],
) -> Result<(), Error> {
    let (_, t) = winograd_shape(s, tile)?;
    check_len("dy", dy, s.output_len())?;
    check_len("weight", weight, s.weight_len())?;
    check_len("dx", dx, s.input_len())?;
    check_workspace(s, tile, workspace)?;
    convolve(&t, [s.c_out, s.c_in], dy, weight, true, dx, workspace)
}

/// `dweight` by Winograd with `tile`, as [`conv2d_backward_weight`](super::conv2d_backward_weight) up to
/// rounding, with the forward tiling: `W = output_grad_transform(dy)`, `V^T = input_transform(x, transposed)`,
/// `dU = gemm_batched(P, C_OUT, T, C_IN, W, V^T)`, `dweight = weight_grad_transform(dU)`. Shapes:
/// `dy (N, C_OUT, HO, WO)`, `x (N, C_IN, H, W)`, `dweight (C_OUT, C_IN, 3, 3)`, `workspace` at least
/// [`winograd_workspace_len`] elements.
///
/// Overwrites `dweight`. Errors as [`conv2d_winograd_forward`] ([`Error::Length`] naming `dy`, `x`, `dweight` or
/// `workspace`).
pub fn conv2d_winograd_backward_weight(
    s: &Conv2dShape,
    tile: WinogradTile,
    dy: &[f32],
    x: &[f32],
    dweight: &mut [f32],
    workspace: &mut [f32],
) -> Result<(), Error> {
    let (t, _) = winograd_shape(s, tile)?;
    check_len("dy", dy, s.output_len())?;
    check_len("x", x, s.input_len())?;
    check_len("dweight", dweight, s.weight_len())?;
    check_workspace(s, tile, workspace)?;
    let (count, planes) = (t.tiles(), tile.planes());
    let (du, vt, w) = carve(workspace, [planes * s.c_out * s.c_in, planes * count * s.c_in, planes * s.c_out * count]);
    winograd_output_grad_transform(&t, s.c_out, dy, w)?;
    winograd_input_transform(&t, s.c_in, x, true, vt)?;
    gemm_batched(planes, s.c_out, count, s.c_in, w, vt, du)?;
    winograd_weight_grad_transform(tile, s.c_out, s.c_in, du, dweight)
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::vec;
    use std::vec::Vec;

    use super::*;
    use crate::nn::{conv2d_backward_data, conv2d_backward_weight, conv2d_forward};
    use WinogradTile::{F2x2, F4x4};

    /// xorshift64*: a deterministic stream for test data.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        /// Uniform in [-1, 1] (24-bit grid, exact in f32).
        fn uniform(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
        /// A small integer in [-8, 8]: every transform of such values is exact in f32.
        fn small_int(&mut self) -> f32 {
            (self.next() % 17) as f32 - 8.0
        }
        fn vec(&mut self, len: usize) -> Vec<f32> {
            (0..len).map(|_| self.uniform()).collect()
        }
        fn ints(&mut self, len: usize) -> Vec<f32> {
            (0..len).map(|_| self.small_int()).collect()
        }
    }

    fn conv(n: usize, c_in: usize, (h, w): (usize, usize), c_out: usize, pad: usize) -> Conv2dShape {
        Conv2dShape { n, c_in, h, w, c_out, kh: 3, kw: 3, stride: 1, pad }
    }

    /// (N, C_IN, (H, W), C_OUT, pad).
    type Case = (usize, usize, (usize, usize), usize, usize);

    /// Odd and even sizes (partial tiles of both sizes), pad 0, 1, 2, batches, 1x1, 7x7 and 13x11 inputs.
    const SHAPES: [Case; 11] = [
        (1, 3, (1, 1), 5, 1),
        (2, 3, (7, 7), 5, 1),
        (1, 5, (6, 8), 3, 0),
        (2, 8, (5, 9), 8, 2),
        (3, 3, (4, 5), 8, 1),
        (1, 8, (9, 6), 5, 0),
        (2, 5, (2, 3), 3, 2),
        (1, 1, (3, 3), 1, 0),
        (2, 3, (1, 2), 5, 2),
        (1, 5, (8, 8), 8, 1),
        (1, 4, (13, 11), 6, 1),
    ];

    // ---- The error bound ------------------------------------------------------------------------------------
    //
    // Write u = f32::EPSILON / 2 (the unit roundoff) and ignore underflow (test data lie in [-1, 1]). A value
    // computed by a chain of at most D roundings from exact terms equals sum_terms term * (1 + theta),
    // |theta| <= D u / (1 - D u) (Higham, Lemma 3.1), so its error is at most ~D u times the sum of |terms|.
    // Multiplying by 0.5, 2, 4, 8 and negating are exact; a rounded constant (F(4x4)'s S) counts as one rounding.
    //
    // F(2x2) forward (K = C_IN). Depths along any path: input transform 2 roundings, weight transform 4
    // (0.5 * ((a + b) + c) twice), product 1, gemm K, output transform 4: D = K + 11. The sum of |terms| of
    // one output is at most |A^T| (sum_c |G||g_c||G^T| (.) |B^T||d_c||B|) |A|, with d_c the element's 4x4 patch.
    // Every entry of |G||g||G^T| is <= sum |g| (|G| entries are <= 1); the entries of |B^T||d||B| sum to
    // sum_jl |d_jl| b_j b_l <= 9 sum |d| (the column sums b of |B^T| are 1, 3, 3, 1); an output picks 9 of the 16
    // products (entries of |A| are 0 or 1). Hence sum |terms| <= 9 P, P = sum_c (sum |g_c|)(sum |d_c|), and
    // Winograd's error <= 9 (K + 11) u P. The direct convolution adds 9K products one by one: error
    // <= 9K u sum_c sum_ab |g_c[a][b]| |x| <= 9K u P. Together <= (18K + 99) u P = (9K + 49.5) eps P, which
    // (K + 16) * 16 * eps * P bounds for every K, with room for the second-order terms.
    //
    // F(2x2) backward data (K = C_OUT): the same forward analysis on dy, padding 2 - pad, kernels
    // g'_co = weight[co, ci] rotated (the same sum |g|); the direct pass scatters 9K products into each dx.
    //
    // F(2x2) backward weight (K = N*TH*TW): depths: output-gradient transform 2, input transform 2, product 1,
    // gemm K, weight-gradient transform 4 (dU0 + 0.5*(dU1 + dU2) twice): D = K + 9. Each of the 9 dweight of
    // (co, ci) sums over tiles the |G^T|-weighted (entries <= 1) |W_t| (.) |V_t|; every entry of |A||dY_t||A^T| is
    // <= sum |dY_t| and the entries of |V_t| sum to <= 9 sum |d_t|, so sum |terms| <= 9 P,
    // P = sum_tiles (sum |dy over the 2x2 tile of co|)(sum |x over the 4x4 patch of ci|). The direct pass sums
    // a row (<= WO - 1 adds), adds rows (<= HO) and samples (<= N): depth <= 1 + WO + HO + N <= 5K + 1, over
    // terms summing to <= P. Together <= (9 (K + 9) + 5K + 1) u P = (7K + 41) eps P <= (K + 16) * 16 * eps * P.
    //
    // F(4x4) forward (K = C_IN). Depths: input transform 4 (2 per pass: e.g. c + 4 (d0 - d2)), weight transform 6
    // (2 per G' pass, then the rounded constant S and the product), product 1, gemm K, output transform 6
    // ((m0 + a) + c per pass): D = K + 17. A term of output (o1, o2) from input d[k][l] and weight g[a][b] has the
    // coefficient |A^T[o1][i] A^T[o2][j] G[i][a] G[j][b] B^T[i][k] B^T[j][l]| summed over the element (i, j);
    // with |G[i][a]| <= m_i = (1/4, 1/6, 1/6, 1/6, 1/6, 1) it is at most w_o1[k] w_o2[l],
    // w_o[k] = sum_i |A^T[o][i]| m_i |B^T[i][k]|, whose largest entry is w_3[1] = (4 + 4 + 8*2 + 8*2)/6 + 4 = 32/3
    // (= w_3[3]; test f4_bound_constant). So sum |terms| <= (32/3)^2 P = 113.8 P,
    // P as above over the 6x6 patch, and Winograd's error <= 113.8 (K + 17) u P; with the direct pass's 9K u P,
    // <= (122.8 K + 1935) u P = (61.4 K + 968) eps P <= (K + 17) * 64 * eps * P, room left for second order.
    //
    // F(4x4) backward data: as forward, on dy with the rotated kernels (the bound on |G[i][a]| holds for both).
    //
    // F(4x4) backward weight (K = N*TH*TW): depths: output-gradient transform 4, input transform 4, product 1,
    // gemm K, weight-gradient transform 8 (S and the product, then 3 per G'^T pass): D = K + 17. dweight[a][b]'s
    // term from dy[p][q] and x[k][l] has the coefficient |G[i][a] G[j][b] A^T[p][i] A^T[q][j] B^T[i][k] B^T[j][l]|
    // summed over (i, j): at most z_a[p][k] z_b[q][l], z_a[p][k] = sum_i |G[i][a]| |A^T[p][i]| |B^T[i][k]|, largest
    // again 32/3 (a = 2, p = 3). So sum |terms| <= 113.8 P, P = sum_tiles (sum |dy over the 4x4 tile|)(sum |x
    // over the 6x6 patch|). The direct pass has depth <= 1 + WO + HO + N <= 1 + 4 TW + 4 TH + N <= 9K + 1 over
    // terms summing to <= P: together <= (113.8 (K + 17) + 9K + 1) u P, the forward pass's bound again.

    /// The bound's `(K + k0) * c * eps` of `tile` (see above): `(k0, c)` = (16, 16) for F(2x2), (17, 64) for F(4x4).
    fn bound_scale(tile: WinogradTile, k: usize) -> f64 {
        let (k0, c) = match tile {
            F2x2 => (16, 16.0),
            F4x4 => (17, 64.0),
        };
        (k + k0) as f64 * c * f64::from(f32::EPSILON)
    }

    /// Sum of |x| over the input patch of tile (n, th, tw) in channel c of x (N, C, H, W).
    fn patch_sum(t: &WinogradTiles, channels: usize, x: &[f32], (n, c, th, tw): (usize, usize, usize, usize)) -> f64 {
        let (size, step) = (t.tile.in_size(), t.tile.out_size());
        let mut sum = 0.0;
        for i in 0..size {
            for j in 0..size {
                let (r, q) = (step * th + i, step * tw + j);
                if r >= t.pad && q >= t.pad && r - t.pad < t.h && q - t.pad < t.w {
                    sum += f64::from(x[((n * channels + c) * t.h + r - t.pad) * t.w + q - t.pad].abs());
                }
            }
        }
        sum
    }

    /// P of every output (N, C_OUT, HO, WO) of a forward convolution with tiles t of x (N, C_IN, H, W):
    /// sum_ci gsum(co, ci) * patch_sum(ci), gsum(co, ci) the sum of |g| of the kernel from ci to co.
    fn p_forward(
        t: &WinogradTiles,
        c_in: usize,
        c_out: usize,
        x: &[f32],
        gsum: impl Fn(usize, usize) -> f64,
    ) -> Vec<f64> {
        let (ho, wo, step) = (t.out_h(), t.out_w(), t.tile.out_size());
        let mut p = vec![0.0; t.n * c_out * ho * wo];
        for n in 0..t.n {
            for co in 0..c_out {
                for oh in 0..ho {
                    for ow in 0..wo {
                        p[((n * c_out + co) * ho + oh) * wo + ow] = (0..c_in)
                            .map(|ci| gsum(co, ci) * patch_sum(t, c_in, x, (n, ci, oh / step, ow / step)))
                            .sum();
                    }
                }
            }
        }
        p
    }

    /// P of every dweight (C_OUT, C_IN, 3, 3): sum over tiles of (sum |dy| over the tile)(sum |x| over the patch).
    fn p_backward_weight(t: &WinogradTiles, c_in: usize, c_out: usize, dy: &[f32], x: &[f32]) -> Vec<f64> {
        let (ho, wo, step) = (t.out_h(), t.out_w(), t.tile.out_size());
        let mut p = vec![0.0; c_out * c_in * 9];
        for (_, n, th, tw) in t.each() {
            for co in 0..c_out {
                let mut dy_sum = 0.0;
                for i in 0..step {
                    for j in 0..step {
                        let (oh, ow) = (step * th + i, step * tw + j);
                        if oh < ho && ow < wo {
                            dy_sum += f64::from(dy[((n * c_out + co) * ho + oh) * wo + ow].abs());
                        }
                    }
                }
                for ci in 0..c_in {
                    let term = dy_sum * patch_sum(t, c_in, x, (n, ci, th, tw));
                    p[(co * c_in + ci) * 9..][..9].iter_mut().for_each(|v| *v += term);
                }
            }
        }
        p
    }

    /// Sum of |g| of every kernel of weight (C_OUT, C_IN, 3, 3), indexed [co * C_IN + ci].
    fn kernel_sums(weight: &[f32]) -> Vec<f64> {
        weight.chunks_exact(9).map(|k| k.iter().map(|v| f64::from(v.abs())).sum()).collect()
    }

    /// Largest |winograd - direct| / (bound_scale(tile, k) * P); panics (test failure) above 1.
    fn worst_ratio(what: &str, tile: WinogradTile, winograd: &[f32], direct: &[f32], p: &[f64], k: usize) -> f64 {
        assert_eq!((winograd.len(), direct.len()), (p.len(), p.len()));
        let scale = bound_scale(tile, k);
        let mut worst = 0.0f64;
        for (i, ((&a, &b), &p)) in winograd.iter().zip(direct).zip(p).enumerate() {
            let diff = (f64::from(a) - f64::from(b)).abs();
            let ratio = if diff == 0.0 { 0.0 } else { diff / (scale * p) };
            assert!(ratio <= 1.0, "{what} {tile:?}: element {i}: winograd {a}, direct {b}, bound {}", scale * p);
            worst = worst.max(ratio);
        }
        worst
    }

    #[test]
    fn forward_matches_direct() {
        for tile in WinogradTile::ALL {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
            let mut overall = 0.0f64;
            for (n, c_in, hw, c_out, pad) in SHAPES {
                let s = conv(n, c_in, hw, c_out, pad);
                let (x, weight) = (rng.vec(s.input_len()), rng.vec(s.weight_len()));
                let mut workspace = vec![f32::NAN; winograd_workspace_len(&s, tile).unwrap()];
                let (mut y, mut direct) = (vec![f32::NAN; s.output_len()], vec![0.0; s.output_len()]);
                conv2d_winograd_forward(&s, tile, &x, &weight, &mut y, &mut workspace).unwrap();
                conv2d_forward(&s, &x, &weight, &mut direct).unwrap();
                let sums = kernel_sums(&weight);
                let t = WinogradTiles::forward_of(&s, tile).unwrap();
                let p = p_forward(&t, c_in, c_out, &x, |co, ci| sums[co * c_in + ci]);
                let ratio = worst_ratio("forward", tile, &y, &direct, &p, c_in);
                std::println!("forward {tile:?} {s:?}: max error / bound = {ratio:.3e}");
                overall = overall.max(ratio);
            }
            std::println!("forward {tile:?}: max error / bound over all shapes = {overall:.3e}");
        }
    }

    #[test]
    fn backward_data_matches_direct() {
        for tile in WinogradTile::ALL {
            let mut rng = Rng(0xD1B5_4A32_D192_ED03);
            let mut overall = 0.0f64;
            for (n, c_in, hw, c_out, pad) in SHAPES {
                let s = conv(n, c_in, hw, c_out, pad);
                let (dy, weight) = (rng.vec(s.output_len()), rng.vec(s.weight_len()));
                let mut workspace = vec![f32::NAN; winograd_workspace_len(&s, tile).unwrap()];
                let (mut dx, mut direct) = (vec![f32::NAN; s.input_len()], vec![0.0; s.input_len()]);
                conv2d_winograd_backward_data(&s, tile, &dy, &weight, &mut dx, &mut workspace).unwrap();
                conv2d_backward_data(&s, &dy, &weight, &mut direct).unwrap();
                // A forward convolution of dy (C_OUT channels) into C_IN channels, kernel (ci <- co) = weight[co, ci].
                let sums = kernel_sums(&weight);
                let t = WinogradTiles::backward_data_of(&s, tile).unwrap();
                let p = p_forward(&t, c_out, c_in, &dy, |ci, co| sums[co * c_in + ci]);
                let ratio = worst_ratio("backward_data", tile, &dx, &direct, &p, c_out);
                std::println!("backward_data {tile:?} {s:?}: max error / bound = {ratio:.3e}");
                overall = overall.max(ratio);
            }
            std::println!("backward_data {tile:?}: max error / bound over all shapes = {overall:.3e}");
        }
    }

    #[test]
    fn backward_weight_matches_direct() {
        for tile in WinogradTile::ALL {
            let mut rng = Rng(0x94D0_49BB_1331_11EB);
            let mut overall = 0.0f64;
            for (n, c_in, hw, c_out, pad) in SHAPES {
                let s = conv(n, c_in, hw, c_out, pad);
                let (dy, x) = (rng.vec(s.output_len()), rng.vec(s.input_len()));
                let mut workspace = vec![f32::NAN; winograd_workspace_len(&s, tile).unwrap()];
                let (mut dw, mut direct) = (vec![f32::NAN; s.weight_len()], vec![0.0; s.weight_len()]);
                conv2d_winograd_backward_weight(&s, tile, &dy, &x, &mut dw, &mut workspace).unwrap();
                conv2d_backward_weight(&s, &dy, &x, &mut direct).unwrap();
                let t = WinogradTiles::forward_of(&s, tile).unwrap();
                let p = p_backward_weight(&t, c_in, c_out, &dy, &x);
                let ratio = worst_ratio("backward_weight", tile, &dw, &direct, &p, t.tiles());
                std::println!("backward_weight {tile:?} {s:?}: max error / bound = {ratio:.3e}");
                overall = overall.max(ratio);
            }
            std::println!("backward_weight {tile:?}: max error / bound over all shapes = {overall:.3e}");
        }
    }

    /// A standard normal sample (Box-Muller) for the error survey below.
    fn normal(rng: &mut Rng) -> f32 {
        let (a, b) = ((rng.next() >> 11) as f64 / (1u64 << 53) as f64, (rng.next() >> 11) as f64 / (1u64 << 53) as f64);
        ((-2.0 * (1.0 - a).ln()).sqrt() * (2.0 * core::f64::consts::PI * b).cos()) as f32
    }

    /// The relative error `||y - exact|| / ||exact||` (2-norms), `exact` the f32 direct convolution of the
    /// unrounded operands (itself within ~1e-6 of exact arithmetic).
    fn relative_error(y: &[f32], exact: &[f32]) -> f64 {
        let sq = |v: f32| (v as f64) * (v as f64);
        let err: f64 = y.iter().zip(exact).map(|(a, b)| sq(a - b)).sum();
        (err / exact.iter().map(|&b| sq(b)).sum::<f64>()).sqrt()
    }

    /// Mixed precision's choice of where Winograd's products run (the GPU trainer's `Kernels::products`): on
    /// tensor cores the transformed operands U and V are rounded to f16 before their exact products are summed in
    /// f32. On a forward pass of iResNet-like data (PReLU-like activations, He-initialised weights, 64 channels,
    /// 14x14), measured against the f32 direct convolution of the unrounded operands: the direct mixed kernels
    /// (f16 operands) err by 3.0e-4, either tile in f32 on f16 operands the same, F(2x2) on f16 transformed
    /// operands by 5.5e-4 (1.9x), F(4x4) by 2.6e-3 (8.8x: its transforms' terms are many times the inputs).
    /// So F(2x2)'s products run on tensor cores in mixed precision and F(4x4)'s in f32.
    #[test]
    fn f16_transformed_operands_cost_f2x2_under_twice_the_direct_error_and_f4x4_far_more() {
        let s = conv(2, 64, (14, 14), 64, 1);
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let x: Vec<f32> = (0..s.input_len())
            .map(|_| {
                let v = normal(&mut rng);
                if v < 0.0 {
                    0.25 * v
                } else {
                    v
                }
            })
            .collect();
        let scale = libm::sqrtf(2.0 / (9.0 * s.c_in as f32));
        let w: Vec<f32> = (0..s.weight_len()).map(|_| normal(&mut rng) * scale).collect();
        let mut exact = vec![0.0; s.output_len()];
        conv2d_forward(&s, &x, &w, &mut exact).unwrap();
        let rounded = |v: &[f32]| {
            let mut v = v.to_vec();
            crate::nn::round_to_f16(&mut v);
            v
        };
        let (xh, wh) = (rounded(&x), rounded(&w));
        let mut y = vec![0.0; s.output_len()];
        conv2d_forward(&s, &xh, &wh, &mut y).unwrap();
        let direct = relative_error(&y, &exact);
        std::println!("direct on f16 operands: relative error {direct:.2e}");
        assert!(direct > 1e-4 && direct < 5e-4, "{direct:e}: the f16 rounding of the operands");
        for (tile, lowest, highest) in [(F2x2, 1.2, 2.5), (F4x4, 5.0, 20.0)] {
            let t = WinogradTiles::forward_of(&s, tile).unwrap();
            let (count, planes) = (t.tiles(), tile.planes());
            let (mut u, mut v) = (vec![0.0; planes * 64 * 64], vec![0.0; planes * 64 * count]);
            let mut m = vec![0.0; planes * 64 * count];
            winograd_weight_transform(tile, 64, 64, &wh, false, &mut u).unwrap();
            winograd_input_transform(&t, 64, &xh, false, &mut v).unwrap();
            gemm_batched(planes, 64, 64, count, &u, &v, &mut m).unwrap();
            winograd_output_transform(&t, 64, &m, &mut y).unwrap();
            let in_f32 = relative_error(&y, &exact);
            gemm_batched(planes, 64, 64, count, &rounded(&u), &rounded(&v), &mut m).unwrap();
            winograd_output_transform(&t, 64, &m, &mut y).unwrap();
            let in_f16 = relative_error(&y, &exact);
            std::println!("{tile:?}: relative error {in_f32:.2e} with f32 products, {in_f16:.2e} on f16 operands");
            assert!((in_f32 / direct - 1.0).abs() < 0.05, "{tile:?} in f32: {in_f32:e} against {direct:e}");
            let ratio = in_f16 / direct;
            assert!(ratio > lowest && ratio < highest, "{tile:?} on f16 operands: {ratio:.2}x the direct error");
        }
    }

    #[test]
    fn error_relative_to_scale_on_a_64_channel_layer() {
        // A layer of the trainer's size class, N(0, 1) data: the largest |winograd - direct| over the largest
        // |direct| of each pass, printed for both tiles (the figure trainer tolerances are judged by). The
        // assertion is loose (1e-4, the GPU wiring checks' tolerance); the tight bound is checked above.
        let s = conv(2, 64, (14, 14), 64, 1);
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        let mut draw = |len: usize| (0..len).map(|_| normal(&mut rng)).collect::<Vec<f32>>();
        let (x, weight, dy) = (draw(s.input_len()), draw(s.weight_len()), draw(s.output_len()));
        let mut direct = [vec![0.0; s.output_len()], vec![0.0; s.input_len()], vec![0.0; s.weight_len()]];
        conv2d_forward(&s, &x, &weight, &mut direct[0]).unwrap();
        conv2d_backward_data(&s, &dy, &weight, &mut direct[1]).unwrap();
        conv2d_backward_weight(&s, &dy, &x, &mut direct[2]).unwrap();
        for tile in WinogradTile::ALL {
            let mut ws = vec![0.0; winograd_workspace_len(&s, tile).unwrap()];
            let mut got = direct.clone();
            conv2d_winograd_forward(&s, tile, &x, &weight, &mut got[0], &mut ws).unwrap();
            conv2d_winograd_backward_data(&s, tile, &dy, &weight, &mut got[1], &mut ws).unwrap();
            conv2d_winograd_backward_weight(&s, tile, &dy, &x, &mut got[2], &mut ws).unwrap();
            for ((pass, got), want) in ["forward", "backward_data", "backward_weight"].iter().zip(&got).zip(&direct) {
                let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let err = got.iter().zip(want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
                std::println!("{tile:?} {pass} {s:?}: max |winograd - direct| / max |direct| = {:.3e}", err / scale);
                assert!(err <= 1e-4 * scale, "{tile:?} {pass}: {err} vs scale {scale}");
            }
        }
    }

    #[test]
    fn small_integers_give_the_direct_results_exactly() {
        // F(2x2): with integers in [-8, 8] every intermediate is a multiple of 1/16 far below 2^24: no rounding
        // anywhere, so Winograd and the direct loops agree bit for bit. (F(4x4)'s weight transform multiplies by
        // rounded constants such as 1/36, so no such test exists for it; f4_transforms_of_integers_are_exact
        // checks its other transforms exactly.)
        let mut rng = Rng(7);
        for (n, c_in, hw, c_out, pad) in SHAPES {
            let s = conv(n, c_in, hw, c_out, pad);
            let (x, weight, dy) = (rng.ints(s.input_len()), rng.ints(s.weight_len()), rng.ints(s.output_len()));
            let mut ws = vec![0.0; winograd_workspace_len(&s, F2x2).unwrap()];
            let (mut a, mut b) = (vec![0.0; s.output_len()], vec![0.0; s.output_len()]);
            conv2d_winograd_forward(&s, F2x2, &x, &weight, &mut a, &mut ws).unwrap();
            conv2d_forward(&s, &x, &weight, &mut b).unwrap();
            assert_eq!(a, b, "forward {s:?}");
            let (mut a, mut b) = (vec![0.0; s.input_len()], vec![0.0; s.input_len()]);
            conv2d_winograd_backward_data(&s, F2x2, &dy, &weight, &mut a, &mut ws).unwrap();
            conv2d_backward_data(&s, &dy, &weight, &mut b).unwrap();
            assert_eq!(a, b, "backward_data {s:?}");
            let (mut a, mut b) = (vec![0.0; s.weight_len()], vec![0.0; s.weight_len()]);
            conv2d_winograd_backward_weight(&s, F2x2, &dy, &x, &mut a, &mut ws).unwrap();
            conv2d_backward_weight(&s, &dy, &x, &mut b).unwrap();
            assert_eq!(a, b, "backward_weight {s:?}");
        }
    }

    // ---- Hand-checked transforms ----------------------------------------------------------------------------

    #[test]
    fn weight_transform_by_hand() {
        // g = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]. G g = [[1, 2, 3], [6, 7.5, 9], [2, 2.5, 3], [7, 8, 9]]; each row
        // [a, b, c] -> [a, (a + b + c)/2, (a - b + c)/2, c].
        let g: [f32; 9] = core::array::from_fn(|i| i as f32 + 1.0);
        let mut u = [f32::NAN; 16];
        winograd_weight_transform(F2x2, 1, 1, &g, false, &mut u).unwrap();
        #[rustfmt::skip]
        let expected = [
            1.0, 3.0, 1.0, 3.0,
            6.0, 11.25, 3.75, 9.0,
            2.0, 3.75, 1.25, 3.0,
            7.0, 12.0, 4.0, 9.0,
        ];
        assert_eq!(u, expected);
        // Rotated by 180 degrees: g' = [[9, 8, 7], [6, 5, 4], [3, 2, 1]]; G J = P G with P swapping rows 0 and 3,
        // so U' is U with rows 0, 3 and columns 0, 3 swapped.
        winograd_weight_transform(F2x2, 1, 1, &g, true, &mut u).unwrap();
        #[rustfmt::skip]
        let flipped = [
            9.0, 12.0, 4.0, 7.0,
            9.0, 11.25, 3.75, 6.0,
            3.0, 3.75, 1.25, 2.0,
            3.0, 3.0, 1.0, 1.0,
        ];
        assert_eq!(u, flipped);
    }

    #[test]
    fn weight_transform_layouts() {
        // C_OUT = 2, C_IN = 3: u (16, 2, 3), flipped (16, 3, 2); each kernel transformed alone.
        let mut rng = Rng(11);
        let weight = rng.vec(2 * 3 * 9);
        let (mut u, mut uf) = ([0.0; 96], [0.0; 96]);
        winograd_weight_transform(F2x2, 2, 3, &weight, false, &mut u).unwrap();
        winograd_weight_transform(F2x2, 2, 3, &weight, true, &mut uf).unwrap();
        for co in 0..2 {
            for ci in 0..3 {
                let k = &weight[(co * 3 + ci) * 9..][..9];
                let mut rotated: [f32; 9] = k.try_into().unwrap();
                rotated.reverse();
                let (mut one, mut one_flipped, mut one_rotated) = ([0.0; 16], [0.0; 16], [0.0; 16]);
                winograd_weight_transform(F2x2, 1, 1, k, false, &mut one).unwrap();
                winograd_weight_transform(F2x2, 1, 1, k, true, &mut one_flipped).unwrap();
                winograd_weight_transform(F2x2, 1, 1, &rotated, false, &mut one_rotated).unwrap();
                assert_eq!(one_flipped, one_rotated);
                for e in 0..16 {
                    assert_eq!(u[(e * 2 + co) * 3 + ci], one[e]);
                    assert_eq!(uf[(e * 3 + ci) * 2 + co], one_flipped[e]);
                }
            }
        }
    }

    #[test]
    fn input_transform_by_hand() {
        // B^T d = [d0 - d2, d1 + d2, d2 - d1, d1 - d3] (rows) = [[1, -5, 0, -1], [3, 6, 2, 5], [-3, 4, 2, -3],
        // [1, 1, -1, 1]]; then each row [a, b, c, e] -> [a - c, b + c, c - b, b - e].
        #[rustfmt::skip]
        let d = [
            1.0, 0.0, 2.0, 0.0,
            3.0, 1.0, 0.0, 4.0,
            0.0, 5.0, 2.0, 1.0,
            2.0, 0.0, 1.0, 3.0,
        ];
        #[rustfmt::skip]
        let expected = [
            1.0, -5.0, 5.0, -4.0,
            1.0, 8.0, -4.0, 1.0,
            -5.0, 6.0, -2.0, 7.0,
            2.0, 0.0, -2.0, 0.0,
        ];
        let t = WinogradTiles { n: 1, h: 4, w: 4, pad: 0, tile: F2x2 };
        assert_eq!(t.tiles(), 1);
        for transposed in [false, true] {
            let mut v = [f32::NAN; 16];
            winograd_input_transform(&t, 1, &d, transposed, &mut v).unwrap();
            assert_eq!(v, expected);
        }
        // The same patch inside a 2x2 input with pad 1: d = [[0, 0, 0, 0], [0, 1, 2, 0], [0, 3, 4, 0], [0, ...]].
        // B^T d = [[0, -3, -4, 0], [0, 4, 6, 0], [0, 2, 2, 0], [0, 1, 2, 0]] -> V.
        let t = WinogradTiles { n: 1, h: 2, w: 2, pad: 1, tile: F2x2 };
        let mut v = [f32::NAN; 16];
        winograd_input_transform(&t, 1, &[1.0, 2.0, 3.0, 4.0], false, &mut v).unwrap();
        #[rustfmt::skip]
        let padded = [
            4.0, -7.0, -1.0, -3.0,
            -6.0, 10.0, 2.0, 4.0,
            -2.0, 4.0, 0.0, 2.0,
            -2.0, 3.0, 1.0, 1.0,
        ];
        assert_eq!(v, padded);
    }

    #[test]
    fn the_normalized_input_transform_is_the_batch_norm_then_the_transform_bit_for_bit() {
        use crate::nn::{batchnorm_forward_eval, batchnorm_prelu_forward_eval, BatchNormShape};
        // Partial tiles of both sizes, padding 1 and 2; statistics away from the data's, a zero slope and a
        // negative gamma among the channels.
        for (t, c) in [
            (WinogradTiles { n: 2, h: 5, w: 7, pad: 1, tile: F2x2 }, 3),
            (WinogradTiles { n: 2, h: 9, w: 6, pad: 2, tile: F4x4 }, 4),
            (WinogradTiles { n: 1, h: 3, w: 3, pad: 1, tile: F4x4 }, 2),
        ] {
            let mut rng = Rng(5 + c as u64);
            let bs = BatchNormShape { n: t.n, c, hw: t.h * t.w };
            let x = rng.vec(bs.len());
            let mean = rng.vec(c);
            let var: Vec<f32> = rng.vec(c).iter().map(|v| v.abs() + 0.1).collect();
            let (mut gamma, beta, mut alpha) = (rng.vec(c), rng.vec(c), rng.vec(c));
            gamma[0] = -gamma[0].abs();
            alpha[c - 1] = 0.0;
            let bn = BatchNorm { eps: 1e-3, momentum: 0.5 };
            let (_, _, v_len) = t.lens(c).unwrap();
            for prelu in [false, true] {
                let mut z = vec![0.0; bs.len()];
                if prelu {
                    batchnorm_prelu_forward_eval(&bs, &bn, &x, &gamma, &beta, &alpha, &mean, &var, &mut z).unwrap();
                } else {
                    batchnorm_forward_eval(&bs, &bn, &x, &gamma, &beta, &mean, &var, &mut z).unwrap();
                }
                let norm = NormalizedInput {
                    bn,
                    mean: &mean,
                    var: &var,
                    gamma: &gamma,
                    beta: &beta,
                    alpha: prelu.then_some(&alpha[..]),
                };
                for transposed in [false, true] {
                    let (mut want, mut got) = (vec![0.0; v_len], vec![f32::NAN; v_len]);
                    winograd_input_transform(&t, c, &z, transposed, &mut want).unwrap();
                    winograd_normalized_input_transform(&t, c, &x, &norm, transposed, &mut got).unwrap();
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&want), "{t:?} prelu {prelu} transposed {transposed}");
                }
            }
            // Each per-channel slice is checked and named.
            let short = &mean[1..];
            let mut v = vec![0.0; v_len];
            let bad = |norm: NormalizedInput<'_>| {
                winograd_normalized_input_transform(&t, c, &x, &norm, false, &mut v.clone()).unwrap_err()
            };
            let norm = NormalizedInput { bn, mean: &mean, var: &var, gamma: &gamma, beta: &beta, alpha: None };
            for (name, e) in [
                ("mean", bad(NormalizedInput { mean: short, ..norm })),
                ("var", bad(NormalizedInput { var: short, ..norm })),
                ("gamma", bad(NormalizedInput { gamma: short, ..norm })),
                ("beta", bad(NormalizedInput { beta: short, ..norm })),
                ("alpha", bad(NormalizedInput { alpha: Some(short), ..norm })),
            ] {
                assert_eq!(e, Error::Length { what: name, expected: c, got: c - 1 });
            }
            assert!(winograd_normalized_input_transform(&t, c, &x[1..], &norm, false, &mut v).is_err());
        }
    }

    #[test]
    fn input_transform_layouts() {
        // (16, C, T) and (16, T, C) hold the same values; tiles numbered (n*TH + th)*TW + tw.
        let t = WinogradTiles { n: 2, h: 5, w: 4, pad: 1, tile: F2x2 }; // out 5x4, 3x2 tiles per sample, T = 12
        assert_eq!((t.out_h(), t.out_w(), t.tiles_h(), t.tiles_w(), t.tiles()), (5, 4, 3, 2, 12));
        let mut rng = Rng(13);
        let x = rng.vec(2 * 3 * 5 * 4);
        let (mut v, mut vt) = (vec![0.0; 16 * 3 * 12], vec![0.0; 16 * 3 * 12]);
        winograd_input_transform(&t, 3, &x, false, &mut v).unwrap();
        winograd_input_transform(&t, 3, &x, true, &mut vt).unwrap();
        for e in 0..16 {
            for c in 0..3 {
                for tile in 0..12 {
                    assert_eq!(v[(e * 3 + c) * 12 + tile], vt[(e * 12 + tile) * 3 + c]);
                }
            }
        }
        // Tile 9 = (n 1, th 1, tw 1) of channel 2: patch rows 1..5, columns 1..5 of (1, 2), the last column padding.
        let plane = &x[(3 + 2) * 20..][..20];
        let d: [f32; 16] = core::array::from_fn(|e| {
            let (r, q) = (1 + e / 4, 1 + e % 4);
            if q < 4 {
                plane[r * 4 + q]
            } else {
                0.0
            }
        });
        let one = WinogradTiles { n: 1, h: 4, w: 4, pad: 0, tile: F2x2 };
        let mut expected = [0.0; 16];
        winograd_input_transform(&one, 1, &d, false, &mut expected).unwrap();
        for (e, &val) in expected.iter().enumerate() {
            assert_eq!(v[(e * 3 + 2) * 12 + 9], val);
        }

        // F(4x4): (36, C, T) and (36, T, C); x (2, 3, 9, 7) with pad 2: out 11x9, 3x3 tiles per sample, T = 18.
        let t = WinogradTiles { n: 2, h: 9, w: 7, pad: 2, tile: F4x4 };
        assert_eq!((t.out_h(), t.out_w(), t.tiles_h(), t.tiles_w(), t.tiles()), (11, 9, 3, 3, 18));
        let x = rng.vec(2 * 3 * 9 * 7);
        let (mut v, mut vt) = (vec![0.0; 36 * 3 * 18], vec![0.0; 36 * 3 * 18]);
        winograd_input_transform(&t, 3, &x, false, &mut v).unwrap();
        winograd_input_transform(&t, 3, &x, true, &mut vt).unwrap();
        for e in 0..36 {
            for c in 0..3 {
                for tile in 0..18 {
                    assert_eq!(v[(e * 3 + c) * 18 + tile], vt[(e * 18 + tile) * 3 + c]);
                }
            }
        }
        // Tile 14 = (n 1, th 1, tw 2) of channel 1: padded rows 4..10, columns 8..14, i.e. input rows 2..8 and
        // columns 6..12 of (1, 1): only column 6 is inside.
        let plane = &x[(3 + 1) * 63..][..63];
        let d: [f32; 36] = core::array::from_fn(|e| {
            let (r, q) = (2 + e / 6, 6 + e % 6);
            if q < 7 {
                plane[r * 7 + q]
            } else {
                0.0
            }
        });
        let mut expected = [0.0; 36];
        winograd_input_transform(&ONE_F4, 1, &d, false, &mut expected).unwrap();
        for (e, &val) in expected.iter().enumerate() {
            assert_eq!(v[(e * 3 + 1) * 18 + 14], val);
        }
    }

    #[test]
    fn output_transform_by_hand() {
        // A^T M = [m0 + m1 + m2, m1 - m2 - m3] (rows) = [[3, 4, 3, 0], [2, 1, -8, 2]]; each row [a, b, c, e] ->
        // [a + b + c, b - c - e].
        #[rustfmt::skip]
        let m = [
            2.0, -1.0, 0.0, 3.0,
            1.0, 4.0, -2.0, 0.0,
            0.0, 1.0, 5.0, -3.0,
            -1.0, 2.0, 1.0, 1.0,
        ];
        let mut y = [f32::NAN; 4];
        winograd_output_transform(&WinogradTiles { n: 1, h: 4, w: 4, pad: 0, tile: F2x2 }, 1, &m, &mut y).unwrap();
        assert_eq!(y, [10.0, 1.0, -5.0, 7.0]);
        // A 1x2 output keeps the tile's first row only.
        let mut y = [f32::NAN; 2];
        winograd_output_transform(&WinogradTiles { n: 1, h: 3, w: 4, pad: 0, tile: F2x2 }, 1, &m, &mut y).unwrap();
        assert_eq!(y, [10.0, 1.0]);
    }

    #[test]
    fn output_grad_transform_by_hand() {
        // A dY = [[1, 2], [4, 6], [-2, -2], [-3, -4]]; each row [a, b] -> [a, a + b, a - b, -b].
        let mut w = [f32::NAN; 16];
        winograd_output_grad_transform(
            &WinogradTiles { n: 1, h: 4, w: 4, pad: 0, tile: F2x2 },
            1,
            &[1.0, 2.0, 3.0, 4.0],
            &mut w,
        )
        .unwrap();
        #[rustfmt::skip]
        let expected = [
            1.0, 3.0, -1.0, -2.0,
            4.0, 10.0, -2.0, -6.0,
            -2.0, -4.0, 0.0, 2.0,
            -3.0, -7.0, 1.0, 4.0,
        ];
        assert_eq!(w, expected);
        // A 1x1 output: dY = [[5, 0], [0, 0]] -> W = 5 * A[:, 0] A[:, 0]^T.
        winograd_output_grad_transform(&WinogradTiles { n: 1, h: 3, w: 3, pad: 0, tile: F2x2 }, 1, &[5.0], &mut w)
            .unwrap();
        #[rustfmt::skip]
        let corner = [
            5.0, 5.0, 5.0, 0.0,
            5.0, 5.0, 5.0, 0.0,
            5.0, 5.0, 5.0, 0.0,
            0.0, 0.0, 0.0, 0.0,
        ];
        assert_eq!(w, corner);
    }

    #[test]
    fn weight_grad_transform_by_hand() {
        // G^T dU = [u0 + (u1 + u2)/2, (u1 - u2)/2, (u1 + u2)/2 + u3] (rows) = [[2.5, 1.5, 1.5, 1.5],
        // [0.5, 1.5, -3.5, 1.5], [-0.5, 4.5, 2.5, -0.5]]; each row [a, b, c, e] -> [a + (b + c)/2, (b - c)/2,
        // (b + c)/2 + e].
        #[rustfmt::skip]
        let du = [
            2.0, -1.0, 0.0, 3.0,
            1.0, 4.0, -2.0, 0.0,
            0.0, 1.0, 5.0, -3.0,
            -1.0, 2.0, 1.0, 1.0,
        ];
        let mut dg = [f32::NAN; 9];
        winograd_weight_grad_transform(F2x2, 1, 1, &du, &mut dg).unwrap();
        assert_eq!(dg, [4.0, 0.0, 3.0, -0.5, 2.5, 0.5, 3.0, 1.0, 3.0]);
    }

    // ---- Adjointness ----------------------------------------------------------------------------------------

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(&p, &q)| f64::from(p) * f64::from(q)).sum()
    }

    #[test]
    fn output_grad_transform_is_the_adjoint_of_output_transform() {
        // <A^T M A, Y> = <M, A Y A^T> tile by tile, with the positions past HO/WO dropped on one side and zero on
        // the other. Odd and even outputs, several channels and samples, both tiles.
        let mut rng = Rng(17);
        for tile in WinogradTile::ALL {
            for (n, h, w, pad) in [(2, 5, 6, 1), (1, 7, 4, 0), (3, 1, 2, 2), (1, 11, 9, 1)] {
                let t = WinogradTiles { n, h, w, pad, tile };
                let channels = 3;
                let (m_len, y_len) = (tile.planes() * channels * t.tiles(), t.n * channels * t.out_h() * t.out_w());
                for exact in [true, false] {
                    let (m, dy) =
                        if exact { (rng.ints(m_len), rng.ints(y_len)) } else { (rng.vec(m_len), rng.vec(y_len)) };
                    let (mut y, mut w) = (vec![f32::NAN; y_len], vec![f32::NAN; m_len]);
                    winograd_output_transform(&t, channels, &m, &mut y).unwrap();
                    winograd_output_grad_transform(&t, channels, &dy, &mut w).unwrap();
                    let (lhs, rhs) = (dot(&y, &dy), dot(&m, &w));
                    if exact {
                        // Integers: both sides exact.
                        assert_eq!(lhs, rhs, "{t:?}");
                    } else {
                        // Only the transforms round. F(2x2): each y (each w) is <= 4 (2) roundings from terms
                        // summing to <= 4 |m| (|dy|) entries, every m entry in <= 4 of them: both sides within
                        // 16 u max|dy| sum|m| of the exact value, u = eps / 2. F(4x4): y <= 6 roundings, w <= 4;
                        // an m entry's coefficients in a tile's outputs sum to <= 15^2 (column sums of |A^T|:
                        // 1, 4, 4, 15, 15, 1), as do a w entry's over dy (row sums of |A|): within
                        // (6 + 4) * 225 u = 1125 eps times max|dy| sum|m|.
                        let max_dy = dy.iter().fold(0.0f64, |a, v| a.max(f64::from(v.abs())));
                        let sum_m: f64 = m.iter().map(|v| f64::from(v.abs())).sum();
                        let c = if tile == F2x2 { 16.0 } else { 1125.0 };
                        let tol = c * f64::from(f32::EPSILON) * max_dy * sum_m;
                        assert!((lhs - rhs).abs() <= tol, "{t:?}: {lhs} vs {rhs}");
                    }
                }
            }
        }
    }

    #[test]
    fn weight_grad_transform_is_the_adjoint_of_weight_transform() {
        // <G g G^T, dU> = <g, G^T dU G> for every (co, ci), both tiles.
        let mut rng = Rng(19);
        let (c_out, c_in) = (3, 2);
        for tile in WinogradTile::ALL {
            let planes = tile.planes();
            for exact in [true, false] {
                let (g, du) = if exact {
                    (rng.ints(c_out * c_in * 9), rng.ints(planes * c_out * c_in))
                } else {
                    (rng.vec(c_out * c_in * 9), rng.vec(planes * c_out * c_in))
                };
                let (mut u, mut dg) = (vec![f32::NAN; planes * c_out * c_in], vec![f32::NAN; c_out * c_in * 9]);
                winograd_weight_transform(tile, c_out, c_in, &g, false, &mut u).unwrap();
                winograd_weight_grad_transform(tile, c_out, c_in, &du, &mut dg).unwrap();
                let (lhs, rhs) = (dot(&u, &du), dot(&g, &dg));
                let abs_sum = |v: &[f32]| v.iter().map(|x| f64::from(x.abs())).sum::<f64>();
                if exact && tile == F2x2 {
                    // Integers: U, dg are multiples of 1/4, both sides exact.
                    assert_eq!(lhs, rhs);
                } else {
                    // Each U (each dg) is <= D roundings from terms whose magnitudes sum to <= sum |g| (sum |dU|) of
                    // its kernel (|G| entries <= 1): both sides within D u sum_kernels (sum |g|)(sum |dU|) of the
                    // exact value. F(2x2): D = 4 each side, 4 eps in all. F(4x4): D = 6 (U: 4, S, product) and 8
                    // (dg: S, product, 6), 7 eps in all; its S constants are rounded, so integers are not exact.
                    let c = if tile == F2x2 { 4.0 } else { 7.0 };
                    let tol = c * f64::from(f32::EPSILON) * abs_sum(&g) * abs_sum(&du);
                    assert!((lhs - rhs).abs() <= tol, "{tile:?}: {lhs} vs {rhs}");
                }
            }
        }
    }

    // ---- F(4x4): the transforms against the matrices ---------------------------------------------------------

    /// Lavin & Gray's F(4x4, 3x3) matrices (module docs), exactly, in f64.
    const BT: [[f64; 6]; 6] = [
        [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
        [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
        [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
        [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
        [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
    ];
    const G: [[f64; 3]; 6] = [
        [1.0 / 4.0, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ];
    const AT: [[f64; 6]; 4] = [
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
        [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
        [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
    ];

    /// `l r^T` of the row vectors `l`, `r`, in f64.
    fn outer<const P: usize, const Q: usize>(l: [f64; P], r: [f64; Q]) -> [[f64; Q]; P] {
        l.map(|a| r.map(|b| a * b))
    }

    /// Column `j` of a matrix.
    fn col<const R: usize, const C: usize>(m: &[[f64; C]; R], j: usize) -> [f64; R] {
        m.map(|row| row[j])
    }

    /// `l^T x r` for `x (P, Q)`, `l (P, R)`, `r (Q, S)`: the 2-D transforms, in f64.
    fn sandwich<const P: usize, const Q: usize, const R: usize, const S: usize>(
        l: &[[f64; R]; P],
        x: &[[f64; Q]; P],
        r: &[[f64; S]; Q],
    ) -> [[f64; S]; R] {
        core::array::from_fn(|i| {
            core::array::from_fn(|j| (0..P).map(|a| (0..Q).map(|b| l[a][i] * x[a][b] * r[b][j]).sum::<f64>()).sum())
        })
    }

    fn transpose<const R: usize, const C: usize>(m: &[[f64; C]; R]) -> [[f64; R]; C] {
        core::array::from_fn(|j| col(m, j))
    }

    #[test]
    fn f4_matrices_compute_the_convolution() {
        // In exact-enough f64: A^T [(G g G^T) (.) (B^T d B)] A is the 4x4 correlation of the 6x6 d with the 3x3 g,
        // and G = D G' with G' integer (rows (1,0,0), (1,1,1), (1,-1,1), (1,2,4), (1,-2,4), (0,0,1)).
        let mut rng = Rng(29);
        let b = transpose(&BT);
        let (gt, a) = (transpose(&G), transpose(&AT));
        for _ in 0..20 {
            let d: [[f64; 6]; 6] = core::array::from_fn(|_| core::array::from_fn(|_| f64::from(rng.uniform())));
            let g: [[f64; 3]; 3] = core::array::from_fn(|_| core::array::from_fn(|_| f64::from(rng.uniform())));
            let u = sandwich(&gt, &g, &gt); // (G^T)^T g G^T = G g G^T
            let v = sandwich(&b, &d, &b); // B^T d B
            let m: [[f64; 6]; 6] = core::array::from_fn(|i| core::array::from_fn(|j| u[i][j] * v[i][j]));
            let y = sandwich(&a, &m, &a); // A^T m A
            for (i, row) in y.iter().enumerate() {
                for (j, &val) in row.iter().enumerate() {
                    let direct: f64 = (0..3).map(|p| (0..3).map(|q| d[i + p][j + q] * g[p][q]).sum::<f64>()).sum();
                    assert!((val - direct).abs() < 1e-12, "({i}, {j}): {val} vs {direct}");
                }
            }
        }
        let d = [0.25, -1.0 / 6.0, -1.0 / 6.0, 1.0 / 24.0, 1.0 / 24.0, 1.0];
        let g_int =
            [[1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, -1.0, 1.0], [1.0, 2.0, 4.0], [1.0, -2.0, 4.0], [0.0, 0.0, 1.0]];
        for i in 0..6 {
            for j in 0..3 {
                assert_eq!(G[i][j], d[i] * g_int[i][j]);
            }
        }
    }

    #[test]
    fn f4_scale_constants() {
        // S[i][j] is D_i D_j correctly rounded, and these are the bits shaders/winograd.wgsl spells.
        let d = [0.25, -1.0 / 6.0, -1.0 / 6.0, 1.0 / 24.0, 1.0 / 24.0, 1.0];
        let bits = |k: u32| match k {
            16 => 0x3d80_0000,
            24 => 0x3d2a_aaab,
            96 => 0x3c2a_aaab,
            4 => 0x3e80_0000,
            36 => 0x3ce3_8e39,
            144 => 0x3be3_8e39,
            6 => 0x3e2a_aaab,
            576 => 0x3ae3_8e39,
            1 => 0x3f80_0000,
            _ => unreachable!(),
        };
        for i in 0..6 {
            for j in 0..6 {
                let exact: f64 = d[i] * d[j];
                let k = (1.0 / exact.abs()).round() as u32;
                let want = f32::from_bits(bits(k)) * exact.signum() as f32;
                assert_eq!(F4_SCALE[i][j].to_bits(), want.to_bits(), "({i}, {j})");
                assert!((f64::from(F4_SCALE[i][j]) - exact).abs() <= exact.abs() * f64::from(f32::EPSILON) / 2.0);
            }
        }
    }

    #[test]
    fn f4_bound_constant() {
        // The largest w_o[k] = sum_i |A^T[o][i]| m_i |B^T[i][k]| (m_i the largest |G[i][a]|) and
        // z_a[p][k] = sum_i |G[i][a]| |A^T[p][i]| |B^T[i][k]| of the error bound's derivation are 32/3.
        let m: [f64; 6] = G.map(|row| row.iter().fold(0.0f64, |acc, v| acc.max(v.abs())));
        let (mut w, mut z) = (0.0f64, 0.0f64);
        for at_row in &AT {
            for bt_col in (0..6).map(|k| col(&BT, k)) {
                let term = |i: usize| at_row[i].abs() * bt_col[i].abs();
                w = w.max((0..6).map(|i| term(i) * m[i]).sum());
                z = (0..3).fold(z, |z, a| z.max((0..6).map(|i| term(i) * G[i][a].abs()).sum()));
            }
        }
        assert!((w - 32.0 / 3.0).abs() < 1e-12 && (z - 32.0 / 3.0).abs() < 1e-12, "{w} {z}");
    }

    /// A single tile of F(4x4): `WinogradTiles` of one 4x4 output from a 6x6 input.
    const ONE_F4: WinogradTiles = WinogradTiles { n: 1, h: 6, w: 6, pad: 0, tile: F4x4 };

    fn to_f32<const R: usize, const C: usize>(m: &[[f64; C]; R]) -> Vec<f32> {
        m.iter().flatten().map(|&v| v as f32).collect()
    }

    #[test]
    fn f4_transforms_of_unit_impulses_are_the_matrices() {
        // A unit impulse at (k, l) maps to the outer product of the matrices' columns (rows): every entry of every
        // matrix, checked exactly (the integer matrices' products are exact; G's entries are D_i G'_ij with
        // G'_ij in {0, +-1, +-2, 4}, so S_ij G'_ia G'_jb is exact and equals G_ia G_jb to one rounding of S).
        let g_int =
            [[1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, -1.0, 1.0], [1.0, 2.0, 4.0], [1.0, -2.0, 4.0], [0.0, 0.0, 1.0]];
        for e in 0..36 {
            let (k, l) = (e / 6, e % 6);
            let mut d = [0.0f32; 36];
            d[e] = 1.0;
            // B^T e_kl B = BT[:, k] BT[:, l]^T.
            let mut v = [f32::NAN; 36];
            winograd_input_transform(&ONE_F4, 1, &d, false, &mut v).unwrap();
            assert_eq!(v.to_vec(), to_f32(&outer(col(&BT, k), col(&BT, l))), "input ({k}, {l})");
            // A^T e_kl A = AT[:, k] AT[:, l]^T.
            let mut y = [f32::NAN; 16];
            winograd_output_transform(&ONE_F4, 1, &d, &mut y).unwrap();
            assert_eq!(y.to_vec(), to_f32(&outer(col(&AT, k), col(&AT, l))), "output ({k}, {l})");
            // G^T e_kl G = S_kl G'[k, :] G'[l, :]^T.
            let mut dg = [f32::NAN; 9];
            winograd_weight_grad_transform(F4x4, 1, 1, &d, &mut dg).unwrap();
            let want = outer(g_int[k], g_int[l]).map(|r| r.map(|x| x * f64::from(F4_SCALE[k][l])));
            assert_eq!(dg.to_vec(), to_f32(&want), "weight_grad ({k}, {l})");
            let exact = outer(G[k], G[l]);
            for (a, b) in dg.iter().zip(exact.iter().flatten()) {
                assert!((f64::from(*a) - b).abs() <= b.abs() * f64::from(f32::EPSILON) / 2.0);
            }
        }
        for e in 0..16 {
            let (p, q) = (e / 4, e % 4);
            let mut dy = [0.0f32; 16];
            dy[e] = 1.0;
            // A e_pq A^T = AT[p, :] AT[q, :]^T.
            let mut w = [f32::NAN; 36];
            winograd_output_grad_transform(&ONE_F4, 1, &dy, &mut w).unwrap();
            assert_eq!(w.to_vec(), to_f32(&outer(AT[p], AT[q])), "output_grad ({p}, {q})");
        }
        for e in 0..9 {
            let (a, b) = (e / 3, e % 3);
            let mut g = [0.0f32; 9];
            g[e] = 1.0;
            // G e_ab G^T = S (.) G'[:, a] G'[:, b]^T.
            let mut u = [f32::NAN; 36];
            winograd_weight_transform(F4x4, 1, 1, &g, false, &mut u).unwrap();
            let base = outer(col(&g_int, a), col(&g_int, b));
            let want: [[f64; 6]; 6] =
                core::array::from_fn(|i| core::array::from_fn(|j| base[i][j] * f64::from(F4_SCALE[i][j])));
            assert_eq!(u.to_vec(), to_f32(&want), "weight ({a}, {b})");
        }
    }

    #[test]
    fn f4_weight_transform_by_hand() {
        // g = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]. G' g (rows g0, (g0 + g2) + g1, (g0 + g2) - g1, (g0 + 4 g2) + 2 g1,
        // (g0 + 4 g2) - 2 g1, g2) = [[1, 2, 3], [12, 15, 18], [4, 5, 6], [37, 44, 51], [21, 24, 27], [7, 8, 9]];
        // each row [a, b, c] -> [a, a + b + c, a - b + c, a + 2b + 4c, a - 2b + 4c, c]; then U = S (.) that.
        #[rustfmt::skip]
        let k: [f32; 36] = [
            1.0, 6.0, 2.0, 17.0, 9.0, 3.0,
            12.0, 45.0, 15.0, 114.0, 54.0, 18.0,
            4.0, 15.0, 5.0, 38.0, 18.0, 6.0,
            37.0, 132.0, 44.0, 329.0, 153.0, 51.0,
            21.0, 72.0, 24.0, 177.0, 81.0, 27.0,
            7.0, 24.0, 8.0, 59.0, 27.0, 9.0,
        ];
        let g: [f32; 9] = core::array::from_fn(|i| i as f32 + 1.0);
        let mut u = [f32::NAN; 36];
        winograd_weight_transform(F4x4, 1, 1, &g, false, &mut u).unwrap();
        for (e, (&got, &k)) in u.iter().zip(&k).enumerate() {
            assert_eq!(got, F4_SCALE[e / 6][e % 6] * k, "{e}");
        }
        // The first row against the fractions [1/16, -6/24, -2/24, 17/96, 9/96, 3/4]: within the two roundings of
        // S and the product (17/96 is one ulp off its correctly rounded f32).
        for (&got, want) in u[..6].iter().zip([1.0 / 16.0, -0.25, -1.0 / 12.0, 17.0 / 96.0, 0.09375, 0.75f64]) {
            assert!((f64::from(got) - want).abs() <= want.abs() * f64::from(f32::EPSILON), "{got} vs {want}");
        }
        // Flipped: the kernel rotated by 180 degrees.
        let mut uf = [f32::NAN; 36];
        winograd_weight_transform(F4x4, 1, 1, &g, true, &mut uf).unwrap();
        let mut rotated = g;
        rotated.reverse();
        winograd_weight_transform(F4x4, 1, 1, &rotated, false, &mut u).unwrap();
        assert_eq!(u, uf);
    }

    #[test]
    fn f4_transforms_of_integers_are_exact() {
        // Input, output and output-gradient transforms have integer matrices: on small integers every
        // intermediate is an integer far below 2^24, so each equals the f64 matrix product exactly.
        let mut rng = Rng(31);
        let (b, a) = (transpose(&BT), transpose(&AT));
        for _ in 0..50 {
            let ints = rng.ints(36);
            let d: [[f64; 6]; 6] = core::array::from_fn(|i| core::array::from_fn(|j| f64::from(ints[i * 6 + j])));
            let mut got = [f32::NAN; 36];
            winograd_input_transform(&ONE_F4, 1, &ints, false, &mut got).unwrap();
            assert_eq!(got.to_vec(), to_f32(&sandwich(&b, &d, &b)));
            let mut y = [f32::NAN; 16];
            winograd_output_transform(&ONE_F4, 1, &ints, &mut y).unwrap();
            assert_eq!(y.to_vec(), to_f32(&sandwich(&a, &d, &a)));
            let dy: [[f64; 4]; 4] = core::array::from_fn(|i| core::array::from_fn(|j| d[i][j]));
            let dy32: Vec<f32> = dy.iter().flatten().map(|&v| v as f32).collect();
            winograd_output_grad_transform(&ONE_F4, 1, &dy32, &mut got).unwrap();
            assert_eq!(got.to_vec(), to_f32(&sandwich(&AT, &dy, &AT)));
        }
    }

    #[test]
    fn f4_weight_transforms_are_within_their_rounding_of_the_matrices() {
        // Random weights: |U - G g G^T| <= 6 u sum |G_ia G_jb g_ab| (4 G' roundings, S, the product), and
        // |dg - G^T dU G| <= 8 u sum |G_ia G_jb dU_ij|, with u = eps / 2 and a little room for second order.
        let mut rng = Rng(37);
        let g_mat = G;
        for _ in 0..50 {
            let (g32, du32) = (rng.vec(9), rng.vec(36));
            let g: [[f64; 3]; 3] = core::array::from_fn(|i| core::array::from_fn(|j| f64::from(g32[i * 3 + j])));
            let du: [[f64; 6]; 6] = core::array::from_fn(|i| core::array::from_fn(|j| f64::from(du32[i * 6 + j])));
            let abs3 = g.map(|r| r.map(f64::abs));
            let abs6 = du.map(|r| r.map(f64::abs));
            let gabs = g_mat.map(|r| r.map(f64::abs));
            let gt = transpose(&g_mat);
            let (u_exact, u_mag) = (sandwich(&gt, &g, &gt), sandwich(&transpose(&gabs), &abs3, &transpose(&gabs)));
            let (dg_exact, dg_mag) = (sandwich(&g_mat, &du, &g_mat), sandwich(&gabs, &abs6, &gabs));
            let mut u = [f32::NAN; 36];
            winograd_weight_transform(F4x4, 1, 1, &g32, false, &mut u).unwrap();
            let mut dg = [f32::NAN; 9];
            winograd_weight_grad_transform(F4x4, 1, 1, &du32, &mut dg).unwrap();
            let eps = f64::from(f32::EPSILON);
            for (e, &got) in u.iter().enumerate() {
                let (want, mag) = (u_exact[e / 6][e % 6], u_mag[e / 6][e % 6]);
                assert!((f64::from(got) - want).abs() <= 3.01 * eps * mag, "U {e}: {got} vs {want}");
            }
            for (e, &got) in dg.iter().enumerate() {
                let (want, mag) = (dg_exact[e / 3][e % 3], dg_mag[e / 3][e % 3]);
                assert!((f64::from(got) - want).abs() <= 4.01 * eps * mag, "dg {e}: {got} vs {want}");
            }
        }
    }

    // ---- gemm_batched ---------------------------------------------------------------------------------------

    #[test]
    fn gemm_batched_matches_a_naive_loop_bit_for_bit() {
        let mut rng = Rng(23);
        for (batch, m, k, cols) in [(3, 4, 5, 6), (1, 1, 1, 1), (16, 5, 12, 3), (2, 7, 1, 9)] {
            let (a, b) = (rng.vec(batch * m * k), rng.vec(batch * k * cols));
            let mut c = vec![f32::NAN; batch * m * cols];
            gemm_batched(batch, m, k, cols, &a, &b, &mut c).unwrap();
            for bi in 0..batch {
                for mi in 0..m {
                    for j in 0..cols {
                        let mut acc = 0.0f32;
                        for ki in 0..k {
                            acc += a[(bi * m + mi) * k + ki] * b[(bi * k + ki) * cols + j];
                        }
                        assert_eq!(c[(bi * m + mi) * cols + j].to_bits(), acc.to_bits());
                    }
                }
            }
        }
        // By hand: [[1, 2], [3, 4]] [[5, 6], [7, 8]] = [[19, 22], [43, 50]].
        let mut c = [0.0; 4];
        gemm_batched(1, 2, 2, 2, &[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0, 7.0, 8.0], &mut c).unwrap();
        assert_eq!(c, [19.0, 22.0, 43.0, 50.0]);
    }

    #[test]
    fn gemm_batched_errors() {
        let (a, b) = ([1.0; 24], [1.0; 30]); // batch 2, m 3, k 4, cols 5: a 24, b 40, c 30
        let b40 = [1.0; 40];
        let mut c = [0.0; 30];
        let len = |what, expected, got| Err(Error::Length { what, expected, got });
        assert_eq!(gemm_batched(2, 3, 4, 5, &a[1..], &b40, &mut c), len("a", 24, 23));
        assert_eq!(gemm_batched(2, 3, 4, 5, &a, &b, &mut c), len("b", 40, 30));
        assert_eq!(gemm_batched(2, 3, 4, 5, &a, &b40, &mut c[1..]), len("c", 30, 29));
        assert_eq!(c, [0.0; 30]);
        for (batch, m, k, cols) in [(0, 3, 4, 5), (2, 0, 4, 5), (2, 3, 0, 5), (2, 3, 4, 0), (usize::MAX, 3, 4, 5)] {
            assert!(matches!(gemm_batched(batch, m, k, cols, &a, &b40, &mut c), Err(Error::Shape { .. })));
        }
        assert_eq!(c, [0.0; 30]);
    }

    // ---- Tiles, shapes and errors ---------------------------------------------------------------------------

    #[test]
    fn tile_counts() {
        let t = |n, h, w, pad| WinogradTiles { n, h, w, pad, tile: F2x2 };
        let sizes = |t: WinogradTiles| (t.out_h(), t.out_w(), t.tiles_h(), t.tiles_w(), t.tiles());
        assert_eq!(sizes(t(1, 1, 1, 1)), (1, 1, 1, 1, 1));
        assert_eq!(sizes(t(2, 7, 7, 1)), (7, 7, 4, 4, 32));
        assert_eq!(sizes(t(1, 4, 5, 0)), (2, 3, 1, 2, 2));
        assert_eq!(sizes(t(3, 1, 2, 2)), (3, 4, 2, 2, 12));
        assert_eq!(sizes(t(1, 2, 2, 0)), (0, 0, 0, 0, 0)); // invalid
        let t4 = |n, h, w, pad| WinogradTiles { n, h, w, pad, tile: F4x4 };
        assert_eq!(sizes(t4(1, 1, 1, 1)), (1, 1, 1, 1, 1));
        assert_eq!(sizes(t4(2, 7, 7, 1)), (7, 7, 2, 2, 8));
        assert_eq!(sizes(t4(1, 6, 9, 0)), (4, 7, 1, 2, 2));
        assert_eq!(sizes(t4(3, 56, 56, 1)), (56, 56, 14, 14, 588));
        for good in [t(1, 1, 1, 1), t(2, 7, 7, 1), t(1, 3, 3, 0), t(1, 1, 1, 2), t4(1, 1, 1, 1), t4(2, 5, 3, 2)] {
            assert_eq!(good.validate(), Ok(()));
        }
        for bad in [
            t(0, 4, 4, 1),
            t(1, 0, 4, 1),
            t(1, 4, 0, 1),
            t(1, 4, 4, 3),
            t(1, 2, 4, 0),
            t(1, 1, 1, 0),
            t(1, usize::MAX, 4, 2),
            t(usize::MAX, 1000, 1000, 1),
            t(1, usize::MAX, usize::MAX, 1),
            t4(1, 4, 4, 3),
            t4(1, 1, 1, 0),
            t4(usize::MAX, 1000, 1000, 1),
        ] {
            assert!(matches!(bad.validate(), Err(Error::Shape { .. })), "{bad:?}");
            let _ = (bad.out_h(), bad.out_w(), bad.tiles_h(), bad.tiles_w(), bad.tiles());
            let mut out = [0.0; 16];
            assert!(matches!(winograd_input_transform(&bad, 1, &[0.0; 16], false, &mut out), Err(Error::Shape { .. })));
            assert!(matches!(winograd_output_transform(&bad, 1, &[0.0; 16], &mut out), Err(Error::Shape { .. })));
            assert!(matches!(winograd_output_grad_transform(&bad, 1, &[0.0; 16], &mut out), Err(Error::Shape { .. })));
        }
    }

    #[test]
    fn tilings_of_a_convolution() {
        let s = conv(2, 3, (7, 5), 4, 1);
        assert_eq!(WinogradTiles::forward_of(&s, F2x2), Some(WinogradTiles { n: 2, h: 7, w: 5, pad: 1, tile: F2x2 }));
        assert_eq!(
            WinogradTiles::backward_data_of(&s, F2x2),
            Some(WinogradTiles { n: 2, h: 7, w: 5, pad: 1, tile: F2x2 })
        );
        let s = conv(2, 3, (7, 5), 4, 0); // out 5x3
        let bwd = WinogradTiles::backward_data_of(&s, F2x2).unwrap();
        assert_eq!(bwd, WinogradTiles { n: 2, h: 5, w: 3, pad: 2, tile: F2x2 });
        assert_eq!((bwd.out_h(), bwd.out_w()), (7, 5));
        let s = conv(1, 1, (1, 1), 1, 2); // out 3x3
        assert_eq!(
            WinogradTiles::backward_data_of(&s, F2x2),
            Some(WinogradTiles { n: 1, h: 3, w: 3, pad: 0, tile: F2x2 })
        );
        for bad in [
            Conv2dShape { stride: 2, ..s },
            Conv2dShape { kh: 1, ..s },
            Conv2dShape { kw: 5, ..s },
            Conv2dShape { pad: 3, ..s },
        ] {
            assert_eq!(
                (WinogradTiles::forward_of(&bad, F2x2), WinogradTiles::backward_data_of(&bad, F2x2)),
                (None, None)
            );
            assert_eq!(winograd_workspace_len(&bad, F2x2), None);
        }
        assert_eq!(winograd_workspace_len(&Conv2dShape { n: 0, ..s }, F2x2), None);
        // Forward: u 16*4*3, v 16*3*T, m 16*4*T with T = 2*2*1 = 4 (out 3x1 -> 2x1 tiles); backward_data: T' = 2*4*3.
        let s = conv(2, 3, (3, 1), 4, 1);
        let (t, tb) = (
            WinogradTiles::forward_of(&s, F2x2).unwrap().tiles(),
            WinogradTiles::backward_data_of(&s, F2x2).unwrap().tiles(),
        );
        assert_eq!((t, tb), (4, 4));
        assert_eq!(winograd_workspace_len(&s, F2x2), Some(16 * (12 + 3 * 4 + 4 * 4)));
        let s = conv(1, 2, (8, 8), 2, 2); // out 10x10: T = 25, T' = 16
        assert_eq!(winograd_workspace_len(&s, F2x2), Some(16 * (4 + 2 * 25 + 2 * 25)));
        let s = conv(1, 2, (8, 8), 2, 0); // out 6x6: T = 9, T' = 16
        assert_eq!(winograd_workspace_len(&s, F2x2), Some(16 * (4 + 2 * 16 + 2 * 16)));
        // F(4x4): the same shapes in 4x4 tiles and 36 planes. out 6x6: T = 4, T' (out 8x8) = 4.
        assert_eq!(WinogradTiles::forward_of(&s, F4x4), Some(WinogradTiles { n: 1, h: 8, w: 8, pad: 0, tile: F4x4 }));
        assert_eq!(winograd_workspace_len(&s, F4x4), Some(36 * (4 + 2 * 4 + 2 * 4)));
        let s = conv(1, 2, (8, 8), 3, 2); // out 10x10: T = 9, T' = 4
        assert_eq!(winograd_workspace_len(&s, F4x4), Some(36 * (6 + 2 * 9 + 3 * 9)));
        let s = conv(2, 3, (7, 5), 4, 0); // out 5x3: T = 2*2*1 = 4; backward_data over dy 5x3 pad 2, out 7x5: T' = 2*2*2
        let bwd = WinogradTiles::backward_data_of(&s, F4x4).unwrap();
        assert_eq!((bwd, bwd.tiles()), (WinogradTiles { n: 2, h: 5, w: 3, pad: 2, tile: F4x4 }, 8));
        assert_eq!(winograd_workspace_len(&s, F4x4), Some(36 * (12 + 4 * 8 + 3 * 8)));
        assert_eq!(winograd_workspace_len(&Conv2dShape { stride: 2, ..s }, F4x4), None);
    }

    #[test]
    fn composite_errors() {
        for tile in WinogradTile::ALL {
            composite_errors_of(tile);
        }
    }

    fn composite_errors_of(tile: WinogradTile) {
        let s = conv(2, 2, (4, 4), 3, 1); // x 64, weight 54, y 96
        let need = winograd_workspace_len(&s, tile).unwrap();
        let (x, wt, y) = (vec![0.0; 64], vec![0.0; 54], vec![0.0; 96]);
        let (mut xm, mut wm, mut ym, mut ws) = (vec![0.0; 64], vec![0.0; 54], vec![0.0; 96], vec![0.0; need]);
        let len = |what, expected, got| Err(Error::Length { what, expected, got });
        assert_eq!(conv2d_winograd_forward(&s, tile, &x[1..], &wt, &mut ym, &mut ws), len("x", 64, 63));
        assert_eq!(conv2d_winograd_forward(&s, tile, &x, &wt[1..], &mut ym, &mut ws), len("weight", 54, 53));
        assert_eq!(conv2d_winograd_forward(&s, tile, &x, &wt, &mut ym[1..], &mut ws), len("y", 96, 95));
        assert_eq!(conv2d_winograd_forward(&s, tile, &x, &wt, &mut ym, &mut ws[1..]), len("workspace", need, need - 1));
        assert_eq!(conv2d_winograd_backward_data(&s, tile, &y[1..], &wt, &mut xm, &mut ws), len("dy", 96, 95));
        assert_eq!(conv2d_winograd_backward_data(&s, tile, &y, &wt[1..], &mut xm, &mut ws), len("weight", 54, 53));
        assert_eq!(conv2d_winograd_backward_data(&s, tile, &y, &wt, &mut xm[1..], &mut ws), len("dx", 64, 63));
        assert_eq!(
            conv2d_winograd_backward_data(&s, tile, &y, &wt, &mut xm, &mut ws[1..]),
            len("workspace", need, need - 1)
        );
        assert_eq!(conv2d_winograd_backward_weight(&s, tile, &y[1..], &x, &mut wm, &mut ws), len("dy", 96, 95));
        assert_eq!(conv2d_winograd_backward_weight(&s, tile, &y, &x[1..], &mut wm, &mut ws), len("x", 64, 63));
        assert_eq!(conv2d_winograd_backward_weight(&s, tile, &y, &x, &mut wm[1..], &mut ws), len("dweight", 54, 53));
        assert_eq!(
            conv2d_winograd_backward_weight(&s, tile, &y, &x, &mut wm, &mut ws[1..]),
            len("workspace", need, need - 1)
        );
        // A longer workspace is fine.
        let mut long = vec![0.0; need + 5];
        conv2d_winograd_forward(&s, tile, &x, &wt, &mut ym, &mut long).unwrap();
        for bad in [
            Conv2dShape { stride: 2, ..s },
            Conv2dShape { kh: 1, kw: 1, ..s },
            Conv2dShape { pad: 3, ..s },
            Conv2dShape { n: 0, ..s },
            Conv2dShape { c_in: 0, ..s },
            Conv2dShape { h: 1, pad: 0, ..s },
            Conv2dShape { n: usize::MAX, c_in: usize::MAX, ..s },
        ] {
            let shape_err = |r: Result<(), Error>| matches!(r, Err(Error::Shape { .. }));
            assert!(shape_err(conv2d_winograd_forward(&bad, tile, &x, &wt, &mut ym, &mut ws)), "{bad:?}");
            assert!(shape_err(conv2d_winograd_backward_data(&bad, tile, &y, &wt, &mut xm, &mut ws)), "{bad:?}");
            assert!(shape_err(conv2d_winograd_backward_weight(&bad, tile, &y, &x, &mut wm, &mut ws)), "{bad:?}");
        }
    }

    #[test]
    fn transform_length_and_size_errors() {
        let t = WinogradTiles { n: 1, h: 3, w: 5, pad: 1, tile: F2x2 }; // out 3x5, 2x3 tiles: T = 6; 2 channels
        let len = |what, expected, got| Err(Error::Length { what, expected, got });
        let (x, v, y) = ([0.0; 30], [0.0; 192], [0.0; 30]);
        let (mut vm, mut ym) = ([0.0; 192], [0.0; 30]);
        assert_eq!(winograd_input_transform(&t, 2, &x[1..], false, &mut vm), len("x", 30, 29));
        assert_eq!(winograd_input_transform(&t, 2, &x, true, &mut vm[1..]), len("v", 192, 191));
        assert_eq!(winograd_output_transform(&t, 2, &v[1..], &mut ym), len("m", 192, 191));
        assert_eq!(winograd_output_transform(&t, 2, &v, &mut ym[1..]), len("y", 30, 29));
        assert_eq!(winograd_output_grad_transform(&t, 2, &y[1..], &mut vm), len("dy", 30, 29));
        assert_eq!(winograd_output_grad_transform(&t, 2, &y, &mut vm[1..]), len("w", 192, 191));
        assert!(matches!(winograd_input_transform(&t, 0, &[], false, &mut []), Err(Error::Shape { .. })));
        assert!(matches!(winograd_input_transform(&t, usize::MAX, &x, false, &mut vm), Err(Error::Shape { .. })));
        let (wt, u) = ([0.0; 54], [0.0; 96]); // C_OUT 3, C_IN 2
        let (mut wm, mut um) = ([0.0; 54], [0.0; 96]);
        assert_eq!(winograd_weight_transform(F2x2, 3, 2, &wt[1..], false, &mut um), len("weight", 54, 53));
        assert_eq!(winograd_weight_transform(F2x2, 3, 2, &wt, true, &mut um[1..]), len("u", 96, 95));
        assert_eq!(winograd_weight_grad_transform(F2x2, 3, 2, &u[1..], &mut wm), len("du", 96, 95));
        assert_eq!(winograd_weight_grad_transform(F2x2, 3, 2, &u, &mut wm[1..]), len("dweight", 54, 53));
        for (c_out, c_in) in [(0, 2), (3, 0), (usize::MAX, usize::MAX)] {
            assert!(matches!(
                winograd_weight_transform(F2x2, c_out, c_in, &wt, false, &mut um),
                Err(Error::Shape { .. })
            ));
            assert!(matches!(winograd_weight_grad_transform(F2x2, c_out, c_in, &u, &mut wm), Err(Error::Shape { .. })));
        }
        // Untouched on error.
        assert_eq!((vm, ym, wm, um), ([0.0; 192], [0.0; 30], [0.0; 54], [0.0; 96]));

        // F(4x4): 36 planes; out 3x5 is 1x2 tiles, T = 2: 36 * 2 * 2 = 144; u 36 * 3 * 2 = 216.
        let t = WinogradTiles { tile: F4x4, ..t };
        let (v, u) = ([0.0; 144], [0.0; 216]);
        let (mut vm, mut um) = ([0.0; 144], [0.0; 216]);
        assert_eq!(winograd_input_transform(&t, 2, &x, false, &mut vm[1..]), len("v", 144, 143));
        assert_eq!(winograd_input_transform(&t, 2, &x, false, &mut [0.0; 192]), len("v", 144, 192));
        assert_eq!(winograd_output_transform(&t, 2, &v[1..], &mut ym), len("m", 144, 143));
        assert_eq!(winograd_output_grad_transform(&t, 2, &y, &mut vm[1..]), len("w", 144, 143));
        assert_eq!(winograd_weight_transform(F4x4, 3, 2, &wt, false, &mut um[1..]), len("u", 216, 215));
        assert_eq!(winograd_weight_transform(F4x4, 3, 2, &wt, false, &mut [0.0; 96]), len("u", 216, 96));
        assert_eq!(winograd_weight_grad_transform(F4x4, 3, 2, &u[1..], &mut wm), len("du", 216, 215));
        assert_eq!((vm, um, wm), ([0.0; 144], [0.0; 216], [0.0; 54]));
        winograd_input_transform(&t, 2, &x, false, &mut vm).unwrap();
        winograd_weight_transform(F4x4, 3, 2, &wt, false, &mut um).unwrap();
    }
}
