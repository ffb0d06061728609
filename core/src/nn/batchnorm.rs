//! Batch normalisation over `(N, C, HW)`: `BatchNorm2d` with `HW = H*W`, `BatchNorm1d` with `HW = 1`.
//!
//! Statistics are computed in f32 in two passes (the mean, then the mean of squared deviations), each
//! channel as a sum of per-plane partial sums, so they stay accurate for the large `N*H*W` of the stem.
//!
//! The `_on` forms run on an [`Executor`]: the per-channel sums a channel at a time, the outputs a plane at a time,
//! each computed alone by the same code wherever it runs, so the results are the same bits on any executor.
//!
//! Non-finite values are not scanned for: they propagate (into `y`, the running statistics and the
//! gradients) as IEEE arithmetic makes them. No function panics: the shape and every slice length are
//! checked before any element is touched or written.

use core::ops::Range;

use crate::error::{check_len, Error};
use crate::parallel::{Executor, Serial};

/// Shape of a batch norm input `(N, C, HW)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchNormShape {
    /// Batch size N.
    pub n: usize,
    /// Channels C (features for `BatchNorm1d`).
    pub c: usize,
    /// Spatial size `H*W` (1 for `BatchNorm1d`).
    pub hw: usize,
}

impl BatchNormShape {
    /// Elements of the input, `N*C*HW` (saturating at `usize::MAX`, which no slice can match).
    pub const fn len(&self) -> usize {
        self.n.saturating_mul(self.c).saturating_mul(self.hw)
    }
    /// Whether the input has no elements (a zero size), which [`BatchNormShape::validate`] rejects.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Values each channel's statistics are taken over, `N*HW` (saturating at `usize::MAX`).
    pub const fn count(&self) -> usize {
        self.n.saturating_mul(self.hw)
    }
    /// Checks that no size is zero and `N*C*HW` fits `usize` ([`Error::Shape`] otherwise).
    ///
    /// Training mode needs more: see [`batchnorm_forward_train`].
    pub fn validate(&self) -> Result<(), Error> {
        if self.n == 0 || self.c == 0 || self.hw == 0 {
            return Err(Error::Shape { what: "(N, C, HW): a size is zero" });
        }
        match self.n.checked_mul(self.c).and_then(|nc| nc.checked_mul(self.hw)) {
            Some(_) => Ok(()),
            None => Err(Error::Shape { what: "(N, C, HW): N*C*HW overflows usize" }),
        }
    }

    /// The `HW` elements of sample `n`, channel `c`. Requires a validated shape, `n < N`, `c < C`.
    #[inline]
    pub(crate) fn plane(&self, n: usize, c: usize) -> Range<usize> {
        let start = (n * self.c + c) * self.hw;
        start..start + self.hw
    }

    /// Validates the shape for training mode: also `N*HW >= 2`, which the unbiased variance needs.
    fn validate_train(&self) -> Result<(), Error> {
        self.validate()?;
        if self.count() < 2 {
            return Err(Error::Shape { what: "batch norm training needs N*HW >= 2 values per channel" });
        }
        Ok(())
    }
}

/// Batch norm hyper-parameters: PyTorch defaults are `eps = 1e-5`, `momentum = 0.1`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNorm {
    /// Added to the variance before the square root.
    pub eps: f32,
    /// Running statistics: `running = (1 - momentum) * running + momentum * batch`.
    pub momentum: f32,
}

impl Default for BatchNorm {
    fn default() -> Self {
        Self { eps: 1e-5, momentum: 0.1 }
    }
}

/// `1 / sqrt(var + eps)`.
#[inline]
fn inv_std(var: f32, eps: f32) -> f32 {
    1.0 / libm::sqrtf(var + eps)
}

/// Mean of channel `c` of `x`: the planes' sums (`Iterator::sum`) added in batch order from `0.0`, over `N*HW`.
/// Requires a validated shape and `x.len() == s.len()`.
fn channel_mean(s: &BatchNormShape, x: &[f32], c: usize) -> f32 {
    let mut sum = 0.0f32;
    for n in 0..s.n {
        sum += x[s.plane(n, c)].iter().sum::<f32>();
    }
    sum / s.count() as f32
}

/// Biased variance of channel `c` of `x` about its `mean`, summed as [`channel_mean`] sums.
fn channel_var(s: &BatchNormShape, x: &[f32], c: usize, mean: f32) -> f32 {
    let mut squares = 0.0f32;
    for n in 0..s.n {
        squares += x[s.plane(n, c)].iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>();
    }
    squares / s.count() as f32
}

/// Channel `c`'s sum of `term(i)` over its elements `i`: per-plane partial sums from `0.0`, added in batch order
/// from `0.0`.
#[inline]
pub(super) fn channel_sum(s: &BatchNormShape, c: usize, term: impl Fn(usize) -> f32) -> f32 {
    let mut sum = 0.0f32;
    for n in 0..s.n {
        let mut partial = 0.0f32;
        for i in s.plane(n, c) {
            partial += term(i);
        }
        sum += partial;
    }
    sum
}

/// `out[c] = value(c)` for every channel (`out (C)`), the channels shared out on `exec`.
pub(super) fn per_channel(exec: &dyn Executor, out: &mut [f32], value: impl Fn(usize) -> f32 + Sync) {
    exec.for_each_rows(out, 1, &|first, piece| {
        for (k, v) in piece.iter_mut().enumerate() {
            *v = value(first + k);
        }
    });
}

/// `plane(start, c, out)` on every plane of `out (N, C, HW)` (`start` its first element's index, `c` its channel),
/// the planes shared out on `exec`.
pub(super) fn per_plane(
    exec: &dyn Executor,
    s: &BatchNormShape,
    out: &mut [f32],
    plane: impl Fn(usize, usize, &mut [f32]) + Sync,
) {
    exec.for_each_rows(out, s.hw, &|first, planes| {
        for (k, out) in planes.chunks_exact_mut(s.hw).enumerate() {
            let p = first + k;
            plane(p * s.hw, p % s.c, out);
        }
    });
}

/// The normalised value of element `xv` of channel `c` with the statistics `(mean, var)`: the forward pass's
/// `(x - mean) * (gamma / sqrt(var + eps)) + beta`, rounded as the forward passes round it (`gamma / sqrt(var + eps)`
/// first, as `scale`).
#[inline]
fn normalised(xv: f32, mean: f32, scale: f32, shift: f32) -> f32 {
    (xv - mean) * scale + shift
}

/// The batch norm's output of one element `xv` of a channel with statistics `(mean, var)`, weight `gamma` and bias
/// `beta`, with the same roundings as the forward passes (which compute `gamma * inv_std` once per plane): what
/// a pass that recomputes the output element by element uses.
#[inline]
pub(super) fn normalised_value(xv: f32, mean: f32, var: f32, gamma: f32, beta: f32, eps: f32) -> f32 {
    normalised(xv, mean, gamma * inv_std(var, eps), beta)
}

/// PReLU of one value with slope `a`, as [`prelu_forward`](super::prelu_forward) computes it.
#[inline]
pub(super) fn prelu(v: f32, a: f32) -> f32 {
    if v > 0.0 {
        v
    } else {
        a * v
    }
}

/// PReLU input `v`'s term of its slope's gradient for the output gradient `g`: `v * g` on the negative branch (a NaN
/// takes it too), else `+0.0`, which leaves a sum started at `+0.0` as skipping the term would (such a sum is never
/// `-0.0`).
#[inline]
pub(super) fn prelu_slope_term(v: f32, g: f32) -> f32 {
    if v > 0.0 {
        0.0
    } else {
        v * g
    }
}

/// Training mode: normalise with the batch mean and biased variance, `y = gamma * (x - mean) / sqrt(var + eps) + beta`;
/// update the running mean and the running variance (with the unbiased batch variance `var * n / (n - 1)`).
///
/// Shapes: `x`, `y` `(N, C, HW)`; `gamma`, `beta`, `running_mean`, `running_var`, `save_mean`, `save_var` `(C)`.
/// `save_mean`/`save_var` receive the batch mean and biased variance for [`batchnorm_backward`].
/// Errors: `N*HW < 2` (no unbiased variance), as PyTorch.
///
/// Also [`Error::Shape`] for a zero size ([`BatchNormShape::validate`]) and [`Error::Length`] naming the
/// first slice of the wrong length; nothing is written then. Non-finite inputs propagate into `y` and the
/// running statistics.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward_train(
    s: &BatchNormShape,
    bn: &BatchNorm,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    y: &mut [f32],
    save_mean: &mut [f32],
    save_var: &mut [f32],
) -> Result<(), Error> {
    let state = TrainState { running_mean, running_var, save_mean, save_var };
    forward_train_then(&Serial, s, bn, x, gamma, beta, &[], state, y, |_, _, z| z)
}

/// [`batchnorm_forward_train`] on `exec`: the statistics a channel at a time, `y` a plane at a time; the same bits
/// on any executor.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward_train_on(
    exec: &dyn Executor,
    s: &BatchNormShape,
    bn: &BatchNorm,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    y: &mut [f32],
    save_mean: &mut [f32],
    save_var: &mut [f32],
) -> Result<(), Error> {
    let state = TrainState { running_mean, running_var, save_mean, save_var };
    forward_train_then(exec, s, bn, x, gamma, beta, &[], state, y, |_, _, z| z)
}

/// A slice a fused function reads besides the batch norm's own, as (name, slice, expected length).
type Operand<'a> = (&'static str, &'a [f32], usize);

fn check_operands(operands: &[Operand<'_>]) -> Result<(), Error> {
    operands.iter().try_for_each(|&(what, v, len)| check_len(what, v, len))
}

/// The statistics a training-mode forward updates and saves, each `(C)`.
struct TrainState<'a> {
    running_mean: &'a mut [f32],
    running_var: &'a mut [f32],
    save_mean: &'a mut [f32],
    save_var: &'a mut [f32],
}

/// [`batchnorm_forward_train`] storing `then(i, c, z)` for the normalised value `z` of element `i` (channel `c`).
/// The slices `then` reads are in `operands`, checked after `beta`.
#[allow(clippy::too_many_arguments)]
fn forward_train_then(
    exec: &dyn Executor,
    s: &BatchNormShape,
    bn: &BatchNorm,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    operands: &[Operand<'_>],
    state: TrainState<'_>,
    y: &mut [f32],
    then: impl Fn(usize, usize, f32) -> f32 + Sync,
) -> Result<(), Error> {
    let TrainState { running_mean, running_var, save_mean, save_var } = state;
    s.validate_train()?;
    check_len("x", x, s.len())?;
    check_len("gamma", gamma, s.c)?;
    check_len("beta", beta, s.c)?;
    check_operands(operands)?;
    check_len("running_mean", running_mean, s.c)?;
    check_len("running_var", running_var, s.c)?;
    check_len("y", y, s.len())?;
    check_len("save_mean", save_mean, s.c)?;
    check_len("save_var", save_var, s.c)?;
    let count = s.count() as f32;
    let unbias = count / (count - 1.0);
    let keep = 1.0 - bn.momentum;
    per_channel(exec, save_mean, |c| channel_mean(s, x, c));
    let mean: &[f32] = save_mean;
    per_channel(exec, save_var, |c| channel_var(s, x, c, mean[c]));
    let var: &[f32] = save_var;
    for c in 0..s.c {
        running_mean[c] = keep * running_mean[c] + bn.momentum * mean[c];
        running_var[c] = keep * running_var[c] + bn.momentum * (var[c] * unbias);
    }
    affine_planes(exec, s, x, y, |c| (mean[c], gamma[c] * inv_std(var[c], bn.eps), beta[c]), then);
    Ok(())
}

/// `y = then(i, c, (x - mean) * scale + shift)` on every element `i` (channel `c`), with `(mean, scale, shift)` of
/// each channel from `affine(c)`, computed once per plane; the planes shared out on `exec`.
fn affine_planes(
    exec: &dyn Executor,
    s: &BatchNormShape,
    x: &[f32],
    y: &mut [f32],
    affine: impl Fn(usize) -> (f32, f32, f32) + Sync,
    then: impl Fn(usize, usize, f32) -> f32 + Sync,
) {
    per_plane(exec, s, y, |start, c, y_plane| {
        let (mean, scale, shift) = affine(c);
        for (k, (yv, &xv)) in y_plane.iter_mut().zip(&x[start..start + s.hw]).enumerate() {
            *yv = then(start + k, c, normalised(xv, mean, scale, shift));
        }
    });
}

/// Evaluation mode: normalise with the running statistics. Shapes as [`batchnorm_forward_train`].
///
/// `y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta`; any `N >= 1` works. Errors:
/// [`Error::Shape`] for a zero size, [`Error::Length`] naming the first slice of the wrong length. A
/// `running_var + eps <= 0` or non-finite input gives non-finite outputs, not an error.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward_eval(
    s: &BatchNormShape,
    bn: &BatchNorm,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    y: &mut [f32],
) -> Result<(), Error> {
    forward_eval_then(&Serial, s, bn, x, gamma, beta, &[], running_mean, running_var, y, |_, _, z| z)
}

/// [`batchnorm_forward_eval`] on `exec`, a plane at a time: the same bits on any executor.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward_eval_on(
    exec: &dyn Executor,
    s: &BatchNormShape,
    bn: &BatchNorm,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    y: &mut [f32],
) -> Result<(), Error> {
    forward_eval_then(exec, s, bn, x, gamma, beta, &[], running_mean, running_var, y, |_, _, z| z)
}

/// [`batchnorm_forward_eval`] storing `then(i, c, z)`, as [`forward_train_then`].
#[allow(clippy::too_many_arguments)]
fn forward_eval_then(
    exec: &dyn Executor,
    s: &BatchNormShape,
    bn: &BatchNorm,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    operands: &[Operand<'_>],
    running_mean: &[f32],
    running_var: &[f32],
    y: &mut [f32],
    then: impl Fn(usize, usize, f32) -> f32 + Sync,
) -> Result<(), Error> {
    s.validate()?;
    check_len("x", x, s.len())?;
    check_len("gamma", gamma, s.c)?;
    check_len("beta", beta, s.c)?;
    check_operands(operands)?;
    check_len("running_mean", running_mean, s.c)?;
    check_len("running_var", running_var, s.c)?;
    check_len("y", y, s.len())?;
    affine_planes(exec, s, x, y, |c| (running_mean[c], gamma[c] * inv_std(running_var[c], bn.eps), beta[c]), then);
    Ok(())
}

/// Backward of [`batchnorm_forward_train`] from the saved batch statistics.
///
/// Writes `dx (N, C, HW)`, `dbeta (C)` and, unless the weight is frozen (`dgamma = None`, as insightface's
/// `features` layer), `dgamma (C)`.
///
/// With `invstd = 1 / sqrt(save_var + eps)`, `xhat = (x - save_mean) * invstd` and `n = N*HW`:
/// `dbeta = sum(dy)`, `dgamma = sum(dy * xhat)`,
/// `dx = gamma * invstd * (dy - sum(dy) / n - xhat * sum(dy * xhat) / n)`.
/// Shapes: `x`, `dy`, `dx` `(N, C, HW)`; `gamma`, `save_mean`, `save_var` `(C)`. All outputs are overwritten.
/// Errors as [`batchnorm_forward_train`] (including `N*HW < 2`); [`Error::Length`] names the slice.
/// Non-finite inputs propagate.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward(
    s: &BatchNormShape,
    bn: &BatchNorm,
    x: &[f32],
    gamma: &[f32],
    save_mean: &[f32],
    save_var: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dgamma: Option<&mut [f32]>,
    dbeta: &mut [f32],
) -> Result<(), Error> {
    batchnorm_backward_on(&Serial, s, bn, x, gamma, save_mean, save_var, dy, dx, dgamma, dbeta)
}

/// [`batchnorm_backward`] on `exec`: `dbeta` and `dgamma` a channel at a time, then `dx` a plane at a time; the same
/// bits on any executor. With the weight frozen (`dgamma = None`) it runs on the calling thread.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward_on(
    exec: &dyn Executor,
    s: &BatchNormShape,
    bn: &BatchNorm,
    x: &[f32],
    gamma: &[f32],
    save_mean: &[f32],
    save_var: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dgamma: Option<&mut [f32]>,
    dbeta: &mut [f32],
) -> Result<(), Error> {
    let operands = [("dy", dy, s.len())];
    let dy = |i, _| dy[i];
    backward_with(exec, s, bn, x, gamma, save_mean, save_var, &operands, dy, dx, dgamma, dbeta, |_, v| v)
}

/// [`batchnorm_backward`] with `dy` given element by element, `dy(i, c)`, and `dx[i] = then(i, value)`. The
/// slices `dy` and `then` read are in `operands` as (name, slice, length), checked after the shape.
#[allow(clippy::too_many_arguments)]
fn backward_with(
    exec: &dyn Executor,
    s: &BatchNormShape,
    bn: &BatchNorm,
    x: &[f32],
    gamma: &[f32],
    save_mean: &[f32],
    save_var: &[f32],
    operands: &[Operand<'_>],
    dy: impl Fn(usize, usize) -> f32 + Sync,
    dx: &mut [f32],
    dgamma: Option<&mut [f32]>,
    dbeta: &mut [f32],
    then: impl Fn(usize, f32) -> f32 + Sync,
) -> Result<(), Error> {
    s.validate_train()?;
    check_len("x", x, s.len())?;
    check_len("gamma", gamma, s.c)?;
    check_len("save_mean", save_mean, s.c)?;
    check_len("save_var", save_var, s.c)?;
    check_operands(operands)?;
    check_len("dx", dx, s.len())?;
    if let Some(dgamma) = dgamma.as_deref() {
        check_len("dgamma", dgamma, s.c)?;
    }
    check_len("dbeta", dbeta, s.c)?;
    let count = s.count() as f32;
    // sum(dy), and sum(dy * xhat) as sum(dy * (x - mean)) * invstd.
    let sum_dy = |c: usize| channel_sum(s, c, |i| dy(i, c));
    let sum_dy_xhat = |c: usize| channel_sum(s, c, |i| dy(i, c) * (x[i] - save_mean[c])) * inv_std(save_var[c], bn.eps);
    // dx of one plane of channel c from the channel's sums.
    let dx_plane = |start: usize, c: usize, dx_plane: &mut [f32], sum_dy: f32, sum_dy_xhat: f32| {
        let (mean, invstd) = (save_mean[c], inv_std(save_var[c], bn.eps));
        let (mean_dy, mean_dy_xhat) = (sum_dy / count, sum_dy_xhat / count);
        let k = gamma[c] * invstd;
        for (i, d) in (start..).zip(dx_plane) {
            let xhat = (x[i] - mean) * invstd;
            *d = then(i, k * (dy(i, c) - mean_dy - xhat * mean_dy_xhat));
        }
    };
    match dgamma {
        Some(dgamma) => {
            per_channel(exec, dbeta, sum_dy);
            per_channel(exec, dgamma, sum_dy_xhat);
            let (dbeta, dgamma): (&[f32], &[f32]) = (dbeta, dgamma);
            per_plane(exec, s, dx, |start, c, out| dx_plane(start, c, out, dbeta[c], dgamma[c]));
        }
        None => {
            // Nowhere to keep sum(dy * xhat) but a register: a channel at a time.
            for (c, dbeta) in dbeta.iter_mut().enumerate() {
                let (sum_dy, sum_dy_xhat) = (sum_dy(c), sum_dy_xhat(c));
                *dbeta = sum_dy;
                for n in 0..s.n {
                    let plane = s.plane(n, c);
                    dx_plane(plane.start, c, &mut dx[plane], sum_dy, sum_dy_xhat);
                }
            }
        }
    }
    Ok(())
}

// ---- Fused forms: a batch norm with the PReLU or the residual add next to it, in one pass. ----
//
// Each gives the unfused calls' results bit for bit (the same operations on the same values, in the same order);
// the intermediate tensor is never stored. The GPU trainer runs their WGSL twins to save memory passes.

/// [`batchnorm_forward_train`] then [`prelu_forward`](super::prelu_forward) with slopes `alpha (C)`, in one pass:
/// `y = prelu(bn(x))`. Arguments, statistics and errors as [`batchnorm_forward_train`]; [`Error::Length`] may
/// also name `alpha`.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_prelu_forward_train(
    s: &BatchNormShape,
    bn: &BatchNorm,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    alpha: &[f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    y: &mut [f32],
    save_mean: &mut [f32],
    save_var: &mut [f32],
) -> Result<(), Error> {
    let state = TrainState { running_mean, running_var, save_mean, save_var };
    let operands = [("alpha", alpha, s.c)];
    forward_train_then(&Serial, s, bn, x, gamma, beta, &operands, state, y, |_, c, z| prelu(z, alpha[c]))
}

/// [`batchnorm_forward_eval`] then [`prelu_forward`](super::prelu_forward), in one pass: `y = prelu(bn(x))`.
/// Errors as [`batchnorm_forward_eval`]; [`Error::Length`] may also name `alpha`.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_prelu_forward_eval(
    s: &BatchNormShape,
    bn: &BatchNorm,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    alpha: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    y: &mut [f32],
) -> Result<(), Error> {
    let operands = [("alpha", alpha, s.c)];
    let then = |_, c: usize, z| prelu(z, alpha[c]);
    forward_eval_then(&Serial, s, bn, x, gamma, beta, &operands, running_mean, running_var, y, then)
}

/// [`batchnorm_forward_train`] then [`residual_add_forward`](super::residual_add_forward) of `residual
/// (N, C, HW)`, in one pass: `y = bn(x) + residual`. Errors as [`batchnorm_forward_train`]; [`Error::Length`]
/// may also name `residual`.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_add_forward_train(
    s: &BatchNormShape,
    bn: &BatchNorm,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    residual: &[f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    y: &mut [f32],
    save_mean: &mut [f32],
    save_var: &mut [f32],
) -> Result<(), Error> {
    let state = TrainState { running_mean, running_var, save_mean, save_var };
    let operands = [("residual", residual, s.len())];
    forward_train_then(&Serial, s, bn, x, gamma, beta, &operands, state, y, |i, _, z| z + residual[i])
}

/// [`batchnorm_forward_eval`] then [`residual_add_forward`](super::residual_add_forward), in one pass:
/// `y = bn(x) + residual`. Errors as [`batchnorm_forward_eval`]; [`Error::Length`] may also name `residual`.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_add_forward_eval(
    s: &BatchNormShape,
    bn: &BatchNorm,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    residual: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    y: &mut [f32],
) -> Result<(), Error> {
    let operands = [("residual", residual, s.len())];
    let then = |i: usize, _, z| z + residual[i];
    forward_eval_then(&Serial, s, bn, x, gamma, beta, &operands, running_mean, running_var, y, then)
}

/// The backward of `z = prelu(bn(x))` (training mode) from `dz`, in one pass: the batch norm's output is
/// recomputed from `x` and the saved statistics exactly as the forward pass computed it, then
/// [`prelu_backward`](super::prelu_backward) and [`batchnorm_backward`] run on it, bit for bit.
///
/// Writes `dx (N, C, HW)`, `dgamma` (unless frozen), `dbeta` and `dalpha (C)`. Shapes: `x`, `dz`, `dx`
/// `(N, C, HW)`; `gamma`, `beta`, `alpha`, `save_mean`, `save_var` `(C)`. Errors as [`batchnorm_backward`];
/// [`Error::Length`] may also name `beta`, `alpha`, `dz` or `dalpha`.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_prelu_backward(
    s: &BatchNormShape,
    bn: &BatchNorm,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    alpha: &[f32],
    save_mean: &[f32],
    save_var: &[f32],
    dz: &[f32],
    dx: &mut [f32],
    dgamma: Option<&mut [f32]>,
    dbeta: &mut [f32],
    dalpha: &mut [f32],
) -> Result<(), Error> {
    let operands = [("beta", beta, s.c), ("alpha", alpha, s.c), ("dz", dz, s.len()), ("dalpha", dalpha, s.c)];
    // The batch norm's output z of element i (channel c), as the forward pass rounded it.
    let z = |i: usize, c: usize| normalised_value(x[i], save_mean[c], save_var[c], gamma[c], beta[c], bn.eps);
    let dy = |i: usize, c: usize| if z(i, c) > 0.0 { dz[i] } else { alpha[c] * dz[i] };
    backward_with(&Serial, s, bn, x, gamma, save_mean, save_var, &operands, dy, dx, dgamma, dbeta, |_, v| v)?;
    // dalpha as prelu_backward sums it: per plane, the planes of a channel in batch order.
    for (c, d) in dalpha.iter_mut().enumerate() {
        *d = channel_sum(s, c, |i| prelu_slope_term(z(i, c), dz[i]));
    }
    Ok(())
}

/// [`batchnorm_backward`] then [`accumulate`](super::accumulate) of `other (N, C, HW)`, in one pass:
/// `dx = bn_backward(dy) + other`, the gradient of an input that also reaches the loss another way (a residual
/// block's input). Errors as [`batchnorm_backward`]; [`Error::Length`] may also name `other`.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward_accumulate(
    s: &BatchNormShape,
    bn: &BatchNorm,
    x: &[f32],
    gamma: &[f32],
    save_mean: &[f32],
    save_var: &[f32],
    dy: &[f32],
    other: &[f32],
    dx: &mut [f32],
    dgamma: Option<&mut [f32]>,
    dbeta: &mut [f32],
) -> Result<(), Error> {
    let operands = [("dy", dy, s.len()), ("other", other, s.len())];
    let (dy, then) = (|i, _| dy[i], |i: usize, v| v + other[i]);
    backward_with(&Serial, s, bn, x, gamma, save_mean, save_var, &operands, dy, dx, dgamma, dbeta, then)
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use approx::assert_relative_eq;

    const S: BatchNormShape = BatchNormShape { n: 2, c: 2, hw: 2 };
    // Channel 0 holds {1, 3, 5, 7}: mean 4, biased var 5, unbiased 20/3.
    // Channel 1 holds {2, 2, 2, 6}: mean 3, biased var 3, unbiased 4.
    const X: [f32; 8] = [1.0, 3.0, 2.0, 2.0, 5.0, 7.0, 2.0, 6.0];

    #[test]
    fn training_forward_by_hand() {
        let bn = BatchNorm { eps: 0.0, momentum: 0.1 };
        let (gamma, beta) = ([2.0, 1.0], [0.5, -1.0]);
        let (mut rm, mut rv) = ([1.0, 0.0], [1.0, 2.0]);
        let (mut y, mut sm, mut sv) = ([0.0; 8], [0.0; 2], [0.0; 2]);
        batchnorm_forward_train(&S, &bn, &X, &gamma, &beta, &mut rm, &mut rv, &mut y, &mut sm, &mut sv).unwrap();
        assert_eq!(sm, [4.0, 3.0]);
        assert_eq!(sv, [5.0, 3.0]);
        assert_relative_eq!(rm[0], 0.9 * 1.0 + 0.1 * 4.0, max_relative = 1e-6);
        assert_relative_eq!(rm[1], 0.1 * 3.0, max_relative = 1e-6);
        assert_relative_eq!(rv[0], 0.9 + 0.1 * 20.0 / 3.0, max_relative = 1e-6);
        assert_relative_eq!(rv[1], 0.9 * 2.0 + 0.1 * 4.0, max_relative = 1e-6);
        let (s0, s1) = (5.0f32.sqrt(), 3.0f32.sqrt());
        let expected = [
            2.0 * (1.0 - 4.0) / s0 + 0.5,
            2.0 * (3.0 - 4.0) / s0 + 0.5,
            (2.0 - 3.0) / s1 - 1.0,
            (2.0 - 3.0) / s1 - 1.0,
            2.0 * (5.0 - 4.0) / s0 + 0.5,
            2.0 * (7.0 - 4.0) / s0 + 0.5,
            (2.0 - 3.0) / s1 - 1.0,
            (6.0 - 3.0) / s1 - 1.0,
        ];
        for (a, b) in y.iter().zip(&expected) {
            assert_relative_eq!(a, b, max_relative = 1e-6);
        }
    }

    #[test]
    fn variance_is_accurate_with_a_large_offset() {
        // 1e4 + {-1, 1}: E[x^2] - E[x]^2 in f32 would lose every digit; the two-pass variance is exact.
        let s = BatchNormShape { n: 4, c: 1, hw: 1 };
        let x = [9999.0, 10001.0, 9999.0, 10001.0];
        let (mut rm, mut rv, mut y, mut sm, mut sv) = ([0.0], [1.0], [0.0; 4], [0.0], [0.0]);
        let bn = BatchNorm::default();
        batchnorm_forward_train(&s, &bn, &x, &[1.0], &[0.0], &mut rm, &mut rv, &mut y, &mut sm, &mut sv).unwrap();
        assert_eq!((sm[0], sv[0]), (10000.0, 1.0));
        assert_relative_eq!(y[1], 1.0 / (1.0f32 + 1e-5).sqrt(), max_relative = 1e-6);
    }

    #[test]
    fn eval_uses_running_stats() {
        let bn = BatchNorm { eps: 1e-5, momentum: 0.1 };
        let s = BatchNormShape { n: 1, c: 2, hw: 2 }; // N = 1 is fine in eval mode
        let x = [1.0, 2.0, 3.0, -4.0];
        let mut y = [0.0; 4];
        batchnorm_forward_eval(&s, &bn, &x, &[2.0, 1.0], &[0.0, 1.0], &[1.0, -1.0], &[4.0, 0.25], &mut y).unwrap();
        let (i0, i1) = (1.0 / (4.0f32 + 1e-5).sqrt(), 1.0 / (0.25f32 + 1e-5).sqrt());
        let expected = [0.0, 2.0 * i0, 4.0 * i1 + 1.0, -3.0 * i1 + 1.0];
        for (a, b) in y.iter().zip(&expected) {
            assert_relative_eq!(a, b, max_relative = 1e-6);
        }
    }

    #[test]
    fn backward_by_hand() {
        // One channel {1, 3, 5, 7} (mean 4, var 5), gamma 2, eps 0, dy = {1, 0, 0, 0}.
        // xhat = {-3, -1, 1, 3} / sqrt(5); dbeta = 1; dgamma = -3/sqrt(5);
        // dx = 2/sqrt(5) * (dy - 1/4 - xhat * (-3/sqrt(5)) / 4) = 2/sqrt(5) * (dy - 1/4 + 3 * {-3, -1, 1, 3} / 20).
        let s = BatchNormShape { n: 4, c: 1, hw: 1 };
        let bn = BatchNorm { eps: 0.0, momentum: 0.1 };
        let (mut dx, mut dg, mut db) = ([0.0; 4], [0.0], [0.0]);
        let dy = [1.0, 0.0, 0.0, 0.0];
        batchnorm_backward(
            &s,
            &bn,
            &[1.0, 3.0, 5.0, 7.0],
            &[2.0],
            &[4.0],
            &[5.0],
            &dy,
            &mut dx,
            Some(&mut dg),
            &mut db,
        )
        .unwrap();
        let r5 = 5.0f32.sqrt();
        assert_eq!(db, [1.0]);
        assert_relative_eq!(dg[0], -3.0 / r5, max_relative = 1e-6);
        let k = 2.0 / r5;
        let expected = [k * (0.75 - 0.45), k * (-0.25 - 0.15), k * (-0.25 + 0.15), k * (-0.25 + 0.45)];
        for (a, b) in dx.iter().zip(&expected) {
            assert_relative_eq!(a, b, max_relative = 1e-5, epsilon = 1e-6);
        }
        // dx sums to zero (the mean is subtracted) and a frozen gamma gives the same dx and dbeta.
        assert!(dx.iter().sum::<f32>().abs() < 1e-6);
        let (mut dx2, mut db2) = ([0.0; 4], [0.0]);
        batchnorm_backward(&s, &bn, &[1.0, 3.0, 5.0, 7.0], &[2.0], &[4.0], &[5.0], &dy, &mut dx2, None, &mut db2)
            .unwrap();
        assert_eq!((dx, db), (dx2, db2));
    }

    #[test]
    fn too_few_values_and_zero_sizes_are_shape_errors() {
        let bn = BatchNorm::default();
        let (mut rm, mut rv, mut y, mut sm, mut sv) = ([0.0; 3], [1.0; 3], [0.0; 3], [0.0; 3], [0.0; 3]);
        let (mut dx, mut dg, mut db) = ([0.0; 3], [0.0; 3], [0.0; 3]);
        for s in [
            BatchNormShape { n: 1, c: 3, hw: 1 },
            BatchNormShape { n: 0, c: 3, hw: 1 },
            BatchNormShape { n: 3, c: 0, hw: 1 },
            BatchNormShape { n: 3, c: 1, hw: 0 },
            BatchNormShape { n: usize::MAX, c: 2, hw: 2 },
        ] {
            let e = batchnorm_forward_train(
                &s, &bn, &[0.0; 3], &[1.0; 3], &[0.0; 3], &mut rm, &mut rv, &mut y, &mut sm, &mut sv,
            );
            assert!(matches!(e, Err(Error::Shape { .. })), "{s:?}");
            let e = batchnorm_backward(
                &s,
                &bn,
                &[0.0; 3],
                &[1.0; 3],
                &[0.0; 3],
                &[1.0; 3],
                &[0.0; 3],
                &mut dx,
                Some(&mut dg),
                &mut db,
            );
            assert!(matches!(e, Err(Error::Shape { .. })), "{s:?}");
        }
        // N = 1 but HW = 2: two values per channel is enough (PyTorch agrees for BatchNorm2d).
        let s = BatchNormShape { n: 1, c: 1, hw: 2 };
        let (mut y2, mut sm1, mut sv1, mut rm1, mut rv1) = ([0.0; 2], [0.0], [0.0], [0.0], [1.0]);
        batchnorm_forward_train(&s, &bn, &[1.0, 2.0], &[1.0], &[0.0], &mut rm1, &mut rv1, &mut y2, &mut sm1, &mut sv1)
            .unwrap();
        // Eval mode takes N = 1 but still rejects a zero size.
        let s = BatchNormShape { n: 0, c: 3, hw: 1 };
        let e = batchnorm_forward_eval(&s, &bn, &[], &[1.0; 3], &[0.0; 3], &[0.0; 3], &[1.0; 3], &mut []);
        assert!(matches!(e, Err(Error::Shape { .. })));
        // Nothing was written by the failed calls.
        assert_eq!((rm, rv, y, sm, sv), ([0.0; 3], [1.0; 3], [0.0; 3], [0.0; 3], [0.0; 3]));
    }

    #[test]
    fn bad_lengths_name_the_argument() {
        let bn = BatchNorm::default();
        let s = BatchNormShape { n: 2, c: 2, hw: 1 };
        let x = [0.0; 4];
        let p = [1.0; 2];
        let (mut rm, mut rv, mut y, mut sm, mut sv) = ([0.0; 2], [1.0; 2], [0.0; 4], [0.0; 2], [0.0; 2]);
        let len = |what, expected, got| Err(Error::Length { what, expected, got });
        let e = batchnorm_forward_train(&s, &bn, &x[1..], &p, &p, &mut rm, &mut rv, &mut y, &mut sm, &mut sv);
        assert_eq!(e, len("x", 4, 3));
        let e = batchnorm_forward_train(&s, &bn, &x, &p[1..], &p, &mut rm, &mut rv, &mut y, &mut sm, &mut sv);
        assert_eq!(e, len("gamma", 2, 1));
        let e = batchnorm_forward_train(&s, &bn, &x, &p, &[0.0; 3], &mut rm, &mut rv, &mut y, &mut sm, &mut sv);
        assert_eq!(e, len("beta", 2, 3));
        let e = batchnorm_forward_train(&s, &bn, &x, &p, &p, &mut rm[1..], &mut rv, &mut y, &mut sm, &mut sv);
        assert_eq!(e, len("running_mean", 2, 1));
        let e = batchnorm_forward_train(&s, &bn, &x, &p, &p, &mut rm, &mut rv[1..], &mut y, &mut sm, &mut sv);
        assert_eq!(e, len("running_var", 2, 1));
        let e = batchnorm_forward_train(&s, &bn, &x, &p, &p, &mut rm, &mut rv, &mut y[1..], &mut sm, &mut sv);
        assert_eq!(e, len("y", 4, 3));
        let e = batchnorm_forward_train(&s, &bn, &x, &p, &p, &mut rm, &mut rv, &mut y, &mut sm[1..], &mut sv);
        assert_eq!(e, len("save_mean", 2, 1));
        let e = batchnorm_forward_train(&s, &bn, &x, &p, &p, &mut rm, &mut rv, &mut y, &mut sm, &mut sv[1..]);
        assert_eq!(e, len("save_var", 2, 1));

        let e = batchnorm_forward_eval(&s, &bn, &x, &p, &p, &p, &p[1..], &mut y);
        assert_eq!(e, len("running_var", 2, 1));
        let e = batchnorm_forward_eval(&s, &bn, &x, &p, &p, &p, &p, &mut y[1..]);
        assert_eq!(e, len("y", 4, 3));

        let (mut dx, mut dg, mut db) = ([0.0; 4], [0.0; 2], [0.0; 2]);
        let e = batchnorm_backward(&s, &bn, &x, &p, &p, &p, &x[1..], &mut dx, Some(&mut dg), &mut db);
        assert_eq!(e, len("dy", 4, 3));
        let e = batchnorm_backward(&s, &bn, &x, &p, &p, &p, &x, &mut dx[1..], Some(&mut dg), &mut db);
        assert_eq!(e, len("dx", 4, 3));
        let e = batchnorm_backward(&s, &bn, &x, &p, &p, &p, &x, &mut dx, Some(&mut dg[1..]), &mut db);
        assert_eq!(e, len("dgamma", 2, 1));
        let e = batchnorm_backward(&s, &bn, &x, &p, &p, &p, &x, &mut dx, None, &mut db[1..]);
        assert_eq!(e, len("dbeta", 2, 1));
        let e = batchnorm_backward(&s, &bn, &x, &p, &p[1..], &p, &x, &mut dx, None, &mut db);
        assert_eq!(e, len("save_mean", 2, 1));
    }

    /// Deterministic test data in [-1, 1) with exact zeros mixed in (PReLU's boundary), from a xorshift64*.
    fn data(seed: u64, len: usize) -> std::vec::Vec<f32> {
        let mut state = seed;
        (0..len)
            .map(|i| {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                let v = (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
                if i % 7 == 3 {
                    0.0
                } else {
                    v
                }
            })
            .collect()
    }

    fn bits(v: &[f32]) -> std::vec::Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Shapes for the fused forms: BatchNorm2d and BatchNorm1d, one and several planes per channel.
    const FUSED_SHAPES: [BatchNormShape; 3] = [
        BatchNormShape { n: 3, c: 4, hw: 5 },
        BatchNormShape { n: 5, c: 3, hw: 1 },
        BatchNormShape { n: 1, c: 2, hw: 9 },
    ];

    #[test]
    fn fused_forwards_are_the_unfused_calls_bit_for_bit() {
        let bn = BatchNorm::default();
        for (k, s) in FUSED_SHAPES.iter().enumerate() {
            let seed = 11 + k as u64;
            let (x, r) = (data(seed, s.len()), data(seed + 100, s.len()));
            let (gamma, beta, alpha) = (data(seed + 200, s.c), data(seed + 300, s.c), data(seed + 400, s.c));
            let running: std::vec::Vec<f32> = data(seed + 500, 2 * s.c).iter().map(|v| v.abs() + 0.5).collect();
            let (rm0, rv0) = running.split_at(s.c);
            let zeros = || std::vec![0.0f32; s.c];

            // Unfused: the batch norm, then the PReLU or the add, each into its own tensor.
            let (mut rm, mut rv, mut sm, mut sv) = (rm0.to_vec(), rv0.to_vec(), zeros(), zeros());
            let mut z = std::vec![0.0; s.len()];
            batchnorm_forward_train(s, &bn, &x, &gamma, &beta, &mut rm, &mut rv, &mut z, &mut sm, &mut sv).unwrap();
            let (mut p, mut a) = (std::vec![0.0; s.len()], std::vec![0.0; s.len()]);
            crate::nn::prelu_forward(s, &z, &alpha, &mut p).unwrap();
            crate::nn::residual_add_forward(&z, &r, &mut a).unwrap();
            let unfused_state = [&rm, &rv, &sm, &sv].map(|v| bits(v));
            // Some values on each side of zero, so both PReLU branches are taken.
            assert!(z.iter().any(|&v| v > 0.0) && z.iter().any(|&v| v < 0.0));

            let mut y = std::vec![f32::NAN; s.len()];
            let (mut rm, mut rv, mut sm, mut sv) = (rm0.to_vec(), rv0.to_vec(), zeros(), zeros());
            batchnorm_prelu_forward_train(
                s, &bn, &x, &gamma, &beta, &alpha, &mut rm, &mut rv, &mut y, &mut sm, &mut sv,
            )
            .unwrap();
            assert_eq!(bits(&y), bits(&p), "prelu train {s:?}");
            assert_eq!([&rm, &rv, &sm, &sv].map(|v| bits(v)), unfused_state);
            let (mut rm, mut rv, mut sm, mut sv) = (rm0.to_vec(), rv0.to_vec(), zeros(), zeros());
            batchnorm_add_forward_train(s, &bn, &x, &gamma, &beta, &r, &mut rm, &mut rv, &mut y, &mut sm, &mut sv)
                .unwrap();
            assert_eq!(bits(&y), bits(&a), "add train {s:?}");
            assert_eq!([&rm, &rv, &sm, &sv].map(|v| bits(v)), unfused_state);

            // Eval mode, with the running statistics.
            batchnorm_forward_eval(s, &bn, &x, &gamma, &beta, rm0, rv0, &mut z).unwrap();
            crate::nn::prelu_forward(s, &z, &alpha, &mut p).unwrap();
            crate::nn::residual_add_forward(&z, &r, &mut a).unwrap();
            batchnorm_prelu_forward_eval(s, &bn, &x, &gamma, &beta, &alpha, rm0, rv0, &mut y).unwrap();
            assert_eq!(bits(&y), bits(&p), "prelu eval {s:?}");
            batchnorm_add_forward_eval(s, &bn, &x, &gamma, &beta, &r, rm0, rv0, &mut y).unwrap();
            assert_eq!(bits(&y), bits(&a), "add eval {s:?}");
        }
    }

    #[test]
    fn fused_backwards_are_the_unfused_calls_bit_for_bit() {
        let bn = BatchNorm::default();
        for (k, s) in FUSED_SHAPES.iter().enumerate() {
            let seed = 31 + k as u64;
            let (x, dz, other) = (data(seed, s.len()), data(seed + 100, s.len()), data(seed + 150, s.len()));
            let (gamma, beta, alpha) = (data(seed + 200, s.c), data(seed + 300, s.c), data(seed + 400, s.c));
            let (mut rm, mut rv, mut sm, mut sv) = (std::vec![0.0; s.c], std::vec![1.0; s.c], [0.0; 4], [0.0; 4]);
            let (sm, sv) = (&mut sm[..s.c], &mut sv[..s.c]);
            let mut z = std::vec![0.0; s.len()];
            batchnorm_forward_train(s, &bn, &x, &gamma, &beta, &mut rm, &mut rv, &mut z, sm, sv).unwrap();
            let (sm, sv) = (&*sm, &*sv);

            // Unfused: PReLU backward on the stored z, then the batch norm backward; the add.
            let (mut dy, mut dalpha) = (std::vec![0.0; s.len()], std::vec![0.0; s.c]);
            crate::nn::prelu_backward(s, &z, &alpha, &dz, &mut dy, &mut dalpha).unwrap();
            let (mut dx, mut dgamma, mut dbeta) = (std::vec![0.0; s.len()], std::vec![0.0; s.c], std::vec![0.0; s.c]);
            batchnorm_backward(s, &bn, &x, &gamma, sm, sv, &dy, &mut dx, Some(&mut dgamma), &mut dbeta).unwrap();
            let mut dx_acc = dx.clone();
            crate::nn::accumulate(&mut dx_acc, &other).unwrap();
            let mut dx_plain = std::vec![0.0; s.len()];
            batchnorm_backward(
                s,
                &bn,
                &x,
                &gamma,
                sm,
                sv,
                &dz,
                &mut dx_plain,
                Some(&mut dgamma.clone()),
                &mut dbeta.clone(),
            )
            .unwrap();
            crate::nn::accumulate(&mut dx_plain, &other).unwrap();

            let nan = |len| std::vec![f32::NAN; len];
            let (mut fx, mut fg, mut fb, mut fa) = (nan(s.len()), nan(s.c), nan(s.c), nan(s.c));
            batchnorm_prelu_backward(
                s,
                &bn,
                &x,
                &gamma,
                &beta,
                &alpha,
                sm,
                sv,
                &dz,
                &mut fx,
                Some(&mut fg),
                &mut fb,
                &mut fa,
            )
            .unwrap();
            assert_eq!(
                [bits(&fx), bits(&fg), bits(&fb), bits(&fa)],
                [bits(&dx), bits(&dgamma), bits(&dbeta), bits(&dalpha)]
            );
            // A frozen gamma: the same dx, dbeta and dalpha.
            let (mut fx2, mut fb2, mut fa2) = (nan(s.len()), nan(s.c), nan(s.c));
            batchnorm_prelu_backward(
                s, &bn, &x, &gamma, &beta, &alpha, sm, sv, &dz, &mut fx2, None, &mut fb2, &mut fa2,
            )
            .unwrap();
            assert_eq!([bits(&fx2), bits(&fb2), bits(&fa2)], [bits(&dx), bits(&dbeta), bits(&dalpha)]);

            let (mut ax, mut ag, mut ab) = (nan(s.len()), nan(s.c), nan(s.c));
            batchnorm_backward_accumulate(s, &bn, &x, &gamma, sm, sv, &dz, &other, &mut ax, Some(&mut ag), &mut ab)
                .unwrap();
            assert_eq!(bits(&ax), bits(&dx_plain), "accumulate {s:?}");
        }
    }

    #[test]
    fn fused_forms_check_their_own_operands() {
        let bn = BatchNorm::default();
        let s = BatchNormShape { n: 2, c: 2, hw: 1 };
        let (x, p) = ([0.5, -0.5, 1.0, 2.0], [1.0; 2]);
        let len = |what, expected, got| Err(Error::Length { what, expected, got });
        let (mut rm, mut rv, mut y, mut sm, mut sv) = ([0.0; 2], [1.0; 2], [7.0; 4], [0.0; 2], [0.0; 2]);
        let e = batchnorm_prelu_forward_train(&s, &bn, &x, &p, &p, &p[1..], &mut rm, &mut rv, &mut y, &mut sm, &mut sv);
        assert_eq!(e, len("alpha", 2, 1));
        let e = batchnorm_add_forward_train(&s, &bn, &x, &p, &p, &x[1..], &mut rm, &mut rv, &mut y, &mut sm, &mut sv);
        assert_eq!(e, len("residual", 4, 3));
        assert_eq!(batchnorm_prelu_forward_eval(&s, &bn, &x, &p, &p, &[], &p, &p, &mut y), len("alpha", 2, 0));
        assert_eq!(batchnorm_add_forward_eval(&s, &bn, &x, &p, &p, &x[..2], &p, &p, &mut y), len("residual", 4, 2));
        // Nothing was written by the failed calls.
        assert_eq!((rm, rv, y, sm, sv), ([0.0; 2], [1.0; 2], [7.0; 4], [0.0; 2], [0.0; 2]));

        let (mut dx, mut dg, mut db, mut da) = ([7.0; 4], [7.0; 2], [7.0; 2], [7.0; 2]);
        let e = batchnorm_prelu_backward(&s, &bn, &x, &p, &p[1..], &p, &p, &p, &x, &mut dx, None, &mut db, &mut da);
        assert_eq!(e, len("beta", 2, 1));
        let e = batchnorm_prelu_backward(&s, &bn, &x, &p, &p, &p, &p, &p, &x[1..], &mut dx, None, &mut db, &mut da);
        assert_eq!(e, len("dz", 4, 3));
        let e = batchnorm_prelu_backward(
            &s,
            &bn,
            &x,
            &p,
            &p,
            &p,
            &p,
            &p,
            &x,
            &mut dx,
            Some(&mut dg),
            &mut db,
            &mut da[1..],
        );
        assert_eq!(e, len("dalpha", 2, 1));
        let e = batchnorm_backward_accumulate(&s, &bn, &x, &p, &p, &p, &x, &x[1..], &mut dx, None, &mut db);
        assert_eq!(e, len("other", 4, 3));
        assert_eq!((dx, dg, db, da), ([7.0; 4], [7.0; 2], [7.0; 2], [7.0; 2]));
    }

    /// Values with fractions (whose sums round differently in another order), some negative.
    fn fractions(len: usize, k: f32) -> std::vec::Vec<f32> {
        (0..len).map(|i| libm::sinf(i as f32 * k) * 1.7 + 0.3).collect()
    }

    #[test]
    fn any_cut_into_channels_and_planes_gives_the_same_bits() {
        use crate::parallel::Pieces;
        let bn = BatchNorm::default();
        for s in [BatchNormShape { n: 3, c: 5, hw: 7 }, BatchNormShape { n: 4, c: 3, hw: 1 }] {
            let (x, dy) = (fractions(s.len(), 0.37), fractions(s.len(), 0.71));
            let (gamma, beta) = (fractions(s.c, 1.3), fractions(s.c, 2.1));
            let running = fractions(s.c, 0.9).iter().map(|v| v.abs() + 0.5).collect::<std::vec::Vec<_>>();
            // Every output of the three passes, on one executor.
            let run = |exec: &dyn Executor| {
                let (mut rm, mut rv) = (running.clone(), running.clone());
                let (mut y, mut mean, mut var) = (std::vec![0.0; s.len()], std::vec![0.0; s.c], std::vec![0.0; s.c]);
                batchnorm_forward_train_on(
                    exec, &s, &bn, &x, &gamma, &beta, &mut rm, &mut rv, &mut y, &mut mean, &mut var,
                )
                .unwrap();
                let mut y_eval = std::vec![0.0; s.len()];
                batchnorm_forward_eval_on(exec, &s, &bn, &x, &gamma, &beta, &running, &running, &mut y_eval).unwrap();
                let (mut dx, mut dgamma, mut dbeta) =
                    (std::vec![0.0; s.len()], std::vec![0.0; s.c], std::vec![0.0; s.c]);
                let back = |dx: &mut [f32], dgamma, dbeta: &mut [f32]| {
                    batchnorm_backward_on(exec, &s, &bn, &x, &gamma, &mean, &var, &dy, dx, dgamma, dbeta).unwrap()
                };
                back(&mut dx, Some(&mut dgamma), &mut dbeta);
                let (mut dx_frozen, mut dbeta_frozen) = (std::vec![0.0; s.len()], std::vec![0.0; s.c]);
                back(&mut dx_frozen, None, &mut dbeta_frozen);
                [rm, rv, y.clone(), mean.clone(), var.clone(), y_eval, dx, dgamma, dbeta, dx_frozen, dbeta_frozen]
                    .map(|v| bits(&v))
            };
            let serial = run(&Serial);
            // The frozen weight changes nothing but the missing dgamma.
            assert_eq!((&serial[9], &serial[10]), (&serial[6], &serial[8]), "{s:?}");
            for rows in [1, 2, 4, 100] {
                assert_eq!(run(&Pieces(rows)), serial, "{s:?}, pieces of {rows}");
            }
        }
    }

    #[test]
    fn every_statistic_and_gradient_sums_in_its_documented_order() {
        // The plainest loops in the documented orders: each channel's sums per plane (`Iterator::sum` for the
        // statistics, from 0.0 for the gradients), the planes' sums added in batch order from 0.0. On fractions,
        // whose sums round differently in another order.
        let bn = BatchNorm::default();
        let s = BatchNormShape { n: 3, c: 4, hw: 37 };
        let (x, dy) = (fractions(s.len(), 0.37), fractions(s.len(), 0.71));
        let (gamma, beta) = (fractions(s.c, 1.3), fractions(s.c, 2.1));
        let planes = |c: usize| (0..s.n).map(move |n| s.plane(n, c));
        let count = s.count() as f32;
        let (mut rm, mut rv) = (std::vec![0.0; s.c], std::vec![1.0; s.c]);
        let (mut y, mut mean, mut var) = (std::vec![0.0; s.len()], std::vec![0.0; s.c], std::vec![0.0; s.c]);
        batchnorm_forward_train(&s, &bn, &x, &gamma, &beta, &mut rm, &mut rv, &mut y, &mut mean, &mut var).unwrap();
        let (mut dx, mut dgamma, mut dbeta) = (std::vec![0.0; s.len()], std::vec![0.0; s.c], std::vec![0.0; s.c]);
        batchnorm_backward(&s, &bn, &x, &gamma, &mean, &var, &dy, &mut dx, Some(&mut dgamma), &mut dbeta).unwrap();
        for c in 0..s.c {
            let mut sum = 0.0f32;
            for p in planes(c) {
                sum += x[p].iter().sum::<f32>();
            }
            let m = sum / count;
            let mut squares = 0.0f32;
            for p in planes(c) {
                squares += x[p].iter().map(|&v| (v - m) * (v - m)).sum::<f32>();
            }
            let invstd = 1.0 / libm::sqrtf(squares / count + bn.eps);
            let (mut sum_dy, mut sum_dy_xmu) = (0.0f32, 0.0f32);
            for p in planes(c) {
                let (mut a, mut b) = (0.0f32, 0.0f32);
                for i in p {
                    a += dy[i];
                    b += dy[i] * (x[i] - m);
                }
                sum_dy += a;
                sum_dy_xmu += b;
            }
            assert_eq!([mean[c], var[c]].map(f32::to_bits), [m, squares / count].map(f32::to_bits), "channel {c}");
            let want = [sum_dy, sum_dy_xmu * invstd];
            assert_eq!([dbeta[c], dgamma[c]].map(f32::to_bits), want.map(f32::to_bits), "channel {c}");
        }
    }
}
