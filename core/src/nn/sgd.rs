//! SGD with momentum and weight decay (`torch.optim.SGD`, dampening 0, not Nesterov) and global
//! gradient-norm clipping (`torch.nn.utils.clip_grad_norm_`).

use crate::error::Error;

/// SGD hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgd {
    /// Learning rate.
    pub lr: f32,
    /// Momentum factor.
    pub momentum: f32,
    /// L2 penalty added to the gradient: `g + weight_decay * p`.
    pub weight_decay: f32,
}

/// One update of one tensor: `d = g + wd * p; buf = momentum * buf + d; p -= lr * buf`.
/// `buf` starts at zero, which gives PyTorch's first step (`buf = d`) exactly. All three of one length.
pub fn sgd_step(cfg: &Sgd, param: &mut [f32], grad: &[f32], momentum_buf: &mut [f32]) -> Result<(), Error> {
    todo!()
}

/// Sum of squares of one tensor's elements; the global norm is `sqrt` of the sum over tensors.
pub fn sum_of_squares(x: &[f32]) -> f32 {
    todo!()
}

/// The factor `clip_grad_norm_` multiplies every gradient by: `min(1, max_norm / (total_norm + 1e-6))`.
pub fn clip_coefficient(total_norm: f32, max_norm: f32) -> f32 {
    todo!()
}

/// `x *= factor`, element-wise.
pub fn scale(x: &mut [f32], factor: f32) {
    todo!()
}
