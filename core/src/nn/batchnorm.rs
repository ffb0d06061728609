//! Batch normalisation over `(N, C, HW)`: `BatchNorm2d` with `HW = H*W`, `BatchNorm1d` with `HW = 1`.

use crate::error::Error;

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
    /// Elements of the input, `N*C*HW`.
    pub const fn len(&self) -> usize {
        self.n * self.c * self.hw
    }
    /// Values each channel's statistics are taken over, `N*HW`.
    pub const fn count(&self) -> usize {
        self.n * self.hw
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

/// Training mode: normalise with the batch mean and biased variance, `y = gamma * (x - mean) / sqrt(var + eps) + beta`;
/// update the running mean and the running variance (with the unbiased batch variance `var * n / (n - 1)`).
///
/// Shapes: `x`, `y` `(N, C, HW)`; `gamma`, `beta`, `running_mean`, `running_var`, `save_mean`, `save_var` `(C)`.
/// `save_mean`/`save_var` receive the batch mean and biased variance for [`batchnorm_backward`].
/// Errors: `N*HW < 2` (no unbiased variance), as PyTorch.
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
    todo!()
}

/// Evaluation mode: normalise with the running statistics. Shapes as [`batchnorm_forward_train`].
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
    todo!()
}

/// Backward of [`batchnorm_forward_train`] from the saved batch statistics.
///
/// Writes `dx (N, C, HW)`, `dbeta (C)` and, unless the weight is frozen (`dgamma = None`, as insightface's
/// `features` layer), `dgamma (C)`.
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
    todo!()
}
