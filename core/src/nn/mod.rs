//! The CPU reference of every layer the GPU trainer runs, forward and backward side by side.
//!
//! Semantics are PyTorch's (NCHW layouts, `conv [C_out, C_in, KH, KW]`, `linear [OUT, IN]`), so results can be
//! checked against PyTorch tensor by tensor. Each function here has a WGSL twin of the same name in
//! `shaders/`. Backward functions *overwrite* their outputs (they never accumulate), except
//! [`accumulate`], which exists for the one place a gradient has two sources (a residual block's input).
//!
//! `flatten` has no function: an `(N, C, H, W)` buffer read as `(N, C*H*W)` is the flattened tensor.
//!
//! Shape letters: `N` batch, `C` channels, `H`/`W` input height/width, `HO`/`WO` output height/width,
//! `KH`/`KW` kernel size, `IN`/`OUT` linear features, `D` vector length.

mod batchnorm;
mod conv2d;
mod linear;
mod normalize;
mod precision;
mod prelu;
mod preprocess;
mod residual;
mod sgd;
mod winograd;

pub use batchnorm::{
    batchnorm_add_forward_eval, batchnorm_add_forward_train, batchnorm_backward, batchnorm_backward_accumulate,
    batchnorm_backward_on, batchnorm_forward_eval, batchnorm_forward_eval_on, batchnorm_forward_train,
    batchnorm_forward_train_on, batchnorm_prelu_backward, batchnorm_prelu_forward_eval, batchnorm_prelu_forward_train,
    BatchNorm, BatchNormShape,
};
pub use conv2d::{
    conv2d_backward_data, conv2d_backward_data_on, conv2d_backward_weight, conv2d_backward_weight_on, conv2d_forward,
    conv2d_forward_on, conv2d_phase_weights, Conv2dShape,
};
pub use linear::{linear_backward, linear_forward, LinearShape};
pub(crate) use normalize::check_norms;
pub use normalize::{l2_normalize_backward, l2_normalize_forward, VectorLayout};
pub use precision::round_to_f16;
pub use prelu::{prelu_backward, prelu_backward_on, prelu_forward, prelu_forward_on};
pub use preprocess::{preprocess_image, ImageShape};
pub use residual::{accumulate, residual_add_backward, residual_add_forward};
pub use sgd::{accumulate_gradient, clip_coefficient, scale, sgd_step, sum_of_squares, MicroBatch, Sgd};
pub use winograd::{
    conv2d_winograd_backward_data, conv2d_winograd_backward_weight, conv2d_winograd_forward, gemm_batched,
    winograd_input_transform, winograd_normalized_input_transform, winograd_output_grad_transform,
    winograd_output_transform, winograd_weight_grad_transform, winograd_weight_transform, winograd_workspace_len,
    NormalizedInput, WinogradTile, WinogradTiles,
};
