//! L2 normalisation of a set of vectors, as `torch.nn.functional.normalize(x, dim)`, except that a zero
//! vector is an error instead of being divided by `eps`.

use crate::error::{check_finite, check_len, Error};

/// Where the vectors of a buffer lie: `count` vectors of `len` elements; element `k` of vector `i` is at
/// `i * vector_stride + k * element_stride`.
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

    /// Number of elements of the buffer: `count * len`.
    pub const fn buffer_len(&self) -> usize {
        self.count * self.len
    }

    #[inline]
    fn at(&self, i: usize, k: usize) -> usize {
        i * self.vector_stride + k * self.element_stride
    }
}

/// `y = x / ||x||` per vector; `norms[i] = ||x_i||` is kept for the backward pass.
///
/// Shapes: `x`, `y`: `layout.buffer_len()`; `norms`: `(layout.count)`.
/// Errors: a non-finite `x` ([`Error::NonFinite`]), a vector whose norm overflows f32 ([`Error::NonFinite`] named
/// `norms`, at the vector's index), or a zero vector ([`Error::ZeroNorm`]).
pub fn l2_normalize_forward(layout: VectorLayout, x: &[f32], y: &mut [f32], norms: &mut [f32]) -> Result<(), Error> {
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
pub fn l2_normalize_backward(layout: VectorLayout, y: &[f32], norms: &[f32], grad: &mut [f32]) -> Result<(), Error> {
    let n = layout.buffer_len();
    check_len("y", y, n)?;
    check_len("grad", grad, n)?;
    check_len("norms", norms, layout.count)?;
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
