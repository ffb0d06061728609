//! Fully connected layer with bias, as `torch.nn.Linear`.
//!
//! Every loop runs along contiguous rows (of `x`, `weight`, `dy` or the output). Non-finite values are not
//! scanned for: they propagate as IEEE arithmetic makes them. No function panics: the shape and every
//! slice length are checked before any element is touched.

use crate::error::{check_len, Error};

/// Shape: input `(N, IN)`, weight `(OUT, IN)`, bias `(OUT)`, output `(N, OUT)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearShape {
    /// Batch size N.
    pub n: usize,
    /// Input features IN.
    pub inputs: usize,
    /// Output features OUT.
    pub outputs: usize,
}

impl LinearShape {
    /// Elements of the input, `N*IN` (saturating at `usize::MAX`, which no slice can match).
    pub const fn input_len(&self) -> usize {
        self.n.saturating_mul(self.inputs)
    }
    /// Elements of the weight, `OUT*IN` (saturating at `usize::MAX`).
    pub const fn weight_len(&self) -> usize {
        self.outputs.saturating_mul(self.inputs)
    }
    /// Elements of the output, `N*OUT` (saturating at `usize::MAX`).
    pub const fn output_len(&self) -> usize {
        self.n.saturating_mul(self.outputs)
    }
    /// Checks that no size is zero and every element count fits `usize` ([`Error::Shape`] otherwise).
    pub fn validate(&self) -> Result<(), Error> {
        if self.n == 0 || self.inputs == 0 || self.outputs == 0 {
            return Err(Error::Shape { what: "linear: a size (N, IN or OUT) is zero" });
        }
        let fits = self.n.checked_mul(self.inputs).is_some()
            && self.outputs.checked_mul(self.inputs).is_some()
            && self.n.checked_mul(self.outputs).is_some();
        if fits {
            Ok(())
        } else {
            Err(Error::Shape { what: "linear: a size overflows usize" })
        }
    }
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `y += a * x`, element-wise.
#[inline]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv += a * xv;
    }
}

/// `y = x weight^T + bias`.
///
/// Shapes: `x (N, IN)`, `weight (OUT, IN)`, `bias (OUT)`, `y (N, OUT)`; overwrites `y`. Errors:
/// [`Error::Shape`] ([`LinearShape::validate`]), [`Error::Length`] naming `x`, `weight`, `bias` or `y`.
pub fn linear_forward(s: &LinearShape, x: &[f32], weight: &[f32], bias: &[f32], y: &mut [f32]) -> Result<(), Error> {
    s.validate()?;
    check_len("x", x, s.input_len())?;
    check_len("weight", weight, s.weight_len())?;
    check_len("bias", bias, s.outputs)?;
    check_len("y", y, s.output_len())?;
    for (y_row, x_row) in y.chunks_exact_mut(s.outputs).zip(x.chunks_exact(s.inputs)) {
        for ((yv, w_row), &b) in y_row.iter_mut().zip(weight.chunks_exact(s.inputs)).zip(bias) {
            *yv = dot(x_row, w_row) + b;
        }
    }
    Ok(())
}

/// Backward: `dx = dy weight` `(N, IN)`, `dweight = dy^T x` `(OUT, IN)`, `dbias = sum_n dy` `(OUT)`.
///
/// Shapes: `x (N, IN)`, `weight (OUT, IN)`, `dy (N, OUT)`. Overwrites `dx`, `dweight` and `dbias`. Errors as
/// [`linear_forward`]; [`Error::Length`] names `x`, `weight`, `dy`, `dx`, `dweight` or `dbias`.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    s: &LinearShape,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
) -> Result<(), Error> {
    s.validate()?;
    check_len("x", x, s.input_len())?;
    check_len("weight", weight, s.weight_len())?;
    check_len("dy", dy, s.output_len())?;
    check_len("dx", dx, s.input_len())?;
    check_len("dweight", dweight, s.weight_len())?;
    check_len("dbias", dbias, s.outputs)?;
    // dx[n, :] = sum_o dy[n, o] * weight[o, :]
    for (dx_row, dy_row) in dx.chunks_exact_mut(s.inputs).zip(dy.chunks_exact(s.outputs)) {
        dx_row.fill(0.0);
        for (&g, w_row) in dy_row.iter().zip(weight.chunks_exact(s.inputs)) {
            axpy(dx_row, g, w_row);
        }
    }
    // dweight[o, :] = sum_n dy[n, o] * x[n, :];  dbias[o] = sum_n dy[n, o]
    dweight.fill(0.0);
    dbias.fill(0.0);
    for (dy_row, x_row) in dy.chunks_exact(s.outputs).zip(x.chunks_exact(s.inputs)) {
        for ((dw_row, db), &g) in dweight.chunks_exact_mut(s.inputs).zip(dbias.iter_mut()).zip(dy_row) {
            axpy(dw_row, g, x_row);
            *db += g;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // N = 2, IN = 3, OUT = 2.
    const S: LinearShape = LinearShape { n: 2, inputs: 3, outputs: 2 };
    const X: [f32; 6] = [1.0, 2.0, 3.0, -1.0, 0.0, 2.0];
    const W: [f32; 6] = [1.0, 0.0, -1.0, 0.5, 0.5, 0.5];
    const B: [f32; 2] = [10.0, -1.0];

    #[test]
    fn forward_by_hand() {
        let mut y = [f32::NAN; 4];
        linear_forward(&S, &X, &W, &B, &mut y).unwrap();
        assert_eq!(y, [1.0 - 3.0 + 10.0, 3.0 - 1.0, -1.0 - 2.0 + 10.0, 0.5 - 1.0]);
    }

    #[test]
    fn backward_by_hand() {
        let dy = [1.0, 2.0, -1.0, 4.0];
        let (mut dx, mut dw, mut db) = ([f32::NAN; 6], [f32::NAN; 6], [f32::NAN; 2]);
        linear_backward(&S, &X, &W, &dy, &mut dx, &mut dw, &mut db).unwrap();
        // dx[0] = 1 * W[0] + 2 * W[1]; dx[1] = -1 * W[0] + 4 * W[1].
        assert_eq!(dx, [2.0, 1.0, 0.0, 1.0, 2.0, 3.0]);
        // dw[0] = 1 * X[0] - 1 * X[1]; dw[1] = 2 * X[0] + 4 * X[1].
        assert_eq!(dw, [2.0, 2.0, 1.0, -2.0, 4.0, 14.0]);
        assert_eq!(db, [0.0, 6.0]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let len = |what, expected, got| Err(Error::Length { what, expected, got });
        let (mut y, mut dx, mut dw, mut db) = ([0.0; 4], [0.0; 6], [0.0; 6], [0.0; 2]);
        assert_eq!(linear_forward(&S, &X[1..], &W, &B, &mut y), len("x", 6, 5));
        assert_eq!(linear_forward(&S, &X, &W[1..], &B, &mut y), len("weight", 6, 5));
        assert_eq!(linear_forward(&S, &X, &W, &B[1..], &mut y), len("bias", 2, 1));
        assert_eq!(linear_forward(&S, &X, &W, &B, &mut y[1..]), len("y", 4, 3));
        let dy = [0.0; 4];
        assert_eq!(linear_backward(&S, &X, &W, &dy[1..], &mut dx, &mut dw, &mut db), len("dy", 4, 3));
        assert_eq!(linear_backward(&S, &X, &W, &dy, &mut dx[1..], &mut dw, &mut db), len("dx", 6, 5));
        assert_eq!(linear_backward(&S, &X, &W, &dy, &mut dx, &mut dw[1..], &mut db), len("dweight", 6, 5));
        assert_eq!(linear_backward(&S, &X, &W, &dy, &mut dx, &mut dw, &mut db[1..]), len("dbias", 2, 1));
        for bad in [LinearShape { n: 0, ..S }, LinearShape { inputs: 0, ..S }, LinearShape { n: usize::MAX, ..S }] {
            assert!(matches!(bad.validate(), Err(Error::Shape { .. })));
            assert!(matches!(linear_forward(&bad, &X, &W, &B, &mut y), Err(Error::Shape { .. })));
        }
    }
}
