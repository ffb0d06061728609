//! Input preprocessing: an RGB image as bytes to the network's input.

use crate::error::Error;

/// An image of `h x w` pixels, 3 channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageShape {
    /// Height in pixels.
    pub h: usize,
    /// Width in pixels.
    pub w: usize,
}

/// `u8 (H, W, 3)` RGB to `f32 (3, H, W)` with `(x / 255 - 0.5) / 0.5`, mirrored left-right when `flip`.
pub fn preprocess_image(s: &ImageShape, hwc: &[u8], flip: bool, chw: &mut [f32]) -> Result<(), Error> {
    todo!()
}
