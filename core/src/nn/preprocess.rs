//! Input preprocessing: an RGB image as bytes to the network's input.
//!
//! No function panics: the shape and both slice lengths are checked before anything is written.

use crate::error::{check_len, Error};

/// An image of `h x w` pixels, 3 channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageShape {
    /// Height in pixels.
    pub h: usize,
    /// Width in pixels.
    pub w: usize,
}

impl ImageShape {
    /// Channels of every image: RGB.
    pub const CHANNELS: usize = 3;

    /// Elements of the image, `H*W*3`, in either layout (saturating at `usize::MAX`, which no slice can match).
    pub const fn len(&self) -> usize {
        self.h.saturating_mul(self.w).saturating_mul(Self::CHANNELS)
    }
    /// Whether the image has no pixels, which [`ImageShape::validate`] rejects.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Checks that neither size is zero and `H*W*3` fits `usize` ([`Error::Shape`] otherwise).
    pub fn validate(&self) -> Result<(), Error> {
        if self.h == 0 || self.w == 0 {
            return Err(Error::Shape { what: "image: height or width is zero" });
        }
        match self.h.checked_mul(self.w).and_then(|hw| hw.checked_mul(Self::CHANNELS)) {
            Some(_) => Ok(()),
            None => Err(Error::Shape { what: "image: H*W*3 overflows usize" }),
        }
    }
}

/// `u8 (H, W, 3)` RGB to `f32 (3, H, W)` with `(x / 255 - 0.5) / 0.5`, mirrored left-right when `flip`.
///
/// The arithmetic is done in f32 in exactly that order (as torchvision's `ToTensor` then `Normalize`), so
/// results match PyTorch bit for bit. With `flip`, `chw[c, y, x]` comes from `hwc[y, W - 1 - x, c]`.
/// Errors: [`Error::Shape`] ([`ImageShape::validate`]), [`Error::Length`] naming `hwc` or `chw`.
pub fn preprocess_image(s: &ImageShape, hwc: &[u8], flip: bool, chw: &mut [f32]) -> Result<(), Error> {
    s.validate()?;
    check_len("hwc", hwc, s.len())?;
    check_len("chw", chw, s.len())?;
    let plane = s.h * s.w;
    for (y, src_row) in hwc.chunks_exact(s.w * ImageShape::CHANNELS).enumerate() {
        for (x, pixel) in src_row.chunks_exact(ImageShape::CHANNELS).enumerate() {
            let dst_x = if flip { s.w - 1 - x } else { x };
            for (c, &byte) in pixel.iter().enumerate() {
                chw[c * plane + y * s.w + dst_x] = (f32::from(byte) / 255.0 - 0.5) / 0.5;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_scaling_and_flip() {
        // 2 x 3 image; pixel (y, x) = [r, g, b].
        let s = ImageShape { h: 2, w: 3 };
        #[rustfmt::skip]
        let hwc: [u8; 18] = [
            0, 255, 51,   102, 0, 0,   0, 0, 204,
            255, 255, 255,  0, 0, 0,   128, 1, 254,
        ];
        let f = |b: u8| (b as f32 / 255.0 - 0.5) / 0.5;
        let mut chw = [f32::NAN; 18];
        preprocess_image(&s, &hwc, false, &mut chw).unwrap();
        let r = [f(0), f(102), f(0), f(255), f(0), f(128)];
        let g = [f(255), f(0), f(0), f(255), f(0), f(1)];
        let b = [f(51), f(0), f(204), f(255), f(0), f(254)];
        assert_eq!(&chw[0..6], &r);
        assert_eq!(&chw[6..12], &g);
        assert_eq!(&chw[12..18], &b);
        assert_eq!((f(0), f(255)), (-1.0, 1.0));

        let mut flipped = [f32::NAN; 18];
        preprocess_image(&s, &hwc, true, &mut flipped).unwrap();
        for c in 0..3 {
            for y in 0..2 {
                for x in 0..3 {
                    assert_eq!(flipped[c * 6 + y * 3 + x], chw[c * 6 + y * 3 + (2 - x)]);
                }
            }
        }
        assert_eq!(&flipped[0..3], &[f(0), f(102), f(0)]); // first row of R is a palindrome in this image
        assert_eq!(&flipped[3..6], &[f(128), f(0), f(255)]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let s = ImageShape { h: 2, w: 2 };
        let mut chw = [0.0; 12];
        let e = preprocess_image(&s, &[0; 11], false, &mut chw);
        assert_eq!(e, Err(Error::Length { what: "hwc", expected: 12, got: 11 }));
        let e = preprocess_image(&s, &[0; 12], true, &mut chw[..4]);
        assert_eq!(e, Err(Error::Length { what: "chw", expected: 12, got: 4 }));
        for bad in [ImageShape { h: 0, w: 2 }, ImageShape { h: 2, w: 0 }, ImageShape { h: usize::MAX, w: 2 }] {
            assert!(matches!(preprocess_image(&bad, &[], false, &mut []), Err(Error::Shape { .. })));
        }
    }
}
