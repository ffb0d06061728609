//! Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions (Lavin & Gray 2016, "Fast Algorithms for Convolutional
//! Neural Networks"): the same results as [`conv2d_forward`](super::conv2d_forward),
//! [`conv2d_backward_data`](super::conv2d_backward_data) and [`conv2d_backward_weight`](super::conv2d_backward_weight)
//! up to rounding, with 16 multiplications per 2x2 output tile and input channel instead of 36.
//!
//! # The algorithm
//!
//! A 3x3 stride-1 convolution with padding `pad <= 2` maps `x (N, C_IN, H, W)` to `y (N, C_OUT, HO, WO)`,
//! `HO = H + 2*pad - 2`, `WO = W + 2*pad - 2`. The output is cut into 2x2 tiles, `TH = ceil(HO/2)` by
//! `TW = ceil(WO/2)` per sample, `T = N*TH*TW` tiles numbered `t = (n*TH + th)*TW + tw`. Tile `t` reads the 4x4
//! input patch `d[i][j] = x[n, c, 2*th - pad + i, 2*tw - pad + j]` (0 outside the input) and gives
//! `y[n, co, 2*th + i, 2*tw + j]` for `i, j < 2` (positions past `HO`/`WO` are dropped):
//!
//! ```text
//! y_tile = A^T [ sum_c (G g_c G^T) (.) (B^T d_c B) ] A          (.) elementwise, g_c = weight[co, c]
//!
//!       | 1  0 -1  0 |         | 1    0    0  |
//! B^T = | 0  1  1  0 |     G = | 1/2  1/2  1/2|     A^T = | 1  1  1  0 |
//!       | 0 -1  1  0 |         | 1/2 -1/2  1/2|           | 0  1 -1 -1 |
//!       | 0  1  0 -1 |         | 0    0    1  |
//! ```
//!
//! Element `e = i*4 + j` of every 4x4 transform is its own matrix product over the channels, so a convolution is
//! a weight transform, an input transform, 16 independent matrix products ([`gemm_batched`]) and an output
//! transform. The two backward passes reuse the same pieces:
//!
//! - backward_data is the forward convolution of `dy` with the weight rotated by 180 degrees, channels swapped,
//!   and padding `2 - pad` (tiles over `dy`, output `(H, W)`): [`WinogradTiles::backward_data_of`] and the
//!   `flip` of [`winograd_weight_transform`];
//! - backward_weight is the adjoint: `W = A dY A^T` ([`winograd_output_grad_transform`], the adjoint of the output
//!   transform), `dU[e] = W[e] V[e]^T` summed over tiles, `dg = G^T dU G` ([`winograd_weight_grad_transform`], the
//!   adjoint of the weight transform).
//!
//! # Layouts (row-major, `e` outermost)
//!
//! - `U (16, R, S)`, `u[(e*R + r)*S + s]`: `(R, S) = (C_OUT, C_IN)` from `g = weight[co, ci]`, or flipped
//!   `(R, S) = (C_IN, C_OUT)` from `g[a][b] = weight[co, ci, 2-a, 2-b]`.
//! - `V (16, C, T)`, `v[(e*C + c)*T + t]`, or transposed `(16, T, C)`, `v[(e*T + t)*C + c]`.
//! - `M (16, C, T)` (the products), read by the output transform, which writes `(N, C, HO, WO)`.
//! - `W (16, C_OUT, T)`, the output-gradient transform of `dy (N, C_OUT, HO, WO)`.
//! - `dU (16, C_OUT, C_IN)`, read by the weight-gradient transform, which writes `dweight (C_OUT, C_IN, 3, 3)`.
//!
//! # Bit-exact twins
//!
//! Every transform and [`gemm_batched`] has a WGSL twin of the same name: the transforms in
//! `shaders/winograd.wgsl`, [`gemm_batched`] in `shaders/conv2d.wgsl` (the three `conv2d_winograd_*` composites,
//! which exist for tests and as the documentation of how the pieces fit, and [`winograd_workspace_len`] have
//! none). The twins compute the same f32 operations in the same order (in the private 4x4 helpers below every
//! parenthesis, every `+`, `-` and `*`, is one rounding; no fused multiply-add), so their results agree bit for
//! bit. Multiplying by 0.5 and negating are exact (barring subnormal results).
//!
//! # Accuracy
//!
//! Winograd is not the direct convolution's sum in another order: the transforms add and subtract inputs before
//! multiplying, so the error is relative to the magnitude of those intermediate terms, not of the result. The
//! tests accept `|winograd - direct| <= (K + 16) * f32::EPSILON * 16 * P` per output element, `K` the length of
//! the reduction (`C_IN` forward, `C_OUT` backward_data, `N*TH*TW` backward_weight) and `P` the magnitude the
//! terms can reach (for forward, `P = sum_c (sum |g_c|) (sum of |d_c| over the element's 4x4 input patch)`); the
//! derivation is in the tests.
//!
//! No function panics: sizes and every slice length are checked before any element is touched, and outputs are
//! overwritten. Non-finite values are not scanned for; note that where the direct convolution skips padding,
//! Winograd multiplies it (`0 * inf = NaN`), so non-finite inputs may spread differently.

use crate::error::{check_len, Error};

use super::Conv2dShape;

/// A 4x4 tile, `[row][column]`.
type Tile4 = [[f32; 4]; 4];

/// The 2x2 output tiles of a 3x3 stride-1 convolution of an input `(N, ·, H, W)` with zero padding `pad <= 2`:
/// output `(HO, WO) = (H + 2*pad - 2, W + 2*pad - 2)`, `TH = ceil(HO/2)` by `TW = ceil(WO/2)` tiles per sample.
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
    /// Tile rows per sample, `TH = ceil(HO/2)`.
    pub const fn tiles_h(&self) -> usize {
        self.out_h().div_ceil(2)
    }
    /// Tile columns per sample, `TW = ceil(WO/2)`.
    pub const fn tiles_w(&self) -> usize {
        self.out_w().div_ceil(2)
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
    pub fn forward_of(s: &Conv2dShape) -> Option<Self> {
        eligible(s).then_some(Self { n: s.n, h: s.h, w: s.w, pad: s.pad })
    }

    /// The tiling of the backward_data pass of `s`, a forward convolution over `dy`: `(N, HO, WO, 2 - pad)`,
    /// whose output is `(H, W)`; `None` unless `s` is 3x3, stride 1, `pad <= 2`. Does not validate `s`.
    pub fn backward_data_of(s: &Conv2dShape) -> Option<Self> {
        eligible(s).then(|| Self { n: s.n, h: s.out_h(), w: s.out_w(), pad: 2 - s.pad })
    }

    /// Validates the tiles and `channels`, then returns the element counts `(N*C*H*W, N*C*HO*WO, 16*C*T)`.
    fn lens(&self, channels: usize) -> Result<(usize, usize, usize), Error> {
        self.validate()?;
        if channels == 0 {
            return Err(Error::Shape { what: "winograd: zero channels" });
        }
        let input = product(&[self.n, channels, self.h, self.w]).ok_or(OVERFLOW)?;
        let output = product(&[self.n, channels, self.out_h(), self.out_w()]).ok_or(OVERFLOW)?;
        let transformed = product(&[16, channels, self.tiles()]).ok_or(OVERFLOW)?;
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

/// The checked `C_OUT*C_IN*9` and `16*C_OUT*C_IN` of the weight transforms.
fn weight_lens(c_out: usize, c_in: usize) -> Result<(usize, usize), Error> {
    if c_out == 0 || c_in == 0 {
        return Err(Error::Shape { what: "winograd: a size (C_OUT or C_IN) is zero" });
    }
    Ok((product(&[c_out, c_in, 9]).ok_or(OVERFLOW)?, product(&[16, c_out, c_in]).ok_or(OVERFLOW)?))
}

/// `U = G g G^T` of every kernel of `weight (C_OUT, C_IN, 3, 3)`: `u (16, C_OUT, C_IN)`, or with `flip`
/// `u (16, C_IN, C_OUT)` from each kernel rotated by 180 degrees (`g[a][b] = weight[co, ci, 2-a, 2-b]`), the `U`
/// of backward_data.
///
/// Overwrites `u`. Errors: a zero size or overflow ([`Error::Shape`]), a slice of the wrong length
/// ([`Error::Length`] naming `weight` or `u`).
pub fn winograd_weight_transform(
    c_out: usize,
    c_in: usize,
    weight: &[f32],
    flip: bool,
    u: &mut [f32],
) -> Result<(), Error> {
    let (weight_len, u_len) = weight_lens(c_out, c_in)?;
    check_len("weight", weight, weight_len)?;
    check_len("u", u, u_len)?;
    for co in 0..c_out {
        for ci in 0..c_in {
            let k = &weight[(co * c_in + ci) * 9..][..9];
            let g: [[f32; 3]; 3] = core::array::from_fn(|a| {
                core::array::from_fn(|b| if flip { k[(2 - a) * 3 + (2 - b)] } else { k[a * 3 + b] })
            });
            // Element (e, r, s) of U (16, R, S).
            let (r, s, rows, cols) = if flip { (ci, co, c_in, c_out) } else { (co, ci, c_out, c_in) };
            for (e, &val) in weight_tile(&g).iter().flatten().enumerate() {
                u[(e * rows + r) * cols + s] = val;
            }
        }
    }
    Ok(())
}

/// `V = B^T d B` of every tile's 4x4 input patch of `x (N, C, H, W)`: `v (16, C, T)`, or with `transposed`
/// `v (16, T, C)` (the right operand of backward_weight's products). `C` is `channels`.
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
    let (h, w, pad, count) = (t.h, t.w, t.pad, t.tiles());
    for (tile, n, th, tw) in t.each() {
        for c in 0..channels {
            let plane = &x[(n * channels + c) * h * w..][..h * w];
            // Padded coordinates (2*th + i, 2*tw + j) are input (2*th + i - pad, 2*tw + j - pad).
            let d: Tile4 = core::array::from_fn(|i| {
                core::array::from_fn(|j| {
                    let (r, q) = (2 * th + i, 2 * tw + j);
                    if r < pad || q < pad || r - pad >= h || q - pad >= w {
                        0.0
                    } else {
                        plane[(r - pad) * w + (q - pad)]
                    }
                })
            });
            for (e, &val) in input_tile(&d).iter().flatten().enumerate() {
                let at = if transposed { (e * count + tile) * channels + c } else { (e * channels + c) * count + tile };
                v[at] = val;
            }
        }
    }
    Ok(())
}

/// `Y = A^T M A` of every tile of the products `m (16, C, T)`: `y (N, C, HO, WO)` (a tile's positions past
/// `HO`/`WO` are dropped). `C` is `channels`.
///
/// Overwrites `y`. Errors: invalid tiles or a zero size ([`Error::Shape`]), a slice of the wrong length
/// ([`Error::Length`] naming `m` or `y`).
pub fn winograd_output_transform(t: &WinogradTiles, channels: usize, m: &[f32], y: &mut [f32]) -> Result<(), Error> {
    let (_, y_len, m_len) = t.lens(channels)?;
    check_len("m", m, m_len)?;
    check_len("y", y, y_len)?;
    let (ho, wo, count) = (t.out_h(), t.out_w(), t.tiles());
    for (tile, n, th, tw) in t.each() {
        for c in 0..channels {
            let mt: Tile4 =
                core::array::from_fn(|i| core::array::from_fn(|j| m[((i * 4 + j) * channels + c) * count + tile]));
            let plane = &mut y[(n * channels + c) * ho * wo..][..ho * wo];
            for (i, row) in output_tile(&mt).iter().enumerate() {
                for (j, &val) in row.iter().enumerate() {
                    let (oh, ow) = (2 * th + i, 2 * tw + j);
                    if oh < ho && ow < wo {
                        plane[oh * wo + ow] = val;
                    }
                }
            }
        }
    }
    Ok(())
}

/// `W = A dY A^T` of every 2x2 tile of `dy (N, C, HO, WO)` (zeros past `HO`/`WO`): `w (16, C, T)`, the gradient
/// of the products `M` (the adjoint of [`winograd_output_transform`]). `C` is `channels`.
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
    let (ho, wo, count) = (t.out_h(), t.out_w(), t.tiles());
    for (tile, n, th, tw) in t.each() {
        for c in 0..channels {
            let plane = &dy[(n * channels + c) * ho * wo..][..ho * wo];
            let dyt: [[f32; 2]; 2] = core::array::from_fn(|i| {
                core::array::from_fn(|j| {
                    let (oh, ow) = (2 * th + i, 2 * tw + j);
                    if oh < ho && ow < wo {
                        plane[oh * wo + ow]
                    } else {
                        0.0
                    }
                })
            });
            for (e, &val) in output_grad_tile(&dyt).iter().flatten().enumerate() {
                w[(e * channels + c) * count + tile] = val;
            }
        }
    }
    Ok(())
}

/// `dg = G^T dU G` of every `(co, ci)` of `du (16, C_OUT, C_IN)`: `dweight (C_OUT, C_IN, 3, 3)` (the adjoint of
/// the unflipped [`winograd_weight_transform`]).
///
/// Overwrites `dweight`. Errors: a zero size or overflow ([`Error::Shape`]), a slice of the wrong length
/// ([`Error::Length`] naming `du` or `dweight`).
pub fn winograd_weight_grad_transform(c_out: usize, c_in: usize, du: &[f32], dweight: &mut [f32]) -> Result<(), Error> {
    let (dweight_len, du_len) = weight_lens(c_out, c_in)?;
    check_len("du", du, du_len)?;
    check_len("dweight", dweight, dweight_len)?;
    for co in 0..c_out {
        for ci in 0..c_in {
            let dut: Tile4 =
                core::array::from_fn(|i| core::array::from_fn(|j| du[((i * 4 + j) * c_out + co) * c_in + ci]));
            let k = &mut dweight[(co * c_in + ci) * 9..][..9];
            for (dst, &val) in k.iter_mut().zip(weight_grad_tile(&dut).iter().flatten()) {
                *dst = val;
            }
        }
    }
    Ok(())
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

/// Checks that `s` is Winograd-eligible and valid, returning its forward and backward_data tilings.
fn winograd_shape(s: &Conv2dShape) -> Result<(WinogradTiles, WinogradTiles), Error> {
    match (WinogradTiles::forward_of(s), WinogradTiles::backward_data_of(s)) {
        (Some(fwd), Some(bwd)) => {
            s.validate()?;
            Ok((fwd, bwd))
        }
        _ => Err(Error::Shape { what: "winograd: needs a 3x3 kernel, stride 1 and pad <= 2" }),
    }
}

/// Elements of the workspace the three composite passes ([`conv2d_winograd_forward`],
/// [`conv2d_winograd_backward_data`], [`conv2d_winograd_backward_weight`]) need for shape `s`: the largest
/// `u + v + m` of the three, namely `16*(C_OUT*C_IN + C_IN*T + C_OUT*T)` (forward, backward_weight) and
/// `16*(C_IN*C_OUT + C_OUT*T' + C_IN*T')` (backward_data, `T'` its tiles over `dy`).
///
/// `None` if `s` is not a valid 3x3 stride-1 convolution with `pad <= 2`, or the count overflows `usize`.
pub fn winograd_workspace_len(s: &Conv2dShape) -> Option<usize> {
    let (fwd, bwd) = winograd_shape(s).ok()?;
    fwd.validate().ok()?;
    bwd.validate().ok()?;
    let sum = |parts: [usize; 3]| parts.iter().try_fold(0usize, |acc, &p| acc.checked_add(p));
    let u = product(&[16, s.c_out, s.c_in])?;
    let forward = sum([u, product(&[16, s.c_in, fwd.tiles()])?, product(&[16, s.c_out, fwd.tiles()])?])?;
    let backward = sum([u, product(&[16, s.c_out, bwd.tiles()])?, product(&[16, s.c_in, bwd.tiles()])?])?;
    Some(forward.max(backward))
}

/// Checks that `workspace` holds at least [`winograd_workspace_len`] elements (which also proves that every
/// `u`, `v`, `m` length of the three passes fits `usize`).
fn check_workspace(s: &Conv2dShape, workspace: &[f32]) -> Result<(), Error> {
    let needed = winograd_workspace_len(s).ok_or(OVERFLOW)?;
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

/// `y = conv(x, weight)` by Winograd F(2x2, 3x3), as [`conv2d_forward`](super::conv2d_forward) up to rounding:
/// `U = weight_transform(weight)`, `V = input_transform(x)`, `M = gemm_batched(16, C_OUT, C_IN, T, U, V)`,
/// `y = output_transform(M)`. Shapes: `x (N, C_IN, H, W)`, `weight (C_OUT, C_IN, 3, 3)`, `y (N, C_OUT, HO, WO)`,
/// `workspace` at least [`winograd_workspace_len`] elements (its contents are scratch).
///
/// Overwrites `y`. Errors: `s` not a valid 3x3 stride-1 convolution with `pad <= 2` ([`Error::Shape`]), a slice
/// of the wrong length or a short workspace ([`Error::Length`] naming `x`, `weight`, `y` or `workspace`).
pub fn conv2d_winograd_forward(
    s: &Conv2dShape,
    x: &[f32],
    weight: &[f32],
    y: &mut [f32],
    workspace: &mut [f32],
) -> Result<(), Error> {
    let (t, _) = winograd_shape(s)?;
    check_len("x", x, s.input_len())?;
    check_len("weight", weight, s.weight_len())?;
    check_len("y", y, s.output_len())?;
    check_workspace(s, workspace)?;
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
    let count = t.tiles();
    let (u, v, m) = carve(workspace, [16 * c_next * c, 16 * c * count, 16 * c_next * count]);
    // The weight's shape (C_OUT, C_IN) is (c_next, c) forward, (c, c_next) flipped.
    let (c_out, c_in) = if flip { (c, c_next) } else { (c_next, c) };
    winograd_weight_transform(c_out, c_in, weight, flip, u)?;
    winograd_input_transform(t, c, input, false, v)?;
    gemm_batched(16, c_next, c, count, u, v, m)?;
    winograd_output_transform(t, c_next, m, output)
}

/// `dx` by Winograd F(2x2, 3x3), as [`conv2d_backward_data`](super::conv2d_backward_data) up to rounding: the
/// forward convolution of `dy` with the flipped weight and padding `2 - pad` ([`WinogradTiles::backward_data_of`]):
/// `U' = weight_transform(weight, flip)`, `V' = input_transform(dy)`, `M' = gemm_batched(16, C_IN, C_OUT, T', U',
/// V')`, `dx = output_transform(M')`. Shapes: `dy (N, C_OUT, HO, WO)`, `weight (C_OUT, C_IN, 3, 3)`,
/// `dx (N, C_IN, H, W)`, `workspace` at least [`winograd_workspace_len`] elements.
///
/// Overwrites `dx`. Errors as [`conv2d_winograd_forward`] ([`Error::Length`] naming `dy`, `weight`, `dx` or
/// `workspace`).
pub fn conv2d_winograd_backward_data(
    s: &Conv2dShape,
    dy: &[f32],
    weight: &[f32],
    dx: &mut [f32],
    workspace: &mut [f32],
) -> Result<(), Error> {
    let (_, t) = winograd_shape(s)?;
    check_len("dy", dy, s.output_len())?;
    check_len("weight", weight, s.weight_len())?;
    check_len("dx", dx, s.input_len())?;
    check_workspace(s, workspace)?;
    convolve(&t, [s.c_out, s.c_in], dy, weight, true, dx, workspace)
}

/// `dweight` by Winograd F(2x2, 3x3), as [`conv2d_backward_weight`](super::conv2d_backward_weight) up to
/// rounding, with the forward tiling: `W = output_grad_transform(dy)`, `V^T = input_transform(x, transposed)`,
/// `dU = gemm_batched(16, C_OUT, T, C_IN, W, V^T)`, `dweight = weight_grad_transform(dU)`. Shapes:
/// `dy (N, C_OUT, HO, WO)`, `x (N, C_IN, H, W)`, `dweight (C_OUT, C_IN, 3, 3)`, `workspace` at least
/// [`winograd_workspace_len`] elements.
///
/// Overwrites `dweight`. Errors as [`conv2d_winograd_forward`] ([`Error::Length`] naming `dy`, `x`, `dweight` or
/// `workspace`).
pub fn conv2d_winograd_backward_weight(
    s: &Conv2dShape,
    dy: &[f32],
    x: &[f32],
    dweight: &mut [f32],
    workspace: &mut [f32],
) -> Result<(), Error> {
    let (t, _) = winograd_shape(s)?;
    check_len("dy", dy, s.output_len())?;
    check_len("x", x, s.input_len())?;
    check_len("dweight", dweight, s.weight_len())?;
    check_workspace(s, workspace)?;
    let count = t.tiles();
    let (du, vt, w) = carve(workspace, [16 * s.c_out * s.c_in, 16 * count * s.c_in, 16 * s.c_out * count]);
    winograd_output_grad_transform(&t, s.c_out, dy, w)?;
    winograd_input_transform(&t, s.c_in, x, true, vt)?;
    gemm_batched(16, s.c_out, count, s.c_in, w, vt, du)?;
    winograd_weight_grad_transform(s.c_out, s.c_in, du, dweight)
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::vec;
    use std::vec::Vec;

    use super::*;
    use crate::nn::{conv2d_backward_data, conv2d_backward_weight, conv2d_forward};

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

    /// Odd and even sizes, pad 0, 1, 2, batches, 1x1 and 7x7 inputs.
    const SHAPES: [Case; 10] = [
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
    ];

    // ---- The error bound ------------------------------------------------------------------------------------
    //
    // Write u = f32::EPSILON / 2 (the unit roundoff) and ignore underflow (test data lie in [-1, 1]). A value
    // computed by a chain of at most D roundings from exact terms equals sum_terms term * (1 + theta),
    // |theta| <= D u / (1 - D u) (Higham, Lemma 3.1), so its error is at most ~D u times the sum of |terms|.
    // Multiplying by 0.5 and negating are exact.
    //
    // Forward (K = C_IN). Depths along any path: input transform 2 roundings, weight transform 4
    // (0.5 * ((a + b) + c) twice), product 1, gemm K, output transform 4: D = K + 11. The sum of |terms| of
    // one output is at most |A^T| (sum_c |G||g_c||G^T| (.) |B^T||d_c||B|) |A|, with d_c the element's 4x4 patch.
    // Every entry of |G||g||G^T| is <= sum |g| (|G| entries are <= 1); the entries of |B^T||d||B| sum to
    // sum_jl |d_jl| b_j b_l <= 9 sum |d| (the column sums b of |B^T| are 1, 3, 3, 1); an output picks 9 of the 16
    // products (entries of |A| are 0 or 1). Hence sum |terms| <= 9 P, P = sum_c (sum |g_c|)(sum |d_c|), and
    // Winograd's error <= 9 (K + 11) u P. The direct convolution adds 9K products one by one: error
    // <= 9K u sum_c sum_ab |g_c[a][b]| |x| <= 9K u P. Together <= (18K + 99) u P = (9K + 49.5) eps P, which
    // (K + 16) * 16 * eps * P bounds for every K, with room for the second-order terms.
    //
    // Backward data (K = C_OUT): the same forward analysis on dy, padding 2 - pad, kernels
    // g'_co = weight[co, ci] rotated (the same sum |g|); the direct pass scatters 9K products into each dx.
    //
    // Backward weight (K = N*TH*TW): depths: output-gradient transform 2, input transform 2, product 1, gemm K,
    // weight-gradient transform 4 (dU0 + 0.5*(dU1 + dU2) twice): D = K + 9. Each of the 9 dweight of (co, ci)
    // sums over tiles the |G^T|-weighted (entries <= 1) |W_t| (.) |V_t|; every entry of |A||dY_t||A^T| is
    // <= sum |dY_t| and the entries of |V_t| sum to <= 9 sum |d_t|, so sum |terms| <= 9 P,
    // P = sum_tiles (sum |dy over the 2x2 tile of co|)(sum |x over the 4x4 patch of ci|). The direct pass sums
    // a row (<= WO - 1 adds), adds rows (<= HO) and samples (<= N): depth <= 1 + WO + HO + N <= 5K + 1, over
    // terms summing to <= P. Together <= (9 (K + 9) + 5K + 1) u P = (7K + 41) eps P <= (K + 16) * 16 * eps * P.

    /// Sum of |x| over the 4x4 input patch of tile (n, th, tw) in channel c of x (N, C, H, W).
    fn patch_sum(t: &WinogradTiles, channels: usize, x: &[f32], (n, c, th, tw): (usize, usize, usize, usize)) -> f64 {
        let mut sum = 0.0;
        for i in 0..4 {
            for j in 0..4 {
                let (r, q) = (2 * th + i, 2 * tw + j);
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
        let (ho, wo) = (t.out_h(), t.out_w());
        let mut p = vec![0.0; t.n * c_out * ho * wo];
        for n in 0..t.n {
            for co in 0..c_out {
                for oh in 0..ho {
                    for ow in 0..wo {
                        p[((n * c_out + co) * ho + oh) * wo + ow] =
                            (0..c_in).map(|ci| gsum(co, ci) * patch_sum(t, c_in, x, (n, ci, oh / 2, ow / 2))).sum();
                    }
                }
            }
        }
        p
    }

    /// P of every dweight (C_OUT, C_IN, 3, 3): sum over tiles of (sum |dy| over the tile)(sum |x| over the patch).
    fn p_backward_weight(t: &WinogradTiles, c_in: usize, c_out: usize, dy: &[f32], x: &[f32]) -> Vec<f64> {
        let (ho, wo) = (t.out_h(), t.out_w());
        let mut p = vec![0.0; c_out * c_in * 9];
        for (_, n, th, tw) in t.each() {
            for co in 0..c_out {
                let mut dy_sum = 0.0;
                for (oh, ow) in [(0, 0), (0, 1), (1, 0), (1, 1)].map(|(i, j)| (2 * th + i, 2 * tw + j)) {
                    if oh < ho && ow < wo {
                        dy_sum += f64::from(dy[((n * c_out + co) * ho + oh) * wo + ow].abs());
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

    /// Largest |winograd - direct| / ((K + 16) * 16 * eps * P); panics (test failure) above 1.
    fn worst_ratio(what: &str, winograd: &[f32], direct: &[f32], p: &[f64], k: usize) -> f64 {
        assert_eq!((winograd.len(), direct.len()), (p.len(), p.len()));
        let scale = (k + 16) as f64 * 16.0 * f64::from(f32::EPSILON);
        let mut worst = 0.0f64;
        for (i, ((&a, &b), &p)) in winograd.iter().zip(direct).zip(p).enumerate() {
            let diff = (f64::from(a) - f64::from(b)).abs();
            let ratio = if diff == 0.0 { 0.0 } else { diff / (scale * p) };
            assert!(ratio <= 1.0, "{what}: element {i}: winograd {a}, direct {b}, bound {}", scale * p);
            worst = worst.max(ratio);
        }
        worst
    }

    #[test]
    fn forward_matches_direct() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut overall = 0.0f64;
        for (n, c_in, hw, c_out, pad) in SHAPES {
            let s = conv(n, c_in, hw, c_out, pad);
            let (x, weight) = (rng.vec(s.input_len()), rng.vec(s.weight_len()));
            let mut workspace = vec![f32::NAN; winograd_workspace_len(&s).unwrap()];
            let (mut y, mut direct) = (vec![f32::NAN; s.output_len()], vec![0.0; s.output_len()]);
            conv2d_winograd_forward(&s, &x, &weight, &mut y, &mut workspace).unwrap();
            conv2d_forward(&s, &x, &weight, &mut direct).unwrap();
            let sums = kernel_sums(&weight);
            let t = WinogradTiles::forward_of(&s).unwrap();
            let p = p_forward(&t, c_in, c_out, &x, |co, ci| sums[co * c_in + ci]);
            let ratio = worst_ratio("forward", &y, &direct, &p, c_in);
            std::println!("forward {s:?}: max error / bound = {ratio:.3e}");
            overall = overall.max(ratio);
        }
        std::println!("forward: max error / bound over all shapes = {overall:.3e}");
    }

    #[test]
    fn backward_data_matches_direct() {
        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        let mut overall = 0.0f64;
        for (n, c_in, hw, c_out, pad) in SHAPES {
            let s = conv(n, c_in, hw, c_out, pad);
            let (dy, weight) = (rng.vec(s.output_len()), rng.vec(s.weight_len()));
            let mut workspace = vec![f32::NAN; winograd_workspace_len(&s).unwrap()];
            let (mut dx, mut direct) = (vec![f32::NAN; s.input_len()], vec![0.0; s.input_len()]);
            conv2d_winograd_backward_data(&s, &dy, &weight, &mut dx, &mut workspace).unwrap();
            conv2d_backward_data(&s, &dy, &weight, &mut direct).unwrap();
            // A forward convolution of dy (C_OUT channels) into C_IN channels, kernel (ci <- co) = weight[co, ci].
            let sums = kernel_sums(&weight);
            let t = WinogradTiles::backward_data_of(&s).unwrap();
            let p = p_forward(&t, c_out, c_in, &dy, |ci, co| sums[co * c_in + ci]);
            let ratio = worst_ratio("backward_data", &dx, &direct, &p, c_out);
            std::println!("backward_data {s:?}: max error / bound = {ratio:.3e}");
            overall = overall.max(ratio);
        }
        std::println!("backward_data: max error / bound over all shapes = {overall:.3e}");
    }

    #[test]
    fn backward_weight_matches_direct() {
        let mut rng = Rng(0x94D0_49BB_1331_11EB);
        let mut overall = 0.0f64;
        for (n, c_in, hw, c_out, pad) in SHAPES {
            let s = conv(n, c_in, hw, c_out, pad);
            let (dy, x) = (rng.vec(s.output_len()), rng.vec(s.input_len()));
            let mut workspace = vec![f32::NAN; winograd_workspace_len(&s).unwrap()];
            let (mut dw, mut direct) = (vec![f32::NAN; s.weight_len()], vec![0.0; s.weight_len()]);
            conv2d_winograd_backward_weight(&s, &dy, &x, &mut dw, &mut workspace).unwrap();
            conv2d_backward_weight(&s, &dy, &x, &mut direct).unwrap();
            let t = WinogradTiles::forward_of(&s).unwrap();
            let p = p_backward_weight(&t, c_in, c_out, &dy, &x);
            let ratio = worst_ratio("backward_weight", &dw, &direct, &p, t.tiles());
            std::println!("backward_weight {s:?}: max error / bound = {ratio:.3e}");
            overall = overall.max(ratio);
        }
        std::println!("backward_weight: max error / bound over all shapes = {overall:.3e}");
    }

    #[test]
    fn small_integers_give_the_direct_results_exactly() {
        // With integers in [-8, 8] every intermediate is a multiple of 1/16 far below 2^24: no rounding anywhere,
        // so Winograd and the direct loops agree bit for bit.
        let mut rng = Rng(7);
        for (n, c_in, hw, c_out, pad) in SHAPES {
            let s = conv(n, c_in, hw, c_out, pad);
            let (x, weight, dy) = (rng.ints(s.input_len()), rng.ints(s.weight_len()), rng.ints(s.output_len()));
            let mut ws = vec![0.0; winograd_workspace_len(&s).unwrap()];
            let (mut a, mut b) = (vec![0.0; s.output_len()], vec![0.0; s.output_len()]);
            conv2d_winograd_forward(&s, &x, &weight, &mut a, &mut ws).unwrap();
            conv2d_forward(&s, &x, &weight, &mut b).unwrap();
            assert_eq!(a, b, "forward {s:?}");
            let (mut a, mut b) = (vec![0.0; s.input_len()], vec![0.0; s.input_len()]);
            conv2d_winograd_backward_data(&s, &dy, &weight, &mut a, &mut ws).unwrap();
            conv2d_backward_data(&s, &dy, &weight, &mut b).unwrap();
            assert_eq!(a, b, "backward_data {s:?}");
            let (mut a, mut b) = (vec![0.0; s.weight_len()], vec![0.0; s.weight_len()]);
            conv2d_winograd_backward_weight(&s, &dy, &x, &mut a, &mut ws).unwrap();
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
        winograd_weight_transform(1, 1, &g, false, &mut u).unwrap();
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
        winograd_weight_transform(1, 1, &g, true, &mut u).unwrap();
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
        winograd_weight_transform(2, 3, &weight, false, &mut u).unwrap();
        winograd_weight_transform(2, 3, &weight, true, &mut uf).unwrap();
        for co in 0..2 {
            for ci in 0..3 {
                let k = &weight[(co * 3 + ci) * 9..][..9];
                let mut rotated: [f32; 9] = k.try_into().unwrap();
                rotated.reverse();
                let (mut one, mut one_flipped, mut one_rotated) = ([0.0; 16], [0.0; 16], [0.0; 16]);
                winograd_weight_transform(1, 1, k, false, &mut one).unwrap();
                winograd_weight_transform(1, 1, k, true, &mut one_flipped).unwrap();
                winograd_weight_transform(1, 1, &rotated, false, &mut one_rotated).unwrap();
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
        let t = WinogradTiles { n: 1, h: 4, w: 4, pad: 0 };
        assert_eq!(t.tiles(), 1);
        for transposed in [false, true] {
            let mut v = [f32::NAN; 16];
            winograd_input_transform(&t, 1, &d, transposed, &mut v).unwrap();
            assert_eq!(v, expected);
        }
        // The same patch inside a 2x2 input with pad 1: d = [[0, 0, 0, 0], [0, 1, 2, 0], [0, 3, 4, 0], [0, ...]].
        // B^T d = [[0, -3, -4, 0], [0, 4, 6, 0], [0, 2, 2, 0], [0, 1, 2, 0]] -> V.
        let t = WinogradTiles { n: 1, h: 2, w: 2, pad: 1 };
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
    fn input_transform_layouts() {
        // (16, C, T) and (16, T, C) hold the same values; tiles numbered (n*TH + th)*TW + tw.
        let t = WinogradTiles { n: 2, h: 5, w: 4, pad: 1 }; // out 5x4, 3x2 tiles per sample, T = 12
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
        let one = WinogradTiles { n: 1, h: 4, w: 4, pad: 0 };
        let mut expected = [0.0; 16];
        winograd_input_transform(&one, 1, &d, false, &mut expected).unwrap();
        for (e, &val) in expected.iter().enumerate() {
            assert_eq!(v[(e * 3 + 2) * 12 + 9], val);
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
        winograd_output_transform(&WinogradTiles { n: 1, h: 4, w: 4, pad: 0 }, 1, &m, &mut y).unwrap();
        assert_eq!(y, [10.0, 1.0, -5.0, 7.0]);
        // A 1x2 output keeps the tile's first row only.
        let mut y = [f32::NAN; 2];
        winograd_output_transform(&WinogradTiles { n: 1, h: 3, w: 4, pad: 0 }, 1, &m, &mut y).unwrap();
        assert_eq!(y, [10.0, 1.0]);
    }

    #[test]
    fn output_grad_transform_by_hand() {
        // A dY = [[1, 2], [4, 6], [-2, -2], [-3, -4]]; each row [a, b] -> [a, a + b, a - b, -b].
        let mut w = [f32::NAN; 16];
        winograd_output_grad_transform(&WinogradTiles { n: 1, h: 4, w: 4, pad: 0 }, 1, &[1.0, 2.0, 3.0, 4.0], &mut w)
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
        winograd_output_grad_transform(&WinogradTiles { n: 1, h: 3, w: 3, pad: 0 }, 1, &[5.0], &mut w).unwrap();
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
        winograd_weight_grad_transform(1, 1, &du, &mut dg).unwrap();
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
        // the other. Odd and even outputs, several channels and samples.
        let mut rng = Rng(17);
        for t in [
            WinogradTiles { n: 2, h: 5, w: 6, pad: 1 },
            WinogradTiles { n: 1, h: 7, w: 4, pad: 0 },
            WinogradTiles { n: 3, h: 1, w: 2, pad: 2 },
        ] {
            let channels = 3;
            let (m_len, y_len) = (16 * channels * t.tiles(), t.n * channels * t.out_h() * t.out_w());
            for exact in [true, false] {
                let (m, dy) = if exact { (rng.ints(m_len), rng.ints(y_len)) } else { (rng.vec(m_len), rng.vec(y_len)) };
                let (mut y, mut w) = (vec![f32::NAN; y_len], vec![f32::NAN; m_len]);
                winograd_output_transform(&t, channels, &m, &mut y).unwrap();
                winograd_output_grad_transform(&t, channels, &dy, &mut w).unwrap();
                let (lhs, rhs) = (dot(&y, &dy), dot(&m, &w));
                if exact {
                    // Integers: both sides exact.
                    assert_eq!(lhs, rhs, "{t:?}");
                } else {
                    // Only the transforms round: each y (each w) is <= 4 (2) roundings from terms summing to
                    // <= 4 |m| (|dy|) entries, every m entry in <= 4 of them: both sides within
                    // 16 u max|dy| sum|m| of the exact value, u = eps / 2.
                    let max_dy = dy.iter().fold(0.0f64, |a, v| a.max(f64::from(v.abs())));
                    let sum_m: f64 = m.iter().map(|v| f64::from(v.abs())).sum();
                    let tol = 16.0 * f64::from(f32::EPSILON) * max_dy * sum_m;
                    assert!((lhs - rhs).abs() <= tol, "{t:?}: {lhs} vs {rhs}");
                }
            }
        }
    }

    #[test]
    fn weight_grad_transform_is_the_adjoint_of_weight_transform() {
        // <G g G^T, dU> = <g, G^T dU G> for every (co, ci).
        let mut rng = Rng(19);
        let (c_out, c_in) = (3, 2);
        for exact in [true, false] {
            let (g, du) = if exact {
                (rng.ints(c_out * c_in * 9), rng.ints(16 * c_out * c_in))
            } else {
                (rng.vec(c_out * c_in * 9), rng.vec(16 * c_out * c_in))
            };
            let (mut u, mut dg) = (vec![f32::NAN; 16 * c_out * c_in], vec![f32::NAN; c_out * c_in * 9]);
            winograd_weight_transform(c_out, c_in, &g, false, &mut u).unwrap();
            winograd_weight_grad_transform(c_out, c_in, &du, &mut dg).unwrap();
            let (lhs, rhs) = (dot(&u, &du), dot(&g, &dg));
            if exact {
                // Integers: U, dg are multiples of 1/4, both sides exact.
                assert_eq!(lhs, rhs);
            } else {
                // Each U (each dg) is <= 4 roundings from terms whose magnitudes sum to <= sum |g| (sum |dU|) of its
                // kernel (|G| entries <= 1): both sides within 4 u sum_kernels (sum |g|)(sum |dU|) of the exact value.
                let abs_sum = |v: &[f32]| v.iter().map(|x| f64::from(x.abs())).sum::<f64>();
                let tol = 4.0 * f64::from(f32::EPSILON) * abs_sum(&g) * abs_sum(&du);
                assert!((lhs - rhs).abs() <= tol, "{lhs} vs {rhs}");
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
        let t = |n, h, w, pad| WinogradTiles { n, h, w, pad };
        let sizes = |t: WinogradTiles| (t.out_h(), t.out_w(), t.tiles_h(), t.tiles_w(), t.tiles());
        assert_eq!(sizes(t(1, 1, 1, 1)), (1, 1, 1, 1, 1));
        assert_eq!(sizes(t(2, 7, 7, 1)), (7, 7, 4, 4, 32));
        assert_eq!(sizes(t(1, 4, 5, 0)), (2, 3, 1, 2, 2));
        assert_eq!(sizes(t(3, 1, 2, 2)), (3, 4, 2, 2, 12));
        assert_eq!(sizes(t(1, 2, 2, 0)), (0, 0, 0, 0, 0)); // invalid
        for good in [t(1, 1, 1, 1), t(2, 7, 7, 1), t(1, 3, 3, 0), t(1, 1, 1, 2)] {
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
        assert_eq!(WinogradTiles::forward_of(&s), Some(WinogradTiles { n: 2, h: 7, w: 5, pad: 1 }));
        assert_eq!(WinogradTiles::backward_data_of(&s), Some(WinogradTiles { n: 2, h: 7, w: 5, pad: 1 }));
        let s = conv(2, 3, (7, 5), 4, 0); // out 5x3
        let bwd = WinogradTiles::backward_data_of(&s).unwrap();
        assert_eq!(bwd, WinogradTiles { n: 2, h: 5, w: 3, pad: 2 });
        assert_eq!((bwd.out_h(), bwd.out_w()), (7, 5));
        let s = conv(1, 1, (1, 1), 1, 2); // out 3x3
        assert_eq!(WinogradTiles::backward_data_of(&s), Some(WinogradTiles { n: 1, h: 3, w: 3, pad: 0 }));
        for bad in [
            Conv2dShape { stride: 2, ..s },
            Conv2dShape { kh: 1, ..s },
            Conv2dShape { kw: 5, ..s },
            Conv2dShape { pad: 3, ..s },
        ] {
            assert_eq!((WinogradTiles::forward_of(&bad), WinogradTiles::backward_data_of(&bad)), (None, None));
            assert_eq!(winograd_workspace_len(&bad), None);
        }
        assert_eq!(winograd_workspace_len(&Conv2dShape { n: 0, ..s }), None);
        // Forward: u 16*4*3, v 16*3*T, m 16*4*T with T = 2*2*1 = 4 (out 3x1 -> 2x1 tiles); backward_data: T' = 2*4*3.
        let s = conv(2, 3, (3, 1), 4, 1);
        let (t, tb) =
            (WinogradTiles::forward_of(&s).unwrap().tiles(), WinogradTiles::backward_data_of(&s).unwrap().tiles());
        assert_eq!((t, tb), (4, 4));
        assert_eq!(winograd_workspace_len(&s), Some(16 * (12 + 3 * 4 + 4 * 4)));
        let s = conv(1, 2, (8, 8), 2, 2); // out 10x10: T = 25, T' = 16
        assert_eq!(winograd_workspace_len(&s), Some(16 * (4 + 2 * 25 + 2 * 25)));
        let s = conv(1, 2, (8, 8), 2, 0); // out 6x6: T = 9, T' = 16
        assert_eq!(winograd_workspace_len(&s), Some(16 * (4 + 2 * 16 + 2 * 16)));
    }

    #[test]
    fn composite_errors() {
        let s = conv(2, 2, (4, 4), 3, 1); // x 64, weight 54, y 96
        let need = winograd_workspace_len(&s).unwrap();
        let (x, wt, y) = (vec![0.0; 64], vec![0.0; 54], vec![0.0; 96]);
        let (mut xm, mut wm, mut ym, mut ws) = (vec![0.0; 64], vec![0.0; 54], vec![0.0; 96], vec![0.0; need]);
        let len = |what, expected, got| Err(Error::Length { what, expected, got });
        assert_eq!(conv2d_winograd_forward(&s, &x[1..], &wt, &mut ym, &mut ws), len("x", 64, 63));
        assert_eq!(conv2d_winograd_forward(&s, &x, &wt[1..], &mut ym, &mut ws), len("weight", 54, 53));
        assert_eq!(conv2d_winograd_forward(&s, &x, &wt, &mut ym[1..], &mut ws), len("y", 96, 95));
        assert_eq!(conv2d_winograd_forward(&s, &x, &wt, &mut ym, &mut ws[1..]), len("workspace", need, need - 1));
        assert_eq!(conv2d_winograd_backward_data(&s, &y[1..], &wt, &mut xm, &mut ws), len("dy", 96, 95));
        assert_eq!(conv2d_winograd_backward_data(&s, &y, &wt[1..], &mut xm, &mut ws), len("weight", 54, 53));
        assert_eq!(conv2d_winograd_backward_data(&s, &y, &wt, &mut xm[1..], &mut ws), len("dx", 64, 63));
        assert_eq!(conv2d_winograd_backward_data(&s, &y, &wt, &mut xm, &mut ws[1..]), len("workspace", need, need - 1));
        assert_eq!(conv2d_winograd_backward_weight(&s, &y[1..], &x, &mut wm, &mut ws), len("dy", 96, 95));
        assert_eq!(conv2d_winograd_backward_weight(&s, &y, &x[1..], &mut wm, &mut ws), len("x", 64, 63));
        assert_eq!(conv2d_winograd_backward_weight(&s, &y, &x, &mut wm[1..], &mut ws), len("dweight", 54, 53));
        assert_eq!(
            conv2d_winograd_backward_weight(&s, &y, &x, &mut wm, &mut ws[1..]),
            len("workspace", need, need - 1)
        );
        // A longer workspace is fine.
        let mut long = vec![0.0; need + 5];
        conv2d_winograd_forward(&s, &x, &wt, &mut ym, &mut long).unwrap();
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
            assert!(shape_err(conv2d_winograd_forward(&bad, &x, &wt, &mut ym, &mut ws)), "{bad:?}");
            assert!(shape_err(conv2d_winograd_backward_data(&bad, &y, &wt, &mut xm, &mut ws)), "{bad:?}");
            assert!(shape_err(conv2d_winograd_backward_weight(&bad, &y, &x, &mut wm, &mut ws)), "{bad:?}");
        }
    }

    #[test]
    fn transform_length_and_size_errors() {
        let t = WinogradTiles { n: 1, h: 3, w: 5, pad: 1 }; // out 3x5, 2x3 tiles: T = 6; 2 channels
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
        assert_eq!(winograd_weight_transform(3, 2, &wt[1..], false, &mut um), len("weight", 54, 53));
        assert_eq!(winograd_weight_transform(3, 2, &wt, true, &mut um[1..]), len("u", 96, 95));
        assert_eq!(winograd_weight_grad_transform(3, 2, &u[1..], &mut wm), len("du", 96, 95));
        assert_eq!(winograd_weight_grad_transform(3, 2, &u, &mut wm[1..]), len("dweight", 54, 53));
        for (c_out, c_in) in [(0, 2), (3, 0), (usize::MAX, usize::MAX)] {
            assert!(matches!(winograd_weight_transform(c_out, c_in, &wt, false, &mut um), Err(Error::Shape { .. })));
            assert!(matches!(winograd_weight_grad_transform(c_out, c_in, &u, &mut wm), Err(Error::Shape { .. })));
        }
        // Untouched on error.
        assert_eq!((vm, ym, wm, um), ([0.0; 192], [0.0; 30], [0.0; 54], [0.0; 96]));
    }
}
