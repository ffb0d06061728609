//! Encoded images (JPEG, PNG) to `u8 (H, W, 3)` RGB bytes, and the encoders tests and `elasticface synth` use.
//!
//! JPEG is decoded by `zune-jpeg` in strict mode, PNG by the `image` crate. The `image` crate runs `zune-jpeg`
//! leniently: a truncated or garbled JPEG then decodes to an image padded with grey, without an error. Strict
//! mode fails on those, as PIL/libjpeg do ("image file is truncated", "broken data stream"), so a damaged file
//! is reported instead of trained on.
//!
//! The format is told by the bytes' own signature, not by a file name, so a PNG inside a RecordIO file decodes
//! as well as a JPEG. Every image becomes 8-bit RGB as PIL's `convert("RGB")` makes it: grey is replicated to
//! three channels, an alpha channel is dropped (not blended), 16-bit samples are scaled to 8 bits. EXIF
//! orientation is ignored, as PIL's `Image.open` ignores it.
//!
//! JPEG pixels are not bit-identical to libjpeg's (PIL, OpenCV): IDCT, chroma upsampling and colour conversion
//! round differently. On insightface-style 112x112 4:2:0 JPEGs about a quarter of the values differ, by at most
//! 4 levels (mean absolute difference 0.35); PNG is lossless and identical.
//!
//! The size is checked from the header, before any pixel is decoded: training needs images of exactly the
//! configured size, and nothing here resizes.

use std::io::Cursor;

use anyhow::{anyhow, bail, ensure, Context, Result};
use elasticface_core::nn::ImageShape;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

/// The encodings [`decode_rgb`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// JPEG (JFIF, Exif or raw): starts with `FF D8 FF`.
    Jpeg,
    /// PNG: starts with `89 50 4E 47 0D 0A 1A 0A`.
    Png,
}

impl Encoding {
    /// The encoding of `bytes` from its signature, or `None` when it is neither JPEG nor PNG.
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Self::Jpeg)
        } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Self::Png)
        } else {
            None
        }
    }
}

/// Decodes a JPEG or PNG image of exactly `expected` size to `u8 (H, W, 3)` RGB.
///
/// Errors (never panics): an unknown signature (the first bytes are named), a corrupt or truncated stream, or a
/// size other than `expected` (both sizes are named). The caller adds which file and record the bytes came from.
pub fn decode_rgb(bytes: &[u8], expected: ImageShape) -> Result<Vec<u8>> {
    let rgb = match Encoding::sniff(bytes) {
        Some(Encoding::Jpeg) => decode_jpeg(bytes, expected)?,
        Some(Encoding::Png) => decode_png(bytes, expected)?,
        None => {
            let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
            bail!("not a JPEG or PNG image ({} bytes, starting {})", bytes.len(), head.join(" "));
        }
    };
    // Both decoders return exactly H*W*3 bytes for an image of that size; checked anyway so that no caller can
    // ever see a short buffer.
    ensure!(
        rgb.len() == expected.len(),
        "decoder returned {} bytes for a {}x{} RGB image",
        rgb.len(),
        expected.h,
        expected.w
    );
    Ok(rgb)
}

/// The error for an image of the wrong size.
fn wrong_size(height: usize, width: usize, expected: ImageShape) -> anyhow::Error {
    anyhow!(
        "image is {height}x{width} (HxW) but {}x{} is required; images are not resized, prepare them at the \
         training size",
        expected.h,
        expected.w
    )
}

/// JPEG by `zune-jpeg` in strict mode (see the module documentation). A file whose only damage is a missing
/// end-of-image marker (all pixels present) still decodes.
fn decode_jpeg(bytes: &[u8], expected: ImageShape) -> Result<Vec<u8>> {
    let options = DecoderOptions::default().set_strict_mode(true).jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder.decode_headers().map_err(|e| anyhow!("corrupt JPEG header: {e:?}"))?;
    let (width, height) = decoder.dimensions().context("JPEG without a frame header")?;
    if (height, width) != (expected.h, expected.w) {
        return Err(wrong_size(height, width, expected));
    }
    decoder.decode().map_err(|e| anyhow!("corrupt JPEG data: {e:?}"))
}

/// PNG by the `image` crate (`png`), converted to 8-bit RGB.
fn decode_png(bytes: &[u8], expected: ImageShape) -> Result<Vec<u8>> {
    let decoder =
        ImageReader::with_format(Cursor::new(bytes), ImageFormat::Png).into_decoder().context("corrupt PNG header")?;
    let (width, height) = decoder.dimensions();
    if (height as usize, width as usize) != (expected.h, expected.w) {
        return Err(wrong_size(height as usize, width as usize, expected));
    }
    let image = DynamicImage::from_decoder(decoder).context("corrupt PNG data")?;
    Ok(image.into_rgb8().into_raw())
}

/// Encodes `u8 (H, W, 3)` RGB as a baseline JPEG of `quality` (1..=100; 4:2:0 chroma subsampling).
pub fn encode_jpeg(rgb: &[u8], shape: ImageShape, quality: u8) -> Result<Vec<u8>> {
    let (w, h) = dims_u32(rgb, shape)?;
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100))
        .encode(rgb, w, h, image::ExtendedColorType::Rgb8)
        .context("JPEG encoding failed")?;
    Ok(out)
}

/// Encodes `u8 (H, W, 3)` RGB as an 8-bit RGB PNG (lossless).
pub fn encode_png(rgb: &[u8], shape: ImageShape) -> Result<Vec<u8>> {
    use image::ImageEncoder;
    let (w, h) = dims_u32(rgb, shape)?;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(rgb, w, h, image::ExtendedColorType::Rgb8)
        .context("PNG encoding failed")?;
    Ok(out)
}

/// Checks `rgb` against `shape` and returns `(width, height)` as the encoders take them.
fn dims_u32(rgb: &[u8], shape: ImageShape) -> Result<(u32, u32)> {
    shape.validate().map_err(|e| anyhow!("image shape {}x{}: {e}", shape.h, shape.w))?;
    if rgb.len() != shape.len() {
        bail!("RGB buffer has {} bytes, a {}x{} image needs {}", rgb.len(), shape.h, shape.w, shape.len());
    }
    let w = u32::try_from(shape.w).context("image too wide")?;
    let h = u32::try_from(shape.h).context("image too high")?;
    Ok((w, h))
}
