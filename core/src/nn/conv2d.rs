//! 2-D convolution without bias, as `torch.nn.Conv2d(bias=False)` (square stride and padding).
//!
//! Each function documents the order in which every element sums its products; that order, not the loops,
//! defines the bits. The loops are blocked for registers: the forward pass and the input gradient compute tiles of
//! [`TILE`] positions of [`BLOCK`] planes at once (output channels, or input channels), each element read once for
//! all of them; the weight gradient sums [`BLOCK`] filters times [`BLOCK`] input channels at once. Blocks, tiles and
//! the executor's pieces change which sums run side by side, never the order within one: the same bits as the plain
//! loops of the documented order (tested), on any executor.
//!
//! Non-finite values are not scanned for: they propagate into the outputs as IEEE arithmetic makes them.
//! No function panics: the shape and every slice length are checked before any element is touched.

use core::ops::Range;

use crate::error::Error;
use crate::parallel::{Executor, Serial};

/// Shape of a convolution: input `(N, C_IN, H, W)`, weight `(C_OUT, C_IN, KH, KW)`,
/// output `(N, C_OUT, HO, WO)` with `HO = (H + 2*pad - KH) / stride + 1` (likewise `WO`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dShape {
    /// Batch size N.
    pub n: usize,
    /// Input channels.
    pub c_in: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride, both directions.
    pub stride: usize,
    /// Zero padding, both directions, both sides.
    pub pad: usize,
}

/// `(size + 2*pad - k) / stride + 1`, or 0 where that is undefined (stride 0, kernel larger than the padded
/// input). Saturating, so it never panics.
const fn out_size(size: usize, k: usize, stride: usize, pad: usize) -> usize {
    let padded = size.saturating_add(pad.saturating_mul(2));
    if stride == 0 || k == 0 || k > padded {
        0
    } else {
        (padded - k) / stride + 1
    }
}

impl Conv2dShape {
    /// Output height HO (0 for a shape [`Conv2dShape::validate`] rejects).
    pub const fn out_h(&self) -> usize {
        out_size(self.h, self.kh, self.stride, self.pad)
    }
    /// Output width WO (0 for a shape [`Conv2dShape::validate`] rejects).
    pub const fn out_w(&self) -> usize {
        out_size(self.w, self.kw, self.stride, self.pad)
    }
    /// Elements of the input, `N*C_IN*H*W` (saturating at `usize::MAX`, which no slice can match).
    pub const fn input_len(&self) -> usize {
        self.n.saturating_mul(self.c_in).saturating_mul(self.h).saturating_mul(self.w)
    }
    /// Elements of the weight, `C_OUT*C_IN*KH*KW` (saturating at `usize::MAX`, which no slice can match).
    pub const fn weight_len(&self) -> usize {
        self.c_out.saturating_mul(self.c_in).saturating_mul(self.kh).saturating_mul(self.kw)
    }
    /// Elements of the output, `N*C_OUT*HO*WO` (saturating at `usize::MAX`, which no slice can match).
    pub const fn output_len(&self) -> usize {
        self.n.saturating_mul(self.c_out).saturating_mul(self.out_h()).saturating_mul(self.out_w())
    }
    /// Checks that every size is non-zero and the kernel fits the padded input.
    ///
    /// Errors ([`Error::Shape`]): a zero size, stride 0, a kernel larger than the padded input, or a tensor
    /// whose element count does not fit `usize`.
    pub fn validate(&self) -> Result<(), Error> {
        let sizes = [self.n, self.c_in, self.h, self.w, self.c_out, self.kh, self.kw];
        if sizes.contains(&0) {
            return Err(Error::Shape { what: "conv2d: a size (N, C_IN, H, W, C_OUT, KH or KW) is zero" });
        }
        if self.stride == 0 {
            return Err(Error::Shape { what: "conv2d: stride is zero" });
        }
        let overflow = Error::Shape { what: "conv2d: a size overflows usize" };
        let two_pad = self.pad.checked_mul(2).ok_or(overflow)?;
        let padded_h = self.h.checked_add(two_pad).ok_or(overflow)?;
        let padded_w = self.w.checked_add(two_pad).ok_or(overflow)?;
        if self.kh > padded_h || self.kw > padded_w {
            return Err(Error::Shape { what: "conv2d: kernel larger than the padded input" });
        }
        let product = |dims: &[usize]| dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        product(&[self.n, self.c_in, self.h, self.w]).ok_or(overflow)?;
        product(&[self.c_out, self.c_in, self.kh, self.kw]).ok_or(overflow)?;
        product(&[self.n, self.c_out, self.out_h(), self.out_w()]).ok_or(overflow)?;
        Ok(())
    }

    /// For the kernel row `ki`: the output rows `lo..hi` whose tap `ki` reads a real input row (not padding).
    /// Input row of output row `oh` is `oh * stride + ki - pad`.
    #[inline]
    fn rows_hit(&self, ki: usize) -> (usize, usize) {
        taps_in_range(ki, self.h, self.out_h(), self.stride, self.pad)
    }

    /// For the kernel column `kj`: the output columns `lo..hi` whose tap `kj` reads a real input column.
    #[inline]
    fn cols_hit(&self, kj: usize) -> (usize, usize) {
        taps_in_range(kj, self.w, self.out_w(), self.stride, self.pad)
    }
}

/// What one kernel tap `(ki, kj)` reaches: the output rows and columns whose tap `(ki, kj)` reads a real input
/// position (padding excluded), and the input column of the first of those columns (the next ones follow `stride`
/// apart). Input row of output row `oh`: [`TapReach::input_row`].
struct TapReach {
    /// Index of the tap in a `(KH, KW)` kernel: `ki * KW + kj`.
    tap: usize,
    ki: usize,
    rows: Range<usize>,
    cols: Range<usize>,
    first_input_col: usize,
}

impl TapReach {
    /// The input row that output row `oh` reads through this tap.
    #[inline]
    fn input_row(&self, s: &Conv2dShape, oh: usize) -> usize {
        oh * s.stride + self.ki - s.pad
    }
}

/// Every tap of `s`'s kernel that reaches at least one output column, in the order `(ki, kj)`: the loop order of
/// all three convolutions (their sums depend on it).
fn tap_reaches(s: &Conv2dShape) -> impl Iterator<Item = TapReach> + '_ {
    (0..s.kh).flat_map(move |ki| {
        let (oh_lo, oh_hi) = s.rows_hit(ki);
        (0..s.kw).filter_map(move |kj| {
            let (ow_lo, ow_hi) = s.cols_hit(kj);
            (ow_lo != ow_hi).then(|| TapReach {
                tap: ki * s.kw + kj,
                ki,
                rows: oh_lo..oh_hi,
                cols: ow_lo..ow_hi,
                first_input_col: ow_lo * s.stride + kj - s.pad,
            })
        })
    })
}

/// The taps of one convolution, in [`tap_reaches`]' order. Their reach does not depend on the image or the channels,
/// so kernels of up to 3x3 taps (every convolution of an iResNet) have them listed once per call; a larger kernel
/// computes each tap's reach where it is used (the same taps, the same order, the same sums).
struct Taps<'s> {
    shape: &'s Conv2dShape,
    /// `None` for a kernel of more than 9 taps.
    listed: Option<heapless::Vec<TapReach, 9>>,
}

impl<'s> Taps<'s> {
    fn of(shape: &'s Conv2dShape) -> Self {
        let mut listed = heapless::Vec::new();
        for t in tap_reaches(shape) {
            if listed.push(t).is_err() {
                return Self { shape, listed: None };
            }
        }
        Self { shape, listed: Some(listed) }
    }

    /// Calls `f` on each tap in order.
    #[inline]
    fn for_each(&self, mut f: impl FnMut(&TapReach)) {
        match &self.listed {
            Some(taps) => taps.iter().for_each(f),
            None => tap_reaches(self.shape).for_each(|t| f(&t)),
        }
    }
}

/// The output positions `o` in `lo..hi` (within `0..out`) for which `o * stride + k - pad` lies in `0..size`.
/// Requires a validated shape (`stride > 0`, `size + 2 * pad` fits `usize`); `lo <= hi` always.
#[inline]
fn taps_in_range(k: usize, size: usize, out: usize, stride: usize, pad: usize) -> (usize, usize) {
    // o * stride + k >= pad  <=>  o >= ceil((pad - k) / stride)
    let lo = if k >= pad { 0 } else { (pad - k).div_ceil(stride) };
    // o * stride + k < size + pad  <=>  o <= (size + pad - k - 1) / stride
    let hi = if k >= size + pad { 0 } else { ((size + pad - k - 1) / stride + 1).min(out) };
    (lo.min(hi), hi)
}

/// Positions of one plane computed together, their sums held in registers: a tile.
const TILE: usize = 8;
/// Planes computed together (output channels in the forward pass, input channels in the input gradient), sharing
/// each element they read.
const BLOCK: usize = 4;
/// No source element: the tap reads padding (or, for the input gradient, belongs to another stride phase).
const NOWHERE: usize = usize::MAX;

/// Where one kernel tap reads for each position of a tile: offsets into one source plane.
#[derive(Clone, Copy)]
enum Reads {
    /// No position of the tile reads anything.
    Nothing,
    /// All `TILE` positions read, from consecutive elements starting here.
    Run(usize),
    /// Position `j` reads `at[j]` where `live[j]` is all ones, nothing where it is 0 (and `at[j]` is 0, a safe place
    /// to read). The masks apply to the bits of the products.
    Gather { at: [usize; TILE], live: [u32; TILE] },
}

impl Reads {
    /// The reads of the first `len` positions of a tile (`len <= TILE`); `source(j)` is position `j`'s, if any.
    fn of(len: usize, source: impl Fn(usize) -> Option<usize>) -> Self {
        let mut at = [NOWHERE; TILE];
        for (j, a) in at.iter_mut().enumerate().take(len) {
            *a = source(j).unwrap_or(NOWHERE);
        }
        if at.iter().all(|&a| a == NOWHERE) {
            Self::Nothing
        } else if at[0] != NOWHERE && at.iter().enumerate().all(|(j, &a)| a == at[0] + j) {
            Self::Run(at[0])
        } else {
            let live = at.map(|a| if a == NOWHERE { 0 } else { u32::MAX });
            Self::Gather { at: at.map(|a| if a == NOWHERE { 0 } else { a }), live }
        }
    }
}

/// The sums of the forward pass and of the input gradient for one tile of `B` planes: `acc[b][j]` is `0.0` plus, for
/// each source plane `k` of `src` in order (`planes` planes of `plane` elements) and each tap in order (`kernel`
/// taps), `weight_of(k)[b][tap]` times what `reads_of(tap)` says position `j` reads from plane `k`: `weight_of(k)[b]`
/// holds plane `b`'s weights for source plane `k`, tap after tap (a slice of at least `kernel` elements: its place in
/// the weight is found once per source plane, not once per tap). Taps that read nothing add nothing: each element is
/// the sum of its products in the order (plane, tap), whatever the tiling.
fn tile_sums<'w, const B: usize>(
    (src, plane, planes): (&[f32], usize, usize),
    kernel: usize,
    reads_of: impl Fn(usize) -> Reads,
    weight_of: impl Fn(usize) -> [&'w [f32]; B],
) -> [[f32; TILE]; B] {
    // Up to 9 taps (every iResNet kernel): their reads are listed once for the tile. A larger kernel lists them
    // 9 at a time for every plane (the same taps, in the same order).
    const LISTED: usize = 9;
    // Taps that read nothing for this tile (padding, another stride phase) are left out.
    let mut listed = heapless::Vec::<(usize, Reads), LISTED>::new();
    let list = |listed: &mut heapless::Vec<(usize, Reads), LISTED>, first: usize| {
        listed.clear();
        for tap in first..kernel.min(first + LISTED) {
            let reads = reads_of(tap);
            if !matches!(reads, Reads::Nothing) {
                // At most LISTED taps from `first`: every push fits.
                let _ = listed.push((tap, reads));
            }
        }
    };
    let mut acc = [[0.0f32; TILE]; B];
    if kernel <= LISTED {
        list(&mut listed, 0);
        if listed.is_empty() {
            // No tap reads anything for this tile (the input gradient of a stride larger than the kernel).
            return acc;
        }
    }
    for (k, src_plane) in src.chunks_exact(plane).take(planes).enumerate() {
        for first in (0..kernel).step_by(LISTED) {
            if kernel > LISTED {
                list(&mut listed, first);
            }
            let rows = weight_of(k).map(|r| &r[..kernel]);
            for (tap, reads) in &listed {
                let wv: [f32; B] = core::array::from_fn(|i| rows[i][*tap]);
                match reads {
                    Reads::Nothing => {}
                    Reads::Run(start) => {
                        let xs = &src_plane[*start..*start + TILE];
                        for (row, &w) in acc.iter_mut().zip(&wv) {
                            for (a, &x) in row.iter_mut().zip(xs) {
                                *a += w * x;
                            }
                        }
                    }
                    Reads::Gather { at, live } => {
                        // A masked product is +0.0, and adding +0.0 leaves a sum as skipping would: a sum that starts
                        // at +0.0 is never -0.0.
                        let xs = at.map(|a| src_plane[a]);
                        for (row, &w) in acc.iter_mut().zip(&wv) {
                            for ((a, &x), &live) in row.iter_mut().zip(&xs).zip(live) {
                                *a += f32::from_bits((w * x).to_bits() & live);
                            }
                        }
                    }
                }
            }
        }
    }
    acc
}

/// Computes `out`, a piece of whole planes starting at plane `first` of `(N, per_n, plane)`, `B` planes of one sample
/// at a time (one at a time where fewer are left), a tile at a time; `tile(first_plane, b_planes, p0, len, out)`
/// writes the tile's `len` positions from `p0` of the `b_planes` planes (`1` or [`BLOCK`]) from `first_plane` on.
fn by_tiles(
    out: &mut [f32],
    first: usize,
    (per_n, plane): (usize, usize),
    tile: impl Fn(usize, usize, usize, usize, &mut [f32]),
) {
    let mut done = 0;
    while done < out.len() / plane {
        let p = first + done;
        let left_in_sample = per_n - p % per_n;
        let b = if left_in_sample >= BLOCK && out.len() / plane - done >= BLOCK { BLOCK } else { 1 };
        let block = &mut out[done * plane..(done + b) * plane];
        for p0 in (0..plane).step_by(TILE) {
            tile(p, b, p0, TILE.min(plane - p0), block);
        }
        done += b;
    }
}

/// [`tile_sums`] for the `b` planes of a block (1 or [`BLOCK`]), where plane `i`'s weights for source plane `k` are
/// `weight_of(k, i)`, tap after tap: the sums of plane `i` in row `i` (the rows from `b` on are zeros).
fn block_sums<'w>(
    b: usize,
    src: (&[f32], usize, usize),
    kernel: usize,
    reads_of: impl Fn(usize) -> Reads,
    weight_of: impl Fn(usize, usize) -> &'w [f32],
) -> [[f32; TILE]; BLOCK] {
    if b == BLOCK {
        tile_sums(src, kernel, reads_of, |k| core::array::from_fn(|i| weight_of(k, i)))
    } else {
        let [row] = tile_sums(src, kernel, reads_of, |k| [weight_of(k, 0)]);
        core::array::from_fn(|i| if i == 0 { row } else { [0.0; TILE] })
    }
}

/// Positions `first .. first + len` (`len <= TILE`) of an `h x w` plane in stride-phase order, the rest of the tile 0.
///
/// The order: phase after phase, the phase of rows `a, a + stride, ...` and columns `b, b + stride, ...` for
/// `(a, b) = (0, 0), (0, 1), ... (min(stride, h) - 1, min(stride, w) - 1)`, each phase's positions row by row; for
/// stride 1, the plane's own order. The same taps reach every position of a phase, from neighbouring output positions:
/// a tile of the input gradient that lies within one phase reads only those taps, and tiles straddle two phases only
/// where a phase ends.
fn phase_tile(first: usize, len: usize, (h, w): (usize, usize), stride: usize) -> [usize; TILE] {
    let (phases_h, phases_w) = (stride.min(h), stride.min(w));
    let count = |size: usize, phase: usize| (size - phase).div_ceil(stride);
    // The phase (a, b) that holds index `first`, and `first`'s index within it.
    let (mut a, mut b, mut rest) = (0, 0, first);
    while a < phases_h && rest >= count(h, a) * count(w, b) {
        rest -= count(h, a) * count(w, b);
        b += 1;
        if b == phases_w {
            (a, b) = (a + 1, 0);
        }
    }
    let mut at = [0; TILE];
    if a == phases_h {
        // `first` is past the plane.
        return at;
    }
    let (mut rows, mut cols) = (count(h, a), count(w, b));
    let (mut r, mut c) = (rest / cols, rest % cols);
    for slot in at.iter_mut().take(len) {
        *slot = (a + r * stride) * w + b + c * stride;
        c += 1;
        if c == cols {
            (r, c) = (r + 1, 0);
        }
        if r == rows {
            (r, b) = (0, b + 1);
            if b == phases_w {
                (a, b) = (a + 1, 0);
            }
            if a == phases_h {
                break;
            }
            (rows, cols) = (count(h, a), count(w, b));
        }
    }
    at
}

/// Checks the shape, then each slice against it (`Error::Length` names the first wrong one).
fn check(s: &Conv2dShape, slices: [(&'static str, usize, usize); 3]) -> Result<(), Error> {
    s.validate()?;
    for (what, got, expected) in slices {
        if got != expected {
            return Err(Error::Length { what, expected, got });
        }
    }
    Ok(())
}

/// `y = conv(x, weight)`. Shapes: `x (N, C_IN, H, W)`, `weight (C_OUT, C_IN, KH, KW)`, `y (N, C_OUT, HO, WO)`.
///
/// Each output element is `0.0` plus its products `weight * x` in the order (input channel, tap `(ki, kj)`), taps
/// that read padding skipped. Overwrites `y`. Errors: an invalid shape ([`Error::Shape`], see
/// [`Conv2dShape::validate`]) or a slice of the wrong length ([`Error::Length`] naming `x`, `weight` or `y`).
/// Non-finite inputs propagate.
pub fn conv2d_forward(s: &Conv2dShape, x: &[f32], weight: &[f32], y: &mut [f32]) -> Result<(), Error> {
    conv2d_forward_on(&Serial, s, x, weight, y)
}

/// [`conv2d_forward`] on `exec`, one output plane `(n, co)` a row: the same bits on any executor.
pub fn conv2d_forward_on(
    exec: &dyn Executor,
    s: &Conv2dShape,
    x: &[f32],
    weight: &[f32],
    y: &mut [f32],
) -> Result<(), Error> {
    check(
        s,
        [("x", x.len(), s.input_len()), ("weight", weight.len(), s.weight_len()), ("y", y.len(), s.output_len())],
    )?;
    let (h, w, stride, pad) = (s.h, s.w, s.stride, s.pad);
    let (ho, wo) = (s.out_h(), s.out_w());
    let kernel = s.kh * s.kw;
    // Output position (oh, ow) reads, through tap (ki, kj), input (oh * stride + ki - pad, ow * stride + kj - pad).
    // A tile's `(oh * stride, ow * stride)` are computed once, its reads once for each tap.
    let starts = |p0: usize| -> [(usize, usize); TILE] {
        core::array::from_fn(|j| ((p0 + j) / wo * stride, (p0 + j) % wo * stride))
    };
    let reads = |starts: &[(usize, usize); TILE], len: usize, tap: usize| {
        let (ki, kj) = (tap / s.kw, tap % s.kw);
        Reads::of(len, |j| {
            let ih = (starts[j].0 + ki).checked_sub(pad).filter(|&ih| ih < h)?;
            let iw = (starts[j].1 + kj).checked_sub(pad).filter(|&iw| iw < w)?;
            Some(ih * w + iw)
        })
    };
    exec.for_each_rows(y, ho * wo, &|first, planes| {
        by_tiles(planes, first, (s.c_out, ho * wo), |p, b, p0, len, block| {
            let (n, co) = (p / s.c_out, p % s.c_out);
            let src = (&x[n * s.c_in * h * w..][..s.c_in * h * w], h * w, s.c_in);
            let weight_of = |ci: usize, i: usize| &weight[((co + i) * s.c_in + ci) * kernel..];
            let starts = starts(p0);
            let sums = block_sums(b, src, kernel, |tap| reads(&starts, len, tap), weight_of);
            for (row, plane) in sums.iter().zip(block.chunks_exact_mut(ho * wo)) {
                plane[p0..p0 + len].copy_from_slice(&row[..len]);
            }
        });
    });
    Ok(())
}

/// Gradient with respect to the input: `dx (N, C_IN, H, W)` from `dy (N, C_OUT, HO, WO)` and `weight`. Overwrites `dx`.
///
/// Each element is `0.0` plus its products `weight * dy` in the order (output channel, tap `(ki, kj)`); input
/// positions no tap reads (possible when `stride > KH`) get 0. Errors as [`conv2d_forward`] ([`Error::Length`]
/// naming `dy`, `weight` or `dx`). Non-finite inputs propagate.
pub fn conv2d_backward_data(s: &Conv2dShape, dy: &[f32], weight: &[f32], dx: &mut [f32]) -> Result<(), Error> {
    conv2d_backward_data_on(&Serial, s, dy, weight, dx)
}

/// [`conv2d_backward_data`] on `exec`, one input-gradient plane `(n, ci)` a row: the same bits on any executor.
pub fn conv2d_backward_data_on(
    exec: &dyn Executor,
    s: &Conv2dShape,
    dy: &[f32],
    weight: &[f32],
    dx: &mut [f32],
) -> Result<(), Error> {
    check(
        s,
        [("dy", dy.len(), s.output_len()), ("weight", weight.len(), s.weight_len()), ("dx", dx.len(), s.input_len())],
    )?;
    let (h, w, stride, pad) = (s.h, s.w, s.stride, s.pad);
    let (ho, wo) = (s.out_h(), s.out_w());
    let kernel = s.kh * s.kw;
    // The transpose of the forward pass: input position (ih, iw) gets, through tap (ki, kj), the output gradient at
    // ((ih + pad - ki) / stride, (iw + pad - kj) / stride) where both divide exactly and land in the output. With
    // `ih + pad = q * stride + r`: where `ki % stride == r` and `ki / stride <= q`, at row `q - ki / stride`.
    // A tile's positions and their `(q, r)` of rows and columns, computed once.
    let starts = |at: &[usize; TILE]| -> [[(usize, usize); 2]; TILE] {
        // Stride 1 (most layers) without the divisions.
        let split = |i: usize| if stride == 1 { (i + pad, 0) } else { ((i + pad) / stride, (i + pad) % stride) };
        at.map(|p| [p / w, p % w].map(split))
    };
    // Tap index `k` as its `(k / stride, k % stride)`.
    let back = |(q, r): (usize, usize), (k_q, k_r): (usize, usize), out: usize| {
        let o = q.checked_sub(k_q).filter(|&o| r == k_r && o < out)?;
        Some(o)
    };
    let reads = |starts: &[[(usize, usize); 2]; TILE], len: usize, tap: usize| {
        let [ki, kj] = [tap / s.kw, tap % s.kw].map(|k| (k / stride, k % stride));
        Reads::of(len, |j| Some(back(starts[j][0], ki, ho)? * wo + back(starts[j][1], kj, wo)?))
    };
    exec.for_each_rows(dx, h * w, &|first, planes| {
        by_tiles(planes, first, (s.c_in, h * w), |q, b, q0, len, block| {
            let (n, ci) = (q / s.c_in, q % s.c_in);
            let src = (&dy[n * s.c_out * ho * wo..][..s.c_out * ho * wo], ho * wo, s.c_out);
            let weight_of = |co: usize, i: usize| &weight[(co * s.c_in + ci + i) * kernel..];
            let at = phase_tile(q0, len, (h, w), stride);
            let starts = starts(&at);
            let sums = block_sums(b, src, kernel, |tap| reads(&starts, len, tap), weight_of);
            for (row, plane) in sums.iter().zip(block.chunks_exact_mut(h * w)) {
                for (&v, &a) in row.iter().zip(&at).take(len) {
                    plane[a] = v;
                }
            }
        });
    });
    Ok(())
}

/// Gradient with respect to the weight: `dweight (C_OUT, C_IN, KH, KW)` from `dy` and `x`. Overwrites `dweight`.
///
/// Shapes: `dy (N, C_OUT, HO, WO)`, `x (N, C_IN, H, W)`. Each element is `0.0` plus, sample by sample, the sample's
/// sum: `0.0` plus, output row by output row, the row's sum of its products `dy * x` in column order (from `-0.0`, as
/// `Iterator::sum`), positions that read padding skipped. Errors as [`conv2d_forward`] ([`Error::Length`] naming
/// `dy`, `x` or `dweight`). Non-finite inputs propagate.
pub fn conv2d_backward_weight(s: &Conv2dShape, dy: &[f32], x: &[f32], dweight: &mut [f32]) -> Result<(), Error> {
    conv2d_backward_weight_on(&Serial, s, dy, x, dweight)
}

/// [`conv2d_backward_weight`] on `exec`, one filter `co` (`C_IN x KH x KW`) a row: the same bits on any executor.
pub fn conv2d_backward_weight_on(
    exec: &dyn Executor,
    s: &Conv2dShape,
    dy: &[f32],
    x: &[f32],
    dweight: &mut [f32],
) -> Result<(), Error> {
    check(
        s,
        [("dy", dy.len(), s.output_len()), ("x", x.len(), s.input_len()), ("dweight", dweight.len(), s.weight_len())],
    )?;
    let (h, w) = (s.h, s.w);
    let (ho, wo) = (s.out_h(), s.out_w());
    let filter = s.c_in * s.kh * s.kw;
    let taps = Taps::of(s);
    exec.for_each_rows(dweight, filter, &|first, filters| {
        filters.fill(0.0);
        let count = filters.len() / filter;
        // Samples outermost (each sample's input is read once per piece); within a sample, blocks of filters times
        // blocks of input channels, each tap's sums for all of them at once.
        for n in 0..s.n {
            let x_batch = &x[n * s.c_in * h * w..][..s.c_in * h * w];
            let dy_batch = &dy[n * s.c_out * ho * wo..][..s.c_out * ho * wo];
            let sample = Sample { s, taps: &taps, x: x_batch, dy: dy_batch };
            let mut co = 0;
            while co < count {
                if count - co >= BLOCK {
                    sample.filters_sums::<BLOCK>(filters, (first, co));
                    co += BLOCK;
                } else {
                    sample.filters_sums::<1>(filters, (first, co));
                    co += 1;
                }
            }
        }
    });
    Ok(())
}

/// One sample's part of the weight gradient: `x (C_IN, H, W)`, `dy (C_OUT, HO, WO)`.
struct Sample<'a> {
    s: &'a Conv2dShape,
    taps: &'a Taps<'a>,
    x: &'a [f32],
    dy: &'a [f32],
}

impl Sample<'_> {
    /// Adds this sample's sums to the filters `co..co + BO` of the piece `filters` (whose first filter is `first`),
    /// [`BLOCK`] input channels at a time (one at a time for the last few).
    fn filters_sums<const BO: usize>(&self, filters: &mut [f32], (first, co): (usize, usize)) {
        let mut ci = 0;
        while self.s.c_in - ci >= BLOCK {
            self.filter_sums::<BO, BLOCK>(filters, (first, co), ci);
            ci += BLOCK;
        }
        for ci in ci..self.s.c_in {
            self.filter_sums::<BO, 1>(filters, (first, co), ci);
        }
    }

    /// Adds this sample's sums to the `BO x BI` elements of every tap for the filters `co..co + BO` of the piece
    /// `filters` (whose first filter is `first`) and the input channels `ci..ci + BI`: `BO * BI` independent sums,
    /// each in its own order.
    fn filter_sums<const BO: usize, const BI: usize>(
        &self,
        filters: &mut [f32],
        (first, co): (usize, usize),
        ci: usize,
    ) {
        let s = self.s;
        let (h, w, stride, kernel) = (s.h, s.w, s.stride, s.kh * s.kw);
        let (ho, wo) = (s.out_h(), s.out_w());
        let (co_global, filter) = (first + co, s.c_in * kernel);
        self.taps.for_each(|t| {
            let mut acc = [[0.0f32; BI]; BO];
            let cols = t.cols.len();
            for oh in t.rows.clone() {
                let ih = t.input_row(s, oh);
                // The row's reads: x from the first input column on (every `stride`-th), dy over the tap's columns.
                let xs: [&[f32]; BI] = core::array::from_fn(|i| &self.x[((ci + i) * h + ih) * w + t.first_input_col..]);
                let dys: [&[f32]; BO] =
                    core::array::from_fn(|o| &self.dy[((co_global + o) * ho + oh) * wo + t.cols.start..][..cols]);
                let mut row = [[-0.0f32; BI]; BO];
                for c in 0..cols {
                    let xv: [f32; BI] = core::array::from_fn(|i| xs[i][c * stride]);
                    let dyv: [f32; BO] = core::array::from_fn(|o| dys[o][c]);
                    for (r, &d) in row.iter_mut().zip(&dyv) {
                        for (a, &v) in r.iter_mut().zip(&xv) {
                            *a += d * v;
                        }
                    }
                }
                for (a, r) in acc.iter_mut().zip(&row) {
                    for (a, &r) in a.iter_mut().zip(r) {
                        *a += r;
                    }
                }
            }
            for (o, a) in acc.iter().enumerate() {
                for (i, &a) in a.iter().enumerate() {
                    filters[(co + o) * filter + (ci + i) * kernel + t.tap] += a;
                }
            }
        });
    }
}

/// Taps of a kernel of `k` along one dimension in stride phase `r` (`r < stride`): those at `r + t*stride`.
const fn phase_taps(r: usize, k: usize, stride: usize) -> usize {
    if r < k {
        (k - r).div_ceil(stride)
    } else {
        0
    }
}

/// The weight laid out as the GPU's `conv2d_backward_data` reads it, one stride phase after another.
///
/// `backward_data` sums, for an input position whose row is in phase `rh` (`(ih + pad) % stride == rh`) and column
/// in phase `rw`, over the taps `kh = rh + t*stride`, `kw = rw + u*stride` only. So it runs one product per phase
/// `(rh, rw)` (row-major over `stride x stride`), of depth `C_OUT * TH * TW` (`TH`, `TW` the phase's taps), whose
/// first operand is the matrix `A[ci, (co, t, u)] = weight[co, ci, rh + t*stride, rw + u*stride]`, row-major.
/// `out` holds these matrices one after another: every tap belongs to one phase, so `out` is a permutation of the
/// weight, `C_OUT*C_IN*KH*KW` elements (a phase with `rh >= KH` or `rw >= KW` has no taps and holds nothing). For
/// stride 1 it is the single phase, `weight` with its two channel axes swapped. Contiguous along the depth, it is
/// loaded four elements at a time.
///
/// Overwrites `out`. Errors as [`conv2d_forward`] ([`Error::Length`] naming `weight` or `out`).
pub fn conv2d_phase_weights(s: &Conv2dShape, weight: &[f32], out: &mut [f32]) -> Result<(), Error> {
    s.validate()?;
    for (what, got) in [("weight", weight.len()), ("out", out.len())] {
        if got != s.weight_len() {
            return Err(Error::Length { what, expected: s.weight_len(), got });
        }
    }
    let stride = s.stride;
    let mut dst = out.iter_mut();
    // Phases at or past the kernel size have no taps and write nothing (`out` is their concatenation, no offsets),
    // so only the first `min(stride, K)` of each dimension are visited: a huge stride costs nothing.
    for rh in 0..stride.min(s.kh) {
        for rw in 0..stride.min(s.kw) {
            let (th, tw) = (phase_taps(rh, s.kh, stride), phase_taps(rw, s.kw, stride));
            for ci in 0..s.c_in {
                for co in 0..s.c_out {
                    for t in 0..th {
                        for u in 0..tw {
                            let (kh, kw) = (rh + t * stride, rw + u * stride);
                            // `check` sized `out` to the weight, and the phases' taps add up to KH*KW.
                            if let Some(d) = dst.next() {
                                *d = weight[((co * s.c_in + ci) * s.kh + kh) * s.kw + kw];
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::parallel::Pieces;

    fn shape(
        n: usize,
        c_in: usize,
        hw: (usize, usize),
        c_out: usize,
        k: (usize, usize),
        stride: usize,
        pad: usize,
    ) -> Conv2dShape {
        Conv2dShape { n, c_in, h: hw.0, w: hw.1, c_out, kh: k.0, kw: k.1, stride, pad }
    }

    #[test]
    fn output_sizes() {
        let s = shape(1, 1, (13, 13), 1, (3, 3), 2, 1);
        assert_eq!((s.out_h(), s.out_w()), (7, 7));
        let s = shape(1, 1, (112, 112), 1, (3, 3), 1, 1);
        assert_eq!((s.out_h(), s.out_w()), (112, 112));
        let s = shape(1, 1, (112, 112), 1, (3, 3), 2, 1);
        assert_eq!((s.out_h(), s.out_w()), (56, 56));
        let s = shape(2, 3, (13, 12), 4, (1, 1), 2, 0);
        assert_eq!((s.out_h(), s.out_w()), (7, 6));
        assert_eq!((s.input_len(), s.weight_len(), s.output_len()), (2 * 3 * 13 * 12, 4 * 3, 2 * 4 * 7 * 6));
        let s = shape(1, 1, (9, 11), 1, (5, 3), 3, 2);
        assert_eq!((s.out_h(), s.out_w()), (3, 5)); // (9 + 4 - 5) / 3 + 1, (11 + 4 - 3) / 3 + 1
    }

    #[test]
    fn identity_kernel_copies_the_input() {
        // A 3x3 kernel with a single 1 in the centre, stride 1, pad 1: y == x.
        let s = shape(1, 1, (3, 4), 1, (3, 3), 1, 1);
        let x: [f32; 12] = core::array::from_fn(|i| i as f32 + 1.0);
        let mut weight = [0.0; 9];
        weight[4] = 1.0;
        let mut y = [f32::NAN; 12];
        conv2d_forward(&s, &x, &weight, &mut y).unwrap();
        assert_eq!(y, x);
    }

    #[test]
    fn box_filter_with_padding_by_hand() {
        // x = [[1, 2, 3], [4, 5, 6], [7, 8, 9]], all-ones 3x3 kernel, pad 1, stride 1:
        // each output is the sum of the (zero-padded) 3x3 neighbourhood.
        let s = shape(1, 1, (3, 3), 1, (3, 3), 1, 1);
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0];
        let mut y = [0.0; 9];
        conv2d_forward(&s, &x, &[1.0; 9], &mut y).unwrap();
        assert_eq!(y, [12.0, 21.0, 16.0, 27.0, 45.0, 33.0, 24.0, 39.0, 28.0]);
        // Stride 2 keeps the corners.
        let s2 = Conv2dShape { stride: 2, ..s };
        let mut y2 = [0.0; 4];
        conv2d_forward(&s2, &x, &[1.0; 9], &mut y2).unwrap();
        assert_eq!(y2, [12.0, 16.0, 24.0, 28.0]);
    }

    #[test]
    fn channels_and_batch_by_hand() {
        // N=2, C_IN=2, 2x2 input, C_OUT=2, 1x1 kernel: y[n, co] = sum_ci w[co, ci] * x[n, ci].
        let s = shape(2, 2, (2, 2), 2, (1, 1), 1, 0);
        let x = [1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, 40.0, -1.0, 0.0, 1.0, 2.0, 0.5, 0.5, 0.5, 0.5];
        let weight = [1.0, 2.0, -1.0, 0.5];
        let mut y = [0.0; 16];
        conv2d_forward(&s, &x, &weight, &mut y).unwrap();
        assert_eq!(y, [21.0, 42.0, 63.0, 84.0, 4.0, 8.0, 12.0, 16.0, 0.0, 1.0, 2.0, 3.0, 1.25, 0.25, -0.75, -1.75]);
    }

    #[test]
    fn backward_by_hand() {
        // 1 channel, 3x3 input, 2x2 kernel, stride 1, pad 0 -> 2x2 output.
        let s = shape(1, 1, (3, 3), 1, (2, 2), 1, 0);
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0];
        let weight = [1.0, 2.0, 3.0, 4.0];
        // Forward is a cross-correlation (PyTorch), not a flipped convolution: y[0, 0] = 1*1 + 2*2 + 3*4 + 4*5.
        let mut y = [0.0; 4];
        conv2d_forward(&s, &x, &weight, &mut y).unwrap();
        assert_eq!(y, [37.0, 47.0, 67.0, 77.0]);
        let dy = [1.0, 0.0, 0.0, -1.0];
        // dx = full correlation of dy with the kernel: dy[0,0] spreads w at (0..2, 0..2), dy[1,1] spreads -w at (1..3, 1..3).
        let mut dx = [f32::NAN; 9];
        conv2d_backward_data(&s, &dy, &weight, &mut dx).unwrap();
        assert_eq!(dx, [1.0, 2.0, 0.0, 3.0, 3.0, -2.0, 0.0, -3.0, -4.0]);
        // dw[ki, kj] = x[ki, kj] - x[ki + 1, kj + 1].
        let mut dw = [f32::NAN; 4];
        conv2d_backward_weight(&s, &dy, &x, &mut dw).unwrap();
        assert_eq!(dw, [-4.0, -4.0, -4.0, -4.0]);
    }

    #[test]
    fn stride_larger_than_kernel_leaves_unread_inputs_at_zero() {
        // 1x1 kernel, stride 2, 3x3 input: only the corners and centre-edges at even positions are read.
        let s = shape(1, 1, (3, 3), 1, (1, 1), 2, 0);
        let mut dx = [f32::NAN; 9];
        conv2d_backward_data(&s, &[1.0, 2.0, 3.0, 4.0], &[2.0], &mut dx).unwrap();
        assert_eq!(dx, [2.0, 0.0, 4.0, 0.0, 0.0, 0.0, 6.0, 0.0, 8.0]);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let good = shape(1, 2, (4, 4), 3, (3, 3), 1, 1);
        assert_eq!(good.validate(), Ok(()));
        for bad in [
            Conv2dShape { n: 0, ..good },
            Conv2dShape { c_in: 0, ..good },
            Conv2dShape { h: 0, ..good },
            Conv2dShape { w: 0, ..good },
            Conv2dShape { c_out: 0, ..good },
            Conv2dShape { kh: 0, ..good },
            Conv2dShape { kw: 0, ..good },
            Conv2dShape { stride: 0, ..good },
            Conv2dShape { kh: 7, ..good },
            Conv2dShape { kw: 5, pad: 0, ..good },
            Conv2dShape { pad: usize::MAX, ..good },
            Conv2dShape { n: usize::MAX, c_in: usize::MAX, ..good },
        ] {
            assert!(matches!(bad.validate(), Err(Error::Shape { .. })), "{bad:?}");
            // Never a panic, whatever the buffers.
            let mut out = [0.0; 4];
            assert!(matches!(conv2d_forward(&bad, &[0.0; 4], &[0.0; 4], &mut out), Err(Error::Shape { .. })));
            assert!(matches!(conv2d_backward_data(&bad, &[0.0; 4], &[0.0; 4], &mut out), Err(Error::Shape { .. })));
            assert!(matches!(conv2d_backward_weight(&bad, &[0.0; 4], &[0.0; 4], &mut out), Err(Error::Shape { .. })));
            let _ = (bad.out_h(), bad.out_w(), bad.input_len(), bad.weight_len(), bad.output_len());
        }
        // Kernel exactly as large as the padded input is fine: one output.
        let fits = shape(1, 1, (2, 2), 1, (4, 4), 1, 1);
        assert_eq!(fits.validate(), Ok(()));
        assert_eq!((fits.out_h(), fits.out_w()), (1, 1));
    }

    #[test]
    fn bad_lengths_name_the_argument() {
        let s = shape(2, 2, (4, 4), 3, (3, 3), 2, 1); // x 64, weight 54, y 2*3*2*2 = 24
        let (x, wt, y) = ([0.0; 64], [0.0; 54], [0.0; 24]);
        let (mut xm, mut wm, mut ym) = ([0.0; 64], [0.0; 54], [0.0; 24]);
        let len = |what, expected, got| Err(Error::Length { what, expected, got });
        assert_eq!(conv2d_forward(&s, &x[1..], &wt, &mut ym), len("x", 64, 63));
        assert_eq!(conv2d_forward(&s, &x, &wt[1..], &mut ym), len("weight", 54, 53));
        assert_eq!(conv2d_forward(&s, &x, &wt, &mut ym[1..]), len("y", 24, 23));
        assert_eq!(conv2d_backward_data(&s, &y[1..], &wt, &mut xm), len("dy", 24, 23));
        assert_eq!(conv2d_backward_data(&s, &y, &wt[1..], &mut xm), len("weight", 54, 53));
        assert_eq!(conv2d_backward_data(&s, &y, &wt, &mut xm[1..]), len("dx", 64, 63));
        assert_eq!(conv2d_backward_weight(&s, &y[1..], &x, &mut wm), len("dy", 24, 23));
        assert_eq!(conv2d_backward_weight(&s, &y, &x[1..], &mut wm), len("x", 64, 63));
        assert_eq!(conv2d_backward_weight(&s, &y, &x, &mut wm[1..]), len("dweight", 54, 53));
        // Untouched on error.
        assert_eq!(ym, [0.0; 24]);
    }

    #[test]
    fn phase_weights_by_hand() {
        // Stride 1: the channel axes swapped, weight (C_OUT 2, C_IN 3, 1, 1) -> (3, 2).
        let s = shape(1, 3, (2, 2), 2, (1, 1), 1, 0);
        let mut out = [0.0; 6];
        conv2d_phase_weights(&s, &[0.0, 1.0, 2.0, 10.0, 11.0, 12.0], &mut out).unwrap();
        assert_eq!(out, [0.0, 10.0, 1.0, 11.0, 2.0, 12.0]);
        // Stride 2, 3x3, one channel each, weight[kh, kw] = 3*kh + kw: phase (0, 0) has taps kh, kw in {0, 2},
        // (0, 1) kh in {0, 2} and kw = 1, (1, 0) kh = 1 and kw in {0, 2}, (1, 1) the centre.
        let s = shape(1, 1, (5, 5), 1, (3, 3), 2, 1);
        let weight: [f32; 9] = core::array::from_fn(|i| i as f32);
        let mut out = [f32::NAN; 9];
        conv2d_phase_weights(&s, &weight, &mut out).unwrap();
        assert_eq!(out, [0.0, 2.0, 6.0, 8.0, 1.0, 7.0, 3.0, 5.0, 4.0]);
        // Two channels each: phase (1, 1) is A[ci, co] = weight[co, ci, 1, 1], after 2*2*(4 + 2 + 2) elements.
        let s = shape(1, 2, (5, 5), 2, (3, 3), 2, 1);
        let weight: [f32; 36] = core::array::from_fn(|i| i as f32);
        let mut out = [f32::NAN; 36];
        conv2d_phase_weights(&s, &weight, &mut out).unwrap();
        assert_eq!(out[32..], [4.0, 22.0, 13.0, 31.0]);
        // Errors name the slice and leave `out` alone.
        let len = |what, expected, got| Err(Error::Length { what, expected, got });
        assert_eq!(conv2d_phase_weights(&s, &weight[1..], &mut out), len("weight", 36, 35));
        assert_eq!(conv2d_phase_weights(&s, &weight, &mut out[1..]), len("out", 36, 35));
        let bad = Conv2dShape { stride: 0, ..s };
        assert!(matches!(conv2d_phase_weights(&bad, &weight, &mut out), Err(Error::Shape { .. })));
    }

    /// `dx` as the GPU computes it: for each stride phase, the product of the phase's matrix from
    /// [`conv2d_phase_weights`] and the phase's output gradients.
    fn backward_data_by_phases(s: &Conv2dShape, dy: &[f32], weight: &[f32]) -> std::vec::Vec<f32> {
        let mut phased = std::vec![0.0; s.weight_len()];
        conv2d_phase_weights(s, weight, &mut phased).unwrap();
        let (ho, wo, st) = (s.out_h() as isize, s.out_w() as isize, s.stride);
        let mut dx = std::vec![0.0; s.input_len()];
        let mut a_offset = 0;
        for rh in 0..st {
            for rw in 0..st {
                let (th, tw) = (phase_taps(rh, s.kh, st), phase_taps(rw, s.kw, st));
                let depth = s.c_out * th * tw;
                // The phase's input positions in0 + a*stride and the output position of a = 0, tap 0.
                let in_h0 = (rh + st - s.pad % st) % st;
                let in_w0 = (rw + st - s.pad % st) % st;
                let (shift_h, shift_w) = ((in_h0 + s.pad - rh) / st, (in_w0 + s.pad - rw) / st);
                for n in 0..s.n {
                    for ci in 0..s.c_in {
                        for (a, ih) in (in_h0..s.h).step_by(st).enumerate() {
                            for (b, iw) in (in_w0..s.w).step_by(st).enumerate() {
                                let mut sum = 0.0;
                                for k in 0..depth {
                                    let (co, t, u) = (k / (th * tw), k / tw % th, k % tw);
                                    let oh = (a + shift_h) as isize - t as isize;
                                    let ow = (b + shift_w) as isize - u as isize;
                                    if (0..ho).contains(&oh) && (0..wo).contains(&ow) {
                                        let y = dy[((n * s.c_out + co) * ho as usize + oh as usize) * wo as usize
                                            + ow as usize];
                                        sum += phased[a_offset + ci * depth + k] * y;
                                    }
                                }
                                dx[((n * s.c_in + ci) * s.h + ih) * s.w + iw] = sum;
                            }
                        }
                    }
                }
                a_offset += s.c_in * depth;
            }
        }
        assert_eq!(a_offset, s.weight_len(), "the phases cover the weight");
        dx
    }

    #[test]
    fn phase_tiles_walk_the_plane_phase_by_phase() {
        for (h, w, stride) in [(4, 4, 2), (7, 5, 2), (5, 8, 3), (2, 3, 4), (1, 6, 2), (9, 9, 1), (3, 17, 2)] {
            // The order by definition: positions sorted by phase (row % stride, column % stride), then position.
            let mut want: std::vec::Vec<usize> = (0..h * w).collect();
            want.sort_by_key(|&p| (p / w % stride, p % w % stride, p));
            // Tiles from every start, as the input gradient cuts planes (from multiples of TILE) and beyond.
            for first in 0..h * w {
                let len = TILE.min(h * w - first);
                let tile = phase_tile(first, len, (h, w), stride);
                assert_eq!(tile[..len], want[first..first + len], "{h}x{w} stride {stride} from {first}");
                assert!(tile[len..].iter().all(|&p| p == 0));
            }
        }
        assert_eq!(phase_tile(0, 8, (4, 4), 2), [0, 2, 8, 10, 1, 3, 9, 11]);
        assert_eq!(phase_tile(8, 8, (4, 4), 2), [4, 6, 12, 14, 5, 7, 13, 15]);
    }

    #[test]
    fn phase_weights_with_a_huge_stride_finish() {
        // Only phases below the kernel size have taps: a stride of usize::MAX / 4 has its square of phases, 9 of them
        // with taps.
        let weight: [f32; 18] = core::array::from_fn(|i| i as f32);
        let s = shape(1, 2, (3, 3), 1, (3, 3), usize::MAX / 4, 1);
        s.validate().unwrap();
        let mut out = [f32::NAN; 18];
        conv2d_phase_weights(&s, &weight, &mut out).unwrap();
        // One tap per phase, phases row-major over (kh, kw), channels inside: A[ci, co] of tap (kh, kw).
        let want: [f32; 18] = core::array::from_fn(|i| weight[(i % 2) * 9 + i / 2]);
        assert_eq!(out, want);
        let s = shape(1, 1, (1, 1), 1, (1, 1), usize::MAX, 0);
        let mut out = [0.0];
        conv2d_phase_weights(&s, &[7.0], &mut out).unwrap();
        assert_eq!(out, [7.0]);
    }

    #[test]
    fn phase_weights_are_what_a_phase_product_reads() {
        // Small integers: every sum is exact in either order, so the phase products match the direct loops bit
        // for bit. Strides 1-3 with kernels 1-3 (stride 3 over a kernel of 2: a phase without taps, whose inputs
        // get 0), odd sizes, padding 0-2.
        for s in [
            shape(2, 3, (5, 6), 4, (3, 3), 1, 1),
            shape(2, 3, (7, 6), 4, (3, 3), 2, 1),
            shape(1, 2, (6, 7), 3, (1, 1), 2, 0),
            shape(1, 2, (8, 7), 2, (2, 3), 3, 2),
            shape(2, 2, (5, 5), 3, (3, 2), 2, 0),
        ] {
            let dy: std::vec::Vec<f32> = (0..s.output_len()).map(|i| (i % 7) as f32 - 3.0).collect();
            let weight: std::vec::Vec<f32> = (0..s.weight_len()).map(|i| (i % 5) as f32 - 2.0).collect();
            let mut want = std::vec![f32::NAN; s.input_len()];
            conv2d_backward_data(&s, &dy, &weight, &mut want).unwrap();
            assert_eq!(backward_data_by_phases(&s, &dy, &weight), want, "{s:?}");
        }
    }

    /// The three convolutions straight from their definitions, one output element at a time.
    fn by_definition(s: &Conv2dShape, x: &[f32], weight: &[f32], dy: &[f32]) -> [std::vec::Vec<f32>; 3] {
        let (ho, wo) = (s.out_h(), s.out_w());
        let mut y = std::vec![0.0; s.output_len()];
        let mut dx = std::vec![0.0; s.input_len()];
        let mut dw = std::vec![0.0; s.weight_len()];
        for n in 0..s.n {
            for co in 0..s.c_out {
                for (oh, ow) in (0..ho).flat_map(|oh| (0..wo).map(move |ow| (oh, ow))) {
                    let o = ((n * s.c_out + co) * ho + oh) * wo + ow;
                    for (ci, ki, kj) in
                        (0..s.c_in).flat_map(|ci| (0..s.kh).flat_map(move |ki| (0..s.kw).map(move |kj| (ci, ki, kj))))
                    {
                        let (ih, iw) =
                            ((oh * s.stride + ki).wrapping_sub(s.pad), (ow * s.stride + kj).wrapping_sub(s.pad));
                        if ih < s.h && iw < s.w {
                            let i = ((n * s.c_in + ci) * s.h + ih) * s.w + iw;
                            let k = ((co * s.c_in + ci) * s.kh + ki) * s.kw + kj;
                            y[o] += weight[k] * x[i];
                            dx[i] += weight[k] * dy[o];
                            dw[k] += dy[o] * x[i];
                        }
                    }
                }
            }
        }
        [y, dx, dw]
    }

    /// The three convolutions as the plainest loops in the order their docs give, one element at a time.
    fn in_documented_order(s: &Conv2dShape, x: &[f32], weight: &[f32], dy: &[f32]) -> [std::vec::Vec<f32>; 3] {
        let (ho, wo) = (s.out_h(), s.out_w());
        let input = |i: usize, k: usize, size: usize| (i * s.stride + k).checked_sub(s.pad).filter(|&v| v < size);
        let x_at = |n: usize, ci: usize, ih: usize, iw: usize| x[((n * s.c_in + ci) * s.h + ih) * s.w + iw];
        let dy_at = |n: usize, co: usize, oh: usize, ow: usize| dy[((n * s.c_out + co) * ho + oh) * wo + ow];
        let w_at = |co: usize, ci: usize, ki: usize, kj: usize| weight[((co * s.c_in + ci) * s.kh + ki) * s.kw + kj];
        let taps = || (0..s.kh).flat_map(|ki| (0..s.kw).map(move |kj| (ki, kj)));
        let mut y = std::vec::Vec::new();
        for (n, co, oh, ow) in nested(s.n, s.c_out, ho, wo) {
            let mut acc = 0.0f32;
            for ci in 0..s.c_in {
                for (ki, kj) in taps() {
                    if let (Some(ih), Some(iw)) = (input(oh, ki, s.h), input(ow, kj, s.w)) {
                        acc += w_at(co, ci, ki, kj) * x_at(n, ci, ih, iw);
                    }
                }
            }
            y.push(acc);
        }
        let mut dx = std::vec::Vec::new();
        for (n, ci, ih, iw) in nested(s.n, s.c_in, s.h, s.w) {
            let mut acc = 0.0f32;
            for co in 0..s.c_out {
                for (ki, kj) in taps() {
                    let oh = (0..ho).find(|&oh| input(oh, ki, s.h) == Some(ih));
                    let ow = (0..wo).find(|&ow| input(ow, kj, s.w) == Some(iw));
                    if let (Some(oh), Some(ow)) = (oh, ow) {
                        acc += w_at(co, ci, ki, kj) * dy_at(n, co, oh, ow);
                    }
                }
            }
            dx.push(acc);
        }
        let mut dw = std::vec::Vec::new();
        for (co, ci, ki, kj) in nested(s.c_out, s.c_in, s.kh, s.kw) {
            let mut total = 0.0f32;
            for n in 0..s.n {
                let mut acc = 0.0f32;
                for oh in 0..ho {
                    if let Some(ih) = input(oh, ki, s.h) {
                        let products =
                            (0..wo).filter_map(|ow| Some(dy_at(n, co, oh, ow) * x_at(n, ci, ih, input(ow, kj, s.w)?)));
                        acc += products.sum::<f32>();
                    }
                }
                total += acc;
            }
            dw.push(total);
        }
        [y, dx, dw]
    }

    /// `sin(i k) / 3` for `i < len`: fractions, whose sums round differently in another order.
    fn fractions(len: usize, k: f32) -> std::vec::Vec<f32> {
        (0..len).map(|i| libm::sinf(i as f32 * k) / 3.0).collect()
    }

    fn bits(v: &[f32]) -> std::vec::Vec<u32> {
        v.iter().map(|v| v.to_bits()).collect()
    }

    /// `[y, dx, dw]`: the three convolutions of `s` on `exec`, into outputs that start as NaN.
    fn all_three(
        exec: &dyn Executor,
        s: &Conv2dShape,
        x: &[f32],
        weight: &[f32],
        dy: &[f32],
    ) -> [std::vec::Vec<f32>; 3] {
        let mut out = [
            std::vec![f32::NAN; s.output_len()],
            std::vec![f32::NAN; s.input_len()],
            std::vec![f32::NAN; s.weight_len()],
        ];
        conv2d_forward_on(exec, s, x, weight, &mut out[0]).unwrap();
        conv2d_backward_data_on(exec, s, dy, weight, &mut out[1]).unwrap();
        conv2d_backward_weight_on(exec, s, dy, x, &mut out[2]).unwrap();
        out
    }

    const THREE: [&str; 3] = ["forward", "backward data", "backward weight"];

    /// `(a, b, c, d)` over `0..a x 0..b x 0..c x 0..d`, the last fastest.
    fn nested(a: usize, b: usize, c: usize, d: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> {
        (0..a).flat_map(move |i| (0..b).flat_map(move |j| (0..c).flat_map(move |k| (0..d).map(move |l| (i, j, k, l)))))
    }

    #[test]
    fn every_element_sums_in_its_documented_order() {
        // Fractions, whose sums round differently in another order. Shapes for every path of the blocked loops:
        // channel counts that leave remainders after blocks of 4, planes that are not whole tiles (tiles across rows),
        // strides 2 and 3 (the input gradient in phase order, tiles across phases, a stride larger than the kernel),
        // kernels larger than 3x3, and a sample boundary inside a block of planes.
        for s in [
            shape(3, 4, (6, 7), 5, (3, 3), 1, 1),
            shape(2, 3, (7, 8), 6, (3, 3), 2, 1),
            shape(2, 6, (9, 5), 5, (3, 3), 2, 1),
            shape(2, 3, (6, 6), 5, (1, 1), 2, 0),
            shape(3, 5, (8, 9), 9, (2, 2), 3, 0),
            shape(2, 2, (9, 11), 3, (5, 3), 3, 2),
            shape(1, 2, (8, 8), 3, (7, 7), 1, 3),
            shape(2, 8, (16, 16), 8, (3, 3), 1, 1),
            shape(5, 4, (2, 2), 4, (3, 3), 1, 1),
            shape(3, 5, (4, 4), 6, (3, 3), 2, 1),
        ] {
            let (x, weight, dy) =
                (fractions(s.input_len(), 0.37), fractions(s.weight_len(), 1.3), fractions(s.output_len(), 0.71));
            let want = in_documented_order(&s, &x, &weight, &dy);
            let got = all_three(&Serial, &s, &x, &weight, &dy);
            for (what, (got, want)) in THREE.iter().zip(got.iter().zip(&want)) {
                assert_eq!(bits(got), bits(want), "{what} {s:?}");
            }
        }
    }

    #[test]
    fn any_cut_into_rows_gives_the_same_bits_and_the_definition() {
        // Small integers: the definition's sums are exact in any order, so the direct loops must match them exactly.
        // Then fractions: each row computed alone gives the serial loops' bits however the rows are cut. Kernels of
        // up to 9 taps are listed once per call, the 5x3 and 7x7 ones computed where used: both checked.
        for s in [
            shape(3, 4, (6, 7), 5, (3, 3), 1, 1),
            shape(2, 3, (7, 8), 4, (3, 3), 2, 1),
            shape(2, 3, (6, 6), 5, (1, 1), 2, 0),
            shape(2, 2, (9, 11), 3, (5, 3), 3, 2),
            shape(1, 2, (8, 8), 3, (7, 7), 1, 3),
        ] {
            let ints =
                |len: usize, m: usize| -> std::vec::Vec<f32> { (0..len).map(|i| (i * 7 % m) as f32 - 3.0).collect() };
            let (x, weight, dy) = (ints(s.input_len(), 7), ints(s.weight_len(), 5), ints(s.output_len(), 9));
            let want = by_definition(&s, &x, &weight, &dy);
            let got = all_three(&Serial, &s, &x, &weight, &dy);
            for (what, (got, want)) in THREE.iter().zip(got.iter().zip(&want)) {
                assert_eq!(got, want, "{what} {s:?}");
            }

            let (x, weight, dy) =
                (fractions(s.input_len(), 0.37), fractions(s.weight_len(), 1.3), fractions(s.output_len(), 0.71));
            let serial = all_three(&Serial, &s, &x, &weight, &dy);
            for rows in [1, 2, 3, 100] {
                let cut = all_three(&Pieces(rows), &s, &x, &weight, &dy);
                for (what, (a, b)) in THREE.iter().zip(serial.iter().zip(&cut)) {
                    assert_eq!(bits(a), bits(b), "{what} {s:?} in pieces of {rows} rows");
                }
            }
        }
    }
}
