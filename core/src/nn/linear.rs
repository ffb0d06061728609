//! Fully connected layer with bias, as `torch.nn.Linear`.

use crate::error::Error;

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

/// `y = x weight^T + bias`.
pub fn linear_forward(s: &LinearShape, x: &[f32], weight: &[f32], bias: &[f32], y: &mut [f32]) -> Result<(), Error> {
    todo!()
}

/// Backward: `dx = dy weight` `(N, IN)`, `dweight = dy^T x` `(OUT, IN)`, `dbias = sum_n dy` `(OUT)`.
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
    todo!()
}
