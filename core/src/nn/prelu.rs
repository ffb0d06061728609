//! PReLU with one slope per channel, as `torch.nn.PReLU(C)`.

use super::BatchNormShape as ChannelShape;
use crate::error::Error;

/// `y = x` where `x > 0`, else `alpha[c] * x`. Shapes: `x`, `y` `(N, C, HW)`; `alpha (C)`.
pub fn prelu_forward(s: &ChannelShape, x: &[f32], alpha: &[f32], y: &mut [f32]) -> Result<(), Error> {
    todo!()
}

/// Backward: `dx = dy` where `x > 0`, else `alpha * dy`; `dalpha[c] = sum over x <= 0 of x * dy`.
pub fn prelu_backward(
    s: &ChannelShape,
    x: &[f32],
    alpha: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dalpha: &mut [f32],
) -> Result<(), Error> {
    todo!()
}
