//! The residual connection `y = a + b` and gradient accumulation.

use crate::error::Error;

/// `y = a + b`, element-wise; all three of one length.
pub fn residual_add_forward(a: &[f32], b: &[f32], y: &mut [f32]) -> Result<(), Error> {
    todo!()
}

/// Backward: both inputs receive `dy`.
pub fn residual_add_backward(dy: &[f32], da: &mut [f32], db: &mut [f32]) -> Result<(), Error> {
    todo!()
}

/// `dst += src`, element-wise: a tensor used twice receives the sum of both gradients.
pub fn accumulate(dst: &mut [f32], src: &[f32]) -> Result<(), Error> {
    todo!()
}
