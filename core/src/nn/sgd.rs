//! SGD with momentum and weight decay (`torch.optim.SGD`, dampening 0, not Nesterov) and global
//! gradient-norm clipping (`torch.nn.utils.clip_grad_norm_`).
//!
//! Clipping a set of tensors: `total = sqrt(sum of sum_of_squares(g))` over the tensors, then
//! `scale(g, clip_coefficient(total, max_norm))` for each (PyTorch multiplies even when the factor is 1,
//! which changes nothing). Non-finite values are not scanned for: a non-finite norm gives the factor 1, which
//! leaves the gradients as they are (PyTorch would scale them by NaN or 0); the trainer checks the loss and
//! gradients and refuses such a step. Nothing here panics.

use crate::error::{check_len, Error};

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
///
/// Errors: [`Error::Length`] naming `grad` or `momentum_buf` when it differs from `param`; nothing is
/// written then.
pub fn sgd_step(cfg: &Sgd, param: &mut [f32], grad: &[f32], momentum_buf: &mut [f32]) -> Result<(), Error> {
    check_len("grad", grad, param.len())?;
    check_len("momentum_buf", momentum_buf, param.len())?;
    for ((p, &g), buf) in param.iter_mut().zip(grad).zip(momentum_buf.iter_mut()) {
        let d = g + cfg.weight_decay * *p;
        *buf = cfg.momentum * *buf + d;
        *p -= cfg.lr * *buf;
    }
    Ok(())
}

/// Sum of squares of one tensor's elements; the global norm is `sqrt` of the sum over tensors.
///
/// Accumulated in f64 and rounded once, so it is accurate for tensors of millions of elements.
pub fn sum_of_squares(x: &[f32]) -> f32 {
    x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() as f32
}

/// The factor `clip_grad_norm_` multiplies every gradient by: `min(1, max_norm / (total_norm + 1e-6))`.
///
/// A non-finite `total_norm` (NaN or infinite) gives 1: the gradients stay as they are, and the trainer refuses
/// the step that made them. PyTorch would give NaN or 0, and scaling by NaN would also turn the zero gaps between
/// gradients packed into one buffer (the GPU trainer's) into NaN, which no later step rewrites.
pub fn clip_coefficient(total_norm: f32, max_norm: f32) -> f32 {
    if !total_norm.is_finite() {
        return 1.0;
    }
    let coefficient = max_norm / (total_norm + 1e-6);
    if coefficient > 1.0 {
        1.0
    } else {
        coefficient
    }
}

/// `x *= factor`, element-wise.
pub fn scale(x: &mut [f32], factor: f32) {
    for v in x {
        *v *= factor;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_steps_follow_the_formula() {
        let cfg = Sgd { lr: 0.1, momentum: 0.9, weight_decay: 0.01 };
        let mut p = [1.0f32, -2.0];
        let mut buf = [0.0f32; 2];
        let g1 = [0.5f32, 0.25];
        sgd_step(&cfg, &mut p, &g1, &mut buf).unwrap();
        // Step 1 (PyTorch: buf = d): d = g + 0.01 p = [0.51, 0.23]; p = [1 - 0.051, -2 - 0.023].
        let d1 = [0.5f32 + 0.01 * 1.0, 0.25 + 0.01 * -2.0];
        assert_eq!(buf, d1);
        let p1 = [1.0 - 0.1 * d1[0], -2.0 - 0.1 * d1[1]];
        assert_eq!(p, p1);
        // Step 2: buf = 0.9 buf + (g + 0.01 p); p -= 0.1 buf.
        let g2 = [-1.0f32, 0.0];
        sgd_step(&cfg, &mut p, &g2, &mut buf).unwrap();
        let b2 = [0.9 * d1[0] + (g2[0] + 0.01 * p1[0]), 0.9 * d1[1] + (g2[1] + 0.01 * p1[1])];
        assert_eq!(buf, b2);
        assert_eq!(p, [p1[0] - 0.1 * b2[0], p1[1] - 0.1 * b2[1]]);
        approx::assert_relative_eq!(p[0], 0.949 - 0.1 * (0.459 - 1.0 + 0.00949), max_relative = 1e-6);
    }

    #[test]
    fn lengths_are_checked() {
        let cfg = Sgd { lr: 0.1, momentum: 0.9, weight_decay: 0.0 };
        let (mut p, mut buf) = ([1.0; 3], [0.0; 3]);
        let e = sgd_step(&cfg, &mut p, &[1.0; 2], &mut buf);
        assert_eq!(e, Err(Error::Length { what: "grad", expected: 3, got: 2 }));
        let e = sgd_step(&cfg, &mut p, &[1.0; 3], &mut buf[..1]);
        assert_eq!(e, Err(Error::Length { what: "momentum_buf", expected: 3, got: 1 }));
        assert_eq!(p, [1.0; 3]);
    }

    #[test]
    fn clipping() {
        assert_eq!(sum_of_squares(&[3.0, 4.0]), 25.0);
        assert_eq!(sum_of_squares(&[]), 0.0);
        // Norm 10, max 5: factor 5 / (10 + 1e-6).
        assert_eq!(clip_coefficient(10.0, 5.0), 5.0 / (10.0 + 1e-6));
        assert_eq!(clip_coefficient(1.0, 5.0), 1.0);
        assert_eq!(clip_coefficient(0.0, 5.0), 1.0);
        assert_eq!(clip_coefficient(f32::INFINITY, 5.0), 1.0);
        assert_eq!(clip_coefficient(f32::NAN, 5.0), 1.0);
        let mut g = [3.0, -4.0];
        let factor = clip_coefficient(libm::sqrtf(sum_of_squares(&g)), 1.0);
        scale(&mut g, factor);
        approx::assert_relative_eq!(libm::sqrtf(sum_of_squares(&g)), 1.0, max_relative = 1e-6);
        // A tensor of many small values keeps its digits (f64 accumulation).
        let many = [1e-3f32; 4096];
        approx::assert_relative_eq!(sum_of_squares(&many), 4096.0 * 1e-6, max_relative = 1e-6);
    }
}
