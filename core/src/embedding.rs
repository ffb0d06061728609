//! One embedding at a time: normalise, compare, fuse with its flip, quantise to int8.
//!
//! Every function takes slices of one embedding size `D` (checked), rejects non-finite input with
//! [`Error::NonFinite`] and vectors of norm zero with [`Error::ZeroNorm`] wherever a norm is divided by, and
//! never panics.
//!
//! | function | result |
//! |---|---|
//! | [`l2_normalize`] | `y = x / ||x||` |
//! | [`cosine`] | `<a, b> / (||a|| ||b||)`, clamped to `[-1, 1]` |
//! | [`squared_l2`] | `sum_k (a_k - b_k)^2` |
//! | [`fuse_flip`] | `(e + e_flip) / ||e + e_flip||`, the verification protocol's fused embedding |
//! | [`quantize_i8`], [`dequantize_i8`] | symmetric per-vector int8: `q_k = round(127 x_k / max|x|)`, `x_k ~ q_k s` |
//! | [`cosine_i8`] | cosine of two int8 embeddings, integer dot products |

use crate::error::{check_finite, check_len, Error};
use crate::nn::{l2_normalize_forward, VectorLayout};

/// The largest embedding size [`cosine_i8`] accepts: `floor((2^31 - 1) / 128^2) = 131_071`.
///
/// Each product `a_k b_k` of two `i8` has magnitude at most `128 * 128 = 16_384`, so a sum of `D` of them
/// stays within `i32` when `D * 16_384 <= i32::MAX`.
pub const I8_MAX_DIM: usize = (i32::MAX / (128 * 128)) as usize;

/// `out = x / ||x||`; returns `||x||`.
///
/// Arithmetic as [`crate::nn::l2_normalize_forward`] (which it calls): `||x|| = sqrt(sum_k x_k^2)` summed in
/// f32 in index order, then one division per element.
///
/// Shapes: `x`, `out`: `(D)`. Errors: a length mismatch ([`Error::Length`]), a non-finite `x` or one whose norm
/// overflows f32 ([`Error::NonFinite`]), `||x|| = 0`, an empty `x` included ([`Error::ZeroNorm`]).
pub fn l2_normalize(x: &[f32], out: &mut [f32]) -> Result<f32, Error> {
    normalize_named("x", x, out)
}

/// [`l2_normalize`] with the argument named `what` in errors.
fn normalize_named(what: &'static str, x: &[f32], out: &mut [f32]) -> Result<f32, Error> {
    check_len("out", out, x.len())?;
    check_finite(what, x)?;
    let mut norm = [0.0f32];
    l2_normalize_forward(VectorLayout::rows(1, x.len()), x, out, &mut norm).map_err(|e| match e {
        Error::ZeroNorm { .. } => Error::ZeroNorm { what, index: 0 },
        other => other,
    })?;
    Ok(norm[0])
}

/// Cosine similarity `<a, b> / (||a|| ||b||)`, clamped to `[-1, 1]`.
///
/// The three sums are accumulated in f64 (no overflow for any finite f32 input, and an error near
/// `D * 2^-53` instead of `D * 2^-24`); the result is rounded to f32. Neither input needs to be normalised.
///
/// Shapes: `a`, `b`: `(D)`. Errors: a length mismatch, a non-finite element, `||a|| = 0` or `||b|| = 0`.
pub fn cosine(a: &[f32], b: &[f32]) -> Result<f32, Error> {
    check_len("b", b, a.len())?;
    check_finite("a", a)?;
    check_finite("b", b)?;
    CosineSums::of(a.iter().copied().zip(b.iter().copied())).cosine("a", "b")
}

/// The three sums of a cosine, `<a, b>`, `||a||^2` and `||b||^2`, accumulated in f64 in index order: the one
/// implementation behind [`cosine`] and the mixed f32/int8 comparisons of [`crate::conformance`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CosineSums {
    /// `sum_k a_k b_k`.
    pub(crate) dot: f64,
    /// `sum_k a_k^2`.
    pub(crate) aa: f64,
    /// `sum_k b_k^2`.
    pub(crate) bb: f64,
}

impl CosineSums {
    /// The sums over the element pairs `(a_k, b_k)`, in order.
    pub(crate) fn of(pairs: impl Iterator<Item = (f32, f32)>) -> Self {
        let mut s = Self::default();
        for (x, y) in pairs {
            let (x, y) = (f64::from(x), f64::from(y));
            s.dot += x * y;
            s.aa += x * x;
            s.bb += y * y;
        }
        s
    }

    /// `dot / (sqrt(aa) sqrt(bb))` rounded to f32 and clamped to `[-1, 1]`; a zero norm is
    /// [`Error::ZeroNorm`] naming `what_a` or `what_b`.
    pub(crate) fn cosine(&self, what_a: &'static str, what_b: &'static str) -> Result<f32, Error> {
        if self.aa == 0.0 {
            return Err(Error::ZeroNorm { what: what_a, index: 0 });
        }
        if self.bb == 0.0 {
            return Err(Error::ZeroNorm { what: what_b, index: 0 });
        }
        Ok(clamp_unit(self.dot / (libm::sqrt(self.aa) * libm::sqrt(self.bb))))
    }
}

/// Squared Euclidean distance `sum_k (a_k - b_k)^2`, summed in f32 in index order (as the reference
/// computes the protocol's distances). For two unit vectors it equals `2 - 2 cos(a, b)` and lies in `[0, 4]`.
///
/// Shapes: `a`, `b`: `(D)`. Errors: a length mismatch or a non-finite element. Finite inputs whose
/// difference overflows give `+inf`.
pub fn squared_l2(a: &[f32], b: &[f32]) -> Result<f32, Error> {
    check_len("b", b, a.len())?;
    check_finite("a", a)?;
    check_finite("b", b)?;
    Ok(a.iter().zip(b).fold(0.0f32, |acc, (&x, &y)| {
        let d = x - y;
        acc + d * d
    }))
}

/// The fused embedding of an image and its horizontal flip: `out = s / ||s||` with `s = e + e_flip`.
///
/// `sum` receives `s`; it is a separate buffer because the normalisation reads `s` while it writes `out`
/// (and a caller that wants the unnormalised sum has it).
///
/// Shapes: `e`, `e_flip`, `sum`, `out`: `(D)`. Errors: a length mismatch, a non-finite `e` or `e_flip`, a sum
/// that overflows (`NonFinite { what: "sum" }`), or `s = 0` (`ZeroNorm { what: "sum" }`).
pub fn fuse_flip(e: &[f32], e_flip: &[f32], sum: &mut [f32], out: &mut [f32]) -> Result<(), Error> {
    check_len("e_flip", e_flip, e.len())?;
    check_len("sum", sum, e.len())?;
    check_len("out", out, e.len())?;
    check_finite("e", e)?;
    check_finite("e_flip", e_flip)?;
    for ((s, &x), &y) in sum.iter_mut().zip(e).zip(e_flip) {
        *s = x + y;
    }
    normalize_named("sum", sum, out).map(|_| ())
}

/// Symmetric int8 quantisation of one embedding; returns the scale `s = max_k |x_k| / 127`.
///
/// `out_k = round(127 * (x_k / max|x|))` (halves away from zero), so `out_k` lies in `[-127, 127]`, the
/// largest element maps to `+-127` and `x_k ~ out_k * s` within `s / 2`. Dividing by `max|x|` before
/// multiplying by 127 keeps every step finite for any finite input (no overflow near `f32::MAX`, no
/// division by a scale that underflows to zero).
///
/// **The zero vector** quantises to all zeros with scale `0.0`: [`dequantize_i8`] then gives the zero vector
/// back exactly, and [`cosine_i8`] rejects it with [`Error::ZeroNorm`], as [`cosine`] rejects the original.
/// (The same happens to a non-zero vector whose largest element is below `127 * 2^-149`, where the scale
/// underflows to `0.0`; its int8 values are still exact ratios and [`cosine_i8`] works on them.)
///
/// Shapes: `x`, `out`: `(D)`. Errors: a length mismatch or a non-finite `x`.
pub fn quantize_i8(x: &[f32], out: &mut [i8]) -> Result<f32, Error> {
    check_len("out", out, x.len())?;
    check_finite("x", x)?;
    let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if max == 0.0 {
        out.fill(0);
        return Ok(0.0);
    }
    for (q, &v) in out.iter_mut().zip(x) {
        // |v / max| <= 1, so the rounded value lies in [-127, 127]; `as` saturates anyway.
        *q = libm::roundf(127.0 * (v / max)) as i8;
    }
    Ok(max / 127.0)
}

/// `out_k = q_k * scale`, the inverse of [`quantize_i8`] up to its rounding. The product is the f32 product (an
/// i8 times an f32 is exact in f64, then rounded once), except that it saturates at `+-f32::MAX` where it would
/// round to infinity (`127 * (f32::MAX / 127)` does): within `scale / 2` of the value quantised, as everywhere.
///
/// Shapes: `q`, `out`: `(D)`. Errors: a length mismatch, or a `scale` that is negative or not finite
/// ([`Error::Config`]).
pub fn dequantize_i8(q: &[i8], scale: f32, out: &mut [f32]) -> Result<(), Error> {
    check_len("out", out, q.len())?;
    if !(scale.is_finite() && scale >= 0.0) {
        return Err(Error::Config { what: "an int8 scale must be finite and not negative" });
    }
    let max = f64::from(f32::MAX);
    for (o, &v) in out.iter_mut().zip(q) {
        *o = (f64::from(v) * f64::from(scale)).clamp(-max, max) as f32;
    }
    Ok(())
}

/// Cosine similarity of two int8 embeddings, clamped to `[-1, 1]`:
/// `sum_k a_k b_k / sqrt(sum_k a_k^2 * sum_k b_k^2)`.
///
/// The three sums are exact `i32` integers (no overflow up to [`I8_MAX_DIM`] elements, `-128` included);
/// only the final division is floating point (f64, rounded to f32). The per-vector scales of
/// [`quantize_i8`] cancel, so they are not needed.
///
/// Shapes: `a`, `b`: `(D)` with `D <= I8_MAX_DIM`. Errors: a length mismatch, `D > I8_MAX_DIM`
/// ([`Error::Shape`]), or an all-zero vector ([`Error::ZeroNorm`]).
pub fn cosine_i8(a: &[i8], b: &[i8]) -> Result<f32, Error> {
    check_len("b", b, a.len())?;
    if a.len() > I8_MAX_DIM {
        return Err(Error::Shape { what: "int8 embeddings longer than I8_MAX_DIM could overflow i32 sums" });
    }
    let (mut dot, mut aa, mut bb) = (0i32, 0i32, 0i32);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (i32::from(x), i32::from(y));
        dot += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0 {
        return Err(Error::ZeroNorm { what: "a", index: 0 });
    }
    if bb == 0 {
        return Err(Error::ZeroNorm { what: "b", index: 0 });
    }
    Ok(clamp_unit(f64::from(dot) / libm::sqrt(f64::from(aa) * f64::from(bb))))
}

/// Rounds a cosine computed in f64 to f32 and clamps it to `[-1, 1]` (rounding can overshoot by an ulp).
fn clamp_unit(c: f64) -> f32 {
    (c as f32).clamp(-1.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    #[test]
    fn normalize_returns_the_norm_and_a_unit_vector() {
        let mut y = [0.0; 3];
        assert_eq!(l2_normalize(&[3.0, 0.0, -4.0], &mut y), Ok(5.0));
        assert_eq!(y, [0.6, 0.0, -0.8]);
    }

    #[test]
    fn normalize_rejects_bad_input() {
        let mut y = [0.0; 2];
        assert_eq!(l2_normalize(&[0.0, 0.0], &mut y), Err(Error::ZeroNorm { what: "x", index: 0 }));
        assert_eq!(l2_normalize(&[1.0, f32::NAN], &mut y), Err(Error::NonFinite { what: "x", index: 1 }));
        assert_eq!(l2_normalize(&[1.0], &mut y), Err(Error::Length { what: "out", expected: 1, got: 2 }));
        assert_eq!(l2_normalize(&[], &mut []), Err(Error::ZeroNorm { what: "x", index: 0 }));
        // Finite, but the sum of squares overflows f32: an error, not a vector of zeros.
        assert_eq!(l2_normalize(&[2e19, 2e19], &mut y), Err(Error::NonFinite { what: "norms", index: 0 }));
        assert!(l2_normalize(&[1e19, 1e19], &mut y).is_ok());
    }

    #[test]
    fn cosine_of_hand_made_vectors() {
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 2.0]), Ok(0.0));
        assert_eq!(cosine(&[1.0, 1.0], &[3.0, 3.0]), Ok(1.0));
        assert_eq!(cosine(&[1.0, 1.0], &[-2.0, -2.0]), Ok(-1.0));
        assert_relative_eq!(cosine(&[1.0, 0.0], &[1.0, 1.0]).unwrap(), core::f32::consts::FRAC_1_SQRT_2);
        // Huge finite values do not overflow the f64 sums.
        assert_relative_eq!(cosine(&[f32::MAX, f32::MAX], &[f32::MAX, 0.0]).unwrap(), core::f32::consts::FRAC_1_SQRT_2);
    }

    #[test]
    fn cosine_rejects_bad_input() {
        assert_eq!(cosine(&[1.0], &[1.0, 2.0]), Err(Error::Length { what: "b", expected: 1, got: 2 }));
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 2.0]), Err(Error::ZeroNorm { what: "a", index: 0 }));
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 0.0]), Err(Error::ZeroNorm { what: "b", index: 0 }));
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, f32::INFINITY]), Err(Error::NonFinite { what: "b", index: 1 }));
        assert_eq!(cosine(&[], &[]), Err(Error::ZeroNorm { what: "a", index: 0 }));
    }

    #[test]
    fn squared_distance_of_unit_vectors_is_two_minus_two_cosine() {
        assert_eq!(squared_l2(&[1.0, 2.0], &[4.0, -2.0]), Ok(25.0));
        assert_eq!(squared_l2(&[1.0, 0.0], &[0.0, 1.0]), Ok(2.0));
        assert_eq!(squared_l2(&[1.0, 0.0], &[-1.0, 0.0]), Ok(4.0));
        assert_eq!(squared_l2(&[], &[]), Ok(0.0));
        assert_eq!(squared_l2(&[1.0], &[]), Err(Error::Length { what: "b", expected: 1, got: 0 }));
        assert_eq!(squared_l2(&[f32::NAN], &[1.0]), Err(Error::NonFinite { what: "a", index: 0 }));
    }

    #[test]
    fn fuse_flip_normalises_the_sum() {
        let (mut s, mut f) = ([0.0; 2], [0.0; 2]);
        fuse_flip(&[1.0, 2.0], &[2.0, 2.0], &mut s, &mut f).unwrap();
        assert_eq!(s, [3.0, 4.0]);
        assert_eq!(f, [0.6, 0.8]);
    }

    #[test]
    fn fuse_flip_rejects_bad_input() {
        let (mut s, mut f) = ([0.0; 2], [0.0; 2]);
        let e = fuse_flip(&[1.0, 2.0], &[-1.0, -2.0], &mut s, &mut f);
        assert_eq!(e, Err(Error::ZeroNorm { what: "sum", index: 0 }));
        let e = fuse_flip(&[f32::MAX, 0.0], &[f32::MAX, 0.0], &mut s, &mut f);
        assert_eq!(e, Err(Error::NonFinite { what: "sum", index: 0 }));
        let e = fuse_flip(&[1.0, 2.0], &[1.0, f32::NAN], &mut s, &mut f);
        assert_eq!(e, Err(Error::NonFinite { what: "e_flip", index: 1 }));
        let e = fuse_flip(&[1.0, 2.0], &[1.0, 1.0], &mut s, &mut [0.0; 3]);
        assert_eq!(e, Err(Error::Length { what: "out", expected: 2, got: 3 }));
        let e = fuse_flip(&[1.0, 2.0], &[1.0], &mut s, &mut f);
        assert_eq!(e, Err(Error::Length { what: "e_flip", expected: 2, got: 1 }));
    }

    #[test]
    fn quantize_maps_the_largest_magnitude_to_127() {
        let x = [0.5, -1.0, 0.25, 0.0, 0.003];
        let mut q = [0i8; 5];
        let s = quantize_i8(&x, &mut q).unwrap();
        assert_eq!(s, 1.0 / 127.0);
        // 0.5 * 127 = 63.5 rounds away from zero; 0.25 * 127 = 31.75; 0.003 * 127 = 0.381.
        assert_eq!(q, [64, -127, 32, 0, 0]);
        let mut back = [0.0; 5];
        dequantize_i8(&q, s, &mut back).unwrap();
        for (b, v) in back.iter().zip(x) {
            assert!((b - v).abs() <= s / 2.0 + 1e-7, "{b} vs {v}");
        }
    }

    #[test]
    fn quantize_edge_cases() {
        let mut q = [1i8; 3];
        assert_eq!(quantize_i8(&[0.0, -0.0, 0.0], &mut q), Ok(0.0));
        assert_eq!(q, [0, 0, 0]);
        let mut back = [1.0; 3];
        dequantize_i8(&q, 0.0, &mut back).unwrap();
        assert_eq!(back, [0.0; 3]);
        // Extremes stay finite.
        assert_eq!(quantize_i8(&[f32::MAX, -f32::MAX, 0.0], &mut q), Ok(f32::MAX / 127.0));
        assert_eq!(q, [127, -127, 0]);
        dequantize_i8(&q, f32::MAX / 127.0, &mut back).unwrap();
        assert_eq!(back, [f32::MAX, -f32::MAX, 0.0], "127 * (MAX / 127) saturates, not infinity");
        let tiny = f32::from_bits(1); // the smallest subnormal: the scale underflows to zero
        assert_eq!(quantize_i8(&[tiny, -tiny, 0.0], &mut q), Ok(0.0));
        assert_eq!(q, [127, -127, 0]);
        assert_eq!(quantize_i8(&[1.0, f32::NAN, 0.0], &mut q), Err(Error::NonFinite { what: "x", index: 1 }));
        assert_eq!(quantize_i8(&[1.0], &mut q), Err(Error::Length { what: "out", expected: 1, got: 3 }));
        assert!(matches!(dequantize_i8(&q, -1.0, &mut back), Err(Error::Config { .. })));
        assert!(matches!(dequantize_i8(&q, f32::NAN, &mut back), Err(Error::Config { .. })));
        assert!(matches!(dequantize_i8(&q, 1.0, &mut [0.0; 2]), Err(Error::Length { .. })));
    }

    #[test]
    fn int8_cosine_matches_float_cosine() {
        let a = [0.3, -0.7, 0.1, 0.55, -0.2, 0.05];
        let b = [0.25, -0.5, 0.3, 0.6, 0.1, -0.1];
        let (mut qa, mut qb) = ([0i8; 6], [0i8; 6]);
        quantize_i8(&a, &mut qa).unwrap();
        quantize_i8(&b, &mut qb).unwrap();
        let exact = cosine(&a, &b).unwrap();
        let approx = cosine_i8(&qa, &qb).unwrap();
        assert!((exact - approx).abs() < 5e-3, "{exact} vs {approx}");
        assert_eq!(cosine_i8(&[3, 4], &[3, 4]), Ok(1.0));
        assert_eq!(cosine_i8(&[-128, 0], &[127, 0]), Ok(-1.0));
    }

    #[test]
    fn int8_cosine_rejects_bad_input_and_survives_the_bound() {
        assert_eq!(cosine_i8(&[0, 0], &[1, 2]), Err(Error::ZeroNorm { what: "a", index: 0 }));
        assert_eq!(cosine_i8(&[1, 2], &[0, 0]), Err(Error::ZeroNorm { what: "b", index: 0 }));
        assert_eq!(cosine_i8(&[1], &[1, 2]), Err(Error::Length { what: "b", expected: 1, got: 2 }));
        // The worst case at the documented bound does not overflow.
        let big = [-128i8; I8_MAX_DIM];
        assert_eq!(cosine_i8(&big, &big), Ok(1.0));
        let too_big = [1i8; I8_MAX_DIM + 1];
        assert!(matches!(cosine_i8(&too_big, &too_big), Err(Error::Shape { .. })));
    }
}
