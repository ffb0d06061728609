//! L2 normalisation of a set of vectors, as `torch.nn.functional.normalize(x, dim)`, except that a zero
//! vector is an error instead of being divided by `eps`.

use crate::error::{check_finite, check_len, Error};

/// Where the vectors of a buffer lie: `count` vectors of `len` elements; element `k` of vector `i` is at
/// `i * vector_stride + k * element_stride`.
///
/// The buffer has `count * len` elements ([`VectorLayout::buffer_len`]); the functions here refuse a layout whose
/// elements do not all lie inside it ([`VectorLayout::validate`]).
///
/// Rows of an `(N, D)` matrix: [`VectorLayout::rows`]; columns of a `(D, C)` matrix (the head's class
/// centres): [`VectorLayout::columns`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VectorLayout {
    /// Number of vectors.
    pub count: usize,
    /// Elements per vector.
    pub len: usize,
    /// Distance between consecutive vectors.
    pub vector_stride: usize,
    /// Distance between consecutive elements of one vector.
    pub element_stride: usize,
}

impl VectorLayout {
    /// The `n` rows of an `(n, d)` row-major matrix.
    pub const fn rows(n: usize, d: usize) -> Self {
        Self { count: n, len: d, vector_stride: d, element_stride: 1 }
    }

    /// The `c` columns of a `(d, c)` row-major matrix.
    pub const fn columns(d: usize, c: usize) -> Self {
        Self { count: c, len: d, vector_stride: 1, element_stride: c }
    }

    /// Number of elements of the buffer: `count * len` (saturating at `usize::MAX`, which no slice can match).
    pub const fn buffer_len(&self) -> usize {
        self.count.saturating_mul(self.len)
    }

    /// Checks that `count * len` fits `usize` and that every element lies in the buffer: the last one,
    /// `(count - 1) * vector_stride + (len - 1) * element_stride`, is below `count * len` ([`Error::Shape`]
    /// otherwise). An empty layout (`count` or `len` 0) touches nothing and is valid.
    pub fn validate(&self) -> Result<(), Error> {
        let Some(buffer) = self.count.checked_mul(self.len) else {
            return Err(Error::Shape { what: "vector layout: count * len overflows usize" });
        };
        if buffer == 0 {
            return Ok(());
        }
        let last = (self.count - 1)
            .checked_mul(self.vector_stride)
            .zip((self.len - 1).checked_mul(self.element_stride))
            .and_then(|(a, b)| a.checked_add(b));
        match last {
            Some(last) if last < buffer => Ok(()),
            _ => Err(Error::Shape { what: "vector layout: its strides reach past count * len elements" }),
        }
    }

    #[inline]
    fn at(&self, i: usize, k: usize) -> usize {
        i * self.vector_stride + k * self.element_stride
    }
}

/// `y = x / ||x||` per vector; `norms[i] = ||x_i||` is kept for the backward pass.
///
/// Shapes: `x`, `y`: `layout.buffer_len()`; `norms`: `(layout.count)`.
/// Errors: a layout reaching outside the buffer ([`Error::Shape`], see [`VectorLayout::validate`]), a non-finite
/// `x` ([`Error::NonFinite`]), a vector whose norm overflows f32 ([`Error::NonFinite`] named `norms`, at the
/// vector's index), or a zero vector ([`Error::ZeroNorm`]).
pub fn l2_normalize_forward(layout: VectorLayout, x: &[f32], y: &mut [f32], norms: &mut [f32]) -> Result<(), Error> {
    layout.validate()?;
    let n = layout.buffer_len();
    check_len("x", x, n)?;
    check_len("y", y, n)?;
    check_len("norms", norms, layout.count)?;
    check_finite("x", x)?;
    for (i, norm_out) in norms.iter_mut().enumerate() {
        let mut ss = 0.0f32;
        for k in 0..layout.len {
            let v = x[layout.at(i, k)];
            ss += v * v;
        }
        let norm = libm::sqrtf(ss);
        if norm == 0.0 {
            return Err(Error::ZeroNorm { what: "x", index: i });
        }
        // A finite vector whose sum of squares overflows f32 (|x| above about 1.8e19) would come out all zeros.
        if !norm.is_finite() {
            return Err(Error::NonFinite { what: "norms", index: i });
        }
        *norm_out = norm;
        for k in 0..layout.len {
            let j = layout.at(i, k);
            y[j] = x[j] / norm;
        }
    }
    Ok(())
}

/// Backward of [`l2_normalize_forward`], in place: `grad` holds `dL/dy` on entry and `dL/dx` on return,
/// `dx = (dy - y * <y, dy>) / ||x||` per vector.
///
/// Shapes: `y`, `grad`: `layout.buffer_len()`; `norms`: `(layout.count)`, as written by the forward pass.
/// Errors: a layout reaching outside the buffer ([`Error::Shape`]), a non-finite norm ([`Error::NonFinite`] named
/// `norms`) or one that is zero or negative ([`Error::ZeroNorm`] named `norms`), which the forward pass never
/// writes; nothing is written then.
pub fn l2_normalize_backward(layout: VectorLayout, y: &[f32], norms: &[f32], grad: &mut [f32]) -> Result<(), Error> {
    layout.validate()?;
    let n = layout.buffer_len();
    check_len("y", y, n)?;
    check_len("grad", grad, n)?;
    check_len("norms", norms, layout.count)?;
    check_norms("norms", norms)?;
    for (i, &norm) in norms.iter().enumerate() {
        let mut dot = 0.0f32;
        for k in 0..layout.len {
            let j = layout.at(i, k);
            dot += y[j] * grad[j];
        }
        for k in 0..layout.len {
            let j = layout.at(i, k);
            grad[j] = (grad[j] - y[j] * dot) / norm;
        }
    }
    Ok(())
}

/// Checks that norms are finite ([`Error::NonFinite`]) and positive ([`Error::ZeroNorm`] otherwise), as
/// [`l2_normalize_forward`] writes them.
pub(crate) fn check_norms(what: &'static str, norms: &[f32]) -> Result<(), Error> {
    check_finite(what, norms)?;
    match norms.iter().position(|&n| n <= 0.0) {
        None => Ok(()),
        Some(index) => Err(Error::ZeroNorm { what, index }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_columns_agree_on_a_transpose() {
        // (2, 3) rows vs the same vectors stored as columns of a (3, 2) matrix.
        let x = [3.0, 0.0, 4.0, 1.0, 2.0, 2.0];
        let xt = [3.0, 1.0, 0.0, 2.0, 4.0, 2.0];
        let (mut y, mut yt, mut n, mut nt) = ([0.0; 6], [0.0; 6], [0.0; 2], [0.0; 2]);
        l2_normalize_forward(VectorLayout::rows(2, 3), &x, &mut y, &mut n).unwrap();
        l2_normalize_forward(VectorLayout::columns(3, 2), &xt, &mut yt, &mut nt).unwrap();
        assert_eq!(n, [5.0, 3.0]);
        assert_eq!(n, nt);
        assert_eq!(y, [0.6, 0.0, 0.8, 1.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0]);
        assert_eq!(yt, [y[0], y[3], y[1], y[4], y[2], y[5]]);
    }

    #[test]
    fn layouts_reaching_outside_the_buffer_are_refused() {
        let (x, mut y, mut n, mut g) = ([1.0f32; 4], [0.0; 4], [0.0; 2], [0.0; 4]);
        let half = 1usize << (usize::BITS - 1);
        for layout in [
            VectorLayout { count: 2, len: 2, vector_stride: 100, element_stride: 1 },
            VectorLayout { count: 2, len: 2, vector_stride: 1, element_stride: 3 },
            VectorLayout { count: 2, len: 2, vector_stride: half, element_stride: half },
            VectorLayout { count: 2, len: half, vector_stride: 1, element_stride: 1 },
            VectorLayout { count: usize::MAX, len: usize::MAX, vector_stride: 1, element_stride: 1 },
        ] {
            let e = l2_normalize_forward(layout, &x, &mut y, &mut n);
            assert!(matches!(e, Err(Error::Shape { .. })), "{layout:?}: {e:?}");
            let e = l2_normalize_backward(layout, &x, &[1.0; 2], &mut g);
            assert!(matches!(e, Err(Error::Shape { .. })), "{layout:?}: {e:?}");
        }
        let overflow = VectorLayout { count: 2, len: half, vector_stride: 1, element_stride: 1 };
        assert_eq!(overflow.buffer_len(), usize::MAX);
        // Strides that interleave the vectors, and empty layouts, are fine.
        let pairs = VectorLayout { count: 2, len: 2, vector_stride: 1, element_stride: 2 };
        l2_normalize_forward(pairs, &[3.0, 0.0, 4.0, 2.0], &mut y, &mut n).unwrap();
        assert_eq!(n, [5.0, 2.0]);
        let empty = VectorLayout { count: 0, len: 3, vector_stride: 1000, element_stride: 1000 };
        l2_normalize_forward(empty, &[], &mut [], &mut []).unwrap();
        l2_normalize_backward(empty, &[], &[], &mut []).unwrap();
    }

    #[test]
    fn backward_refuses_zero_and_non_finite_norms() {
        let y = [0.6, 0.8, 1.0, 0.0];
        let cases = [
            ([1.0, 0.0], Error::ZeroNorm { what: "norms", index: 1 }),
            ([-1.0, 1.0], Error::ZeroNorm { what: "norms", index: 0 }),
            ([1.0, f32::INFINITY], Error::NonFinite { what: "norms", index: 1 }),
            ([f32::NAN, 1.0], Error::NonFinite { what: "norms", index: 0 }),
        ];
        for (norms, want) in cases {
            let mut g = [1.0; 4];
            assert_eq!(l2_normalize_backward(VectorLayout::rows(2, 2), &y, &norms, &mut g), Err(want));
            assert_eq!(g, [1.0; 4], "written before the error");
        }
    }

    #[test]
    fn zero_vector_and_nan_are_errors() {
        let (mut y, mut n) = ([0.0; 4], [0.0; 2]);
        let e = l2_normalize_forward(VectorLayout::rows(2, 2), &[1.0, 0.0, 0.0, 0.0], &mut y, &mut n);
        assert_eq!(e, Err(Error::ZeroNorm { what: "x", index: 1 }));
        let e = l2_normalize_forward(VectorLayout::rows(2, 2), &[1.0, f32::NAN, 0.0, 1.0], &mut y, &mut n);
        assert_eq!(e, Err(Error::NonFinite { what: "x", index: 1 }));
        let e = l2_normalize_forward(VectorLayout::rows(2, 2), &[1.0; 3], &mut y, &mut n);
        assert_eq!(e, Err(Error::Length { what: "x", expected: 4, got: 3 }));
    }
}
