//! SGD with momentum and weight decay (`torch.optim.SGD`, dampening 0, not Nesterov) and global
//! gradient-norm clipping (`torch.nn.utils.clip_grad_norm_`), and the mean of the gradients of several
//! micro-batches ([`accumulate_gradient`]).
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

/// Where a micro-batch stands among the `N` whose gradients one update averages (gradient accumulation: `N`
/// micro-batches of `B` samples make one step of `N B`, as `N` data-parallel GPUs of `B` each do).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MicroBatch {
    /// The first of `N > 1`: `sum = g`.
    First,
    /// One after the first and before the last: `sum = sum + g`.
    Next,
    /// The last: `g = (sum + g) * inv_n`, the mean gradient, where the clip and the update read it (`inv_n` is
    /// `1 / N` rounded to f32: exact for a power of two).
    Last {
        /// `1 / N`.
        inv_n: f32,
    },
}

impl MicroBatch {
    /// Micro-batch `i` of `n > 1` (`i < n`; outside that, `First` for 0 and `Next` otherwise, never a panic).
    pub fn of(i: usize, n: usize) -> Self {
        match i {
            0 => MicroBatch::First,
            i if i.checked_add(1) == Some(n) => MicroBatch::Last { inv_n: 1.0 / n as f32 },
            _ => MicroBatch::Next,
        }
    }
}

/// One micro-batch's gradient `grad` into the running `sum` of its micro-batches, element-wise, as `stage` says:
/// the first copies, the next add, the last adds and leaves the mean in `grad` (the sum is then spent). The sum's
/// order is the micro-batches' (`((g0 + g1) + g2) + ...`), the same on every target.
///
/// Errors: [`Error::Length`] naming `sum` when it differs from `grad`; nothing is written then.
pub fn accumulate_gradient(stage: MicroBatch, sum: &mut [f32], grad: &mut [f32]) -> Result<(), Error> {
    check_len("sum", sum, grad.len())?;
    for (s, g) in sum.iter_mut().zip(grad.iter_mut()) {
        match stage {
            MicroBatch::First => *s = *g,
            MicroBatch::Next => *s += *g,
            MicroBatch::Last { inv_n } => *g = (*s + *g) * inv_n,
        }
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
    fn micro_batch_stages_never_overflow() {
        assert_eq!(MicroBatch::of(0, 3), MicroBatch::First);
        assert_eq!(MicroBatch::of(1, 3), MicroBatch::Next);
        assert_eq!(MicroBatch::of(2, 3), MicroBatch::Last { inv_n: 1.0 / 3.0 });
        // Outside the contract (`i < n`), but no panic.
        assert_eq!(MicroBatch::of(usize::MAX, 3), MicroBatch::Next);
        assert_eq!(MicroBatch::of(usize::MAX, usize::MAX), MicroBatch::Next);
    }

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
    fn micro_batches_sum_in_order_and_the_last_leaves_the_mean() {
        assert_eq!(MicroBatch::of(0, 3), MicroBatch::First);
        assert_eq!(MicroBatch::of(1, 3), MicroBatch::Next);
        assert_eq!(MicroBatch::of(2, 3), MicroBatch::Last { inv_n: 1.0 / 3.0 });
        assert_eq!(MicroBatch::of(1, 2), MicroBatch::Last { inv_n: 0.5 });
        let g = [[1.0f32, -2.0], [0.5, 4.0], [0.25, 1.0], [3.0, -1.0]];
        let mut sum = [f32::NAN; 2];
        let mut grads = g;
        for (i, grad) in grads.iter_mut().enumerate() {
            accumulate_gradient(MicroBatch::of(i, 4), &mut sum, grad).unwrap();
        }
        // The first three leave their gradients as they were; the last holds the mean.
        assert_eq!(grads[..3], g[..3]);
        assert_eq!(grads[3], [(((1.0 + 0.5) + 0.25) + 3.0) * 0.25, (((-2.0 + 4.0) + 1.0) - 1.0) * 0.25]);
        // Three: the mean through 1/3 rounded to f32, as the GPU multiplies.
        let (mut sum, mut last) = ([0.0f32], [0.7f32]);
        accumulate_gradient(MicroBatch::First, &mut sum, &mut [0.1]).unwrap();
        accumulate_gradient(MicroBatch::Next, &mut sum, &mut [0.2]).unwrap();
        accumulate_gradient(MicroBatch::of(2, 3), &mut sum, &mut last).unwrap();
        assert_eq!(last[0], ((0.1f32 + 0.2) + 0.7) * (1.0 / 3.0));
        let e = accumulate_gradient(MicroBatch::First, &mut [0.0; 2], &mut [1.0; 3]);
        assert_eq!(e, Err(Error::Length { what: "sum", expected: 3, got: 2 }));
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
