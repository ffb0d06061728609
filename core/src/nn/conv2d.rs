//! 2-D convolution without bias, as `torch.nn.Conv2d(bias=False)` (square stride and padding).

use crate::error::Error;

/// Shape of a convolution: input `(N, C_IN, H, W)`, weight `(C_OUT, C_IN, KH, KW)`,
/// output `(N, C_OUT, HO, WO)` with `HO = (H + 2*pad - KH) / stride + 1` (likewise `WO`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dShape {
    /// Batch size N.
    pub n: usize,
    /// Input channels.
    pub c_in: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride, both directions.
    pub stride: usize,
    /// Zero padding, both directions, both sides.
    pub pad: usize,
}

impl Conv2dShape {
    /// Output height HO.
    pub const fn out_h(&self) -> usize {
        todo!()
    }
    /// Output width WO.
    pub const fn out_w(&self) -> usize {
        todo!()
    }
    /// Elements of the input, `N*C_IN*H*W`.
    pub const fn input_len(&self) -> usize {
        todo!()
    }
    /// Elements of the weight, `C_OUT*C_IN*KH*KW`.
    pub const fn weight_len(&self) -> usize {
        todo!()
    }
    /// Elements of the output, `N*C_OUT*HO*WO`.
    pub const fn output_len(&self) -> usize {
        todo!()
    }
    /// Checks that every size is non-zero and the kernel fits the padded input.
    pub fn validate(&self) -> Result<(), Error> {
        todo!()
    }
}

/// `y = conv(x, weight)`. Shapes: `x (N, C_IN, H, W)`, `weight (C_OUT, C_IN, KH, KW)`, `y (N, C_OUT, HO, WO)`.
pub fn conv2d_forward(s: &Conv2dShape, x: &[f32], weight: &[f32], y: &mut [f32]) -> Result<(), Error> {
    todo!()
}

/// Gradient with respect to the input: `dx (N, C_IN, H, W)` from `dy (N, C_OUT, HO, WO)` and `weight`. Overwrites `dx`.
pub fn conv2d_backward_data(s: &Conv2dShape, dy: &[f32], weight: &[f32], dx: &mut [f32]) -> Result<(), Error> {
    todo!()
}

/// Gradient with respect to the weight: `dweight (C_OUT, C_IN, KH, KW)` from `dy` and `x`. Overwrites `dweight`.
pub fn conv2d_backward_weight(s: &Conv2dShape, dy: &[f32], x: &[f32], dweight: &mut [f32]) -> Result<(), Error> {
    todo!()
}
